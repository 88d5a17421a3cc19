"""Tests for lovaszseg.data.folder on image/mask folders generated in tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import lovaszseg.data.folder as folder_module
from lovaszseg.data import describe_dataset
from lovaszseg.data.folder import FolderDataset
from lovaszseg.data.transforms import crop_to_original
from lovaszseg.data.voc import save_palette_png
from lovaszseg.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def _make_folder(root: Path, masks: dict[str, np.ndarray], *, image_suffix: str = ".png", channels: int = 3) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for sample_id, mask in masks.items():
        shape = mask.shape if channels == 1 else (*mask.shape, 3)
        Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(
            root / "images" / f"{sample_id}{image_suffix}"
        )
        Image.fromarray(mask).save(root / "masks" / f"{sample_id}.png")
    return root


@pytest.mark.parametrize(
    ("stored", "ignore_index", "expected"),
    [
        ((0, 255), None, {0, 1}),  # 0/255 masks: 255 is foreground
        ((0, 1, 255), None, {0, 1}),
        ((0, 1, 255), 255, {0, 1, 255}),  # 255 is the ignore value: kept
        ((0, 1, 200), 200, {0, 1, 200}),
    ],
)
def test_binary_masks(tmp_path: Path, stored: tuple[int, ...], ignore_index: int | None, expected: set[int]) -> None:
    mask = np.array(stored, dtype=np.uint8).repeat(8 * 16).reshape(-1, 16)  # rows of each value
    _make_folder(tmp_path, {"a": mask})
    dataset = FolderDataset(tmp_path, num_classes=2, ignore_index=ignore_index)
    spec = dataset.spec
    assert (spec.task, spec.num_classes, spec.ignore_index) == ("binary", 1, ignore_index)
    assert spec == describe_dataset("folder", {"num_classes": 2, "ignore_index": ignore_index})
    out = crop_to_original(dataset[0]["mask"], mask.shape).numpy()
    assert dataset[0]["mask"].dtype == torch.int64
    assert set(np.unique(out).tolist()) == expected
    foreground = (mask == 1) | ((mask == 255) & (ignore_index != 255))
    np.testing.assert_array_equal(out == 1, foreground)


def test_multiclass_grayscale_jpeg_images(tmp_path: Path) -> None:
    mask = np.arange(4, dtype=np.uint8).repeat(10 * 12).reshape(40, 12)
    mask[0] = 255
    _make_folder(tmp_path, {"x": mask, "y": mask}, image_suffix=".jpg", channels=1)
    dataset = FolderDataset(tmp_path, num_classes=4, ignore_index=255, in_channels=1)
    assert (dataset.spec.task, dataset.spec.num_classes, dataset.spec.in_channels) == ("multiclass", 4, 1)
    sample = dataset[1]
    assert sample["id"] == "y" and sample["image"].shape == (1, 64, 32)
    np.testing.assert_array_equal(crop_to_original(sample["mask"], (40, 12)).numpy(), mask)
    assert int((sample["mask"] == 255).sum()) == 64 * 32 - 40 * 12 + 12  # padding is ignored


def test_train_val_holdout_is_deterministic_and_partitions(tmp_path: Path) -> None:
    _make_folder(tmp_path, {f"s{k:02d}": np.zeros((8, 8), np.uint8) for k in range(10)})
    train = FolderDataset(tmp_path, "train", val_fraction=0.3, seed=1)
    val = FolderDataset(tmp_path, "val", val_fraction=0.3, seed=1)
    assert len(val) == 3 and sorted(train.ids + val.ids) == [f"s{k:02d}" for k in range(10)]
    assert FolderDataset(tmp_path, "val", val_fraction=0.3, seed=1).ids == val.ids
    assert FolderDataset(tmp_path, "val", val_fraction=0.3, seed=2).ids != val.ids
    assert FolderDataset(tmp_path, "all").ids == [f"s{k:02d}" for k in range(10)]


def test_txt_split(tmp_path: Path) -> None:
    _make_folder(tmp_path, {k: np.zeros((8, 8), np.uint8) for k in "abc"})
    (tmp_path / "mine.txt").write_text("c\n\na\n")
    assert FolderDataset(tmp_path, tmp_path / "mine.txt").ids == ["c", "a"]
    (tmp_path / "bad.txt").write_text("a\nzz\n")
    with pytest.raises(DataError, match=r"split file .*bad\.txt lists ids with no image .* zz"):
        FolderDataset(tmp_path, str(tmp_path / "bad.txt"))
    with pytest.raises(DataError, match=r"split file not found: .*none\.txt"):
        FolderDataset(tmp_path, tmp_path / "none.txt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, r"num_classes must be an integer in \[2, 256\] \(2 = binary\), got 1"),
        ({"num_classes": 3, "ignore_index": 2}, r"ignore_index must be None or an integer in \[3, 255\] .*got 2"),
        ({"ignore_index": "255"}, r"ignore_index must be None or an integer in \[2, 255\] .*got '255'"),
        ({"in_channels": 4}, "in_channels must be 1 or 3, got 4"),
        ({"split": "test"}, "unknown split 'test'; expected one of all, train, val or a .txt file"),
        ({"split": "val", "val_fraction": 1.0}, r"val_fraction must be a number in \(0, 1\), got 1.0"),
        ({"split": "val", "val_fraction": "0.2"}, r"val_fraction must be a number in \(0, 1\), got '0.2'"),
        ({"split": "train", "seed": -3}, "seed must be a non-negative integer, got -3"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, message: str) -> None:
    _make_folder(tmp_path, {"a": np.zeros((8, 8), np.uint8), "b": np.zeros((8, 8), np.uint8)})
    with pytest.raises(ConfigError, match=message):
        FolderDataset(tmp_path, **kwargs)


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset root folder not found"):
        FolderDataset(tmp_path / "none")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"masks folder not found: .*masks"):
        FolderDataset(tmp_path)
    _make_folder(tmp_path, {"a": np.zeros((8, 8), np.uint8)})
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "b.png")
    with pytest.raises(DataError, match=r"no mask in .*masks for 1 image\(s\), e.g. b"):
        FolderDataset(tmp_path)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=r"split 'all' of .* is empty"):
        FolderDataset(tmp_path)


def _break_a(root: Path, damage: str) -> None:
    two_by_two = {"values": ([[0, 2], [9, 255]], np.uint8), "values_16bit": ([[0, 1], [300, 1]], np.uint16)}
    if damage in two_by_two:
        values, dtype = two_by_two[damage]
        Image.fromarray(np.array(values, dtype).repeat(4, 0).repeat(4, 1)).save(root / "masks" / "a.png")
    elif damage == "size":
        Image.fromarray(np.zeros((8, 7), np.uint8)).save(root / "masks" / "a.png")
    elif damage == "colour_mask":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "masks" / "a.png")
    elif damage == "corrupt_mask":
        (root / "masks" / "a.png").write_text("not a png")
    elif damage == "image_not_an_image":
        (root / "images" / "a.png").write_text("not a png")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("values", r"mask .*masks.a\.png has values 2, 9; expected only \[0, 1, 255\]"),
        ("values_16bit", r"mask .*masks.a\.png has values 300; expected only \[0, 1, 255\]"),
        ("size", r"image .*images.a\.png is 8x8 \(HxW\) but its mask .*masks.a\.png is 8x7"),
        ("colour_mask", r"mask .*masks.a\.png has mode 'RGB'"),
        ("corrupt_mask", r"cannot decode image .*masks.a\.png"),
        ("image_not_an_image", r"cannot read the size of image .*images.a\.png"),
    ],
)
@pytest.mark.parametrize("split", ["all", "train", "val"])
def test_bad_files_fail_at_build_time(tmp_path: Path, damage: str, message: str, split: str) -> None:
    _make_folder(tmp_path, {"a": np.zeros((8, 8), np.uint8), "b": np.zeros((8, 8), np.uint8)})
    holds_a = "a" in FolderDataset(tmp_path, split, val_fraction=0.5).ids
    _break_a(tmp_path, damage)
    if holds_a:
        with pytest.raises(DataError, match=message):
            FolderDataset(tmp_path, split, val_fraction=0.5)
    else:  # only the split's own files are checked
        assert FolderDataset(tmp_path, split, val_fraction=0.5).ids == ["b"]


def test_a_truncated_image_fails_when_read(tmp_path: Path) -> None:
    _make_folder(tmp_path, {"a": np.zeros((8, 8), np.uint8)})
    image = tmp_path / "images" / "a.png"
    image.write_bytes(image.read_bytes()[:60])  # the header survives: caught when decoded
    dataset = FolderDataset(tmp_path)
    with pytest.raises(DataError, match=r"cannot decode image .*images.a\.png"):
        dataset[0]


def test_build_reads_each_mask_once_and_decodes_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_folder(tmp_path, {f"s{k}": np.zeros((8, 8), np.uint8) for k in range(5)})
    reads: list[str] = []

    def counted(function: Callable[[Path], Any]) -> Callable[[Path], Any]:
        def wrapper(path: Path) -> Any:
            reads.append(path.name)
            return function(path)

        return wrapper

    monkeypatch.setattr(folder_module, "read_mask", counted(folder_module.read_mask))
    monkeypatch.setattr(folder_module, "read_image", lambda *a, **k: pytest.fail("an image was decoded"))
    FolderDataset(tmp_path)
    assert sorted(reads) == [f"s{k}.png" for k in range(5)]


def test_copied_voc_files_with_a_bad_class_id_fail_at_build_time(tiny_voc: Path, tmp_path: Path) -> None:
    voc = tiny_voc / "VOCdevkit" / "VOC2012"
    names = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))[:3]
    for folder, source, suffix in (("images", "JPEGImages", ".jpg"), ("masks", "SegmentationClass", ".png")):
        (tmp_path / folder).mkdir()
        for name in names:
            shutil.copy(voc / source / f"{name}{suffix}", tmp_path / folder / f"{name}{suffix}")
    dataset = FolderDataset(tmp_path, num_classes=21, ignore_index=255)
    assert dataset.ids == names and dataset[0]["mask"].max() == 255
    mask = np.array(Image.open(tmp_path / "masks" / f"{names[1]}.png"))
    mask[0, 0] = 30
    save_palette_png(mask, tmp_path / "masks" / f"{names[1]}.png")
    with pytest.raises(DataError, match=rf"mask .*{names[1]}\.png has values 30; expected only \[0, 1, .*, 20, 255\]"):
        FolderDataset(tmp_path, num_classes=21, ignore_index=255)
    with pytest.raises(DataError, match=r"mask .*masks.2007_\d+\.png has values .*; expected only \[0, 1, 2, 255\]"):
        FolderDataset(tmp_path, num_classes=3, ignore_index=255)
