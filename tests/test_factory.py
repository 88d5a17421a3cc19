"""Tests for lovaszseg.data.factory and .registry: datasets by name, their specs, validated options."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pytest
from albumentations.pytorch import ToTensorV2
from PIL import Image
from pydantic import ValidationError
from torch.utils.data import Dataset

from lovaszseg.config import DataConfig
from lovaszseg.data import (
    DATASET_NAMES,
    DatasetSpec,
    FolderDataset,
    TGSSalt,
    VOCSegmentation,
    build_dataset,
    dataset_options,
    describe_dataset,
    register_dataset,
    tgs_transforms,
)
from lovaszseg.data.registry import own_options, unregister_dataset
from lovaszseg.errors import ConfigError

BUILT_IN = ("tgs", "voc", "voc_binary", "folder")


def _folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.ones((20, 30), np.uint8)).save(root / "masks" / f"{name}.png")
    return root


def test_names() -> None:
    assert tuple(DATASET_NAMES) == BUILT_IN


@pytest.mark.parametrize(
    ("name", "present", "absent"),
    [
        ("tgs", {"fold", "n_folds", "folds_csv", "pad_size", "resize", "shift"}, {"binary", "transform", "train"}),
        ("voc", {"mask_dir", "crop_size", "scale_range", "eval_mode"}, {"binary", "root", "split"}),
        ("voc_binary", {"mask_dir", "crop_size"}, {"binary"}),
        ("folder", {"num_classes", "ignore_index", "in_channels", "size", "val_fraction"}, {"transform"}),
    ],
)
def test_dataset_options(name: str, present: set[str], absent: set[str]) -> None:
    options = set(dataset_options(name))
    assert present <= options and not absent & options


def test_unknown_name_and_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'coco'; expected one of tgs, voc, voc_binary, folder"):
        build_dataset("coco", tmp_path, "train", train=True)
    with pytest.raises(ValueError, match=r"unknown option\(s\) binary, padsize for dataset 'voc_binary'; allowed: "):
        build_dataset("voc_binary", tmp_path, "train", train=True, padsize=3, binary=False)


def test_folder_options_reach_dataset_and_transform(tmp_path: Path) -> None:
    dataset = build_dataset(
        "folder", _folder(tmp_path), "all", train=False, in_channels=1, ignore_index=255, size_divisor=64
    )
    assert isinstance(dataset, FolderDataset) and dataset.spec.in_channels == 1 and dataset.spec.ignore_index == 255
    sample = dataset[0]
    assert sample["image"].shape == (1, 64, 64)
    assert int((sample["mask"] == 255).sum()) == 64 * 64 - 20 * 30  # ignore_index also fills the padding


def test_tgs_and_voc_from_shared(shared_dir: Path) -> None:
    tgs = build_dataset("tgs", shared_dir / "tgs", "val", train=True, fold=1, pad_size=256, hflip=1.0)
    assert isinstance(tgs, TGSSalt) and len(tgs) == 600 and tgs[0]["image"].shape == (1, 256, 256)
    voc = build_dataset("voc_binary", shared_dir / "voc", "train", train=True, crop_size=64)
    assert isinstance(voc, VOCSegmentation) and voc.spec.task == "binary" and voc.spec.num_classes == 1
    assert voc[0]["mask"].shape == (64, 64)
    assert set(voc[0]["mask"].unique().tolist()) <= {0, 1, 255}


@pytest.mark.parametrize(
    ("name", "split", "options", "expected"),
    [
        ("tgs", "all", {}, ("binary", 1, 1, None, (101, 101), None)),
        ("tgs", "all", {"resize": 202, "pad_size": 256}, ("binary", 1, 1, None, (101, 101), (202, 202))),
        ("voc", "trainval", {}, ("multiclass", 3, 21, 255, None, None)),
        ("voc_binary", "trainval", {}, ("binary", 3, 1, 255, None, None)),
        ("folder", "all", {"num_classes": 3, "in_channels": 1, "size": 32}, ("multiclass", 1, 3, None, None, (32, 32))),
    ],
)
def test_a_built_dataset_holds_the_spec_of_its_options(
    name: str, split: str, options: dict[str, Any], expected: tuple, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    fixture = {"tgs": "tiny_salt", "voc": "tiny_voc", "voc_binary": "tiny_voc"}.get(name)
    root = request.getfixturevalue(fixture) if fixture else _folder(tmp_path)
    spec = build_dataset(name, root, split, train=False, **options).spec
    assert spec == describe_dataset(name, options) and spec.name == name
    facts = (spec.task, spec.in_channels, spec.num_classes, spec.ignore_index, spec.original_size, spec.resize)
    assert facts == expected


# --- a dataset registered by a test: one class, one decorator -----------------------------------


def _square_transforms(*, train: bool, side: int = 4) -> A.Compose:
    """A tiny preset: resize to ``side`` squared, and flip when training."""
    steps: list[A.BasicTransform] = [A.Resize(height=side, width=side, interpolation=cv2.INTER_NEAREST)]
    if train:
        steps.append(A.HorizontalFlip(p=1.0))
    return A.Compose([*steps, ToTensorV2()])


class _Squares(Dataset):
    """Two flat 8x8 images; sample ``k``'s mask is class ``k % classes`` everywhere."""

    def __init__(
        self, root: str | Path, split: str = "all", *, classes: int = 3, transform: Callable[..., Any] | None = None
    ) -> None:
        self.ids = [f"{split}-0", f"{split}-1"]
        self.classes = classes
        self.transform = transform or _square_transforms(train=False)
        self.spec = self.describe(own_options(_square_transforms, classes=classes))

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> DatasetSpec:
        return DatasetSpec(
            name="squares",
            task="multiclass",
            in_channels=3,
            num_classes=options["classes"],
            ignore_index=None,
            original_size=None,
            resize=(options["side"], options["side"]),
            sample_keys=("image", "mask", "id"),
        )

    def fold_key(self, sample_id: str) -> float:
        return 0.0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = np.full((8, 8, 3), 40 * index, np.uint8)
        out = self.transform(image=image, mask=np.full((8, 8), index % self.classes, np.uint8))
        return {"image": out["image"], "mask": out["mask"].long(), "id": self.ids[index]}


