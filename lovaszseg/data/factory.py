"""Build any dataset with its transform preset by name, from config-style keyword options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lovaszseg.data.folder import FolderDataset
from lovaszseg.data.tgs import TGSSalt
from lovaszseg.data.transforms import folder_transforms, tgs_transforms, voc_transforms
from lovaszseg.data.voc import VOCSegmentation

__all__ = ["DATASET_NAMES", "build_dataset", "build_transform", "dataset_options"]

# name -> (dataset class, transform preset, dataset arguments fixed by the name)
_REGISTRY: dict[str, tuple[type[Dataset], Callable[..., Any], dict[str, Any]]] = {
    "tgs": (TGSSalt, tgs_transforms, {}),
    "voc": (VOCSegmentation, voc_transforms, {"binary": False}),
    "voc_binary": (VOCSegmentation, voc_transforms, {"binary": True}),
    "folder": (FolderDataset, folder_transforms, {}),
}
DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)
_NOT_OPTIONS = frozenset({"self", "root", "split", "transform", "train"})


def _keywords(func: Callable[..., Any], fixed: dict[str, Any]) -> set[str]:
    return set(inspect.signature(func).parameters) - _NOT_OPTIONS - set(fixed)


def _lookup(name: str) -> tuple[type[Dataset], Callable[..., Any], dict[str, Any]]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return _REGISTRY[name]


def dataset_options(name: str) -> tuple[str, ...]:
    """Options ``build_dataset`` accepts for a dataset name.

    Args:
        name: One of ``DATASET_NAMES``.

    Returns:
        Sorted option names (dataset and transform preset arguments).

    Raises:
        ValueError: unknown name.
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
        ValueError: unknown name or option (the message lists the allowed options), or a bad value.
    """
    cls, preset, fixed = _lookup(name)
    dataset_keys, preset_keys = _keywords(cls.__init__, fixed), _keywords(preset, {})
    if unknown := sorted(set(options) - dataset_keys - preset_keys):
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; allowed: {', '.join(dataset_options(name))}"
        )
    transform = preset(train=train, **{k: v for k, v in options.items() if k in preset_keys})
    dataset_kwargs = {k: v for k, v in options.items() if k in dataset_keys}
    return cls(root, split, transform=transform, **fixed, **dataset_kwargs)


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
    _, preset, _ = _lookup(name)
    preset_keys = _keywords(preset, {})
    return preset(train=train, **{k: v for k, v in options.items() if k in preset_keys})
