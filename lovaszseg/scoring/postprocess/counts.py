"""Per-image pixel counts at every threshold of the grid: what post-processing is tuned and scored on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lovaszseg.errors import ConfigError
from lovaszseg.scoring.catalogue import BINARY_METRICS
from lovaszseg.scoring.metrics import SALT_IOU_THRESHOLDS, salt_passes
from lovaszseg.thresholds import THRESHOLD_GRID

__all__ = ["ImageCounts", "cut_values", "grid_index", "image_metric", "metric_at_thresholds", "metric_scale"]


@dataclass(frozen=True)
class ImageCounts:
    """Per-image pixel counts at every threshold of :data:`~lovaszseg.thresholds.THRESHOLD_GRID`.

    Attributes:
        intersection: ``[N, T]`` predicted-and-true foreground pixels.
        predicted: ``[N, T]`` predicted foreground pixels (decreasing along T).
        truth: ``[N]`` true foreground pixels.
        empty: ``[N]`` the empty-image head's probability that the image has foreground, or None for
            predictions without one.
    """

    intersection: np.ndarray
    predicted: np.ndarray
    truth: np.ndarray
    empty: np.ndarray | None = None

    @classmethod
    def concatenate(cls, parts: list[ImageCounts]) -> ImageCounts:
        arrays = (np.concatenate([getattr(p, name) for p in parts]) for name in ("intersection", "predicted", "truth"))
        heads = [p.empty for p in parts]
        empty = np.concatenate(heads) if heads and all(h is not None for h in heads) else None
        return cls(*arrays, empty)

    def __len__(self) -> int:
        return len(self.truth)

    def emptied(self, masks: np.ndarray) -> ImageCounts:
        """The counts with the predictions marked in ``masks`` ``[N, T]`` emptied (no predicted pixel)."""
        return ImageCounts(
            np.where(masks, 0, self.intersection), np.where(masks, 0, self.predicted), self.truth, self.empty
        )


def metric_scale(metric: str) -> int:
    """What :func:`image_metric` multiplies a per-image score by (exact integer sums for the TGS metric)."""
    return len(SALT_IOU_THRESHOLDS) if metric == "salt_score" else 1


def image_metric(metric: str, intersection: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each image's share of a mean-over-images metric, times :func:`metric_scale` (``salt_score``: its
    count of IoU thresholds passed, an integer, so that sums over images are exact; ``image_iou``: its IoU)."""
    if metric == "salt_score":
        return salt_passes(intersection, predicted, truth).astype(np.float64)
    union = (predicted + truth - intersection).astype(np.float64)
    return np.divide(intersection, union, out=np.ones_like(union), where=union > 0)


def metric_at_thresholds(counts: ImageCounts, metric: str) -> np.ndarray:
    """A binary metric of the counted predictions at every threshold of the grid, ``[T]``."""
    if metric not in BINARY_METRICS:
        raise ConfigError(f"post-processing can be tuned for {', '.join(BINARY_METRICS)}, not {metric!r}")
    truth = counts.truth[:, None]
    if metric == "iou":  # a ratio of sums over images
        union = (counts.predicted + truth - counts.intersection).sum(0).astype(np.float64)
        return np.divide(counts.intersection.sum(0), union, out=np.ones_like(union), where=union > 0)
    scores = image_metric(metric, counts.intersection, counts.predicted, np.broadcast_to(truth, counts.predicted.shape))
    return scores.sum(0) / (metric_scale(metric) * len(counts))


def grid_index(threshold: float) -> int:
    """The column of ``threshold`` in per-threshold counts (it must lie on the grid)."""
    matches = np.flatnonzero(np.isclose(THRESHOLD_GRID, threshold, rtol=0, atol=1e-9))
    if not len(matches):
        raise ConfigError(f"threshold {threshold} is not on the tuning grid 0.05, 0.06, ..., 0.95")
    return int(matches[0])


def cut_values(counts: ImageCounts, metric: str, key: np.ndarray) -> np.ndarray:
    """``[N + 1, T]``: the metric at each threshold when the ``k`` predictions of smallest ``key`` ``[N, T]``
    are emptied (ties in their stable order), for ``k = 0 .. N``: what a rule emptying below a cut scores."""
    order = np.argsort(key, axis=0, kind="stable")
    area = np.take_along_axis(counts.predicted, order, 0)
    intersection = np.take_along_axis(counts.intersection, order, 0)
    truth = counts.truth[order]
    if metric == "iou":  # a ratio of sums: emptying an image removes its intersection and its false positives
        kept_i, kept_u = intersection.sum(0), (area + truth - intersection).sum(0)
        numerator = np.vstack([kept_i[None], kept_i - np.cumsum(intersection, 0)]).astype(np.float64)
        denominator = np.vstack([kept_u[None], kept_u - np.cumsum(area - intersection, 0)]).astype(np.float64)
        return np.divide(numerator, denominator, out=np.ones_like(numerator), where=denominator > 0)
    # A mean over images: emptying an image swaps its score for the empty prediction's.
    kept = image_metric(metric, intersection, area, truth)
    empty = metric_scale(metric) * (truth == 0).astype(np.float64)
    gains = np.cumsum(empty - kept, 0)
    return (kept.sum(0) + np.vstack([np.zeros((1, kept.shape[1])), gains])) / (metric_scale(metric) * len(counts))
