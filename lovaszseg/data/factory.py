"""Build any dataset with its transform preset by name, from config-style keyword options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lovaszseg.data.folder import FolderDataset
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.data.tgs import TGS_ORIGINAL_SIZE, TGSSalt
from lovaszseg.data.transforms import VOC_IGNORE_INDEX, folder_transforms, tgs_transforms, voc_transforms
from lovaszseg.data.voc import VOC_CLASSES, VOCSegmentation
from lovaszseg.errors import ConfigError

__all__ = [
    "DATASET_NAMES",
    "build_dataset",
    "build_transform",
    "dataset_options",
    "describe_dataset",
    "transform_options",
]

_LABELLED = ("image", "mask", "id")


def _tgs_spec(options: dict[str, Any]) -> DatasetSpec:
    resize = options["resize"]
    return DatasetSpec(
        "tgs", "binary", 1, 1, None, TGS_ORIGINAL_SIZE, (resize, resize) if resize else None, (*_LABELLED, "depth")
    )


def _voc_spec(options: dict[str, Any]) -> DatasetSpec:
    if options["binary"]:
        return DatasetSpec(
            "voc_binary", "binary", 3, 1, VOC_IGNORE_INDEX, None, None, _LABELLED, labelled_split="trainval"
        )
    return DatasetSpec(
        "voc", "multiclass", 3, len(VOC_CLASSES), VOC_IGNORE_INDEX, None, None, _LABELLED, VOC_CLASSES, "trainval"
    )


def _folder_spec(options: dict[str, Any]) -> DatasetSpec:
    classes, size = options["num_classes"], options["size"]
    binary = classes == 2
    return DatasetSpec(
        "folder",
        "binary" if binary else "multiclass",
        options["in_channels"],
        1 if binary else classes,
        options["ignore_index"],
        None,
        (size, size) if size else None,
        (*_LABELLED, "size"),
    )


# name -> (dataset class, transform preset, dataset arguments fixed by the name, its spec from its options)
_REGISTRY: dict[
    str, tuple[type[Dataset], Callable[..., Any], dict[str, Any], Callable[[dict[str, Any]], DatasetSpec]]
] = {
    "tgs": (TGSSalt, tgs_transforms, {}, _tgs_spec),
    "voc": (VOCSegmentation, voc_transforms, {"binary": False}, _voc_spec),
    "voc_binary": (VOCSegmentation, voc_transforms, {"binary": True}, _voc_spec),
    "folder": (FolderDataset, folder_transforms, {}, _folder_spec),
}
DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)
_NOT_OPTIONS = frozenset({"self", "root", "split", "transform", "train"})


def _keywords(func: Callable[..., Any], fixed: dict[str, Any]) -> set[str]:
    return set(inspect.signature(func).parameters) - _NOT_OPTIONS - set(fixed)


def _lookup(name: str) -> tuple[type[Dataset], Callable[..., Any], dict[str, Any]]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return _REGISTRY[name][:3]


def _defaults(func: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(func).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def describe_dataset(name: str, options: dict[str, Any] | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of a dataset name and its options, without reading any file.

    Args:
        name: One of ``DATASET_NAMES``.
        options: The config's ``data.options`` (unset options take the dataset's and preset's defaults).

    Returns:
        Task, channels, classes, ignore index, original size, resize and sample keys.

    Raises:
        ConfigError: unknown name or option.
    """
    cls, preset, fixed = _lookup(name)
    options = dict(options or {})
    _check_options(name, options)
    resolved = {**_defaults(preset), **_defaults(cls.__init__), **options, **fixed}
    return _REGISTRY[name][3](resolved)


def _check_options(name: str, options: dict[str, Any]) -> None:
    if unknown := sorted(set(options) - set(dataset_options(name))):
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; allowed: {', '.join(dataset_options(name))}"
        )


def dataset_options(name: str) -> tuple[str, ...]:
    """Options ``build_dataset`` accepts for a dataset name.

    Args:
        name: One of ``DATASET_NAMES``.

    Returns:
        Sorted option names (dataset and transform preset arguments).

    Raises:
        ConfigError: unknown name.
    """
    cls, preset, fixed = _lookup(name)
    return tuple(sorted(_keywords(cls.__init__, fixed) | _keywords(preset, {})))


def build_dataset(name: str, root: str | Path, split: str, *, train: bool, **options: Any) -> Dataset:
    """Build a dataset and its transform preset.

    Each option goes to the dataset class, the preset, or both when both take it (e.g. ``ignore_index``
    and ``in_channels`` for ``"folder"``), so a YAML ``data:`` section can be passed through as is.

    Args:
        name: ``"tgs"`` (``TGSSalt`` + ``tgs_transforms``), ``"voc"`` / ``"voc_binary"``
            (``VOCSegmentation`` + ``voc_transforms``), or ``"folder"`` (``FolderDataset`` + ``folder_transforms``).
        root: Dataset root folder.
        split: Split name (see the dataset class).
        train: Training (augmenting) or evaluation preset.
        **options: Dataset and preset arguments, e.g. ``fold=1, pad_size=128`` for ``"tgs"``.

    Returns:
        The dataset.

    Raises:
        ConfigError: unknown name or option (the message lists the allowed options).
        DataError: missing or unusable files, or a bad value.
    """
    cls, preset, fixed = _lookup(name)
    _check_options(name, options)
    dataset_keys, preset_keys = _keywords(cls.__init__, fixed), _keywords(preset, {})
    transform = preset(train=train, **{k: v for k, v in options.items() if k in preset_keys})
    dataset_kwargs = {k: v for k, v in options.items() if k in dataset_keys}
    dataset = cls(root, split, transform=transform, **fixed, **dataset_kwargs)
    _check_matches(dataset, describe_dataset(name, options))
    return dataset


def _check_matches(dataset: Dataset, spec: DatasetSpec) -> None:
    """The dataset built must be the one its spec describes: a mismatch is a bug in the registry."""
    for field in ("task", "num_classes", "ignore_index", "in_channels", "original_size"):
        if getattr(dataset, field) != getattr(spec, field):
            raise AssertionError(
                f"{spec.name}: dataset {field} {getattr(dataset, field)!r} != spec {getattr(spec, field)!r}"
            )


def build_transform(name: str, *, train: bool, **options: Any) -> Any:
    """The transform preset a dataset name uses, from the same options (dataset-only ones are skipped).

    For predicting on a folder of images with exactly the preprocessing the model was trained with.

    Args:
        name: One of ``DATASET_NAMES``.
        train: Training (augmenting) or evaluation preset.
        **options: The config's ``data.options``.

    Returns:
        The albumentations pipeline.
    """
    return _lookup(name)[1](train=train, **transform_options(name, options))


def transform_options(name: str, options: dict[str, Any], *, resolved: bool = False) -> dict[str, Any]:
    """The options of a dataset's transform preset among ``options`` (dataset-only ones left out).

    Args:
        name: One of ``DATASET_NAMES``.
        options: The config's ``data.options``.
        resolved: Fill in the preset's defaults too, e.g. to compare two models' preprocessing.
    """
    preset = _lookup(name)[1]
    given = {k: v for k, v in options.items() if k in _keywords(preset, {})}
    return {**{k: v for k, v in _defaults(preset).items() if k != "train"}, **given} if resolved else given
