"""Soft (probabilistic) Jaccard loss: ``1 - (|P∩Y| + s) / (|P∪Y| + s)`` with probabilities for ``P``."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lovaszseg.losses._inputs import binary_inputs, multiclass_inputs
from lovaszseg.losses.constants import BINARY_MODE, MULTICLASS_MODE

__all__ = ["soft_jaccard"]


def soft_jaccard(
    logits: Tensor,
    labels: Tensor,
    mode: Literal["binary", "multiclass"] = BINARY_MODE,
    per_image: bool = False,
    smooth: float = 1.0,
    ignore_index: int | None = None,
    classes: Literal["present", "all"] = "present",
    from_logits: bool = True,
) -> Tensor:
    """Soft Jaccard (IoU) loss on sigmoid (binary) or softmax (multi-class) probabilities.

    Intersection and union are sums of probabilities over the valid pixels of each image
    (``per_image``) or of the whole batch. In multi-class mode the loss is averaged over classes that
    occur in the ground truth (``classes="present"``, of each image or of the batch) or over all.

    Args:
        logits: Raw scores, or probabilities when ``from_logits`` is false.
        labels: Binary 0/1 labels (binary mode) or class ids (multi-class mode), or ``ignore_index``.
        mode: ``"binary"`` (sigmoid, one channel) or ``"multiclass"`` (softmax over dim 1).
        per_image: One loss per image, averaged, or one loss over the batch.
        smooth: Added to intersection and union; keeps empty images finite (loss 0 when both are empty).
        ignore_index: Label value of pixels left out, or ``None``.
        classes: Multi-class only: average over ``"present"`` or ``"all"`` classes.
        from_logits: Whether ``logits`` are raw scores.

    Returns:
        Scalar loss in float32 (float64 for float64 inputs).

    Shape:
        - binary: logits ``[B, *S]`` or ``[B, 1, *S]``, labels ``[B, *S]``.
        - multiclass: logits ``[B, C, *S]``, labels ``[B, *S]``.
    """
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    if classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        if mode == BINARY_MODE:
            scores, foreground, valid = binary_inputs(logits, labels, ignore_index)
            probs = (scores.sigmoid() if from_logits else scores)[:, None]  # [B, 1, N]
            truth = foreground[:, None].to(probs.dtype)
        elif mode == MULTICLASS_MODE:
            scores, labels, valid = multiclass_inputs(logits, labels, ignore_index)
            probs = scores.softmax(1) if from_logits else scores
            truth = F.one_hot(labels, probs.shape[1]).transpose(1, 2).to(probs.dtype)  # [B, C, N]
        else:
            raise ValueError(f"mode must be 'binary' or 'multiclass', got {mode!r}")
        if valid is not None:
            probs = probs * valid[:, None]
            truth = truth * valid[:, None]
        sum_dims = (2,) if per_image else (0, 2)
        intersection = (probs * truth).sum(sum_dims)
        total = (probs + truth).sum(sum_dims)
        union = total - intersection
        losses = 1.0 - (intersection + smooth) / (union + smooth).clamp_min(torch.finfo(probs.dtype).tiny)
        if mode == MULTICLASS_MODE and classes == "present":
            present = truth.sum(sum_dims) > 0
            counts = present.sum(-1)
            per_group = (losses * present).sum(-1) / counts.clamp(min=1)
            return per_group.mean()
        return losses.mean()
