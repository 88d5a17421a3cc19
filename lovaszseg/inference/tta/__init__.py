"""Test-time augmentation: a registry of groups of invertible views, combined and merged.

A TTA setting is ``none`` or transforms joined by ``+``, with an optional merge after ``:``:
``hflip``, ``hflip+vflip``, ``d4``, ``hflip+scale=0.75,1.25:gmean``. Each transform is a group of
views with the identity among them (``hflip``: the image and its mirror; ``rot90``: the four quarter
turns; ``d4``: the eight symmetries of the square; ``scale=S,...``: the image and each rescaling); a
setting's views are every combination of one view per transform (``hflip+scale=0.75,1.25``: 6). The
model sees each view, its prediction is mapped back (``inverse``) to the images' own frame and size,
and the predictions are merged: ``mean`` (default) or ``gmean``, the geometric mean of the class
probabilities renormalised over the classes (for one sigmoid channel, of ``p`` and ``1 - p``: the
mean of the logits).

Not every transform suits every dataset (a seismic section has an up and down: on TGS only ``hflip``
is physically valid); a dataset says which are (``DatasetSpec.valid_tta``) and :func:`warn_if_invalid`
warns about the others, which are still used as asked.

Each transform is one module of this package that calls :func:`register` when imported; every module
here is imported with the package, so adding a transform is adding a file.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import pkgutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lovaszseg.errors import ConfigError, LovaszsegWarning

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads this registry for its help
    from torch import Tensor

__all__ = [
    "IDENTITY",
    "MERGES",
    "NO_TTA",
    "Tta",
    "TtaPlan",
    "TtaTransform",
    "TtaView",
    "check_tta",
    "invalid_transforms",
    "merge_probabilities",
    "register",
    "tta_names",
    "tta_plan",
    "warn_if_invalid",
]

# The setting without test-time augmentation.
NO_TTA = "none"
# A TTA setting as commands, configs and records give it (see the module's docstring).
Tta = str
# How the views' probabilities are merged; the first is the default.
MERGES = ("mean", "gmean")
_JOIN, _MERGE_MARK, _VALUES_MARK = "+", ":", "="
# Probabilities are clamped here before the logarithm of a geometric mean.
_EPS = 1e-7
# A batch's spatial size, (H, W).
Size = tuple[int, int]


@dataclass(frozen=True)
class TtaView:
    """One invertible view of ``[B, C, H, W]`` batches.

    Attributes:
        name: What it is, e.g. ``hflip`` or ``rot90x2+scale=0.75``.
        forward: Images -> the view's images.
        inverse: (The view's prediction, the images' ``(H, W)``) -> the prediction in the images' frame.
        size: The images' ``(H, W)`` -> the view's ``(H, W)`` (what a following view's inverse maps back to).
    """

    name: str
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor, Size], Tensor]
    size: Callable[[Size], Size] = lambda size: size

    def then(self, other: TtaView) -> TtaView:
        """This view followed by ``other`` (undone in the reverse order)."""
        if self is IDENTITY or other is IDENTITY:
            return other if self is IDENTITY else self

        def inverse(prediction: Tensor, size: Size) -> Tensor:
            return self.inverse(other.inverse(prediction, self.size(size)), size)

        return TtaView(
            f"{self.name}{_JOIN}{other.name}",
            lambda batch: other.forward(self.forward(batch)),
            inverse,
            lambda size: other.size(self.size(size)),
        )


IDENTITY = TtaView("identity", lambda batch: batch, lambda prediction, size: prediction)


@dataclass(frozen=True)
class TtaTransform:
    """A group of views a setting can name.

    Attributes:
        name: What ``--tta`` calls it.
        views: The views besides the identity, from the values after ``=`` (empty when it takes none).
        description: One line for the help text.
        takes_values: Whether it needs values (``scale=0.75,1.25``).
        contains: Transforms whose views are among its own (``d4``: the flips and turns), not to name with it.
    """

    name: str
    views: Callable[[tuple[float, ...]], tuple[TtaView, ...]]
    description: str
    takes_values: bool = False
    contains: tuple[str, ...] = ()


@dataclass(frozen=True)
class TtaPlan:
    """A parsed setting: the transforms named, the views besides the identity, and the merge."""

    transforms: tuple[str, ...]
    views: tuple[TtaView, ...]
    merge: str


_REGISTRY: dict[str, TtaTransform] = {}


def register(transform: TtaTransform) -> TtaTransform:
    """Make a transform available by its name (called by the module defining it)."""
    if transform.name in _REGISTRY or transform.name == NO_TTA:
        raise AssertionError(f"TTA transform {transform.name!r} is registered twice")
    _REGISTRY[transform.name] = transform
    return transform


def tta_names() -> tuple[str, ...]:
    """``none`` and each registered transform's name."""
    return (NO_TTA, *_REGISTRY)


def _values(part: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError:
        values = ()
    if not values or any(not 0 < value < float("inf") for value in values):
        raise ConfigError(f"tta {part!r}: expected positive numbers separated by commas after '='")
    return values


@functools.cache  # every batch asks; a setting's plan never changes
def tta_plan(tta: Tta) -> TtaPlan:
    """Parse a setting (see the module's docstring).

    Raises:
        ConfigError: an unknown transform or merge, a transform named twice (or inside ``d4``), or bad values.
    """
    setting, _, merge = tta.partition(_MERGE_MARK)
    merge = merge or MERGES[0]
    if merge not in MERGES:
        raise ConfigError(f"tta merge must be one of {', '.join(MERGES)}, got {merge!r} in {tta!r}")
    if setting == NO_TTA:
        return TtaPlan((), (), merge)
    names, groups = [], []
    for part in setting.split(_JOIN):
        name, marked, text = part.partition(_VALUES_MARK)
        if name not in _REGISTRY:
            raise ConfigError(
                f"tta must be {NO_TTA!r} or transforms joined by '+' from {', '.join(_REGISTRY)}; "
                f"got {part!r} in {tta!r}"
            )
        transform = _REGISTRY[name]
        if transform.takes_values != bool(marked):
            needs = f"values, e.g. {name}=0.75,1.25" if transform.takes_values else "no values"
            raise ConfigError(f"tta {part!r}: {name} takes {needs}")
        if name in names:
            raise ConfigError(f"tta {tta!r} names {name} twice")
        names.append(name)
        groups.append((IDENTITY, *transform.views(_values(part, text) if marked else ())))
    for name in names:
        if inside := [other for other in _REGISTRY[name].contains if other in names]:
            raise ConfigError(f"tta {tta!r}: {name} already holds {', '.join(inside)}")
    combined = [_combine(views) for views in itertools.product(*groups)]
    return TtaPlan(tuple(names), tuple(view for view in combined if view is not IDENTITY), merge)


def _combine(views: Sequence[TtaView]) -> TtaView:
    combined = IDENTITY
    for view in views:
        combined = combined.then(view)
    return combined


def check_tta(tta: Tta) -> Tta:
    """A valid TTA setting, unchanged.

    Raises:
        ConfigError: see :func:`tta_plan`.
    """
    tta_plan(tta)
    return tta


def invalid_transforms(tta: Tta, valid: Sequence[str] | None) -> tuple[str, ...]:
    """The transforms of a setting that are not among ``valid`` (None: every transform is valid)."""
    names = tta_plan(tta).transforms
    return () if valid is None else tuple(name for name in names if name not in valid)


def warn_if_invalid(tta: Tta, valid: Sequence[str] | None, dataset: str) -> None:
    """Warn (:class:`~lovaszseg.errors.LovaszsegWarning`) about transforms not valid on a dataset's images.

    Args:
        tta: The setting asked for; it is used as asked.
        valid: The dataset's valid transforms (``DatasetSpec.valid_tta``; None: all).
        dataset: The dataset's name, for the message.
    """
    if invalid := invalid_transforms(tta, valid):
        allowed = ", ".join(valid) if valid else "none"
        warnings.warn(
            f"tta {tta!r}: {', '.join(invalid)} is not a symmetry of {dataset} images (valid there: {allowed}); "
            "used as asked",
            LovaszsegWarning,
            stacklevel=2,
        )


def merge_probabilities(views: Sequence[Tensor], merge: str, *, class_dim: int | None = 1) -> Tensor:
    """Merge the views' probabilities (each already in the images' frame).

    Args:
        views: Probabilities of equal shape: ``[B, C, H, W]`` (one channel: sigmoid) or ``[B]``.
        merge: ``mean``, or ``gmean``: the geometric mean renormalised over the classes.
        class_dim: The class dimension; ``None`` for a sigmoid probability per element (``[B]``).
    """
    if merge == "mean" or len(views) == 1:
        return sum(views) / len(views)
    import torch

    clamped = torch.stack(views).clamp(_EPS, 1 - _EPS)
    if class_dim is None or views[0].shape[class_dim] == 1:  # sigmoid: the classes are p and 1 - p
        return torch.sigmoid((clamped.log() - clamped.neg().log1p()).mean(0))
    return torch.softmax(clamped.log().mean(0), dim=class_dim)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
