"""A post-processing: one value per registered step, applied in order to probability maps."""

from __future__ import annotations

from typing import Any

import numpy as np

from lovaszseg.errors import ConfigError
from lovaszseg.scoring.catalogue import BINARY_METRICS, PER_IMAGE_METRICS
from lovaszseg.scoring.postprocess.counts import (
    ImageCounts,
    grid_index,
    image_metric,
    metric_at_thresholds,
    metric_scale,
)
from lovaszseg.scoring.postprocess.steps import Rule, Step, step_classes

__all__ = ["PostProcessing", "evaluate_postprocessing", "image_scores"]


class PostProcessing:
    """How probabilities become a binary mask: the threshold, then every rule (min-area, ...).

    Args:
        *values: Step values in step order (threshold, min-area, ...).
        **named: Step values by name (``threshold=0.4, min_area=50``); unset steps take their default.

    Raises:
        ConfigError: an unknown step or a bad value (each step checks its own).
    """

    def __init__(self, *values: Any, **named: Any) -> None:
        classes = step_classes()
        if len(values) > len(classes):
            raise ConfigError(f"post-processing has {len(classes)} steps, got {len(values)} values")
        given = dict(zip((step.name for step in classes), values, strict=False))
        if overlap := sorted(set(given) & set(named)):
            raise ConfigError(f"post-processing step(s) {', '.join(overlap)} given twice")
        given |= named
        if unknown := sorted(set(given) - {step.name for step in classes}):
            known = ", ".join(step.name for step in classes)
            raise ConfigError(f"unknown post-processing step(s) {', '.join(unknown)}; the steps are {known}")
        self.steps: tuple[Step, ...] = tuple(step(given.get(step.name, step.default)) for step in classes)

    def __getattr__(self, name: str) -> Any:
        """A step's value by its name: ``post.threshold``, ``post.min_area``."""
        for step in self.__dict__.get("steps", ()):
            if step.name == name:
                return step.value
        raise AttributeError(name)

    def values(self) -> dict[str, Any]:
        """``{step name: value}`` in step order (what records and ``eval`` keep)."""
        return {step.name: step.value for step in self.steps}

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(step for step in self.steps if isinstance(step, Rule))

    def apply(self, probabilities: np.ndarray, empty: np.ndarray | float | None = None) -> np.ndarray:
        """The masks ``[..., H, W]`` (bool) of foreground probability maps ``[..., H, W]``, given the
        empty-image head's probabilities ``[...]`` (None: a model without one)."""
        masks = np.zeros(probabilities.shape, dtype=bool)
        heads = None if empty is None else np.asarray(empty)
        for step in self.steps:
            masks = step.apply(probabilities, masks, heads)
        return masks

    def empties(self, counts: ImageCounts) -> np.ndarray:
        """Which counted predictions ``[N, T]`` the rules empty, at every threshold of the grid."""
        emptied = np.zeros(counts.predicted.shape, dtype=bool)
        for rule in self.rules:
            emptied |= rule.empties(counts.emptied(emptied))
        return emptied

    def describe(self) -> str:
        return ", ".join(step.describe() for step in self.steps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PostProcessing) and other.steps == self.steps

    def __hash__(self) -> int:
        return hash(self.steps)

    def __repr__(self) -> str:
        return f"PostProcessing({', '.join(f'{name}={value!r}' for name, value in self.values().items())})"


def evaluate_postprocessing(counts: ImageCounts, chosen: PostProcessing) -> dict[str, float]:
    """Every binary metric of the counted images under ``chosen`` (its threshold must be on the grid)."""
    column = grid_index(chosen.threshold)
    after = counts.emptied(chosen.empties(counts))
    return {metric: float(metric_at_thresholds(after, metric)[column]) for metric in BINARY_METRICS}


def image_scores(counts: ImageCounts, chosen: PostProcessing, metric: str = "salt_score") -> np.ndarray:
    """Each image's score ``[N]`` under ``chosen`` (``salt_score`` or ``image_iou``: metrics that are
    means over images), e.g. for paired comparisons of two models image by image."""
    if metric not in PER_IMAGE_METRICS:
        raise ConfigError(f"per-image scores exist for {' and '.join(PER_IMAGE_METRICS)}, not {metric!r}")
    column = grid_index(chosen.threshold)
    after = counts.emptied(chosen.empties(counts))
    scores = image_metric(metric, after.intersection[:, column], after.predicted[:, column], counts.truth)
    return scores / metric_scale(metric)
