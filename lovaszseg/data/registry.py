"""The dataset registry: each dataset class registers itself by name, with its transform preset.

A dataset is one class in one module of this package: ``ids``, ``__getitem__``, ``fold_key`` (what
cross-validation folds are stratified by) and the classmethod ``describe`` (its :class:`DatasetSpec`
from its resolved options), decorated with :func:`register_dataset`. Importing the module registers
it; ``lovaszseg/data/__init__.py`` imports every dataset module, so a name is known as soon as
``lovaszseg.data`` is. :mod:`lovaszseg.data.factory` builds and describes datasets from here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, KeysView, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from lovaszseg.data.spec import DatasetSpec
from lovaszseg.errors import ConfigError

__all__ = [
    "DATASET_NAMES",
    "Registration",
    "SegmentationDataset",
    "defaults",
    "own_options",
    "register_dataset",
    "registration",
    "unregister_dataset",
]


class SegmentationDataset(Protocol):
    """What a registered dataset class provides (besides ``__len__`` and ``__getitem__``)."""

    ids: list[str]
    spec: DatasetSpec

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> DatasetSpec: ...

    def fold_key(self, sample_id: str) -> float: ...

    def has_foreground(self, sample_id: str) -> bool: ...


@dataclass(frozen=True)
class Registration:
    """A dataset name: its class, its transform preset and the class arguments the name fixes.

    Attributes:
        name: What ``data.name`` calls it.
        dataset: The dataset class.
        transforms: The transform preset, ``transforms(train=..., **options)``.
        fixed: Class arguments the name sets and a config may not, e.g. ``binary=True`` for ``voc_binary``.
    """

    name: str
    dataset: type[SegmentationDataset]
    transforms: Callable[..., Any]
    fixed: Mapping[str, Any] = field(default_factory=dict)


_DATASETS: dict[str, Registration] = {}
# The registered names in registration order: a live view, so a dataset registered later is in it.
DATASET_NAMES: KeysView[str] = _DATASETS.keys()

_Class = TypeVar("_Class", bound=type)


def register_dataset(
    name: str, *, transforms: Callable[..., Any], fixed: Mapping[str, Any] | None = None
) -> Callable[[_Class], _Class]:
    """Class decorator: make a dataset class buildable as ``name`` (several decorators, several names).

    Args:
        name: The name configs and ``build_dataset`` use.
        transforms: Its transform preset (a function of ``train`` and keyword options).
        fixed: Class arguments the name fixes, e.g. ``{"binary": True}``.

    Returns:
        The decorator, which returns the class unchanged.

    Raises:
        AssertionError: ``name`` is registered already (a bug of the module registering it).
    """

    def register(cls: _Class) -> _Class:
        if name in _DATASETS:
            raise AssertionError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = Registration(name, cls, transforms, MappingProxyType(dict(fixed or {})))
        return cls

    return register


def unregister_dataset(name: str) -> None:
    """Forget a registered name (for a test's temporary dataset).

    Args:
        name: A registered name.

    Raises:
        ConfigError: ``name`` is not registered.
    """
    registration(name)
    del _DATASETS[name]


def registration(name: str) -> Registration:
    """What ``name`` is registered as.

    Args:
        name: A dataset name, e.g. a config's ``data.name``.

    Returns:
        Its :class:`Registration`.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return _DATASETS[name]


def defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of a dataset's ``__init__`` or of a transform preset."""
    return {
        key: parameter.default
        for key, parameter in inspect.signature(func).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def own_options(transforms: Callable[..., Any], **arguments: Any) -> dict[str, Any]:
    """A dataset's resolved options when built directly: its arguments over its preset's defaults.

    What a dataset's ``__init__`` passes to ``describe`` (``build_dataset`` describes it with every
    option it was given, the preset's included).

    Args:
        transforms: The dataset's transform preset.
        **arguments: The dataset's own arguments (every option of its ``__init__``).

    Returns:
        The options ``describe`` takes.
    """
    return {**defaults(transforms), **arguments}
