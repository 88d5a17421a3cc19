"""Build a loss module from a config entry: a name, ``{name: options}`` or a weighted sum."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from lovaszseg.errors import ConfigError
from lovaszseg.losses.modules import (
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    LovaszHingeLoss,
    LovaszSigmoidLoss,
    LovaszSoftmaxLoss,
    SoftJaccardLoss,
    WeightedSumLoss,
)

__all__ = ["LOSSES", "LossSpec", "build_loss"]

LOSSES: dict[str, type[nn.Module]] = {
    "bce": BinaryCrossEntropyLoss,
    "ce": CrossEntropyLoss,
    "jaccard": SoftJaccardLoss,
    "lovasz_hinge": LovaszHingeLoss,
    "lovasz_softmax": LovaszSoftmaxLoss,
    "lovasz_sigmoid": LovaszSigmoidLoss,
}

LossSpec = str | Mapping[str, Any]


def _options_of(cls: type[nn.Module]) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


def _build_term(name: str, options: Mapping[str, Any], ignore_index: int | None, num_classes: int | None) -> nn.Module:
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    cls = LOSSES[name]
    allowed = _options_of(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"loss {name!r} has no option {unknown}; its options are {allowed}")
    kwargs = dict(options)
    if "ignore_index" in allowed:
        kwargs.setdefault("ignore_index", ignore_index)
    try:
        module = cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"loss {name!r}: {error}") from None
    weights = getattr(module, "class_weights", None)
    if num_classes is not None and weights is not None and len(weights) != num_classes:
        raise ConfigError(
            f"loss {name!r}: class_weights has {len(weights)} weights but the data has {num_classes} classes"
        )
    return module


def _weight_and_options(name: str, value: Any) -> tuple[float, dict[str, Any]]:
    """``0.5`` → weight 0.5; ``{weight: 0.5, per_image: true}`` → weight and options; ``None`` → 1."""
    if value is None:
        return 1.0, {}
    if isinstance(value, bool) or not isinstance(value, int | float | Mapping):
        raise ConfigError(f"loss {name!r}: expected a weight (number) or a mapping of options, got {value!r}")
    if isinstance(value, Mapping):
        options = dict(value)
        weight = options.pop("weight", 1.0)
    else:
        weight, options = value, {}
    # A negative weight would maximise the loss; NaN or infinity would poison every step.
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
        raise ConfigError(f"loss {name!r}: weight must be a finite number >= 0, got {weight!r}")
    return float(weight), options


def build_loss(spec: LossSpec, ignore_index: int | None = None, num_classes: int | None = None) -> nn.Module:
    """Turn a loss spec from a config into a module called as ``loss(logits, labels)``.

    Args:
        spec: ``"lovasz_hinge"``; ``{"lovasz_hinge": {"per_image": True}}``; a weighted sum
            ``{"bce": 0.5, "lovasz_hinge": 0.5}`` or ``{"bce": {"weight": 0.5}, "lovasz_hinge": {...}}``.
        ignore_index: Default ignore value for every term that takes one (a term's own option wins).
        num_classes: The data's classes, to check each term's ``class_weights`` against (``None``: unchecked).

    Returns:
        The loss module; a :class:`WeightedSumLoss` when the spec has several terms or a weight ≠ 1.

    Raises:
        ConfigError: Unknown loss name or option, a bad option value or weight, ``class_weights`` of
            another length than ``num_classes``, or a malformed spec; the message lists what is allowed.
    """
    if isinstance(spec, str):
        return _build_term(spec, {}, ignore_index, num_classes)
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(
            f"a loss spec is a name or a non-empty mapping of names; got {spec!r} (losses: {sorted(LOSSES)})"
        )
    terms = {}
    for name, value in spec.items():
        weight, options = _weight_and_options(name, value)
        terms[name] = (weight, _build_term(name, options, ignore_index, num_classes))
    if len(terms) == 1:
        ((weight, module),) = terms.values()
        if weight == 1.0:
            return module
    return WeightedSumLoss(terms)
