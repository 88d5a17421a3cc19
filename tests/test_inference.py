"""Prediction with TTA, crop-back to the original size, overlays and validated Kaggle submissions."""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FirstColumns
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lovaszseg.config import ModelConfig
from lovaszseg.data import TGSSalt, build_transform, describe_dataset
from lovaszseg.data.io import read_mask
from lovaszseg.data.overlay import save_overlay
from lovaszseg.data.transforms import tgs_transforms
from lovaszseg.errors import ConfigError, DataError, OutputError
from lovaszseg.inference.predict import predict_folder, predict_probabilities
from lovaszseg.inference.submission import write_submission
from lovaszseg.models import build_model
from lovaszseg.rle import decode, read_rle_csv
from lovaszseg.scoring.engine import evaluate
from lovaszseg.scoring.metrics import binary_iou, salt_score

TGS_SHAPE = (101, 101)


class _LeftHalf(nn.Module):
    """Logit +4 on the left half of the image and -4 on the right: not mirror-symmetric."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.batch_shapes: list[tuple[int, ...]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_shapes.append(tuple(images.shape))
        batch, _, height, width = images.shape
        logits = torch.full((batch, self.channels, height, width), -4.0)
        logits[..., : width // 2] = 4.0
        return logits


def _save(path: Path, shape: tuple[int, ...], value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def _real_ids(shared_dir: Path, count: int) -> list[str]:
    """Training ids of the real data: some with salt, one without."""
    rows = read_rle_csv(shared_dir / "tgs" / "train.csv")
    salty = [i for i, rle in rows.items() if rle][: count - 1]
    return [*salty, next(i for i, rle in rows.items() if not rle)]


@pytest.fixture
def real_tgs(shared_dir: Path, tmp_path: Path) -> Path:
    """A TGS tree with copies of 6 real training pairs and the real depths."""
    root = tmp_path / "tgs"
    for sample_id in _real_ids(shared_dir, 6):
        for kind in ("images", "masks"):
            (root / "train" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(shared_dir / "tgs" / "train" / kind / f"{sample_id}.png", root / "train" / kind)
    shutil.copy(shared_dir / "tgs" / "depths.csv", root)
    return root


def test_hflip_tta_averages_the_mirrored_prediction() -> None:
    images = torch.zeros(2, 1, 4, 6)
    plain = predict_probabilities(_LeftHalf(), images)
    assert plain[0, 0, 0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item())
    flipped = predict_probabilities(_LeftHalf(), images, tta="hflip")
    torch.testing.assert_close(flipped, torch.full_like(flipped, 0.5))
    # The left half is the same upside down: a vertical flip changes nothing.
    torch.testing.assert_close(predict_probabilities(_LeftHalf(), images, tta="vflip"), plain)


def test_multiclass_probabilities_are_a_softmax() -> None:
    probs = predict_probabilities(nn.Conv2d(3, 5, 1), torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 8, 8))


def test_predict_folder_crops_real_tgs_images_back_to_101(real_tgs: Path) -> None:
    model = _LeftHalf()
    images = real_tgs / "train" / "images"
    results = list(predict_folder(model, images, tgs_transforms(train=False), in_channels=1, batch_size=4))
    assert [path for path, _, _ in results] == sorted(images.iterdir())
    assert model.batch_shapes == [(4, 1, 128, 128), (2, 1, 128, 128)]
    for path, image, probs in results:
        np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert("L")))
        assert probs.shape == (1, 101, 101) and probs.dtype == np.float32
        # Centre padding 101 -> 128 puts 13 columns on the left: the model's left half is columns 0..63
        # of the padded image, i.e. columns 0..50 of the original.
        foreground = probs[0] > 0.5
        assert foreground[:, :51].all() and not foreground[:, 51:].any()


def test_evaluate_scores_real_tgs_at_the_original_size(real_tgs: Path) -> None:
    dataset = TGSSalt(real_tgs, "all")
    metrics = evaluate(
        _LeftHalf(), DataLoader(dataset, batch_size=4), describe_dataset("tgs"), device=torch.device("cpu")
    )
    truth = np.stack([read_mask(real_tgs / "train" / "masks" / f"{i}.png") > 0 for i in dataset.ids])
    pred = np.zeros_like(truth)
    pred[:, :, :51] = True
    assert truth.shape == (6, 101, 101) and truth.any()
    assert metrics["salt_score"] == pytest.approx(salt_score(pred, truth).mean(), abs=1e-12)
    intersection, union = (pred & truth).sum(), (pred | truth).sum()
    assert metrics["iou"] == pytest.approx(intersection / union, abs=1e-12)
    image_iou = binary_iou(torch.from_numpy(pred), torch.from_numpy(truth.astype(np.int64))).mean()
    assert metrics["image_iou"] == pytest.approx(float(image_iou), abs=1e-12)


def test_submission_for_the_real_test_images_follows_the_sample_order(shared_dir: Path, tmp_path: Path) -> None:
    images = shared_dir / "tgs" / "test" / "images"
    sample_ids = list(read_rle_csv(shared_dir / "tgs" / "sample_submission.csv"))
    predicted = predict_folder(_LeftHalf(), images, tgs_transforms(train=False), in_channels=1, batch_size=64)
    masks = ((path.stem, probs[0] > 0.5) for path, _, probs in predicted)
    path = write_submission(masks, tmp_path / "submission.csv", shape=TGS_SHAPE, expected_ids=sample_ids)
    rows = read_rle_csv(path)
    assert sorted(sample_ids) != sample_ids  # predicted in file-name order, written in the sample's order
    assert list(rows) == sample_ids and len(rows) == 1000
    left = np.zeros(TGS_SHAPE, dtype=bool)
    left[:, :51] = True
    np.testing.assert_array_equal(decode(rows[sample_ids[0]], TGS_SHAPE), left)
    # Column-major RLE: the left 51 columns of 101 rows are one run starting at pixel 1.
    assert set(rows.values()) == {f"1 {51 * 101}"}


def _masks(*items: tuple[str, tuple[int, int]]) -> list[tuple[str, np.ndarray]]:
    return [(sample_id, np.zeros(shape, dtype=bool)) for sample_id, shape in items]


@pytest.mark.parametrize(
    ("masks", "expected", "error", "message"),
    [
        (_masks(("a", (4, 4)), ("b", (4, 5))), None, DataError, r"mask of id 'b' is 4x5; a submission needs 4x4"),
        (_masks(("a", (4, 4)), ("b", (101, 101))), None, DataError, r"'b' is 101x101"),
        (_masks(("a", (4, 4)), ("a", (4, 4))), None, DataError, r"id 'a' appears more than once"),
        (_masks(("a", (4, 4)), ("b", (4, 4))), ["a", "c"], DataError, r"1 missing id\(s\), first \['c'\]"),
        (_masks(("a", (4, 4)), ("b", (4, 4))), ["a", "c"], DataError, r"1 unexpected id\(s\), first \['b'\]"),
        (_masks(("a", (4, 4))), ["a", "b", "c"], DataError, r"submission not written: .*2 missing id\(s\)"),
        ([], ["a"], DataError, r"missing id\(s\), first \['a'\]"),
    ],
)
def test_bad_submissions_are_refused_and_nothing_is_written(
    tmp_path: Path, masks: list, expected: list[str] | None, error: type, message: str
) -> None:
    path = tmp_path / "submission.csv"
    with pytest.raises(error, match=message):
        write_submission(iter(masks), path, shape=(4, 4), expected_ids=expected)
    assert not list(tmp_path.iterdir())  # no CSV and no temporary file left behind


def test_a_failed_submission_leaves_the_previous_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    path.write_text("id,rle_mask\nold,1 1\n")

    def masks() -> Iterator[tuple[str, np.ndarray]]:
        yield "a", np.ones((3, 3), dtype=bool)
        raise DataError("image c.png is 64x64; TGS submissions need 101x101 images")

    with pytest.raises(DataError, match=r"c\.png is 64x64"):
        write_submission(masks(), path, shape=(3, 3))
    with pytest.raises(DataError, match="'b' is 2x3"):
        write_submission(iter(_masks(("a", (3, 3)), ("b", (2, 3)))), path, shape=(3, 3))
    assert path.read_text() == "id,rle_mask\nold,1 1\n" and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.usefixtures("full_disk")
@pytest.mark.parametrize("ordered", [False, True], ids=["prediction_order", "expected_order"])
@pytest.mark.parametrize("count", [2, 3000], ids=["few_rows", "rows_beyond_the_buffer"])
def test_a_submission_on_a_full_disk_names_the_csv_and_keeps_the_previous_one(
    tmp_path: Path, ordered: bool, count: int
) -> None:
    path = tmp_path / "submission.csv"
    path.write_bytes(b"id,rle_mask\r\nold,1 1\r\n")
    ids = [f"id{i}" for i in range(count)]
    masks = ((sample_id, np.eye(3, dtype=bool)) for sample_id in ids)
    with pytest.raises(OutputError, match=rf"^cannot write {re.escape(str(path))}: No space left on device$"):
        write_submission(masks, path, shape=(3, 3), expected_ids=ids[::-1] if ordered else None)
    assert path.read_bytes() == b"id,rle_mask\r\nold,1 1\r\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_a_submission_spools_beside_the_csv_not_in_the_system_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # as a /tmp that takes no files
    path = tmp_path / "out" / "submission.csv"
    write_submission(iter(_masks(("a", (3, 3)), ("b", (3, 3)))), path, shape=(3, 3))
    assert list(read_rle_csv(path)) == ["a", "b"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the spool is gone


def test_a_refused_submission_leaves_no_folder_it_created(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "submission.csv"
    with pytest.raises(DataError):
        write_submission(iter(_masks(("a", (3, 3)), ("b", (4, 4)))), path, shape=(3, 3))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("count", [2, 3000], ids=["few_rows", "rows_beyond_the_buffer"])
def test_a_full_disk_while_spooling_names_the_csv_keeps_the_previous_one_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    spool = tempfile.TemporaryFile

    def on_a_full_disk(*args: object, **kwargs: object) -> object:
        handle = spool(*args, **kwargs)  # type: ignore[call-overload]
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, handle.fileno())  # its writes fail with ENOSPC, as on a full disk
        os.close(full)
        return handle

    monkeypatch.setattr(tempfile, "TemporaryFile", on_a_full_disk)
    path = tmp_path / "submission.csv"
    path.write_bytes(b"id,rle_mask\r\nold,1 1\r\n")
    masks = ((f"id{i}", np.eye(3, dtype=bool)) for i in range(count))
    with pytest.raises(OutputError, match=rf"^cannot write {re.escape(str(path))}: No space left on device$"):
        write_submission(masks, path, shape=(3, 3))
    assert path.read_bytes() == b"id,rle_mask\r\nold,1 1\r\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_submission_to_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"submission path {tmp_path} is a folder"):
        write_submission(iter(_masks(("a", (3, 3)))), tmp_path, shape=(3, 3))


def test_rows_follow_the_expected_ids_not_the_prediction_order(tmp_path: Path) -> None:
    masks = {name: np.zeros((3, 3), dtype=bool) for name in ("b", "c", "a")}
    masks["c"][1, 0] = True  # column-major: pixel 2
    masks["a"][:, 2] = True  # pixels 7..9
    path = write_submission(iter(masks.items()), tmp_path / "s.csv", shape=(3, 3), expected_ids=["c", "a", "b"])
    with path.open(newline="") as handle:
        assert list(csv.reader(handle)) == [["id", "rle_mask"], ["c", "2 1"], ["a", "7 3"], ["b", ""]]
    # Without expected ids, rows keep the order the masks came in.
    write_submission(iter(masks.items()), path, shape=(3, 3))
    assert list(read_rle_csv(path)) == ["b", "c", "a"]


def test_submission_csv_has_a_header_and_empty_masks_are_empty_strings(tmp_path: Path) -> None:
    masks = np.zeros((2, 3, 3), dtype=np.uint8)  # 0/1 integers are taken as masks too
    masks[1, 0, 0] = 1
    write_submission(zip(["x", "y"], masks, strict=True), tmp_path / "s.csv", shape=(3, 3))
    with (tmp_path / "s.csv").open(newline="") as handle:
        assert list(csv.reader(handle)) == [["id", "rle_mask"], ["x", ""], ["y", "1 1"]]


def test_predict_folder_batches_equal_sizes_and_overlays(tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    _save(images_dir / "a.png", (101, 101, 3))
    _save(images_dir / "b.jpg", (101, 101, 3))
    _save(images_dir / "c.png", (90, 70, 3), value=60)
    _save(images_dir / "d.png", (130, 101, 3))  # padded to 130x128
    _save(images_dir / "e.png", (101, 101, 3))
    (images_dir / "notes.txt").write_text("not an image")
    model = _LeftHalf()
    results = list(predict_folder(model, images_dir, tgs_transforms(train=False), in_channels=1, batch_size=2))
    assert [(path.name, image.shape, probs.shape) for path, image, probs in results] == [
        ("a.png", (101, 101), (1, 101, 101)),
        ("b.jpg", (101, 101), (1, 101, 101)),
        ("c.png", (90, 70), (1, 90, 70)),
        ("d.png", (130, 101), (1, 130, 101)),
        ("e.png", (101, 101), (1, 101, 101)),
    ]
    # Consecutive images of one padded size share a forward pass (at most batch_size); another size starts a new one.
    assert model.batch_shapes == [(2, 1, 128, 128), (1, 1, 128, 128), (1, 1, 130, 128), (1, 1, 128, 128)]
    # 90x70 is padded to 128x128 with 29 columns on the left: the left half of 128 ends at column 35.
    foreground = results[2][2][0] > 0.5
    assert foreground[:, :35].all() and not foreground[:, 35:].any()
    _, image, probs = results[0]
    save_overlay(image, (probs[0] > 0.5).astype(np.uint8), tmp_path / "overlay.png")
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    assert overlay.shape == (101, 101, 3)
    assert overlay[0, 0, 0] > overlay[0, 0, 1]  # class 1 is tinted red on the left
    assert tuple(overlay[0, 100]) == (120, 120, 120)  # background untouched


def test_predict_folder_names_an_image_the_model_cannot_take(tmp_path: Path) -> None:
    model = build_model(
        ModelConfig(
            arch="FPN",
            encoder="resnet18",
            encoder_weights=None,  # FPN needs sides divisible by 32
        ),
        1,
        1,
        pretrained=False,
    )
    images_dir = tmp_path / "images"
    for name in ("a", "b"):
        _save(images_dir / f"{name}.png", (101, 101))
    odd = _save(images_dir / "c.png", (130, 101))  # taller than the 128 padding: stays 130 high
    _save(images_dir / "d.png", (101, 101))
    predicted = predict_folder(model, images_dir, tgs_transforms(train=False), in_channels=1, batch_size=8)
    with pytest.raises(ConfigError) as caught:
        list(predicted)
    message = str(caught.value)
    assert f"image {odd} (130x101 as read) is 130x128" in message
    assert "divisible by 32: pad or resize to 160x128" in message


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_predict_folder_without_images_is_a_data_error(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "images"
    if make == "empty":
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=str(folder)):
        next(predict_folder(_LeftHalf(), folder, tgs_transforms(train=False), in_channels=1))


def test_predict_folder_resizes_the_predictions_of_a_resizing_folder_preset_back(tmp_path: Path) -> None:
    options = {"size": 64}
    spec = describe_dataset("folder", options)
    images_dir = tmp_path / "images"
    _save(images_dir / "a.png", (100, 100, 3))
    _save(images_dir / "b.png", (40, 40, 3))
    transform = build_transform("folder", train=False, **options)
    results = list(predict_folder(FirstColumns(), images_dir, transform, in_channels=3, resized=spec.resize))
    for (_, image, probs), quarter in zip(results, (25, 10), strict=True):  # 16 of 64 columns: a quarter
        assert probs.shape == (1, *image.shape[:2])
        foreground = probs[0] > 0.5
        assert foreground[:, : quarter - 2].all() and not foreground[:, quarter + 2 :].any()
