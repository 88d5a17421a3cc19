"""Thin ``nn.Module`` wrappers around the functional losses, for configs and training loops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from torch import Tensor, nn

from lovaszseg.losses.constants import BINARY_MODE, MULTICLASS_MODE
from lovaszseg.losses.cross_entropy import binary_cross_entropy, cross_entropy
from lovaszseg.losses.jaccard import soft_jaccard
from lovaszseg.losses.lovasz import HINGE_VARIANTS, lovasz_hinge, lovasz_sigmoid, lovasz_softmax

__all__ = [
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "LovaszHingeLoss",
    "LovaszSigmoidLoss",
    "LovaszSoftmaxLoss",
    "SoftJaccardLoss",
    "WeightedSumLoss",
]


class LovaszHingeLoss(nn.Module):
    """Binary Lovász hinge loss; see :func:`lovaszseg.losses.lovasz_hinge` for the arguments."""

    def __init__(
        self,
        per_image: bool = True,
        ignore_index: int | None = None,
        variant: Literal["relu", "elu+1"] = "relu",
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        if variant not in HINGE_VARIANTS:
            raise ValueError(f"variant must be one of {list(HINGE_VARIANTS)}, got {variant!r}")
        self.per_image, self.ignore_index, self.variant, self.symmetric = per_image, ignore_index, variant, symmetric

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return lovasz_hinge(logits, labels, self.per_image, self.ignore_index, self.variant, self.symmetric)


class LovaszSoftmaxLoss(nn.Module):
    """Multi-class Lovász-softmax loss; see :func:`lovaszseg.losses.lovasz_softmax` for the arguments."""

    def __init__(
        self,
        classes: Literal["present", "all"] | Sequence[int] = "present",
        per_image: bool = False,
        ignore_index: int | None = None,
        from_logits: bool = True,
    ) -> None:
        super().__init__()
        self.classes = classes if isinstance(classes, str) else list(classes)
        self.per_image, self.ignore_index, self.from_logits = per_image, ignore_index, from_logits

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return lovasz_softmax(logits, labels, self.classes, self.per_image, self.ignore_index, self.from_logits)


class LovaszSigmoidLoss(nn.Module):
    """Multi-label Lovász loss on sigmoid outputs; see :func:`lovaszseg.losses.lovasz_sigmoid`."""

    def __init__(self, per_image: bool = False, ignore_index: int | None = None) -> None:
        super().__init__()
        self.per_image, self.ignore_index = per_image, ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return lovasz_sigmoid(logits, targets, self.per_image, self.ignore_index)


class SoftJaccardLoss(nn.Module):
    """Soft Jaccard loss; see :func:`lovaszseg.losses.soft_jaccard`.

    With ``mode=None`` the mode follows the shapes: logits with more than one channel next to
    channel-less labels are multi-class, anything else is binary.
    """

    def __init__(
        self,
        mode: Literal["binary", "multiclass"] | None = None,
        per_image: bool = False,
        smooth: float = 1.0,
        ignore_index: int | None = None,
        classes: Literal["present", "all"] = "present",
    ) -> None:
        super().__init__()
        if mode not in (None, BINARY_MODE, MULTICLASS_MODE):
            raise ValueError(f"mode must be None, 'binary' or 'multiclass', got {mode!r}")
        self.mode, self.per_image, self.smooth, self.ignore_index, self.classes = (
            mode,
            per_image,
            smooth,
            ignore_index,
            classes,
        )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        mode = self.mode
        if mode is None:
            multiclass = logits.dim() == labels.dim() + 1 and logits.shape[1] > 1
            mode = MULTICLASS_MODE if multiclass else BINARY_MODE
        return soft_jaccard(logits, labels, mode, self.per_image, self.smooth, self.ignore_index, self.classes)


class BinaryCrossEntropyLoss(nn.Module):
    """Binary cross-entropy on logits with ignore; see :func:`lovaszseg.losses.binary_cross_entropy`."""

    def __init__(self, ignore_index: int | None = None, pos_weight: float | None = None) -> None:
        super().__init__()
        self.ignore_index, self.pos_weight = ignore_index, pos_weight

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return binary_cross_entropy(logits, labels, self.ignore_index, self.pos_weight)


class CrossEntropyLoss(nn.Module):
    """Multi-class cross-entropy with ignore; see :func:`lovaszseg.losses.cross_entropy`."""

    def __init__(self, ignore_index: int | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return cross_entropy(logits, labels, self.ignore_index, self.label_smoothing)


class WeightedSumLoss(nn.Module):
    """``sum_i weight_i * loss_i(logits, labels)``, e.g. ``0.5 * BCE + 0.5 * Lovász hinge``.

    Args:
        terms: Mapping from a term name to ``(weight, loss module)``.
    """

    def __init__(self, terms: Mapping[str, tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("a weighted sum needs at least one loss")
        self.weights = {name: float(weight) for name, (weight, _) in terms.items()}
        self.losses = nn.ModuleDict({name: module for name, (_, module) in terms.items()})

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return sum(self.weights[name] * loss(logits, labels) for name, loss in self.losses.items())

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={weight:g}" for name, weight in self.weights.items())
