"""Segmentation metrics: confusion-matrix IoU, per-image IoU, the TGS Salt score and threshold search.

Torch side (evaluation loops, any device, mergeable across processes): :class:`ConfusionMatrix` for the
VOC devkit's dataset IoU, :func:`image_iou` / :func:`binary_iou` for the paper's per-image IoU and
:class:`MeanMeter` to average them. NumPy side (whole validation sets of binary masks):
:func:`salt_score` for the TGS competition metric and :func:`best_threshold` for the probability
threshold that maximises it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from lovaszseg.thresholds import DEFAULT_THRESHOLD, THRESHOLD_GRID

__all__ = [
    "DEFAULT_THRESHOLD",
    "SALT_IOU_THRESHOLDS",
    "THRESHOLD_GRID",
    "ConfusionMatrix",
    "MeanMeter",
    "best_threshold",
    "binary_iou",
    "image_iou",
    "round_down",
    "salt_passes",
    "salt_score",
]

# The competition's IoU thresholds 0.50, 0.55, ..., 0.95, built as its reference code builds them (so
# 0.6 is 0.6000000000000001), for identical ``iou > t`` decisions.
SALT_IOU_THRESHOLDS: np.ndarray = np.arange(0.5, 1.0, 0.05)
_CHUNK_PIXELS = 1 << 16  # pixels binned at a time: keeps the temporaries in cache
_MAX_GRID_CELLS = 1 << 20  # largest lookup table for the threshold bins


def _all_reduce_sum(tensor: Tensor) -> None:
    """Sum ``tensor`` in place over all processes when torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _check_label_maps(pred: Tensor, target: Tensor) -> None:
    """Raise unless ``pred`` and ``target`` are integer tensors of one shape on one device."""
    for name, labels in (("pred", pred), ("target", target)):
        if not isinstance(labels, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"{name} must hold integer class ids, got dtype {labels.dtype}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"pred and target must be on the same device, got {pred.device} and {target.device}")


def _check_range(pred: Tensor, target: Tensor, num_classes: int) -> None:
    """Raise if a (valid-pixel) class id lies outside ``[0, num_classes)``; one device sync."""
    bad_pred = (pred < 0) | (pred >= num_classes)
    bad_target = (target < 0) | (target >= num_classes)
    if bool((bad_pred | bad_target).any()):
        name, values = ("target", target[bad_target]) if bool(bad_target.any()) else ("pred", pred[bad_pred])
        raise ValueError(
            f"{name} holds class id {int(values[0])} outside [0, {num_classes}) (and not the ignore index)"
        )


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


class ConfusionMatrix:
    """Dataset-level confusion matrix over class ids, with the VOC devkit's IoU.

    Rows are ground-truth classes, columns predicted classes; pixels whose target is ``ignore_index``
    are left out. Binary tasks use ``num_classes=2`` (background, foreground): ``iou()[1]`` is then the
    foreground "dataset IoU".

    Args:
        num_classes: Number of classes ``C``.
        ignore_index: Target value of void pixels, or ``None``.
        device: Where the counts start; they follow the tensors given to :meth:`update`.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predictions.

        Args:
            pred: Predicted class ids.
            target: True class ids or ``ignore_index``.

        Raises:
            TypeError: If either is not an integer tensor.
            ValueError: On mismatched shapes/devices or class ids outside ``[0, C)``.

        Shape:
            pred, target: ``[B, H, W]`` (any shape, the same for both).
        """
        _check_label_maps(pred, target)
        if self.ignore_index is not None:
            valid = target != self.ignore_index
            pred, target = pred[valid], target[valid]
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        _check_range(pred, target, self.num_classes)
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        self.mat = self.mat.to(counts.device)
        self.mat += counts.view(self.num_classes, self.num_classes)

    def reset(self) -> None:
        """Zero the counts."""
        self.mat.zero_()

    def reduce_from_all_processes(self) -> None:
        """Sum the counts over all processes (no-op unless torch.distributed is initialised)."""
        _all_reduce_sum(self.mat)

    def iou(self) -> Tensor:
        """Per-class IoU ``TP / (TP + FP + FN)``.

        Returns:
            float64 CPU tensor ``[C]``; NaN for classes absent from both predictions and targets.
        """
        mat = self.mat.double().cpu()
        true_positives = mat.diagonal()
        return true_positives / (mat.sum(0) + mat.sum(1) - true_positives)

    def mean_iou(self) -> float:
        """Mean of :meth:`iou` over classes that occurred (NaN when none did)."""
        return float(torch.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        """Fraction of valid pixels predicted correctly (NaN before any pixel)."""
        mat = self.mat.double().cpu()
        return float(mat.diagonal().sum() / mat.sum())

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """Plain-text table of per-class IoU (in %) followed by mean IoU and pixel accuracy.

        Args:
            class_names: One name per class; defaults to the class ids.

        Returns:
            The table, one line per class.
        """
        names = [str(i) for i in range(self.num_classes)] if class_names is None else list(class_names)
        if len(names) != self.num_classes:
            raise ValueError(f"class_names must have {self.num_classes} entries, got {len(names)}")
        width = max(len("pixel accuracy"), *(len(n) for n in names))
        lines = [f"{'class':<{width}}  IoU (%)"]
        ious = self.iou().tolist()
        lines += [f"{name:<{width}}  {100 * value:7.2f}" for name, value in zip(names, ious, strict=True)]
        lines.append(f"{'mean IoU':<{width}}  {100 * self.mean_iou():7.2f}")
        lines.append(f"{'pixel accuracy':<{width}}  {100 * self.pixel_accuracy():7.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def image_iou(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Per-image mean IoU (the paper's image-mIoU) of class-id maps.

    For each image, the IoU of every class present in its prediction or its ground truth (void pixels
    left out), averaged over those classes. With ``num_classes=2`` an empty prediction of an empty
    image scores 1 (only the background occurs, predicted perfectly). For binary tasks scored on the
    foreground alone use :func:`binary_iou`.

    Args:
        pred: Predicted class ids.
        target: True class ids or ``ignore_index``.
        num_classes: Number of classes ``C``.
        ignore_index: Target value of void pixels, or ``None``.

    Returns:
        float64 tensor ``[B]`` on the inputs' device; NaN for an image with no valid pixel.

    Raises:
        TypeError: If either input is not an integer tensor.
        ValueError: On mismatched shapes/devices or class ids outside ``[0, C)``.

    Shape:
        pred, target: ``[B, H, W]`` (or ``[B, *S]``).
    """
    num_classes = _check_num_classes(num_classes)
    _check_label_maps(pred, target)
    if pred.dim() < 2:
        raise ValueError(f"pred and target must be batched [B, H, W], got shape {tuple(pred.shape)}")
    batch = pred.shape[0]
    image = torch.arange(batch, device=pred.device).view(-1, *[1] * (pred.dim() - 1)).expand_as(pred)
    pred, target = pred.long(), target.long()
    if ignore_index is not None:
        valid = target != ignore_index
        pred, target, image = pred[valid], target[valid], image[valid]
    _check_range(pred, target, num_classes)
    # One bincount gives every image's confusion matrix.
    index = (image * num_classes + target) * num_classes + pred
    counts = torch.bincount(index.reshape(-1), minlength=batch * num_classes**2).view(batch, num_classes, num_classes)
    counts = counts.double()
    true_positives = counts.diagonal(dim1=1, dim2=2)
    union = counts.sum(1) + counts.sum(2) - true_positives
    present = union > 0
    ious = torch.where(present, true_positives / union.clamp_min(1), torch.zeros_like(union))
    return ious.sum(1) / present.sum(1)


def binary_iou(
    scores: Tensor,
    target: Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    from_logits: bool = False,
    ignore_index: int | None = None,
) -> Tensor:
    """Per-image foreground IoU of a binary task; 1 when prediction and truth are both empty.

    Args:
        scores: Probabilities (or logits with ``from_logits``), thresholded as ``p > threshold``; or
            hard 0/1 predictions as a bool/integer tensor, used as they are.
        target: 0/1 labels or ``ignore_index``.
        threshold: Probability above which a pixel is foreground.
        from_logits: Whether floating ``scores`` are logits (passed through a sigmoid first).
        ignore_index: Target value of void pixels, or ``None``.

    Returns:
        float64 tensor ``[B]`` on the inputs' device.

    Raises:
        TypeError: If ``scores`` is not a tensor or ``target`` not an integer tensor.
        ValueError: On mismatched shapes or values other than 0/1 (and the ignore index).

    Shape:
        scores: ``[B, H, W]`` or ``[B, 1, H, W]``; target: ``[B, H, W]``.
    """
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() == target.dim() + 1 and scores.shape[1] == 1:
        scores = scores.squeeze(1)
    probs = scores.sigmoid() if from_logits and scores.is_floating_point() else scores
    pred = probs > threshold if probs.is_floating_point() else probs
    _check_label_maps(pred, target)
    if pred.dim() < 2:
        raise ValueError(f"scores and target must be batched [B, H, W], got shape {tuple(pred.shape)}")
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    _check_range(pred[valid].long(), target[valid].long(), 2)
    pred, truth = (pred == 1) & valid, (target == 1) & valid
    dims = tuple(range(1, pred.dim()))
    intersection = (pred & truth).sum(dims).double()
    union = (pred | truth).sum(dims).double()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


class MeanMeter:
    """Running mean of per-image scores (e.g. :func:`image_iou`), mergeable across processes.

    NaN scores (images with nothing to score) are skipped.

    Args:
        device: Where the running sum and count start; they follow the tensors given to :meth:`update`.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.state = torch.zeros(2, dtype=torch.float64, device=device)  # sum, count

    def update(self, values: Tensor) -> None:
        """Add scores.

        Args:
            values: Scores of any shape, e.g. ``[B]``.
        """
        values = values.detach().double().reshape(-1)
        known = ~values.isnan()
        self.state = self.state.to(values.device)
        self.state += torch.stack((values[known].sum(), known.sum().double()))

    def reset(self) -> None:
        """Forget all scores."""
        self.state.zero_()

    def reduce_from_all_processes(self) -> None:
        """Sum the running sum and count over all processes (no-op unless torch.distributed is initialised)."""
        _all_reduce_sum(self.state)

    @property
    def count(self) -> int:
        """Number of scores averaged."""
        return int(self.state[1])

    def compute(self) -> float:
        """The mean score (NaN before any score)."""
        total, count = self.state.tolist()
        return total / count if count else float("nan")


def salt_passes(intersection: np.ndarray, pred_area: np.ndarray, truth_area: np.ndarray) -> np.ndarray:
    """How many of the TGS IoU thresholds each IoU exceeds, from pixel counts (broadcast together).

    Both masks empty gives IoU 1 (all 10 passed); exactly one empty gives IoU 0 (none). Counting
    passes as integers keeps averages over images exact up to one final rounding.
    """
    intersection = np.asarray(intersection, dtype=np.float64)
    union = pred_area + truth_area - intersection
    iou = np.divide(intersection, union, out=np.ones_like(intersection), where=union > 0)
    return np.count_nonzero(iou[..., None] > SALT_IOU_THRESHOLDS, axis=-1)


def _as_binary(name: str, masks: np.ndarray) -> np.ndarray:
    """Return ``masks`` as bool, or raise unless it is a bool or 0/1 integer array."""
    masks = np.asarray(masks)
    if masks.dtype == np.bool_:
        return masks
    if not np.issubdtype(masks.dtype, np.integer):
        raise TypeError(f"{name} must be a boolean or 0/1 integer array, got dtype {masks.dtype}")
    if masks.size and (masks.min() < 0 or masks.max() > 1):
        raise ValueError(f"{name} must hold only 0 and 1, found values in [{masks.min()}, {masks.max()}]")
    return masks.astype(bool)


def salt_score(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image TGS Salt competition score.

    For each image, the mean over t in 0.50, 0.55, ..., 0.95 of ``[IoU(pred, truth) > t]``, IoU in
    float64; 1 when both masks are empty, 0 when exactly one is. The competition's score is the mean.

    Args:
        pred: Predicted binary masks (bool or 0/1 integers).
        truth: True binary masks.

    Returns:
        float64 array ``[N]`` of scores in {0, 0.1, ..., 1}.

    Raises:
        TypeError: If a mask array is not boolean/integer.
        ValueError: On shapes other than matching ``[N, H, W]`` or values other than 0/1.

    Shape:
        pred, truth: ``[N, H, W]``.
    """
    pred, truth = _as_binary("pred", pred), _as_binary("truth", truth)
    if pred.ndim != 3 or pred.shape != truth.shape:
        raise ValueError(f"pred and truth must both be [N, H, W], got {pred.shape} and {truth.shape}")
    passes = salt_passes(
        np.count_nonzero(pred & truth, axis=(1, 2)),
        np.count_nonzero(pred, axis=(1, 2)),
        np.count_nonzero(truth, axis=(1, 2)),
    )
    return passes / len(SALT_IOU_THRESHOLDS)


def round_down(thresholds: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Largest ``dtype`` values <= ``thresholds``: for x of that dtype, ``x > t`` iff ``x > result``."""
    cast = thresholds.astype(dtype)
    too_big = cast.astype(np.float64) > thresholds
    cast[too_big] = np.nextafter(cast[too_big], dtype.type(-np.inf))
    return cast


def _grid(thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Lookup tables that bin values against sorted unique ``thresholds`` without a binary search.

    Values are cut into cells ``[j / s, (j + 1) / s)`` with ``s`` the smallest power of two that puts
    at most one threshold in each cell (``x * s`` and its floor are exact in floating point). A value's
    bin is then the count of thresholds in earlier cells plus one comparison with its cell's threshold.

    Returns:
        ``(scale_and_range, below, inside)``: ``[s, first cell, last cell]``, the count of thresholds
        before each cell, each cell's threshold (+inf for none); or ``None`` when no small table exists.
    """
    for exponent in range(64):
        scale = thresholds.dtype.type(2.0**exponent)
        cells = np.floor(thresholds * scale)
        if not np.isfinite(cells).all() or np.abs(cells).max() > 2.0**62 or cells[-1] - cells[0] >= _MAX_GRID_CELLS:
            return None
        if (np.diff(cells) > 0).all():
            offsets = cells.astype(np.int64) - int(cells[0])
            per_cell = np.bincount(offsets)
            inside = np.full(len(per_cell), np.inf, dtype=thresholds.dtype)
            inside[offsets] = thresholds
            below = (np.cumsum(per_cell) - per_cell).astype(np.intp)
            return np.array([scale, cells[0], cells[-1]], dtype=thresholds.dtype), below, inside
    return None


def _bin_counts(
    probs: np.ndarray, truth: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image intersection and predicted area for every threshold, in one pass over the pixels.

    Each pixel's bin is the number of thresholds strictly below its probability, so it is predicted
    at threshold ``k`` (``p > t_k``) iff its bin is > ``k``. Per-image histograms of (bin, truth) pairs
    then give every threshold's counts by a reverse cumulative sum.

    Args:
        probs: Probabilities (float32 or float64), no NaN.
        truth: Boolean masks.
        thresholds: Sorted unique thresholds of ``probs``' dtype.

    Returns:
        ``intersection [N, T]``, ``pred_area [N, T]``, ``truth_area [N]`` (int64).
    """
    num_images, num_thresholds = probs.shape[0], len(thresholds)
    pixels = probs[0].size
    probs, truth = probs.reshape(num_images, pixels), truth.reshape(num_images, pixels)
    grid = _grid(thresholds)
    bins_per_image = 2 * (num_thresholds + 1)  # (bin, truth) pairs
    histograms = np.empty((num_images, num_thresholds + 1, 2), dtype=np.int64)
    step = max(1, _CHUNK_PIXELS // max(pixels, 1))
    for start in range(0, num_images, step):
        chunk = probs[start : start + step]
        if np.isnan(chunk).any():
            bad = start + int(np.isnan(chunk).any(axis=1).argmax())
            raise ValueError(f"probs of image {bad} contain NaN")
        if grid is None:
            bins = np.searchsorted(thresholds, chunk, side="left")
        else:
            (scale, first, last), below, inside = grid
            cells = chunk * scale
            np.clip(cells, first, last, out=cells)
            np.floor(cells, out=cells)
            index = cells.astype(np.intp)
            index -= int(first)
            bins = below[index]
            bins += chunk > inside[index]
        bins *= 2
        bins += truth[start : start + step]
        bins += (np.arange(len(chunk)) * bins_per_image)[:, None]
        counts = np.bincount(bins.reshape(-1), minlength=len(chunk) * bins_per_image)
        histograms[start : start + step] = counts.reshape(len(chunk), num_thresholds + 1, 2)
    at_or_above = np.cumsum(histograms[:, ::-1], axis=1)[:, ::-1]  # [N, bin, truth]: pixels with bin >= b
    predicted = at_or_above[:, 1:]  # threshold k predicts the pixels of bin > k
    return predicted[..., 1], predicted.sum(-1), histograms[:, :, 1].sum(1)


def best_threshold(
    probs: np.ndarray,
    truth: np.ndarray,
    thresholds: np.ndarray | Sequence[float] | None = None,
    metric: Literal["salt", "iou", "image_iou"] = "salt",
) -> tuple[float, float, np.ndarray]:
    """Probability threshold maximising the TGS score, the dataset IoU or the mean image IoU.

    A pixel is foreground at threshold t when ``p > t``, compared exactly for float16/32/64 ``probs``
    (wider floats are rounded to float64 first). Every
    threshold is scored at once: each pixel is binned among the thresholds once and per-image
    histograms give all counts, so the cost barely grows with the number of thresholds.

    Args:
        probs: Foreground probabilities (any float dtype; e.g. ``tensor.cpu().numpy()``).
        truth: True binary masks (bool or 0/1 integers).
        thresholds: Candidate thresholds, in any order; default :data:`THRESHOLD_GRID`.
        metric: ``"salt"``: mean :func:`salt_score` (rounded once from the exact count of passed IoU
            thresholds); ``"iou"``: dataset foreground IoU (summed
            intersections over summed unions; 1 when all are empty); ``"image_iou"``: mean per-image
            foreground IoU (1 for an image where both masks are empty, as in :func:`binary_iou`).

    Returns:
        ``(threshold, score, scores)``: the best threshold (the first one on ties, in the given order),
        its score, and the float64 score of every threshold ``[T]`` in the given order.

    Raises:
        TypeError: If ``probs`` is not floating point or ``truth`` not boolean/integer.
        ValueError: On mismatched shapes, NaN probabilities, non-finite or empty thresholds, an unknown
            metric, or non-binary truth.

    Shape:
        probs, truth: ``[N, H, W]``.
    """
    if metric not in ("salt", "iou", "image_iou"):
        raise ValueError(f"metric must be 'salt', 'iou' or 'image_iou', got {metric!r}")
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs must be a floating-point array, got dtype {probs.dtype}")
    truth = _as_binary("truth", truth)
    if probs.ndim != 3 or probs.shape != truth.shape or not probs.size:
        raise ValueError(f"probs and truth must both be non-empty [N, H, W], got {probs.shape} and {truth.shape}")
    given = np.asarray(THRESHOLD_GRID if thresholds is None else thresholds, dtype=np.float64)
    if given.ndim != 1 or not given.size or not np.isfinite(given).all():
        raise ValueError(f"thresholds must be a non-empty 1-D array of finite numbers, got {given!r}")
    # Work in float32 for float16/float32 probabilities, with each threshold rounded down so that the
    # comparison ``p > t`` is unchanged; thresholds that collapse together share one score.
    work = np.dtype(np.float64 if probs.dtype == np.float64 else np.float32)
    unique, position = np.unique(round_down(given, work), return_inverse=True)
    intersection, pred_area, truth_area = _bin_counts(probs.astype(work, copy=False), truth, unique)
    if metric == "salt":
        passes = salt_passes(intersection, pred_area, truth_area[:, None]).sum(0)
        unique_scores = passes / (len(SALT_IOU_THRESHOLDS) * len(probs))
    elif metric == "image_iou":
        union = (pred_area + truth_area[:, None] - intersection).astype(np.float64)
        per_image = np.divide(intersection, union, out=np.ones_like(union), where=union > 0)
        unique_scores = np.ascontiguousarray(per_image.T).mean(1)  # a contiguous mean per threshold, as np.mean
    else:
        total_intersection = intersection.sum(0).astype(np.float64)
        total_union = pred_area.sum(0) + truth_area.sum() - total_intersection
        unique_scores = np.divide(
            total_intersection, total_union, out=np.ones_like(total_intersection), where=total_union > 0
        )
    scores = unique_scores[position.reshape(-1)]
    best = int(np.argmax(scores))
    return float(given[best]), float(scores[best]), scores
