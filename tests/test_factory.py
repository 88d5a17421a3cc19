"""Tests for lovaszseg.data.factory: building datasets by name and validating options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lovaszseg.data import DATASET_NAMES, FolderDataset, TGSSalt, VOCSegmentation, build_dataset, dataset_options


def _folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.ones((20, 30), np.uint8)).save(root / "masks" / f"{name}.png")
    return root


def test_names() -> None:
    assert DATASET_NAMES == ("tgs", "voc", "voc_binary", "folder")


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
    assert isinstance(dataset, FolderDataset) and dataset.in_channels == 1 and dataset.ignore_index == 255
    sample = dataset[0]
    assert sample["image"].shape == (1, 64, 64)
    assert int((sample["mask"] == 255).sum()) == 64 * 64 - 20 * 30  # ignore_index also fills the padding


def test_tgs_and_voc_from_shared(shared_dir: Path) -> None:
    tgs = build_dataset("tgs", shared_dir / "tgs", "val", train=True, fold=1, pad_size=256, hflip=1.0)
    assert isinstance(tgs, TGSSalt) and len(tgs) == 600 and tgs[0]["image"].shape == (1, 256, 256)
    voc = build_dataset("voc_binary", shared_dir / "voc", "train", train=True, crop_size=64)
    assert isinstance(voc, VOCSegmentation) and voc.task == "binary" and voc.num_classes == 1
    assert voc[0]["mask"].shape == (64, 64)
    assert set(voc[0]["mask"].unique().tolist()) <= {0, 1, 255}
