"""Prediction with TTA, crop-back to the original size, overlays and validated Kaggle submissions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lovaszseg.data import TGSSalt
from lovaszseg.data.transforms import tgs_transforms
from lovaszseg.inference import predict_dataset, predict_folder, predict_probabilities, save_overlay, write_submission
from lovaszseg.rle import decode, read_rle_csv


class _LeftHalf(nn.Module):
    """Logit +4 on the left half of the image and -4 on the right: not mirror-symmetric."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        logits = torch.full((batch, self.channels, height, width), -4.0)
        logits[..., : width // 2] = 4.0
        return logits


def test_hflip_tta_averages_the_mirrored_prediction() -> None:
    images = torch.zeros(2, 1, 4, 6)
    plain = predict_probabilities(_LeftHalf(), images)
    assert plain[0, 0, 0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item())
    flipped = predict_probabilities(_LeftHalf(), images, tta="hflip")
    torch.testing.assert_close(flipped, torch.full_like(flipped, 0.5))
    with pytest.raises(ValueError, match="tta"):
        predict_probabilities(_LeftHalf(), images, tta="vflip")


def test_multiclass_probabilities_are_a_softmax() -> None:
    probs = predict_probabilities(nn.Conv2d(3, 5, 1), torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 8, 8))


def test_predict_dataset_crops_real_tgs_images_back_to_101(shared_dir: Path) -> None:
    dataset = TGSSalt(shared_dir / "tgs", "val", fold=0, n_folds=50)
    predictions = predict_dataset(_LeftHalf(), dataset, batch_size=16)
    assert predictions.ids == dataset.ids
    assert predictions.probabilities.shape == (len(dataset), 101, 101)
    assert len(predictions.truths) == len(dataset) and predictions.truths[0].shape == (101, 101)
    # Centre padding 101 -> 128 puts 13 columns on the left: the model's left half is columns 0..63 of
    # the padded image, i.e. columns 0..50 of the original.
    foreground = predictions.probabilities[0] > 0.5
    assert foreground[:, :51].all() and not foreground[:, 51:].any()
    first = dataset[0]["mask"][13:114, 13:114].numpy()
    np.testing.assert_array_equal(predictions.truths[0], first)


def test_submission_for_the_real_test_images_matches_the_sample_ids(shared_dir: Path, tmp_path: Path) -> None:
    dataset = TGSSalt(shared_dir / "tgs", "test")
    predictions = predict_dataset(_LeftHalf(), dataset, batch_size=64)
    masks = predictions.probabilities > 0.5
    sample_ids = list(read_rle_csv(shared_dir / "tgs" / "sample_submission.csv"))
    path = write_submission(predictions.ids, masks, tmp_path / "submission.csv", expected_ids=sample_ids)
    rows = read_rle_csv(path)
    assert list(rows) == sample_ids and len(rows) == 1000
    np.testing.assert_array_equal(decode(rows[sample_ids[0]], (101, 101)), masks[0])
    # Column-major RLE: the left 51 columns of 101 rows are one run starting at pixel 1.
    assert rows[sample_ids[0]] == f"1 {51 * 101}"


@pytest.mark.parametrize(
    ("ids", "expected", "message"),
    [
        (["a", "a"], None, "more than once"),
        (["a", "b"], ["a", "c"], "c"),
        (["a"], None, "1 ids but 2 masks"),
    ],
)
def test_bad_submissions_are_refused_and_nothing_is_written(
    tmp_path: Path, ids: list[str], expected: list[str] | None, message: str
) -> None:
    path = tmp_path / "submission.csv"
    with pytest.raises(ValueError, match=message):
        write_submission(ids, np.zeros((2, 4, 4), dtype=bool), path, expected_ids=expected)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_predict_folder_and_overlay(tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    Image.fromarray(np.full((101, 101, 3), 120, np.uint8)).save(images_dir / "a.png")
    Image.fromarray(np.full((90, 70, 3), 60, np.uint8)).save(images_dir / "b.png")
    results = list(predict_folder(_LeftHalf(), images_dir, tgs_transforms(train=False), in_channels=1))
    assert [(stem, image.shape, probs.shape) for stem, image, probs in results] == [
        ("a", (101, 101), (1, 101, 101)),
        ("b", (90, 70), (1, 90, 70)),
    ]
    _, image, probs = results[0]
    save_overlay(image, (probs[0] > 0.5).astype(np.uint8), tmp_path / "overlay.png")
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    assert overlay.shape == (101, 101, 3)
    assert overlay[0, 0, 0] > overlay[0, 0, 1]  # class 1 is tinted red on the left
    assert tuple(overlay[0, 100]) == (120, 120, 120)  # background untouched


def test_submission_csv_has_a_header_and_empty_masks_are_empty_strings(tmp_path: Path) -> None:
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[1, 0, 0] = True
    write_submission(["x", "y"], masks, tmp_path / "s.csv")
    with (tmp_path / "s.csv").open(newline="") as handle:
        assert list(csv.reader(handle)) == [["id", "rle_mask"], ["x", ""], ["y", "1 1"]]
