"""Tests for lovaszseg.data.tgs on the real TGS Salt files in ../shared and on small generated layouts."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import lovaszseg.data.tgs as tgs_module
from lovaszseg.data import describe_dataset
from lovaszseg.data.folds import CvSplit, make_cv_split, write_folds_csv
from lovaszseg.data.io import read_mask
from lovaszseg.data.tgs import COVERAGE_CLASSES, TGSSalt, coverage_class
from lovaszseg.data.transforms import TGS_MEAN, TGS_STD, crop_to_original
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.rle import decode, encode

# Facts about the 3000 training masks in ../shared/tgs (counted once from the files).
COVERAGE_COUNTS = [1178, 429, 213, 169, 140, 171, 156, 127, 110, 106, 201]
# id -> (salt pixels, depth z)
KNOWN = {"000e218f21": (0, 841.0), "003c477d7c": (336, 673.0), "0061281eea": (5507, 549.0), "00950d1627": (8989, 922.0)}


@pytest.fixture(scope="module")
def tgs_root(shared_dir: Path) -> Path:
    return shared_dir / "tgs"


def _folds(root: Path, n_folds: int = 5, seed: int = 0, stratify: str = "coverage") -> dict[str, int]:
    """``{id: fold}`` of every training id, as cross-validation and the train/val splits deal them."""
    return make_cv_split(TGSSalt(root, "all", stratify=stratify), n_folds, seed).folds


@pytest.fixture(scope="module")
def folds(tgs_root: Path) -> dict[str, int]:
    return _folds(tgs_root)


@pytest.mark.parametrize(
    ("pixels", "expected"), [(0, 0), (1, 1), (1020, 1), (1021, 2), (5100, 5), (5101, 6), (10200, 10), (10201, 10)]
)
def test_coverage_class_bins(pixels: int, expected: int) -> None:
    mask = np.zeros(101 * 101, np.uint8)
    mask[:pixels] = 1
    assert coverage_class(mask.reshape(101, 101)) == expected


# --- real data -------------------------------------------------------------------------------------


def test_real_png_masks_equal_rle_and_known_ids(tgs_root: Path) -> None:
    with (tgs_root / "train.csv").open() as handle:
        rles = {row["id"]: row["rle_mask"] for row in csv.DictReader(handle)}
    dataset = TGSSalt(tgs_root, "all")
    assert len(dataset) == 3000
    for sample_id in dataset.ids:
        png = (read_mask(tgs_root / "train" / "masks" / f"{sample_id}.png") > 0).astype(np.uint8)
        np.testing.assert_array_equal(png, decode(rles[sample_id], (101, 101)))
    for index, sample_id in enumerate(dataset.ids):
        if sample_id in KNOWN:
            sample = dataset[index]
            pixels, depth = KNOWN[sample_id]
            mask = crop_to_original(sample["mask"], (101, 101))
            assert sample["mask"].dtype == torch.int64 and int(mask.sum()) == pixels
            np.testing.assert_array_equal(mask.numpy(), decode(rles[sample_id], (101, 101)))
            assert sample["depth"].dtype == torch.float32 and float(sample["depth"]) == depth


def test_real_sample_contract(tgs_root: Path) -> None:
    dataset = TGSSalt(tgs_root, "val", fold=0)
    sample = dataset[0]
    assert set(sample) == {"image", "mask", "id", "depth"}
    assert sample["image"].shape == (1, 128, 128) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (128, 128) and set(sample["mask"].unique().tolist()) <= {0, 1}
    assert sample["depth"].shape == ()
    spec = dataset.spec
    assert (spec.task, spec.num_classes, spec.in_channels, spec.ignore_index) == ("binary", 1, 1, None)
    assert spec.original_size == (101, 101) and spec == describe_dataset("tgs")
    image = np.array(Image.open(tgs_root / "train" / "images" / f"{sample['id']}.png"))
    restored = crop_to_original(sample["image"], (101, 101))[0] * TGS_STD[0] + TGS_MEAN[0]
    torch.testing.assert_close(restored * 255, torch.from_numpy(image[..., 0]).float(), atol=1e-3, rtol=0)


def test_real_folds_cover_all_ids_once_and_are_stratified(tgs_root: Path, folds: dict[str, int]) -> None:
    all_ids = sorted(p.stem for p in (tgs_root / "train" / "images").glob("*.png"))
    assert list(folds) == all_ids
    assert np.bincount(list(folds.values())).tolist() == [600] * 5
    classes = {i: coverage_class(read_mask(tgs_root / "train" / "masks" / f"{i}.png")) for i in all_ids}
    assert np.bincount(list(classes.values()), minlength=COVERAGE_CLASSES).tolist() == COVERAGE_COUNTS
    for fold in range(5):
        in_fold = np.bincount([classes[i] for i in all_ids if folds[i] == fold], minlength=COVERAGE_CLASSES)
        assert np.all(np.abs(in_fold - np.array(COVERAGE_COUNTS) / 5) <= 1), (fold, in_fold)


def test_real_folds_are_deterministic_and_are_the_train_val_splits(tgs_root: Path, folds: dict[str, int]) -> None:
    assert _folds(tgs_root, seed=0) == folds
    assert _folds(tgs_root, seed=1) != folds
    val, train = TGSSalt(tgs_root, "val", fold=3), TGSSalt(tgs_root, "train", fold=3)
    assert val.ids == [i for i, f in folds.items() if f == 3] and train.ids == [i for i, f in folds.items() if f != 3]


def test_real_depth_folds_are_balanced(tgs_root: Path) -> None:
    depth_folds = _folds(tgs_root, stratify="depth")
    with (tgs_root / "depths.csv").open() as handle:
        depths = {row["id"]: float(row["z"]) for row in csv.DictReader(handle)}
    values = np.array([depths[i] for i in depth_folds])
    fold_of = np.array(list(depth_folds.values()))
    for fold in range(5):
        assert abs(values[fold_of == fold].mean() - values.mean()) < 0.01 * values.mean()
        assert (fold_of == fold).sum() == 600


def test_real_train_val_partition_from_folds_csv(tgs_root: Path, folds: dict[str, int], tmp_path: Path) -> None:
    path = write_folds_csv(tmp_path / "folds.csv", CvSplit(folds, [], 5))
    val = TGSSalt(tgs_root, "val", fold=2, folds_csv=path)
    train = TGSSalt(tgs_root, "train", fold=2, folds_csv=path)
    assert val.ids == [i for i, f in folds.items() if f == 2]
    assert sorted(val.ids + train.ids) == sorted(folds)
    assert TGSSalt(tgs_root, "val", fold=2, seed=0).ids == val.ids


def test_real_test_split(tgs_root: Path) -> None:
    dataset = TGSSalt(tgs_root, "test")
    with (tgs_root / "sample_submission.csv").open() as handle:
        expected = [row["id"] for row in csv.DictReader(handle)]
    assert len(dataset) == 1000 and dataset.ids == expected
    sample = dataset[0]
    assert set(sample) == {"image", "id", "depth"} and sample["id"] == expected[0]
    assert sample["image"].shape == (1, 128, 128)
    assert float(sample["depth"]) == 837.0  # 7ea0fd3c88 in depths.csv


# --- generated layouts ----------------------------------------------------------------------------

RNG = np.random.default_rng(0)


def _make_tgs(root: Path, n: int = 6, *, with_masks: bool = True) -> dict[str, np.ndarray]:
    """Write n training pairs (16-bit {0,65535} masks as in the competition; empty ones 8-bit), depths, 2 tests."""
    for folder in ("train/images", "train/masks", "test/images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    masks: dict[str, np.ndarray] = {}
    for k in range(n):
        sample_id = f"id{k:03d}"
        image = RNG.integers(0, 256, (101, 101), dtype=np.uint8)
        Image.fromarray(np.repeat(image[..., None], 3, axis=2)).save(root / "train" / "images" / f"{sample_id}.png")
        mask = np.zeros((101, 101), np.uint8)
        mask[: k * 15, :] = 1
        masks[sample_id] = mask
        if with_masks:
            stored = mask.astype(np.uint16) * 65535 if mask.any() else mask
            Image.fromarray(stored).save(root / "train" / "masks" / f"{sample_id}.png")
    for name in ("t0", "t1"):
        Image.fromarray(np.zeros((101, 101, 3), np.uint8)).save(root / "test" / "images" / f"{name}.png")
    ids = [*masks, "t0", "t1"]
    (root / "depths.csv").write_text("id,z\n" + "".join(f"{i},{100 + 10 * k}\n" for k, i in enumerate(ids)))
    return masks


def test_generated_16bit_masks_are_binarised(tmp_path: Path) -> None:
    masks = _make_tgs(tmp_path)
    dataset = TGSSalt(tmp_path, "all")
    for index, sample_id in enumerate(dataset.ids):
        np.testing.assert_array_equal(crop_to_original(dataset[index]["mask"], (101, 101)).numpy(), masks[sample_id])
    assert float(dataset[2]["depth"]) == 120.0


def test_mask_from_rle_when_png_missing(tmp_path: Path) -> None:
    _make_tgs(tmp_path, n=2, with_masks=False)
    # column-major, 1-indexed: "1 5" = rows 0-4 of column 0, "103 2" = rows 1-2 of column 1
    (tmp_path / "train.csv").write_text("id,rle_mask\nid000,1 5 103 2\nid001,\n")
    dataset = TGSSalt(tmp_path, "all")
    mask = crop_to_original(dataset[0]["mask"], (101, 101)).numpy()
    assert mask.sum() == 7 and mask[:5, 0].all() and mask[1:3, 1].all()
    assert crop_to_original(dataset[1]["mask"], (101, 101)).sum() == 0


def test_test_split_without_sample_submission_is_sorted(tmp_path: Path) -> None:
    _make_tgs(tmp_path, n=2)
    dataset = TGSSalt(tmp_path, "test")
    assert dataset.ids == ["t0", "t1"] and "mask" not in dataset[1]


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_generated_depth_folds_deal_sorted_depths_round_robin(tmp_path: Path, fold: int) -> None:
    _make_tgs(tmp_path, n=6)
    expected = [f"id{k:03d}" for k in range(6) if k % 3 == fold]
    assert TGSSalt(tmp_path, "val", fold=fold, n_folds=3, stratify="depth").ids == expected
    assert _folds(tmp_path, n_folds=3, stratify="depth") == {f"id{k:03d}": k % 3 for k in range(6)}


def _damage(root: Path, what: str) -> None:
    """Break one thing in a layout written by ``_make_tgs``."""
    if what == "no_depths_file":
        (root / "depths.csv").unlink()
    elif what == "depths_for_one_id":
        (root / "depths.csv").write_text("id,z\nid000,1\n")
    elif what == "bad_depth":
        (root / "depths.csv").write_text("id,z\n" + "".join(f"id00{k},x\n" for k in range(6)))
    elif what == "one_mask_missing":
        (root / "train" / "masks" / "id001.png").unlink()
    elif what == "no_masks_no_csv":
        shutil.rmtree(root / "train" / "masks")
    elif what in ("no_test_images", "no_train_images"):
        folder = root / ("test" if what == "no_test_images" else "train") / "images"
        for path in folder.iterdir():
            path.unlink()
    elif what == "submission_unknown_id":
        (root / "sample_submission.csv").write_text("id,rle_mask\nt0,1 1\nzz,1 1\n")
    elif what == "one_training_image":
        for path in [*(root / "train" / "images").iterdir()][1:]:
            path.unlink()


@pytest.mark.parametrize(
    ("damage", "kwargs", "error", "message"),
    [
        ("", {"split": "holdout"}, ConfigError, "unknown TGS split 'holdout'"),
        ("no_depths_file", {}, DataError, "TGS depths file not found"),
        ("depths_for_one_id", {"split": "all"}, DataError, r"no depth for 5 id\(s\), e.g. id001"),
        ("bad_depth", {}, DataError, "depth 'x' of id id000 is not a number"),
        ("one_mask_missing", {}, DataError, r"no mask PNG or train.csv row .* for 1 id\(s\), e.g. id001"),
        ("no_masks_no_csv", {}, DataError, "neither .*masks nor .*train.csv exists"),
        ("no_test_images", {"split": "test"}, DataError, r"TGS test images folder .*test.images holds no \.png images"),
        ("no_train_images", {}, DataError, r"TGS training images folder .*train.images holds no \.png images"),
        ("no_train_images", {"split": "all"}, DataError, "TGS training images folder .* holds no .png images"),
        ("one_training_image", {}, DataError, r"train.images holds 1 image; folds need at least 2"),
        ("submission_unknown_id", {"split": "test"}, DataError, "sample_submission.csv lists ids with no image"),
        ("", {"split": "val", "fold": 5}, ConfigError, r"fold must be an integer in \[0, 4\], got 5"),
        ("", {"split": "val", "fold": "1"}, ConfigError, r"fold must be an integer in \[0, 4\], got '1'"),
        ("", {"split": "val", "n_folds": 1}, ConfigError, r"n_folds must be an integer in \[2, 6\] .* got 1"),
        ("", {"split": "val", "n_folds": 7}, ConfigError, r"n_folds must be an integer in \[2, 6\] .* got 7"),
        ("", {"split": "val", "seed": -1}, ConfigError, "seed must be a non-negative integer, got -1"),
        ("", {"split": "val", "stratify": "size"}, ConfigError, "stratify must be 'coverage' or 'depth', got 'size'"),
    ],
)
def test_generated_layout_errors(tmp_path: Path, damage: str, kwargs: dict, error: type, message: str) -> None:
    _make_tgs(tmp_path)
    _damage(tmp_path, damage)
    with pytest.raises(error, match=message):
        TGSSalt(tmp_path, **kwargs)


@pytest.mark.parametrize("split", ["all", "test", "train"])
def test_stratify_is_checked_for_every_split(tmp_path: Path, split: str) -> None:
    _make_tgs(tmp_path)
    with pytest.raises(ConfigError, match="stratify must be 'coverage' or 'depth', got 'size'"):
        TGSSalt(tmp_path, split, stratify="size")


@pytest.mark.parametrize("missing", ["", "train/images"])
def test_missing_root_or_images(tmp_path: Path, missing: str) -> None:
    root = tmp_path / "tgs"
    if missing:
        (root / "train" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match="TGS Salt root" if not missing else "TGS training images"):
        TGSSalt(root, "all")


def _save_mask(path: Path, rows: int, value: int, dtype: type, shape: tuple[int, int] = (101, 101)) -> None:
    mask = np.zeros(shape, dtype)
    mask[:rows] = value
    Image.fromarray(mask).save(path)


@pytest.mark.parametrize(
    ("dtype", "value"), [(np.uint8, 1), (np.uint8, 255), (np.uint16, 1), (np.uint16, 65535), (np.uint8, 0)]
)
def test_mask_salt_may_be_one_or_the_bit_depth_maximum(tmp_path: Path, dtype: type, value: int) -> None:
    _make_tgs(tmp_path)
    _save_mask(tmp_path / "train" / "masks" / "id003.png", 30, value, dtype)
    dataset = TGSSalt(tmp_path, "all")
    mask = crop_to_original(dataset[3]["mask"], (101, 101)).numpy()
    assert mask.sum() == (30 * 101 if value else 0) and set(np.unique(mask)) <= {0, 1}


def _break_id003(root: Path, what: str) -> None:
    masks, image = root / "train" / "masks", root / "train" / "images" / "id003.png"
    if what == "value_7_8bit":
        _save_mask(masks / "id003.png", 30, 7, np.uint8)
    elif what == "value_7_16bit":
        mask = np.zeros((101, 101), np.uint16)
        mask[:30], mask[30:40] = 65535, 7
        Image.fromarray(mask).save(masks / "id003.png")
    elif what == "value_255_in_16bit":  # 255 is not the maximum of a 16-bit PNG
        _save_mask(masks / "id003.png", 30, 255, np.uint16)
    elif what == "mask_size":
        _save_mask(masks / "id003.png", 30, 255, np.uint8, shape=(50, 101))
    elif what == "image_size":
        Image.fromarray(np.zeros((100, 101), np.uint8)).save(image)
    elif what == "corrupt_mask":
        path = masks / "id003.png"
        path.write_bytes(path.read_bytes()[:60])
    elif what == "bad_rle":
        (masks / "id003.png").unlink()
        (root / "train.csv").write_text("id,rle_mask\nid003,10200 5\n")


BROKEN_ID003 = [
    ("value_7_8bit", r"mask .*masks.id003\.png has values 7; expected only \[0, 1, 255\]"),
    ("value_7_16bit", r"mask .*masks.id003\.png has values 7; expected only \[0, 1, 65535\]"),
    ("value_255_in_16bit", r"mask .*masks.id003\.png has values 255; expected only \[0, 1, 65535\]"),
    ("mask_size", r"TGS mask .*masks.id003\.png is 50x101 \(HxW\) but its image .*images.id003\.png is 101x101"),
    ("image_size", r"TGS image .*images.id003\.png is 100x101 \(HxW\); expected 101x101"),
    ("corrupt_mask", r"cannot decode image .*masks.id003\.png"),
    ("bad_rle", r"bad RLE for id id003 in .*train\.csv: RLE run '10200 5' goes past the image's last pixel"),
]


@pytest.mark.parametrize(("what", "message"), BROKEN_ID003)
@pytest.mark.parametrize("kwargs", [{"split": "all"}, {"split": "train", "fold": 1}, {"split": "val", "fold": 0}])
def test_bad_masks_and_images_fail_at_build_time(tmp_path: Path, what: str, message: str, kwargs: dict) -> None:
    _make_tgs(tmp_path)
    _break_id003(tmp_path, what)
    with pytest.raises(DataError, match=message):
        TGSSalt(tmp_path, n_folds=3, **kwargs)


def test_depth_folds_check_only_the_split(tmp_path: Path) -> None:
    _make_tgs(tmp_path)
    _break_id003(tmp_path, "value_7_8bit")  # depth folds of 3: id003 is in fold 0
    assert TGSSalt(tmp_path, "val", fold=1, n_folds=3, stratify="depth").ids == ["id001", "id004"]
    with pytest.raises(DataError, match=r"id003\.png has values 7"):
        TGSSalt(tmp_path, "train", fold=1, n_folds=3, stratify="depth")


def test_test_images_are_checked_at_build_time(tmp_path: Path) -> None:
    _make_tgs(tmp_path)
    Image.fromarray(np.zeros((101, 100), np.uint8)).save(tmp_path / "test" / "images" / "t1.png")
    with pytest.raises(DataError, match=r"TGS image .*test.images.t1\.png is 101x100 \(HxW\); expected 101x101"):
        TGSSalt(tmp_path, "test")


@pytest.mark.parametrize(
    ("kwargs", "masks_read"),
    [
        ({"split": "train", "fold": 0}, 6),  # coverage folds read all 6 masks; the split's check reuses them
        ({"split": "val", "fold": 0}, 6),
        ({"split": "val", "fold": 0, "stratify": "depth"}, 2),  # depth folds: only the split's 2 masks
        ({"split": "all"}, 6),
        ({"split": "test"}, 0),
    ],
)
def test_each_file_is_read_once_at_build_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict, masks_read: int
) -> None:
    _make_tgs(tmp_path)
    reads: dict[str, list[str]] = {"mask": [], "size": []}

    def counted(name: str, function: Callable[[Path], Any]) -> Callable[[Path], Any]:
        def wrapper(path: Path) -> Any:
            reads[name].append(path.name)
            return function(path)

        return wrapper

    monkeypatch.setattr(tgs_module, "read_mask", counted("mask", tgs_module.read_mask))
    monkeypatch.setattr(tgs_module, "read_image_size", counted("size", tgs_module.read_image_size))
    monkeypatch.setattr(tgs_module, "read_image", lambda *a, **k: pytest.fail("an image was decoded"))
    TGSSalt(tmp_path, n_folds=3, **kwargs)
    assert len(reads["mask"]) == len(set(reads["mask"])) == masks_read
    assert len(reads["size"]) == len(set(reads["size"])) == max(masks_read, 2)  # each image header once


def _real_subset(tgs_root: Path, out: Path, n: int = 6) -> list[str]:
    """Copy the first ``n`` real training pairs (16-bit and 8-bit masks), their depths and RLE rows."""
    ids = sorted(p.stem for p in (tgs_root / "train" / "images").glob("*.png"))[:n]
    for folder in ("train/images", "train/masks"):
        (out / folder).mkdir(parents=True)
        for sample_id in ids:
            shutil.copy(tgs_root / folder / f"{sample_id}.png", out / folder / f"{sample_id}.png")
    for name in ("depths.csv", "train.csv"):
        with (tgs_root / name).open() as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0], *(row for row in rows[1:] if row[0] in ids)]
        (out / name).write_text("".join(",".join(row) + "\n" for row in kept))
    return ids


def test_real_masks_with_a_stray_value_fail_at_build_time(tgs_root: Path, tmp_path: Path) -> None:
    ids = _real_subset(tgs_root, tmp_path)
    salted = next(i for i in ids if read_mask(tmp_path / "train" / "masks" / f"{i}.png").dtype == np.uint16)
    assert len(TGSSalt(tmp_path, "val", n_folds=2)) == 3  # the real files pass
    mask = read_mask(tmp_path / "train" / "masks" / f"{salted}.png").copy()
    mask[0, :3] = 7
    Image.fromarray(mask).save(tmp_path / "train" / "masks" / f"{salted}.png")
    with pytest.raises(DataError, match=rf"mask .*{salted}\.png has values 7; expected only \[0, 1, 65535\]"):
        TGSSalt(tmp_path, "train", n_folds=2)
    # Without the PNG the same id's real RLE is used, and it is valid.
    (tmp_path / "train" / "masks" / f"{salted}.png").unlink()
    dataset = TGSSalt(tmp_path, "all")
    rles = dict(csv.reader((tmp_path / "train.csv").read_text().splitlines()))
    index = dataset.ids.index(salted)
    assert encode(crop_to_original(dataset[index]["mask"], (101, 101)).numpy()) == rles[salted]


def test_real_image_of_the_wrong_size_fails_at_build_time(tgs_root: Path, tmp_path: Path) -> None:
    ids = _real_subset(tgs_root, tmp_path)
    image_path = tmp_path / "train" / "images" / f"{ids[2]}.png"
    Image.open(image_path).crop((0, 0, 101, 100)).save(image_path)
    with pytest.raises(DataError, match=rf"TGS image .*{ids[2]}\.png is 100x101 \(HxW\); expected 101x101"):
        TGSSalt(tmp_path, "all")


def test_a_corrupt_image_fails_when_read(tmp_path: Path) -> None:
    _make_tgs(tmp_path)
    image_path = tmp_path / "train" / "images" / "id000.png"
    image_path.write_bytes(image_path.read_bytes()[:100])  # the header survives: caught when decoded
    dataset = TGSSalt(tmp_path, "all")
    with pytest.raises(DataError, match=r"cannot decode image .*id000\.png"):
        dataset[0]


def test_folds_csv_must_cover_every_id_and_hold_the_fold(tmp_path: Path) -> None:
    _make_tgs(tmp_path)
    write_folds_csv(tmp_path / "folds.csv", CvSplit({"id000": 0, "id001": 1, "other": 1}, ["id002"], 2))
    with pytest.raises(DataError, match=r"has no fold for 3 id\(s\), e.g. id003"):
        TGSSalt(tmp_path, "val", folds_csv=tmp_path / "folds.csv")
    write_folds_csv(tmp_path / "folds.csv", CvSplit({f"id{k:03d}": k % 2 for k in range(6)}, [], 2))
    with pytest.raises(ConfigError, match=r"fold must be an integer in \[0, 1\] \(folds of .*folds.csv\), got 2"):
        TGSSalt(tmp_path, "val", fold=2, folds_csv=tmp_path / "folds.csv")
