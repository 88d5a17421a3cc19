"""Build any registered dataset with its transform preset by name, from config-style keyword options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lovaszseg.data.registry import DATASET_NAMES, Registration, defaults, registration
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.errors import ConfigError

__all__ = [
    "DATASET_NAMES",
    "build_dataset",
    "build_transform",
    "dataset_options",
    "describe_dataset",
    "transform_options",
]

_NOT_OPTIONS = frozenset({"self", "root", "split", "transform", "train"})


def _keywords(func: Callable[..., Any], fixed: Any = ()) -> set[str]:
    return set(inspect.signature(func).parameters) - _NOT_OPTIONS - set(fixed)


def _dataset_keys(entry: Registration) -> set[str]:
    return _keywords(entry.dataset.__init__, entry.fixed)


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
    entry = registration(name)
    options = dict(options or {})
    _check_options(name, options)
    resolved = {**defaults(entry.transforms), **defaults(entry.dataset.__init__), **options, **entry.fixed}
    return entry.dataset.describe(resolved)


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
    entry = registration(name)
    return tuple(sorted(_dataset_keys(entry) | _keywords(entry.transforms)))


def build_dataset(name: str, root: str | Path, split: str, *, train: bool, **options: Any) -> Dataset:
    """Build a dataset and its transform preset.

    Each option goes to the dataset class, the preset, or both when both take it (e.g. ``ignore_index``
    and ``in_channels`` for ``"folder"``), so a YAML ``data:`` section can be passed through as is.
    The dataset's ``spec`` is :func:`describe_dataset` of the same options.

    Args:
        name: One of ``DATASET_NAMES``: ``"tgs"`` (``TGSSalt`` + ``tgs_transforms``), ``"voc"`` /
            ``"voc_binary"`` (``VOCSegmentation`` + ``voc_transforms``), ``"folder"`` (``FolderDataset`` +
            ``folder_transforms``), or any other registered dataset.
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
    entry = registration(name)
    _check_options(name, options)
    transform = build_transform(name, train=train, **options)
    dataset_keys = _dataset_keys(entry)
    dataset = entry.dataset(
        root, split, transform=transform, **entry.fixed, **{k: v for k, v in options.items() if k in dataset_keys}
    )
    # The instance described itself from its own arguments; the options also say what its preset does.
    dataset.spec = describe_dataset(name, options)
    return dataset


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
    return registration(name).transforms(train=train, **transform_options(name, options))


def transform_options(name: str, options: dict[str, Any], *, resolved: bool = False) -> dict[str, Any]:
    """The options of a dataset's transform preset among ``options`` (dataset-only ones left out).

    Args:
        name: One of ``DATASET_NAMES``.
        options: The config's ``data.options``.
        resolved: Fill in the preset's defaults too, e.g. to compare two models' preprocessing.
    """
    preset = registration(name).transforms
    given = {k: v for k, v in options.items() if k in _keywords(preset)}
    return {**{k: v for k, v in defaults(preset).items() if k != "train"}, **given} if resolved else given
