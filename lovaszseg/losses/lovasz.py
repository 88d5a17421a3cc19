"""Lovász-hinge, Lovász-softmax and Lovász-sigmoid losses (Berman, Rannen Triki & Blaschko, CVPR 2018).

Values and gradients equal the authors' reference implementation; all images and classes are processed
in one batched pass (see ``_rows.py``) instead of a Python loop per image and class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lovaszseg.losses._inputs import binary_inputs, class_weight_vector, multiclass_inputs, multilabel_inputs
from lovaszseg.losses._rows import lovasz_row_weights

__all__ = ["HINGE_VARIANTS", "lovasz_hinge", "lovasz_sigmoid", "lovasz_softmax"]

HINGE_VARIANTS = ("relu", "elu+1")
Classes = Literal["present", "all"] | Sequence[int]


def _weighted_row_losses(
    errors: Tensor, transformed: Tensor, foreground: Tensor, valid: Tensor | None, active: Tensor | None = None
) -> Tensor:
    """``sum_k f(e)_k * w_k`` per row, with the Lovász weights ``w`` of the errors' order."""
    weights = lovasz_row_weights(errors.detach(), foreground, valid, active)
    return (transformed * weights).sum(1)


def _check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def lovasz_hinge(
    logits: Tensor,
    labels: Tensor,
    per_image: bool = True,
    ignore_index: int | None = None,
    variant: Literal["relu", "elu+1"] = "relu",
    symmetric: bool = False,
) -> Tensor:
    """Binary Lovász hinge loss: a convex surrogate of the foreground Jaccard (IoU) loss.

    The hinge errors ``1 - logit * sign`` (sign = +1 for foreground, -1 for background) are sorted in
    decreasing order and weighted by the gradient of the Lovász extension of the Jaccard loss.

    Args:
        logits: Raw scores (before sigmoid), any float dtype; half precision is computed in float32.
        labels: Binary ground truth with values 0, 1 or ``ignore_index``.
        per_image: Mean of one loss per image (``True``, as in the TGS Salt solutions) or one loss over
            all pixels of the batch (``False``). An image whose pixels are all ignored counts as 0 in
            the per-image mean, as in the reference.
        ignore_index: Label value of pixels left out (e.g. 255 for VOC void), or ``None``.
        variant: ``"relu"`` (the paper: ``relu(errors)``) or ``"elu+1"`` (``elu(errors) + 1``, smooth
            and never zero, used by the TGS Salt winners).
        symmetric: Average the loss of ``(logits, labels)`` and of ``(-logits, 1 - labels)`` so that
            background IoU is optimised too.

    Returns:
        Scalar loss in float32 (float64 for float64 logits).

    Shape:
        - logits: ``[B, *S]`` or ``[B, 1, *S]`` (``S`` any spatial dims, e.g. ``H, W``).
        - labels: ``[B, *S]`` or ``[B, 1, *S]``.
    """
    _check_choice("variant", variant, HINGE_VARIANTS)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        scores, foreground, valid = binary_inputs(logits, labels, ignore_index)
        if symmetric:
            scores = torch.cat([scores, -scores])
            foreground = torch.cat([foreground, ~foreground if valid is None else ~foreground & valid])
            valid = None if valid is None else torch.cat([valid, valid])
        if not per_image:
            halves = 2 if symmetric else 1  # one row per (original, flipped) problem
            scores, foreground = scores.reshape(halves, -1), foreground.reshape(halves, -1)
            valid = None if valid is None else valid.reshape(halves, -1)
        signs = foreground.to(scores.dtype).mul_(2.0).sub_(1.0)
        errors = scores.mul(signs).neg_().add_(1.0)  # 1 - logit * sign
        if variant == "relu":
            # Non-positive errors add nothing and sort after every positive one, so they never change
            # the weights of the others: when few errors are positive, only those are sorted.
            active = errors > 0
            if valid is not None:
                active &= valid
            row_losses = _weighted_row_losses(errors, F.relu(errors), foreground, valid, active)
        else:
            row_losses = _weighted_row_losses(errors, F.elu(errors).add_(1.0), foreground, valid)
        return row_losses.mean()


def _selected_classes(classes: Classes, num_classes: int) -> Tensor | None:
    """Boolean mask over classes for an explicit list; ``None`` for "present"/"all"."""
    if isinstance(classes, str):
        _check_choice("classes", classes, ("present", "all"))
        return None
    ids = list(classes)
    if not ids or any(not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < num_classes for c in ids):
        raise ValueError(
            f"classes must be 'present', 'all' or a non-empty list of ids in [0, {num_classes}), got {classes!r}"
        )
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[ids] = True
    return mask


def _class_presence(labels: Tensor, valid: Tensor | None, num_classes: int) -> Tensor:
    """``[B, C]`` bool: which classes occur among the valid pixels of each image (one bincount)."""
    batch = labels.shape[0]
    bins = labels if valid is None else torch.where(valid, labels, num_classes)  # void pixels: extra bin
    bins = bins + torch.arange(batch, device=labels.device)[:, None] * (num_classes + 1)
    counts = torch.bincount(bins.reshape(-1), minlength=batch * (num_classes + 1))
    return counts.view(batch, num_classes + 1)[:, :num_classes] > 0


