"""Tests for lovaszseg.data.voc on the real Pascal VOC 2012 files in ../shared and on generated layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lovaszseg.data import describe_dataset
from lovaszseg.data.transforms import crop_to_original, voc_transforms
from lovaszseg.data.voc import (
    VOC_CLASSES,
    VOC_COLORMAP,
    VOCSegmentation,
    binary_view,
    colorize,
    read_split,
    read_voc_mask,
    resolve_voc_root,
    save_palette_png,
)
from lovaszseg.errors import ConfigError, DataError

# Classes present in the 7 real pairs (besides background 0 and void 255), from the VOC annotations.
REAL_CLASSES = {
    "2007_000032": {1, 15},  # aeroplane, person
    "2007_000033": {1},
    "2007_000123": {19},  # train
    "2011_000003": {5, 15},
    "2011_000006": {9, 15, 18},
    "2011_000025": {6, 7},
    "2011_003066": {5, 9, 11, 15},
}
ALLOWED = set(range(21)) | {255}


@pytest.fixture(scope="module")
def voc_root(shared_dir: Path) -> Path:
    return shared_dir / "voc"


def test_classes_and_colormap_constants() -> None:
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
    assert VOC_COLORMAP.shape == (256, 3) and VOC_COLORMAP.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 15: (192, 128, 128), 20: (0, 64, 128)}
    for index, colour in {**expected, 255: (224, 224, 192)}.items():
        assert tuple(VOC_COLORMAP[index]) == colour


def test_colormap_equals_the_palette_of_real_masks(voc_root: Path) -> None:
    path = next((voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))
    palette = np.array(Image.open(path).getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette, VOC_COLORMAP)


@pytest.mark.parametrize("relative", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_root_can_be_any_level(voc_root: Path, relative: str) -> None:
    assert resolve_voc_root(voc_root / relative) == voc_root / "VOCdevkit" / "VOC2012"


@pytest.mark.parametrize(("split", "count"), [("train", 5), ("val", 2), ("trainval", 7)])
def test_real_pairs_load_with_class_ids_and_void(voc_root: Path, split: str, count: int) -> None:
    dataset = VOCSegmentation(voc_root, split)
    assert len(dataset) == count
    spec = dataset.spec
    assert (spec.task, spec.num_classes, spec.ignore_index, spec.in_channels) == ("multiclass", 21, 255, 3)
    assert spec == describe_dataset("voc")
    for index, sample_id in enumerate(dataset.ids):
        sample = dataset[index]
        assert sample["id"] == sample_id and sample["mask"].dtype == torch.int64
        assert sample["image"].shape[0] == 3 and sample["image"].shape[1] % 32 == 0
        raw = read_voc_mask(dataset.mask_dir / f"{sample_id}.png")
        np.testing.assert_array_equal(crop_to_original(sample["mask"], raw.shape).numpy(), raw)
        assert set(np.unique(raw).tolist()) == {0, 255} | REAL_CLASSES[sample_id]


def test_real_train_transform_keeps_255_in_padding(voc_root: Path) -> None:
    transform = voc_transforms(train=True, crop_size=600, scale_range=(1.0, 1.0))
    dataset = VOCSegmentation(voc_root, "val", transform=transform)
    sample = dataset[0]  # 2007_000033 is 366x500: padding to 600x600 adds only void
    mask = sample["mask"]
    assert mask.shape == (600, 600)
    raw = read_voc_mask(dataset.mask_dir / "2007_000033.png")
    assert int((mask == 255).sum()) == 600 * 600 - raw.size + int((raw == 255).sum())
    assert (
        np.bincount(mask[mask != 255].numpy(), minlength=21).tolist()
        == np.bincount(raw[raw != 255], minlength=21).tolist()
    )


def test_real_binary_view(voc_root: Path) -> None:
    dataset = VOCSegmentation(voc_root, "trainval", binary=True)
    spec = dataset.spec
    assert (spec.task, spec.num_classes, spec.ignore_index) == ("binary", 1, 255)
    assert spec == describe_dataset("voc_binary")
    sample = dataset[0]
    raw = read_voc_mask(dataset.mask_dir / f"{sample['id']}.png")
    mask = crop_to_original(sample["mask"], raw.shape).numpy()
    np.testing.assert_array_equal(mask == 255, raw == 255)
    np.testing.assert_array_equal(mask == 1, (raw > 0) & (raw < 255))
    assert set(np.unique(mask).tolist()) == {0, 1, 255}


def test_all_official_masks_are_palette_indices(shared_dir: Path) -> None:
    voc_dir = resolve_voc_root(shared_dir / "voc_masks")
    paths = sorted((voc_dir / "SegmentationClass").glob("*.png"))
    assert len(paths) == 2913
    seen = np.zeros(256, dtype=bool)
    for path in paths:
        seen[read_voc_mask(path)] = True
    assert set(np.flatnonzero(seen).tolist()) == ALLOWED


def test_official_split_sizes(shared_dir: Path) -> None:
    voc_dir = resolve_voc_root(shared_dir / "voc_masks")
    train, val, trainval = (read_split(voc_dir, name) for name in ("train", "val", "trainval"))
    assert (len(train), len(val), len(trainval)) == (1464, 1449, 2913)
    assert not set(train) & set(val) and set(train) | set(val) == set(trainval)


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        ([[0, 1, 20], [255, 15, 0]], [[0, 1, 1], [255, 1, 0]]),
        ([[255, 255], [0, 0]], [[255, 255], [0, 0]]),
    ],
)
def test_binary_view(mask: list, expected: list) -> None:
    out = binary_view(np.array(mask, dtype=np.uint8))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.array(expected))


def test_save_palette_png_round_trip(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 2], [20, 255, 7]], dtype=np.int64)
    path = tmp_path / "out" / "m.png"
    save_palette_png(mask, path)
    stored = Image.open(path)
    assert stored.mode == "P"
    np.testing.assert_array_equal(read_voc_mask(path), mask)
    assert tuple(np.array(stored.convert("RGB"))[0, 1]) == (128, 0, 0)
    assert [p.name for p in path.parent.iterdir()] == ["m.png"]


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (np.zeros((2, 2), np.float32), TypeError, "integer array"),
        (np.zeros((2, 2, 3), np.uint8), ValueError, "must be 2-D"),
        (np.array([[0, 256]]), ValueError, "values must be in 0..255"),
    ],
)
def test_colorize_rejects_bad_masks(mask: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        colorize(mask)


# --- generated layouts ----------------------------------------------------------------------------

RNG = np.random.default_rng(0)


def _make_voc(root: Path, ids: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """Write a small VOCdevkit/VOC2012 layout: JPEG images, palette masks, a 'train' split of all ids."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    for sample_id in ids:
        Image.fromarray(RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{sample_id}.jpg")
        mask = RNG.integers(0, 21, (24, 40), dtype=np.uint8)
        mask[0] = 255
        save_palette_png(mask, voc / "SegmentationClass" / f"{sample_id}.png")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return voc


def test_split_file_path_and_sbd_style_lines(tmp_path: Path) -> None:
    voc = _make_voc(tmp_path)
    (voc / "SegmentationClassAug").mkdir()
    for sample_id in ("a", "c"):  # SBD-style grayscale masks of class ids
        Image.fromarray(np.full((24, 40), 3, np.uint8)).save(voc / "SegmentationClassAug" / f"{sample_id}.png")
    split = tmp_path / "train_aug.txt"
    split.write_text("/JPEGImages/a.jpg /SegmentationClassAug/a.png\n\n/JPEGImages/c.jpg /SegmentationClassAug/c.png\n")
    dataset = VOCSegmentation(tmp_path, split, mask_dir="SegmentationClassAug")
    assert dataset.ids == ["a", "c"]
    assert set(dataset[1]["mask"].unique().tolist()) == {3, 255}  # 255 = padding to 32x64
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("a\n")
    assert read_split(voc, "train_aug") == ["a"]


def _break(voc: Path, what: str) -> None:
    masks = voc / "SegmentationClass"
    if what == "mask_missing":
        (masks / "b.png").unlink()
    elif what == "image_missing":
        (voc / "JPEGImages" / "c.jpg").unlink()
    elif what == "empty_split":
        (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n")
    elif what == "binary_split":
        (voc / "ImageSets" / "Segmentation" / "train.txt").write_bytes(b"\xff\xfe\x00a\n")
    elif what == "no_images_folder":
        for path in (voc / "JPEGImages").iterdir():
            path.unlink()
        (voc / "JPEGImages").rmdir()


@pytest.mark.parametrize(
    ("what", "split", "error", "message"),
    [
        ("", "tain", ConfigError, r"unknown VOC split 'tain'; expected one of \['train', 'trainval', 'val'\]"),
        ("", "val", DataError, r"VOC split file not found: .*val\.txt"),
        ("", "missing.txt", DataError, "VOC split file not found: missing.txt"),
        ("binary_split", "train", DataError, r"VOC split file .*train\.txt is not UTF-8 text"),
        (
            "mask_missing",
            "train",
            DataError,
            r"1 masks of split 'train' missing in .*SegmentationClass, e.g. b",
        ),
        ("image_missing", "train", DataError, r"1 images of split 'train' missing .* c\.jpg"),
        ("empty_split", "train", DataError, "lists no ids"),
        ("no_images_folder", "train", DataError, "VOC image folder not found"),
    ],
)
def test_layout_errors(tmp_path: Path, what: str, split: str, error: type, message: str) -> None:
    _break(_make_voc(tmp_path), what)
    with pytest.raises(error, match=message):
        VOCSegmentation(tmp_path, split)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no Pascal VOC 2012 folder"):
        VOCSegmentation(tmp_path / "nothing", "train")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("bad_values", r"b\.png has values 21, 100; expected only"),
        ("colour_mask", r"b\.png has mode 'RGB'"),
        ("size", r"b\.jpg is 24x40 \(HxW\) but its mask .*b\.png is 24x39"),
        ("corrupt_jpeg", r"cannot decode image .*b\.jpg"),
        ("text_mask", r"cannot decode image .*b\.png"),
    ],
)
def test_sample_errors(tmp_path: Path, damage: str, message: str) -> None:
    voc = _make_voc(tmp_path)
    mask_path, image_path = voc / "SegmentationClass" / "b.png", voc / "JPEGImages" / "b.jpg"
    if damage == "bad_values":
        save_palette_png(np.array([[0, 21], [100, 255]]).repeat(12, 0).repeat(20, 1), mask_path)
    elif damage == "colour_mask":
        Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(mask_path)
    elif damage == "size":
        save_palette_png(np.zeros((24, 39), np.uint8), mask_path)
    elif damage == "corrupt_jpeg":
        image_path.write_bytes(image_path.read_bytes()[:300])
    else:
        mask_path.write_text("not a png")
    dataset = VOCSegmentation(tmp_path, "train")
    dataset[0]
    with pytest.raises(DataError, match=message):
        dataset[1]
