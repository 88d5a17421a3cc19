"""Evidence from repeated runs: intervals over seeds and paired bootstrap differences over images.

A comparison of losses is only worth what its noise allows. :func:`mean_interval` gives a metric's mean
over seeds with a Student-t 95% interval. :func:`paired_bootstrap` gives the difference of two entries
with a percentile interval from a hierarchical bootstrap that resamples seeds and, within them, the
validation images, the same draws for both entries (paired by image and seed), so that images that
are hard for every model do not count as a difference between them.

Each metric is a function of per-image sums (:class:`ImageStatistics`): a mean over images
(``salt_score``, ``image_iou``, ``image_miou``), a ratio of sums (dataset ``iou``, ``pixel_acc``) or a
mean over classes of ratios of sums (``miou``), so one bootstrap draw is a weighted sum over images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from lovaszseg.data.io import atomic_write, require_file
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.errors import ConfigError
from lovaszseg.scoring.catalogue import BINARY_METRICS, at_best_threshold_key, threshold_of
from lovaszseg.scoring.metrics import image_iou
from lovaszseg.scoring.postprocess import ImageCounts, PostProcessing, grid_index, image_scores
from lovaszseg.thresholds import DEFAULT_THRESHOLD

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "CONFIDENCE",
    "ImageRecorder",
    "ImageStatistics",
    "Interval",
    "mean_interval",
    "paired_bootstrap",
]

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000

# How a metric follows from per-image sums: "ratio": sum(values[:, 0]) / sum(values[:, 1]) (1 when the
# denominator is 0, as the metrics engine scores two empty masks); "class_ratio": the mean over classes
# that occurred of sum(I_c) / sum(U_c), the columns being [I_0..I_C-1, U_0..U_C-1].
Aggregate = Literal["ratio", "class_ratio"]


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval (``low == high == nan`` when it cannot be had)."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0: a difference beyond the noise."""
        return bool(self.low > 0 or self.high < 0)


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of independent values (one per seed) and its Student-t interval.

    Args:
        values: One number per run.
        confidence: Coverage of the interval.

    Returns:
        :class:`Interval`; with one value its bounds are NaN (no spread to measure).
    """
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if len(data) < 2:
        return Interval(mean, float("nan"), float("nan"))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(data) - 1) * data.std(ddof=1) / np.sqrt(len(data)))
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class ImageStatistics:
    """Per-image sums from which each metric of one scored split follows.

    Attributes:
        ids: The images, in scoring order.
        values: Metric name -> ``[N, K]`` per-image sums.
        aggregates: Metric name -> how the sums give the metric (see :data:`Aggregate`).
    """

    ids: tuple[str, ...]
    values: dict[str, np.ndarray]
    aggregates: dict[str, Aggregate]

    def save(self, path: Path) -> None:
        """Write to an ``.npz`` file (atomically), e.g. beside the run it was scored from."""
        arrays = {f"values/{name}": values for name, values in self.values.items()}
        with atomic_write(path, "wb") as handle:
            np.savez(handle, ids=np.asarray(self.ids), aggregates=json.dumps(self.aggregates), **arrays)

    @classmethod
    def load(cls, path: Path) -> ImageStatistics:
        """Read what :meth:`save` wrote."""
        with np.load(require_file(path, "image statistics file"), allow_pickle=False) as data:
            values = {key.removeprefix("values/"): data[key] for key in data.files if key.startswith("values/")}
            return cls(tuple(str(i) for i in data["ids"]), values, json.loads(str(data["aggregates"])))

    def metric(self, name: str, weights: np.ndarray | None = None) -> np.ndarray:
        """The metric under image weights ``[B, N]`` (bootstrap counts), ``[B]``; unweighted: ``[1]``."""
        values = self.values[name]
        weights = np.ones((1, len(values))) if weights is None else weights
        sums = weights @ values
        if self.aggregates[name] == "ratio":
            numerator, denominator = sums[:, 0], sums[:, 1]
            return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-300), 1.0)
        intersection, union = np.split(sums, 2, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ious = np.where(union > 0, intersection / union, np.nan)
        return np.nanmean(ious, axis=1)


def _ratio_columns(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.stack([numerator, denominator], axis=1).astype(np.float64)


def _binary_statistics(counts: ImageCounts, metrics: dict[str, float]) -> dict[str, np.ndarray]:
    """Per-image sums of the binary metrics at the default threshold and at each one's best threshold."""
    values: dict[str, np.ndarray] = {}
    names = [key for metric in BINARY_METRICS for key in (metric, at_best_threshold_key(metric))]
    for name in names:
        if name not in metrics:
            continue
        metric, key = threshold_of(name)
        chosen = PostProcessing(threshold=DEFAULT_THRESHOLD if key is None else metrics[key])
        if metric == "iou":  # a ratio of sums over images, not a mean of per-image scores
            column = grid_index(chosen.threshold)
            intersection = counts.intersection[:, column]
            values[name] = _ratio_columns(intersection, counts.predicted[:, column] + counts.truth - intersection)
        else:
            values[name] = _ratio_columns(image_scores(counts, chosen, metric), np.ones(len(counts)))
    return values


