"""Post-processing of binary predictions, tuned on predictions whose truth is known (out of fold).

A binary mask is the probability map above a ``threshold``, emptied when its area is below
``min_area`` pixels (the rule every top TGS Salt solution used: small predicted blobs on empty
images cost a whole image's score). :func:`tune_postprocessing` chooses the two jointly to maximise a
metric from per-image pixel counts at every threshold of the grid (:class:`ImageCounts`, which the
metrics engine records), searching every distinct min-area exactly rather than a grid of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lovaszseg.data.io import atomic_write
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.scoring.metrics import SALT_IOU_THRESHOLDS, salt_passes
from lovaszseg.thresholds import DEFAULT_THRESHOLD, THRESHOLD_GRID

__all__ = [
    "POSTPROCESS_FILE",
    "POSTPROCESS_METRICS",
    "ImageCounts",
    "PostProcessing",
    "Tuning",
    "evaluate_postprocessing",
    "grid_index",
    "image_scores",
    "load_tuning",
    "save_tuning",
    "tune_postprocessing",
]

# Metrics post-processing can be tuned for (the binary metrics of the metrics engine).
POSTPROCESS_METRICS = ("salt_score", "iou", "image_iou")
# Where a run, cv or ensemble folder keeps its tuned post-processing.
POSTPROCESS_FILE = "postprocess.json"


@dataclass(frozen=True)
class PostProcessing:
    """How probabilities become a binary mask.

    Attributes:
        threshold: A pixel is foreground when its probability is above it.
        min_area: A mask with fewer foreground pixels than this is emptied (0: never).
    """

    threshold: float = DEFAULT_THRESHOLD
    min_area: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise ConfigError(f"threshold must be a probability in [0, 1], got {self.threshold!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be a probability in [0, 1], got {self.threshold!r}")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, int | np.integer) or self.min_area < 0:
            raise ConfigError(f"min_area must be a non-negative number of pixels, got {self.min_area!r}")

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """The mask ``[H, W]`` (bool) of a foreground probability map ``[H, W]``."""
        mask = probabilities > self.threshold
        return mask if np.count_nonzero(mask) >= self.min_area else np.zeros_like(mask)


@dataclass(frozen=True)
class ImageCounts:
    """Per-image pixel counts at every threshold of :data:`~lovaszseg.thresholds.THRESHOLD_GRID`.

    Attributes:
        intersection: ``[N, T]`` predicted-and-true foreground pixels.
        predicted: ``[N, T]`` predicted foreground pixels (decreasing along T).
        truth: ``[N]`` true foreground pixels.
    """

    intersection: np.ndarray
    predicted: np.ndarray
    truth: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[ImageCounts]) -> ImageCounts:
        return cls(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in ("intersection", "predicted", "truth"))
        )

    def __len__(self) -> int:
        return len(self.truth)


@dataclass(frozen=True)
class Tuning:
    """The chosen post-processing and what it changes.

    Attributes:
        metric: The metric maximised.
        chosen: The threshold and min-area chosen.
        threshold_alone: The best threshold when no min-area rule is applied (``--min-area 0``).
        before: Every binary metric at the default threshold without min-area.
        after: Every binary metric with ``chosen``.
        images: How many images it was tuned on.
    """

    metric: str
    chosen: PostProcessing
    threshold_alone: float
    before: dict[str, float]
    after: dict[str, float]
    images: int
    split: str = ""
    tta: str = "none"
    models: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for people: what was chosen, on what."""
        return (
            f"threshold {self.chosen.threshold:.2f}, min-area {self.chosen.min_area} px "
            f"(maximising {self.metric} on {self.split or 'the scored images'}, {self.images} images, tta {self.tta})"
        )


def save_tuning(folder: Path, tuning: Tuning) -> Path:
    """Keep a tuning in ``folder/postprocess.json`` (a run, cv or ensemble folder)."""
    payload = {**asdict(tuning), "models": list(tuning.models)}
    with atomic_write(folder / POSTPROCESS_FILE) as handle:
        json.dump(payload, handle, indent=2)
    return folder / POSTPROCESS_FILE


def load_tuning(folder: Path, models: tuple[str, ...]) -> Tuning | None:
    """The tuning kept in ``folder``, if there is one and it was made for exactly these model files.

    Raises:
        DataError: the file is not a tuning record.
    """
    path = folder / POSTPROCESS_FILE
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        payload["chosen"] = PostProcessing(float(payload["chosen"]["threshold"]), int(payload["chosen"]["min_area"]))
        tuning = Tuning(**{**payload, "models": tuple(payload["models"])})
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a post-processing record: {error}") from error
    return tuning if tuning.models == tuple(models) else None