@pytest.fixture
def squares() -> Iterator[str]:
    name = "squares"
    register_dataset(name, transforms=_square_transforms)(_Squares)
    yield name
    unregister_dataset(name)


def test_a_registered_class_builds_by_name_and_describes_itself(squares: str, tmp_path: Path) -> None:
    assert tuple(DATASET_NAMES) == (*BUILT_IN, squares)
    assert dataset_options(squares) == ("classes", "side")
    dataset = build_dataset(squares, tmp_path, "val", train=False, classes=5, side=6)
    assert isinstance(dataset, _Squares) and dataset.ids == ["val-0", "val-1"] and dataset.classes == 5
    assert dataset.spec == describe_dataset(squares, {"classes": 5, "side": 6})
    assert (dataset.spec.num_classes, dataset.spec.resize) == (5, (6, 6))
    sample = dataset[1]
    assert sample["image"].shape == (3, 6, 6) and sample["mask"].unique().tolist() == [1]
    assert describe_dataset(squares).num_classes == 3 and describe_dataset(squares).resize == (4, 4)


def test_a_registered_name_is_a_valid_data_config(squares: str) -> None:
    config = DataConfig(name=squares, options={"classes": 7})
    assert config.spec().num_classes == 7 and config.spec().name == squares
    with pytest.raises(ValidationError, match=r"unknown option\(s\) \['pad_size'\] for dataset 'squares'"):
        DataConfig(name=squares, options={"pad_size": 128})


@pytest.mark.parametrize("name", ["squares", "coco"])
def test_an_unregistered_name_is_an_error_naming_the_registered_ones(name: str) -> None:
    message = f"unknown dataset '{name}'; expected one of tgs, voc, voc_binary, folder"
    with pytest.raises(ValidationError, match=message + r" \["):  # nothing else listed
        DataConfig(name=name)
    with pytest.raises(ConfigError, match=message + "$"):
        describe_dataset(name)
    with pytest.raises(ConfigError, match=message + "$"):
        unregister_dataset(name)


@pytest.mark.parametrize("name", ["tgs", "voc_binary", "squares"])
def test_a_name_registers_once(squares: str, name: str) -> None:
    before = describe_dataset(name)
    with pytest.raises(AssertionError, match=f"dataset '{name}' is registered twice"):
        register_dataset(name, transforms=tgs_transforms)(TGSSalt)
    assert describe_dataset(name) == before and tuple(DATASET_NAMES) == (*BUILT_IN, squares)