@dataclass
class ImageRecorder:
    """Records per-image statistics while a split is scored: pass it as ``evaluate(on_predictions=...)``.

    Binary tasks take their per-image counts from the metrics engine's
    :meth:`~lovaszseg.scoring.engine.Scorer.image_counts`; multi-class tasks keep each image's
    per-class intersections and unions, its image mIoU and its correct and valid pixels here.
    """

    spec: DatasetSpec
    ids: list[str] = field(default_factory=list)
    statistics: ImageStatistics | None = None  # set by :meth:`finish`
    _multiclass: list[np.ndarray] = field(default_factory=list)

    def __call__(self, ids: Sequence[str], probs: Tensor, masks: Tensor, empty: Tensor | None = None) -> None:
        self.ids.extend(ids)
        if not self.spec.binary:
            self._multiclass.append(self._class_sums(probs.argmax(1), masks))

    def _class_sums(self, pred: Tensor, masks: Tensor) -> np.ndarray:
        """``[B, 2C + 3]``: per-class intersection and union, image mIoU, correct and valid pixels."""
        classes, batch = self.spec.label_classes, len(pred)
        valid = (
            masks != self.spec.ignore_index
            if self.spec.ignore_index is not None
            else torch.ones_like(masks, dtype=torch.bool)
        )
        image = torch.arange(batch, device=pred.device).view(-1, 1, 1).expand_as(pred)
        index = (image * classes + masks.long().clamp(0, classes - 1)) * classes + pred.long()
        matrix = torch.bincount(index[valid], minlength=batch * classes * classes).view(batch, classes, classes)
        matrix = matrix.double()
        intersection = matrix.diagonal(dim1=1, dim2=2)
        union = matrix.sum(1) + matrix.sum(2) - intersection
        mious = image_iou(pred, masks, self.spec.num_classes, self.spec.ignore_index)
        correct, pixels = intersection.sum(1), valid.flatten(1).sum(1).double()
        columns = [intersection, union, mious.nan_to_num(0.0)[:, None], (~mious.isnan()).double()[:, None]]
        columns += [correct[:, None], pixels[:, None]]
        return torch.cat(columns, 1).cpu().numpy()

    def finish(self, metrics: dict[str, float], counts: ImageCounts | None = None) -> ImageStatistics:
        """Set and return :attr:`statistics`: the per-image sums of every headline metric in ``metrics``.

        Args:
            metrics: What the metrics engine reported for the split (binary: the best thresholds).
            counts: Binary tasks: the scorer's per-image counts.
        """
        if self.spec.binary:
            if counts is None:
                raise AssertionError("binary statistics need the scorer's image counts")
            values = _binary_statistics(counts, metrics)
            self.statistics = ImageStatistics(tuple(self.ids), values, dict.fromkeys(values, "ratio"))
            return self.statistics
        sums = np.concatenate(self._multiclass) if self._multiclass else np.zeros((0, 2 * self.spec.label_classes + 4))
        classes = self.spec.label_classes
        values = {"miou": sums[:, : 2 * classes], "image_miou": sums[:, 2 * classes : 2 * classes + 2]}
        values["pixel_acc"] = sums[:, 2 * classes + 2 :]
        aggregates: dict[str, Aggregate] = {"miou": "class_ratio", "image_miou": "ratio", "pixel_acc": "ratio"}
        self.statistics = ImageStatistics(tuple(self.ids), values, aggregates)
        return self.statistics


def _check_paired(entry: Sequence[ImageStatistics], baseline: Sequence[ImageStatistics]) -> None:
    if len(entry) != len(baseline) or not entry:
        raise ConfigError(
            f"a paired comparison needs the same seeds on both sides, got {len(entry)} and {len(baseline)}"
        )
    for seed, (ours, theirs) in enumerate(zip(entry, baseline, strict=True)):
        if ours.ids != theirs.ids or ours.ids != entry[0].ids:
            raise ConfigError(f"run {seed} of the two entries was scored on different images: they cannot be paired")


def paired_bootstrap(
    entry: Sequence[ImageStatistics],
    baseline: Sequence[ImageStatistics],
    metric: str,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """The mean over seeds of ``metric(entry) - metric(baseline)`` with a paired bootstrap interval.

    Each draw resamples the seeds with replacement and the images with replacement (the same images for
    every seed), and takes the difference of the two entries on exactly those runs and images.

    Args:
        entry: One :class:`ImageStatistics` per seed.
        baseline: The baseline's, in the same seed order, scored on the same images.
        metric: A metric both hold.
        samples: Bootstrap draws.
        confidence: Coverage of the percentile interval.
        seed: Seed of the draws (the interval is reproducible).

    Returns:
        :class:`Interval` of the difference.
    """
    _check_paired(entry, baseline)
    rng = np.random.default_rng(seed)
    images, runs = len(entry[0].ids), len(entry)
    weights = rng.multinomial(images, np.full(images, 1.0 / images), size=samples).astype(np.float64)
    pairs = list(zip(entry, baseline, strict=True))
    differences = np.stack([ours.metric(metric, weights) - theirs.metric(metric, weights) for ours, theirs in pairs])
    picks = rng.integers(runs, size=(samples, runs)) if runs > 1 else np.zeros((samples, 1), dtype=np.int64)
    draws = differences[picks, np.arange(samples)[:, None]].mean(1)
    estimate = float(np.mean([ours.metric(metric)[0] - theirs.metric(metric)[0] for ours, theirs in pairs]))
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(draws, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high))
