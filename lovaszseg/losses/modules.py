"""Thin ``nn.Module`` wrappers around the functional losses, for configs and training loops.

Options are checked when a module is built (from a config, before any training), raising ``ConfigError``
naming the option and value; the functions check them again, as plain ``ValueError``, when called.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from torch import Tensor, nn

from lovaszseg.errors import ConfigError
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


def _flag(name: str, value: Any) -> bool:
    # A YAML string such as "false" would otherwise count as true.
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _ignore_index(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"ignore_index must be an integer label value or null, got {value!r}")
    return value


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def _number(name: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False) -> float:
    """``value`` as a float if it is a finite number from ``low`` (excluded with ``open_low``) to ``high``."""
    finite = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not finite or not (low < value if open_low else low <= value) or value > high:
        where = f"{'>' if open_low else '>='} {low:g}" + ("" if high == math.inf else f" and <= {high:g}")
        raise ConfigError(f"{name} must be a finite number {where}, got {value!r}")
    return float(value)


def _class_weights(value: Any) -> list[float] | None:
    if value is None:
        return None
    weights = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    numbers = weights and all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights)
    if not numbers or any(not math.isfinite(w) or w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(
            f"class_weights must be a list of one finite weight >= 0 per class, not all 0, or null; got {value!r}"
        )
    return [float(w) for w in weights]


def _classes(value: Any) -> str | list[int]:
    if isinstance(value, str):
        return _choice("classes", value, ("present", "all"))
    ids = list(value) if isinstance(value, Sequence) else []
    if not ids or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in ids):
        raise ConfigError(f"classes must be 'present', 'all' or a non-empty list of class ids, got {value!r}")
    return ids


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
        self.per_image, self.ignore_index = _flag("per_image", per_image), _ignore_index(ignore_index)
        self.variant, self.symmetric = _choice("variant", variant, HINGE_VARIANTS), _flag("symmetric", symmetric)

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
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.classes = _classes(classes)
        self.per_image, self.ignore_index = _flag("per_image", per_image), _ignore_index(ignore_index)
        self.from_logits = _flag("from_logits", from_logits)
        self.class_weights = _class_weights(class_weights)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return lovasz_softmax(
            logits, labels, self.classes, self.per_image, self.ignore_index, self.from_logits, self.class_weights
        )


class LovaszSigmoidLoss(nn.Module):
    """Multi-label Lovász loss on sigmoid outputs; see :func:`lovaszseg.losses.lovasz_sigmoid`."""

    def __init__(self, per_image: bool = False, ignore_index: int | None = None) -> None:
        super().__init__()
        self.per_image, self.ignore_index = _flag("per_image", per_image), _ignore_index(ignore_index)

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
        self.mode = _choice("mode", mode, (None, BINARY_MODE, MULTICLASS_MODE))
        self.per_image, self.smooth = _flag("per_image", per_image), _number("smooth", smooth, 0.0)
        self.ignore_index, self.classes = _ignore_index(ignore_index), _choice("classes", classes, ("present", "all"))

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
        self.ignore_index = _ignore_index(ignore_index)
        self.pos_weight = None if pos_weight is None else _number("pos_weight", pos_weight, 0.0, open_low=True)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return binary_cross_entropy(logits, labels, self.ignore_index, self.pos_weight)


class CrossEntropyLoss(nn.Module):
    """Multi-class cross-entropy with ignore; see :func:`lovaszseg.losses.cross_entropy`."""

    def __init__(
        self,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = _ignore_index(ignore_index)
        self.label_smoothing = _number("label_smoothing", label_smoothing, 0.0, 1.0)
        self.class_weights = _class_weights(class_weights)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return cross_entropy(logits, labels, self.ignore_index, self.label_smoothing, self.class_weights)


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
