"""Test-time augmentation: a registry of invertible transforms of image batches.

A TTA setting names transforms (``none``, ``hflip``, ``vflip``); the prediction is the mean of the
model's probabilities of the images and of each transformed batch, each mapped back (``inverse``) to
the images' own frame before averaging. Each transform is one module of this package that calls
:func:`register` when imported; every module here is imported with the package, so adding a
transform is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lovaszseg.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["NO_TTA", "Tta", "TtaTransform", "check_tta", "register", "tta_names", "tta_transforms"]

# The setting without test-time augmentation.
NO_TTA = "none"
# A TTA setting as commands and configs give it: ``none`` or a registered transform's name.
Tta = str


@dataclass(frozen=True)
class TtaTransform:
    """An invertible transform of ``[B, C, H, W]`` batches.

    Attributes:
        name: What ``--tta`` calls it.
        forward: Images -> transformed images.
        inverse: Predictions of transformed images -> predictions in the images' frame.
        description: One line for the help text.
    """

    name: str
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    description: str


_REGISTRY: dict[str, TtaTransform] = {}


def register(transform: TtaTransform) -> TtaTransform:
    """Make a transform available by its name (called by the module defining it)."""
    if transform.name in _REGISTRY or transform.name == NO_TTA:
        raise AssertionError(f"TTA transform {transform.name!r} is registered twice")
    _REGISTRY[transform.name] = transform
    return transform


def tta_names() -> tuple[str, ...]:
    """Every TTA setting: ``none`` and each registered transform."""
    return (NO_TTA, *_REGISTRY)


def check_tta(tta: str) -> str:
    """A valid TTA setting, unchanged.

    Raises:
        ConfigError: an unknown name.
    """
    if tta != NO_TTA and tta not in _REGISTRY:
        raise ConfigError(f"tta must be one of {', '.join(tta_names())}, got {tta!r}")
    return tta


def tta_transforms(tta: str) -> tuple[TtaTransform, ...]:
    """The transforms a TTA setting averages over (besides the images themselves)."""
    return () if check_tta(tta) == NO_TTA else (_REGISTRY[tta],)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
