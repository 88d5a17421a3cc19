"""Per-image pixel counts at every threshold of the grid: what post-processing is tuned and scored on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lovaszseg.errors import ConfigError
from lovaszseg.scoring.catalogue import BINARY_METRICS
from lovaszseg.scoring.metrics import SALT_IOU_THRESHOLDS, salt_passes
from lovaszseg.thresholds import THRESHOLD_GRID

__all__ = [
    "ImageCounts",
    "cut_values",
    "grid_index",
    "image_metric",
    "metric_at_thresholds",
    "metric_scale",
    "pair_cut_values",
]


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


def pair_cut_values(
    counts: ImageCounts,
    metric: str,
    keys: tuple[np.ndarray, np.ndarray],
    cuts: tuple[np.ndarray, np.ndarray],
    column: int,
) -> np.ndarray:
    """``[len(cuts[0]), len(cuts[1])]``: the metric at threshold ``column`` when the ``k`` predictions of
    smallest ``keys[0]`` and the ``j`` of smallest ``keys[1]`` (``[N]`` each, ties in their stable order)
    are emptied, for ``k`` in ``cuts[0]`` and ``j`` in ``cuts[1]`` (of ``0 .. N``): what two rules emptying
    below their cuts score together (an image cut by both counts once)."""
    n = len(counts)
    intersection, area = counts.intersection[:, column], counts.predicted[:, column]
    ranks = []
    for key in keys:
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(key, kind="stable")] = np.arange(n)
        ranks.append(rank + 1)

    def removed(per_image: np.ndarray) -> np.ndarray:
        """What emptying takes away from a sum over images at the pairs of cuts: the images cut by either,
        counted once (inclusion-exclusion; those cut by both are a two-dimensional prefix sum)."""
        # Integer sums (areas, TGS passes) stay exact in half the memory; two such sums are added below.
        exact = np.issubdtype(per_image.dtype, np.integer) and np.abs(per_image).sum() < 2**30
        dtype = np.int32 if exact else np.float64
        both = np.zeros((n + 1, n + 1), dtype=dtype)
        both[ranks[0], ranks[1]] = per_image
        np.cumsum(both, axis=1, out=both)
        for row in range(1, n + 1):  # row by row: several times faster than numpy's cumsum along axis 0
            both[row] += both[row - 1]
        alone = [np.zeros(n + 1, dtype=dtype) for _ in ranks]
        for sums, rank in zip(alone, ranks, strict=True):
            sums[rank] = per_image
        first, second = (np.cumsum(sums)[cut] for sums, cut in zip(alone, cuts, strict=True))
        return first[:, None] + second[None, :] - both[np.ix_(*cuts)]

    if metric == "iou":  # a ratio of sums: emptying removes an image's intersection and its false positives
        numerator = intersection.sum() - removed(intersection).astype(np.float64)
        denominator = (area + counts.truth - intersection).sum() - removed(area - intersection).astype(np.float64)
        return np.divide(numerator, denominator, out=np.ones_like(numerator), where=denominator > 0)
    kept_scores = image_metric(metric, intersection, area, counts.truth)
    gains = metric_scale(metric) * (counts.truth == 0) - kept_scores
    if metric == "salt_score":  # whole numbers of IoU thresholds passed
        gains = gains.astype(np.int64)
    return (kept_scores.sum() + removed(gains)) / (metric_scale(metric) * n)