def lovasz_softmax(
    logits: Tensor,
    labels: Tensor,
    classes: Classes = "present",
    per_image: bool = False,
    ignore_index: int | None = None,
    from_logits: bool = True,
    class_weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Multi-class Lovász-softmax loss: a surrogate of the mean (over classes) Jaccard loss.

    For each class, the errors ``|[label == c] - p_c|`` are sorted and weighted by the gradient of the
    Lovász extension of that class's Jaccard loss; the losses are averaged over the selected classes.

    Args:
        logits: Class scores; softmax is applied over dim 1 when ``from_logits`` is true, otherwise they
            must already be probabilities.
        labels: Integer class ids in ``[0, C)`` or ``ignore_index``.
        classes: ``"present"`` (classes that occur in the ground truth: of each image when
            ``per_image``, of the batch otherwise), ``"all"``, or a list of class ids (always included).
        per_image: Mean over images of each image's loss, or one loss over the whole batch.
        ignore_index: Label value of pixels left out (e.g. 255), or ``None``.
        from_logits: Whether ``logits`` are raw scores (``True``) or probabilities.
        class_weights: One weight per class: the mean over the selected classes becomes the weighted
            mean ``sum_c w_c L_c / sum_c w_c`` (the authors' suggestion for unbalanced classes); ``None``
            or equal weights: the plain mean.

    Returns:
        Scalar loss in float32 (float64 for float64 inputs). An image with no selected class (or only
        classes of weight 0) counts as 0 in the per-image mean, as in the reference.

    Shape:
        - logits: ``[B, C, *S]``.
        - labels: ``[B, *S]``.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        scores, labels, valid = multiclass_inputs(logits, labels, ignore_index)
        batch, num_classes, _ = scores.shape
        probs = scores.softmax(1) if from_logits else scores
        weights = class_weight_vector(class_weights, scores)
        listed = _selected_classes(classes, num_classes)
        if per_image:
            if listed is not None:
                selected = listed.to(probs.device).expand(batch, num_classes)
            elif classes == "all":
                selected = torch.ones(batch, num_classes, dtype=torch.bool, device=probs.device)
            else:
                selected = _class_presence(labels, valid, num_classes)
            image_ids, class_ids = selected.nonzero(as_tuple=True)
            class_probs = probs[image_ids, class_ids]  # [P, N]: one row per (image, class)
            foreground = labels[image_ids] == class_ids[:, None]
            errors = (foreground.to(class_probs.dtype) - class_probs).abs()
            row_valid = None if valid is None else valid[image_ids]
            row_losses = _weighted_row_losses(errors, errors, foreground, row_valid)
            # Unweighted: each row weighs 1, and an image's weight is its number of selected classes.
            row_weights = torch.ones_like(row_losses) if weights is None else weights[class_ids]
            zeros = torch.zeros(batch, dtype=probs.dtype, device=probs.device)
            per_image_sum = zeros.index_add(0, image_ids, row_losses * row_weights)
            per_image_weight = zeros.index_add(0, image_ids, row_weights)
            return (per_image_sum / torch.where(per_image_weight > 0, per_image_weight, 1)).mean()
        flat_valid = None if valid is None else valid.reshape(1, -1)
        if listed is not None:
            selected = listed.to(probs.device)
        elif classes == "all":
            selected = torch.ones(num_classes, dtype=torch.bool, device=probs.device)
        else:
            selected = _class_presence(labels.reshape(1, -1), flat_valid, num_classes)[0]
        class_ids = selected.nonzero().squeeze(1)
        if class_ids.numel() == 0:
            return probs.sum() * 0.0
        class_probs = probs.transpose(0, 1).reshape(num_classes, -1)[class_ids]  # [P, B*N]
        foreground = labels.reshape(1, -1) == class_ids[:, None]
        errors = (foreground.to(class_probs.dtype) - class_probs).abs()
        class_losses = _weighted_row_losses(errors, errors, foreground, flat_valid)
        if weights is None:
            return class_losses.mean()
        selected_weights = weights[class_ids]
        return (class_losses * selected_weights).sum() / selected_weights.sum().clamp(min=torch.finfo(probs.dtype).tiny)


def lovasz_sigmoid(
    logits: Tensor,
    targets: Tensor,
    per_image: bool = False,
    ignore_index: int | None = None,
) -> Tensor:
    """Multi-label Lovász loss on sigmoid probabilities, one binary problem per channel.

    Each channel is its own binary Jaccard problem with errors ``|target - sigmoid(logit)|`` (the
    Lovász-softmax error for one class); the losses are averaged over channels, never pooled across
    them. With ``C == 1`` it is the binary Lovász loss on probabilities.

    Args:
        logits: Raw scores, one independent sigmoid per channel.
        targets: 0/1 per channel, or ``ignore_index``.
        per_image: Mean over (image, channel) losses, or per channel over the whole batch.
        ignore_index: Target value of pixels left out, or ``None``.

    Returns:
        Scalar loss in float32 (float64 for float64 logits).

    Shape:
        - logits: ``[B, C, *S]``.
        - targets: ``[B, C, *S]`` (or ``[B, *S]`` when ``C == 1``).
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        scores, foreground, valid = multilabel_inputs(logits, targets, ignore_index)
        batch, channels, _ = scores.shape

        def rows(tensor: Tensor) -> Tensor:  # one row per (image, channel), or per channel over the batch
            return tensor.reshape(batch * channels, -1) if per_image else tensor.transpose(0, 1).reshape(channels, -1)

        scores, foreground = rows(scores), rows(foreground)
        valid = None if valid is None else rows(valid)
        errors = (foreground.to(scores.dtype) - scores.sigmoid()).abs()
        return _weighted_row_losses(errors, errors, foreground, valid).mean()
