"""Binary and multi-class cross-entropy with the same ignore handling as the Lovász losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lovaszseg.losses._inputs import binary_inputs, class_weight_vector, multiclass_inputs

__all__ = ["binary_cross_entropy", "cross_entropy"]


def _masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return values.mean()
    # A batch whose pixels are all ignored gives 0 (PyTorch's own mean would give NaN).
    return (values * valid).sum() / valid.sum().clamp(min=1)


def binary_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int | None = None,
    pos_weight: float | None = None,
) -> Tensor:
    """Binary cross-entropy on logits, averaged over the valid pixels.

    Args:
        logits: Raw scores (before sigmoid).
        labels: 0/1 labels, or ``ignore_index``.
        ignore_index: Label value of pixels left out, or ``None``.
        pos_weight: Weight of the positive class (as in ``BCEWithLogitsLoss``), or ``None``.

    Returns:
        Scalar loss in float32 (float64 for float64 logits).

    Shape:
        - logits: ``[B, *S]`` or ``[B, 1, *S]``; labels: ``[B, *S]`` or ``[B, 1, *S]``.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        scores, foreground, valid = binary_inputs(logits, labels, ignore_index)
        weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=scores.dtype, device=scores.device)
        values = F.binary_cross_entropy_with_logits(
            scores, foreground.to(scores.dtype), pos_weight=weight, reduction="none"
        )
        return _masked_mean(values, valid)


def cross_entropy(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Multi-class cross-entropy on logits, averaged over the valid pixels.

    Args:
        logits: Class scores before softmax.
        labels: Class ids in ``[0, C)``, or ``ignore_index``.
        ignore_index: Label value of pixels left out, or ``None``.
        label_smoothing: As in ``torch.nn.functional.cross_entropy``.
        class_weights: One weight per class (``weight`` of ``torch.nn.functional.cross_entropy``): each
            pixel's loss is weighted by its label's class and the mean is divided by the sum of those
            weights, as PyTorch's weighted mean; ``None``: unweighted.

    Returns:
        Scalar loss in float32 (float64 for float64 logits).

    Shape:
        - logits: ``[B, C, *S]``; labels: ``[B, *S]``.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        scores, labels, valid = multiclass_inputs(logits, labels, ignore_index)
        weights = class_weight_vector(class_weights, scores)
        values = F.cross_entropy(scores, labels, weight=weights, reduction="none", label_smoothing=label_smoothing)
        if weights is None:
            return _masked_mean(values, valid)
        pixel_weights = weights[labels]
        if valid is not None:
            values, pixel_weights = values * valid, pixel_weights * valid
        return values.sum() / pixel_weights.sum().clamp(min=torch.finfo(values.dtype).tiny)
