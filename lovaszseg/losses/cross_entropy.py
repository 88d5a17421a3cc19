"""Binary and multi-class cross-entropy with the same ignore handling as the Lovász losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lovaszseg.losses._inputs import binary_inputs, multiclass_inputs

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
) -> Tensor:
    """Multi-class cross-entropy on logits, averaged over the valid pixels.

    Args:
        logits: Class scores before softmax.
        labels: Class ids in ``[0, C)``, or ``ignore_index``.
        ignore_index: Label value of pixels left out, or ``None``.
        label_smoothing: As in ``torch.nn.functional.cross_entropy``.

    Returns:
        Scalar loss in float32 (float64 for float64 logits).

    Shape:
        - logits: ``[B, C, *S]``; labels: ``[B, *S]``.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        scores, labels, valid = multiclass_inputs(logits, labels, ignore_index)
        values = F.cross_entropy(scores, labels, reduction="none", label_smoothing=label_smoothing)
        return _masked_mean(values, valid)