def _image_scores(metric: str, intersection: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each image's share of an additive metric, times :func:`_scale` (``salt_score``: its count of IoU
    thresholds passed, an integer, so that sums over images are exact; ``image_iou``: its IoU)."""
    if metric == "salt_score":
        return salt_passes(intersection, predicted, truth).astype(np.float64)
    union = (predicted + truth - intersection).astype(np.float64)
    return np.divide(intersection, union, out=np.ones_like(union), where=union > 0)


def _scale(metric: str) -> int:
    return len(SALT_IOU_THRESHOLDS) if metric == "salt_score" else 1


def _scores(counts: ImageCounts, metric: str, emptied: np.ndarray) -> np.ndarray:
    """The metric at every threshold ``[T]`` when the images marked in ``emptied`` ``[N, T]`` are predicted empty."""
    truth = counts.truth[:, None]
    intersection = np.where(emptied, 0, counts.intersection)
    predicted = np.where(emptied, 0, counts.predicted)
    if metric == "iou":
        union = (predicted + truth - intersection).sum(0).astype(np.float64)
        return np.divide(intersection.sum(0), union, out=np.ones_like(union), where=union > 0)
    scores = _image_scores(metric, intersection, predicted, np.broadcast_to(truth, predicted.shape))
    return scores.sum(0) / (_scale(metric) * len(counts))


def evaluate_postprocessing(counts: ImageCounts, chosen: PostProcessing) -> dict[str, float]:
    """Every binary metric of the counted images under ``chosen`` (its threshold must be on the grid)."""
    column = grid_index(chosen.threshold)
    emptied = counts.predicted < chosen.min_area
    return {metric: float(_scores(counts, metric, emptied)[column]) for metric in POSTPROCESS_METRICS}


def image_scores(counts: ImageCounts, chosen: PostProcessing, metric: str = "salt_score") -> np.ndarray:
    """Each image's score ``[N]`` under ``chosen`` (``salt_score`` or ``image_iou``: metrics that are
    means over images), e.g. for paired comparisons of two models image by image."""
    if metric not in ("salt_score", "image_iou"):
        raise ConfigError(f"per-image scores exist for salt_score and image_iou, not {metric!r}")
    column = grid_index(chosen.threshold)
    emptied = counts.predicted[:, column] < chosen.min_area
    intersection = np.where(emptied, 0, counts.intersection[:, column])
    predicted = np.where(emptied, 0, counts.predicted[:, column])
    return _image_scores(metric, intersection, predicted, counts.truth) / _scale(metric)


def grid_index(threshold: float) -> int:
    """The column of ``threshold`` in per-threshold counts (it must lie on the grid)."""
    matches = np.flatnonzero(np.isclose(THRESHOLD_GRID, threshold, rtol=0, atol=1e-9))
    if not len(matches):
        raise ConfigError(f"threshold {threshold} is not on the tuning grid 0.05, 0.06, ..., 0.95")
    return int(matches[0])


def _best_cut(counts: ImageCounts, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every threshold, the best number of smallest predictions to empty: ``(value [T], min_area [T])``,
    and the value without emptying any ``[T]``.

    Images are sorted by predicted area; emptying the ``k`` smallest is a min-area rule only where the
    ``k``-th and ``k+1``-th areas differ, so only those cuts (and ``k = 0``) are candidates.
    """
    n = len(counts)
    order = np.argsort(counts.predicted, axis=0, kind="stable")
    area = np.take_along_axis(counts.predicted, order, 0)
    intersection = np.take_along_axis(counts.intersection, order, 0)
    truth = counts.truth[order]
    if metric == "iou":  # a ratio of sums: emptying an image removes its intersection and its false positives
        kept_i, kept_u = intersection.sum(0), (area + truth - intersection).sum(0)
        cut_i = kept_i - np.cumsum(intersection, 0)
        cut_u = kept_u - np.cumsum(area - intersection, 0)
        numerator = np.vstack([kept_i[None], cut_i]).astype(np.float64)
        denominator = np.vstack([kept_u[None], cut_u]).astype(np.float64)
        values = np.divide(numerator, denominator, out=np.ones_like(numerator), where=denominator > 0)
    else:  # a mean over images: emptying an image swaps its score for the empty prediction's
        kept = _image_scores(metric, intersection, area, truth)
        empty = _scale(metric) * (truth == 0).astype(np.float64)  # an empty prediction's score
        gains = np.cumsum(empty - kept, 0)
        values = (kept.sum(0) + np.vstack([np.zeros((1, kept.shape[1])), gains])) / (_scale(metric) * n)
    valid = np.vstack(
        [np.ones((1, area.shape[1]), bool), np.vstack([area[1:] != area[:-1], np.ones((1, area.shape[1]), bool)])]
    )
    values = np.where(valid, values, -np.inf)
    best = values.argmax(0)  # the first maximum: the smallest min-area on ties
    columns = np.arange(area.shape[1])
    min_area = np.where(best > 0, area[np.maximum(best - 1, 0), columns] + 1, 0)
    return values[best, columns], min_area, values[0]


def tune_postprocessing(counts: ImageCounts, metric: str = "salt_score", **record: str | tuple[str, ...]) -> Tuning:
    """Choose the threshold (on the grid) and the min-area that together maximise ``metric``.

    Args:
        counts: Per-image counts of predictions with known truth (out-of-fold, or a validation split).
        metric: ``salt_score`` (TGS), ``iou`` (dataset IoU) or ``image_iou`` (mean per-image IoU).
        **record: ``split``, ``tta`` and ``models``: what the counts come from, kept with the result.

    Returns:
        :class:`Tuning`; ties go to the lower threshold and then the smaller min-area, and the
        default (threshold 0.5, no min-area) is among the candidates, so ``after`` is never below
        ``before`` for ``metric``.

    Raises:
        ConfigError: an unknown metric, or no images.
    """
    if metric not in POSTPROCESS_METRICS:
        raise ConfigError(f"post-processing can be tuned for {', '.join(POSTPROCESS_METRICS)}, not {metric!r}")
    if not len(counts):
        raise ConfigError("no images to tune post-processing on")
    values, min_areas, alone = _best_cut(counts, metric)
    column = int(values.argmax())
    chosen = PostProcessing(THRESHOLD_GRID[column], int(min_areas[column]))
    before = evaluate_postprocessing(counts, PostProcessing())
    after = evaluate_postprocessing(counts, chosen)
    tuning = Tuning(metric, chosen, THRESHOLD_GRID[int(alone.argmax())], before, after, len(counts))
    return replace(tuning, **record)
