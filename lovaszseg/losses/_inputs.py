"""Shape, dtype and label-value checks shared by all losses; they return flat, float views."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["binary_inputs", "class_weight_vector", "compute_dtype", "multiclass_inputs", "multilabel_inputs"]


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float64 stays float64 (exactness checks); every other float, half precision included, runs in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _check_float(name: str, tensor: Tensor) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {tensor.dtype}"
        )


def _check_labels_tensor(name: str, labels: Tensor) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_complex():
        raise TypeError(f"{name} must be an integer, bool or float tensor, got {labels.dtype}")


def _check_not_empty(kind: str, logits: Tensor, labels: Tensor, labels_name: str = "labels") -> None:
    # Otherwise an empty batch fails deep inside reshape, with a message about an ambiguous -1.
    if logits.numel() == 0:
        what = "an empty batch (batch size 0)" if logits.dim() and logits.shape[0] == 0 else "no values"
        raise ValueError(
            f"{kind} losses need at least one image with one pixel; got {what}: "
            f"logits {tuple(logits.shape)} and {labels_name} {tuple(labels.shape)}"
        )


def _valid_mask(labels: Tensor, ignore_index: int | None) -> Tensor | None:
    # None means "every pixel counts" and saves a full-size mask and the work done with it.
    return None if ignore_index is None else labels != ignore_index


def _check_binary_values(name: str, labels: Tensor, ignore_index: int | None) -> None:
    if labels.numel() == 0 or labels.dtype == torch.bool:
        return
    if ignore_index is None and not labels.is_floating_point():
        low, high = torch.aminmax(labels)  # one pass and no full-size temporaries on the common path
        if low >= 0 and high <= 1:
            return
    allowed_values = [0, 1] if ignore_index is None else [0, 1, ignore_index]
    bad = ~torch.isin(labels, torch.tensor(allowed_values, dtype=labels.dtype, device=labels.device))
    if bool(bad.any()):
        found = torch.unique(labels[bad])[:8].tolist()
        allowed = "0, 1" + ("" if ignore_index is None else f" or the ignore value {ignore_index}")
        raise ValueError(f"{name} must hold {allowed}; found {found}")


def binary_inputs(logits: Tensor, labels: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Validate binary logits and 0/1 labels and flatten them per image.

    Args:
        logits: ``[B, *S]`` or ``[B, 1, *S]`` raw scores.
        labels: ``[B, *S]`` or ``[B, 1, *S]`` with values 0, 1 or ``ignore_index``.
        ignore_index: label value excluded from the loss, or ``None``.

    Returns:
        ``(logits, foreground, valid)`` as ``[B, N]`` tensors: float logits in the compute dtype, bool
        foreground (False where ignored) and the bool mask of pixels that count (``None``: all do).
    """
    _check_float("logits", logits)
    _check_labels_tensor("labels", labels)
    _check_not_empty("binary", logits, labels)
    if logits.dim() == labels.dim() + 1 and logits.dim() >= 2 and logits.shape[1] == 1:
        logits = logits.squeeze(1)
    if labels.dim() == logits.dim() + 1 and labels.dim() >= 2 and labels.shape[1] == 1:
        labels = labels.squeeze(1)
    if logits.dim() < 1 or logits.shape != labels.shape:
        raise ValueError(
            "binary losses expect logits [B, *S] or [B, 1, *S] and labels [B, *S] of the same spatial size; "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(f"logits are on {logits.device} but labels on {labels.device}")
    batch = logits.shape[0]
    logits = logits.reshape(batch, -1).to(compute_dtype(logits))
    labels = labels.reshape(batch, -1)
    _check_binary_values("labels", labels, ignore_index)
    foreground = labels == 1  # the ignore value is never 1
    return logits, foreground, _valid_mask(labels, ignore_index)


def multiclass_inputs(logits: Tensor, labels: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Validate multi-class scores and class-id labels and flatten them per image.

    Args:
        logits: ``[B, C, *S]`` scores (logits or probabilities).
        labels: ``[B, *S]`` integer class ids in ``[0, C)`` or ``ignore_index``.
        ignore_index: label value excluded from the loss, or ``None``.

    Returns:
        ``(scores [B, C, N], labels [B, N] int64 with ignored pixels set to 0, valid [B, N] bool or
        None when every pixel counts)``.
    """
    _check_float("logits", logits)
    _check_labels_tensor("labels", labels)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class ids, got {labels.dtype}")
    _check_not_empty("multi-class", logits, labels)
    if (
        logits.dim() < 2
        or labels.dim() != logits.dim() - 1
        or logits.shape[2:] != labels.shape[1:]
        or (logits.shape[0] != labels.shape[0])
    ):
        raise ValueError(
            "multi-class losses expect logits [B, C, *S] and labels [B, *S]; "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(f"logits are on {logits.device} but labels on {labels.device}")
    batch, num_classes = logits.shape[:2]
    scores = logits.reshape(batch, num_classes, -1).to(compute_dtype(logits))
    labels = labels.reshape(batch, -1).long()
    valid = _valid_mask(labels, ignore_index)
    low, high = torch.aminmax(labels) if labels.numel() else (0, 0)
    if low < 0 or high >= num_classes:
        bad = (labels < 0) | (labels >= num_classes)
        if valid is not None:
            bad &= valid
        if bool(bad.any()):
            found = torch.unique(labels[bad])[:8].tolist()
            allowed = f"class ids 0..{num_classes - 1}" + ("" if ignore_index is None else f" or {ignore_index}")
            raise ValueError(f"labels must hold {allowed} (logits have C={num_classes}); found {found}")
    return scores, labels if valid is None else torch.where(valid, labels, 0), valid


def class_weight_vector(weights: Sequence[float] | Tensor | None, scores: Tensor) -> Tensor | None:
    """Per-class weights as a ``[C]`` tensor on the scores' device and dtype (``None``: unweighted).

    Args:
        weights: One non-negative finite weight per class of ``scores [B, C, N]``, not all zero, or ``None``.
        scores: The flattened scores (their class count, device and dtype).

    Raises:
        ValueError: a count other than the scores' classes, or a negative, non-finite or all-zero weight.
    """
    if weights is None:
        return None
    vector = torch.as_tensor(weights, dtype=scores.dtype).to(scores.device).reshape(-1)
    num_classes = scores.shape[1]
    if vector.numel() != num_classes:
        raise ValueError(f"class_weights has {vector.numel()} weights but the logits have C={num_classes} classes")
    if not bool(torch.isfinite(vector).all()) or bool((vector < 0).any()) or not bool((vector > 0).any()):
        raise ValueError(f"class_weights must be finite, >= 0 and not all 0, got {vector.tolist()}")
    return vector


def multilabel_inputs(logits: Tensor, targets: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Validate multi-label logits and per-channel 0/1 targets.

    Args:
        logits: ``[B, C, *S]`` raw scores, one independent sigmoid per channel.
        targets: ``[B, C, *S]`` with 0, 1 or ``ignore_index`` (``[B, *S]`` is accepted when ``C == 1``).
        ignore_index: target value excluded from the loss, or ``None``.

    Returns:
        ``(logits [B, C, N], foreground [B, C, N] bool, valid [B, C, N] bool or None when all count)``.
    """
    _check_float("logits", logits)
    _check_labels_tensor("targets", targets)
    _check_not_empty("multi-label", logits, targets, "targets")
    if logits.dim() >= 2 and logits.shape[1] == 1 and targets.dim() == logits.dim() - 1:
        targets = targets.unsqueeze(1)
    if logits.dim() < 2 or logits.shape != targets.shape:
        raise ValueError(
            "multi-label losses expect logits and targets of the same shape [B, C, *S]; "
            f"got logits {tuple(logits.shape)} and targets {tuple(targets.shape)}"
        )
    batch, channels = logits.shape[:2]
    logits = logits.reshape(batch, channels, -1).to(compute_dtype(logits))
    targets = targets.reshape(batch, channels, -1)
    _check_binary_values("targets", targets, ignore_index)
    return logits, targets == 1, _valid_mask(targets, ignore_index)
