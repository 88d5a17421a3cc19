"""Tuning a post-processing on predictions whose truth is known, keeping it, and resolving ``auto``.

:func:`tune_postprocessing` chooses every step not given a value, jointly: at every threshold of the
grid the rules take their best values together (exactly: every cut of the images by each rule's key, and
for two rules every pair of cuts), and the threshold then takes the best column. A :class:`Tuning` keeps what
was chosen, the rules' best values at every threshold (so ``--threshold 0.6 --min-area auto`` gets the
min-area tuned for 0.6) and the metrics before and after; ``postprocess.json`` in a run, cv or ensemble
folder holds it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lovaszseg.data.io import atomic_write
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.scoring.postprocess.counts import (
    ImageCounts,
    cut_values,
    grid_index,
    metric_at_thresholds,
    pair_cut_values,
)
from lovaszseg.scoring.postprocess.pipeline import PostProcessing, evaluate_postprocessing
from lovaszseg.scoring.postprocess.steps import Rule, rule_classes, step_classes
from lovaszseg.thresholds import THRESHOLD_GRID

__all__ = [
    "AUTO",
    "POSTPROCESS_FILE",
    "Requested",
    "Tuning",
    "load_tuning",
    "resolve",
    "save_tuning",
    "tune_postprocessing",
]

# Where a run, cv or ensemble folder keeps its tuned post-processing.
POSTPROCESS_FILE = "postprocess.json"
# A step's value to be taken from a tuning.
AUTO = "auto"
Requested = Mapping[str, Any | Literal["auto"]]


@dataclass(frozen=True)
class Tuning:
    """The chosen post-processing and what it changes.

    Attributes:
        metric: The metric maximised.
        chosen: Every step's chosen value.
        threshold_alone: The best threshold with every tuned rule off (e.g. ``--min-area 0``).
        before: Every binary metric at the default threshold without rules.
        after: Every binary metric with ``chosen``.
        images: How many images it was tuned on.
        split: The split tuned on (``oof`` for a cv folder's out-of-fold predictions).
        tta: The test-time augmentation of the predictions.
        window: The sliding window of the predictions (:func:`~lovaszseg.inference.window.window_label`),
            ``none`` for whole images.
        models: The model files (relative to the folder keeping the tuning) and weights tuned for.
        by_threshold: Each tuned rule's best value at every threshold of the grid.
        without: For each tuned rule, every binary metric when it is off and the other steps are tuned
            without it (e.g. the score without the empty gate).
    """

    metric: str
    chosen: PostProcessing
    threshold_alone: float
    before: dict[str, float]
    after: dict[str, float]
    images: int
    split: str = ""
    tta: str = "none"
    window: str = "none"
    models: tuple[str, ...] = ()
    by_threshold: dict[str, list[Any]] = field(default_factory=dict)
    without: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """The tuning as plain JSON values (what ``postprocess.json`` and ``cv.json`` hold)."""
        return {**asdict(self), "chosen": self.chosen.values(), "models": list(self.models)}

    def describe(self) -> str:
        """One line for people: what was chosen, on what."""
        return (
            f"{self.chosen.describe()} (maximising {self.metric} on {self.split or 'the scored images'}, "
            f"{self.images} images, tta {self.tta}{'' if self.window == 'none' else f', {self.window}'})"
        )


def tune_postprocessing(
    counts: ImageCounts, metric: str = "salt_score", *, fixed: Mapping[str, Any] | None = None, **record: Any
) -> Tuning:
    """Choose the steps not in ``fixed`` (threshold on the grid, min-area, ...) that together maximise ``metric``.

    Args:
        counts: Per-image counts of predictions with known truth (out-of-fold, or a validation split).
        metric: ``salt_score`` (TGS), ``iou`` (dataset IoU) or ``image_iou`` (mean per-image IoU).
        fixed: Steps whose value is given (e.g. ``{"threshold": 0.5}``: tune the rules for it).
        **record: ``split``, ``tta``, ``window`` and ``models``: what the counts come from, kept with the result.

    Returns:
        :class:`Tuning`; ties go to the lower threshold and then the rule that empties least, and the
        default (threshold 0.5, no rule) is among the candidates, so ``after`` is never below
        ``before`` for ``metric``.

    Raises:
        ConfigError: an unknown metric or step, a fixed threshold off the grid, or no images.
    """
    fixed = dict(fixed or {})
    given = PostProcessing(**fixed)  # unknown steps and bad values fail here
    if not len(counts):
        raise ConfigError("no images to tune post-processing on")
    alone = metric_at_thresholds(counts.emptied(given.empties(counts)), metric)
    chosen, by_threshold, columns = _choose(counts, metric, fixed)
    without = {
        rule.name: evaluate_postprocessing(counts, _choose(counts, metric, {**fixed, rule.name: rule.default})[0])
        for rule in rule_classes()
        if rule.name in by_threshold
    }
    tuning = Tuning(
        metric,
        chosen,
        THRESHOLD_GRID[max(columns, key=lambda k: (alone[k], -k))],
        evaluate_postprocessing(counts, PostProcessing()),
        evaluate_postprocessing(counts, chosen),
        len(counts),
        by_threshold=by_threshold if "threshold" not in fixed else {},
        without=without,
    )
    return replace(tuning, **record)


def _choose(
    counts: ImageCounts, metric: str, fixed: Mapping[str, Any]
) -> tuple[PostProcessing, dict[str, list[Any]], list[int]]:
    """The best post-processing with ``fixed`` steps given, each tuned rule's value at every threshold,
    and the threshold columns that were candidates."""
    columns = len(THRESHOLD_GRID)
    rules = rule_classes()
    tuned = [rule for rule in rules if rule.name not in fixed and rule.keys(counts) is not None]
    per_column = {
        rule.name: [rule(fixed.get(rule.name, rule.default))] * columns for rule in rules if rule not in tuned
    }
    per_column |= _best_cuts(counts.emptied(_emptied(counts, per_column)), metric, tuned)
    by_threshold = {rule.name: [r.value for r in per_column[rule.name]] for rule in rules if rule.name not in fixed}
    values = metric_at_thresholds(counts.emptied(_emptied(counts, per_column)), metric)
    candidates = [grid_index(fixed["threshold"])] if "threshold" in fixed else list(range(columns))
    column = max(candidates, key=lambda k: (values[k], -k))  # the first maximum: the lowest threshold on ties
    chosen = PostProcessing(**{**fixed, "threshold": THRESHOLD_GRID[column], **_at(by_threshold, column)})
    return chosen, by_threshold, candidates


def _emptied(counts: ImageCounts, chosen: Mapping[str, list[Rule]]) -> np.ndarray:
    """``[N, T]``: the predictions that any of the rules ``chosen`` (per threshold column) empties."""
    masks = np.zeros(counts.predicted.shape, dtype=bool)
    for rules in chosen.values():
        masks |= type(rules[0]).empties_per_column(counts, rules)
    return masks


def _best_cuts(counts: ImageCounts, metric: str, tuned: list[type[Rule]]) -> dict[str, list[Rule]]:
    """Each rule of ``tuned`` at every threshold column, chosen together and exactly: over every cut of
    each rule's sorted keys (for two rules, every pair of cuts); the first maximum (the lowest values) wins."""
    if not tuned:
        return {}
    keys = [rule.keys(counts) for rule in tuned]
    cuts = [rule.cuts(np.sort(key, axis=0, kind="stable")) for rule, key in zip(tuned, keys, strict=True)]
    columns = range(counts.predicted.shape[1])
    if len(tuned) == 1:
        (valid, values), rule = cuts[0], tuned[0]
        best = np.where(valid, cut_values(counts, metric, keys[0]), -np.inf).argmax(0)
        return {rule.name: [rule(values[best[t], t].item()) for t in columns]}
    if len(tuned) > 2:
        raise AssertionError("joint tuning covers two rules; a third needs its cuts searched with theirs")
    chosen: dict[str, list[Rule]] = {rule.name: [] for rule in tuned}
    for t in columns:
        allowed = tuple(np.flatnonzero(valid[:, t]) for valid, _ in cuts)
        scores = pair_cut_values(counts, metric, (keys[0][:, t], keys[1][:, t]), allowed, t)
        pair = np.unravel_index(scores.argmax(), scores.shape)  # the first maximum: the lowest cuts
        for rule, (_, values), indices, index in zip(tuned, cuts, allowed, pair, strict=True):
            chosen[rule.name].append(rule(values[indices[index], t].item()))
    return chosen


def _at(by_threshold: Mapping[str, list[Any]], column: int) -> dict[str, Any]:
    return {name: values[column] for name, values in by_threshold.items()}


def resolve(requested: Requested, tuning: Tuning | None, where: str) -> PostProcessing:
    """The post-processing asked for, its ``auto`` values taken from ``tuning``.

    A rule asked ``auto`` with a given threshold (or none given: the default threshold) gets the value
    tuned for that threshold; a threshold asked ``auto`` gets the jointly tuned one, or the one tuned
    alone when every rule is given as off.

    Args:
        requested: ``{step: value or "auto"}``; steps left out take their defaults.
        tuning: The tuning kept for the model, or None.
        where: What the model is (for the message when ``auto`` has no tuning).

    Raises:
        ConfigError: ``auto`` without a tuning, or a rule ``auto`` at a threshold off the grid.
    """
    auto = [name for name, value in requested.items() if value == AUTO]
    if not auto:
        return PostProcessing(**requested)
    if tuning is None:
        raise ConfigError(
            f"{where} has no tuned post-processing for 'auto': tune it with lovaszseg eval on a split none of "
            "its models trained on (an ensemble of several sources: make it a folder with lovaszseg ensemble first)"
        )
    values = {name: value for name, value in requested.items() if value != AUTO}
    if "threshold" in auto:
        rules_off = all(values.get(rule.name, rule.default) == rule.default for rule in rule_classes())
        values["threshold"] = tuning.threshold_alone if rules_off and len(auto) == 1 else tuning.chosen.threshold
    values.setdefault("threshold", PostProcessing().threshold)  # a rule auto without a threshold: the default's
    threshold = PostProcessing(threshold=values["threshold"]).threshold  # checked before it is looked up
    for name in (name for name in auto if name != "threshold"):
        values[name] = _rule_for(tuning, name, threshold)
    return PostProcessing(**values)


def _rule_for(tuning: Tuning, name: str, threshold: float) -> Any:
    """The value of rule ``name`` tuned for ``threshold``."""
    if threshold == tuning.chosen.threshold:
        return getattr(tuning.chosen, name)
    if name not in tuning.by_threshold:
        raise ConfigError(
            f"{name} auto was tuned for threshold {tuning.chosen.threshold:.2f} only; use --threshold auto or "
            f"{tuning.chosen.threshold:.2f}, or tune again with lovaszseg eval"
        )
    try:
        column = grid_index(threshold)
    except ConfigError:
        raise ConfigError(
            f"{name} auto is tuned at the thresholds 0.05, 0.06, ..., 0.95; threshold {threshold} is not one of "
            "them: round it to two decimals or use --threshold auto"
        ) from None
    return tuning.by_threshold[name][column]


def save_tuning(folder: Path, tuning: Tuning) -> Path:
    """Keep a tuning in ``folder/postprocess.json`` (a run, cv or ensemble folder)."""
    with atomic_write(folder / POSTPROCESS_FILE) as handle:
        json.dump(tuning.as_record(), handle, indent=2)
    return folder / POSTPROCESS_FILE


def load_tuning(folder: Path, models: tuple[str, ...]) -> Tuning | None:
    """The tuning kept in ``folder``, if there is one and it was made for exactly these models.

    Raises:
        DataError: the file is not a tuning record.
    """
    path = folder / POSTPROCESS_FILE
    if not path.is_file():
        return None
    try:
        payload: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        # A record from before a step existed: that step at its default (which changes nothing).
        chosen = {step.name: payload["chosen"].get(step.name, step.default) for step in step_classes()}
        payload["chosen"] = PostProcessing(**chosen)
        tuning = Tuning(**{**payload, "models": tuple(payload["models"])})
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a post-processing record: {error}") from error
    return tuning if tuning.models == tuple(models) else None
