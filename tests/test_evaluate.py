"""The one metrics engine: the streaming Scorer equals the whole-array reference metrics, batch by batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BINARY_METRIC_KEYS, FirstColumns
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lovaszseg.data import build_dataset, describe_dataset
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.scoring.catalogue import BINARY_METRICS, MULTICLASS_METRICS, metric_names
from lovaszseg.scoring.engine import Scorer, evaluate
from lovaszseg.scoring.metrics import ConfusionMatrix, best_threshold, binary_iou, image_iou, salt_score
from lovaszseg.thresholds import DEFAULT_THRESHOLD, THRESHOLD_GRID

TGS = describe_dataset("tgs")
VOC = describe_dataset("voc")
FOLDER_IGNORE = describe_dataset("folder", {"num_classes": 2, "ignore_index": 255})
FOLDER_MULTI = describe_dataset("folder", {"num_classes": 4, "ignore_index": 200})


def _stream(spec: DatasetSpec, probs: np.ndarray, masks: np.ndarray, cuts: list[int]) -> dict[str, float]:
    """Feed the Scorer in batches that end at ``cuts`` (uneven sizes, a one-image batch among them)."""
    scorer = Scorer(spec)
    for start, stop in zip([0, *cuts], [*cuts, len(probs)], strict=True):
        scorer.update(torch.from_numpy(probs[start:stop]), torch.from_numpy(masks[start:stop]))
    return scorer.compute()


def _golden(shared_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    golden = np.load(shared_dir / "golden" / "tgs_metric.npz")
    return golden["truth"].astype(np.int64), golden["pred"]


def _binary_reference(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The whole-array reference functions of lovaszseg.scoring.metrics, on ``[N, H, W]`` probabilities."""
    expected = {
        "salt_score": float(salt_score(probs > DEFAULT_THRESHOLD, truth).mean()),
        "iou": best_threshold(probs, truth, [DEFAULT_THRESHOLD], metric="iou")[1],
        "image_iou": float(binary_iou(torch.from_numpy(probs).double(), torch.from_numpy(truth)).mean()),
    }
    for metric, name in (("salt", "salt_score"), ("iou", "iou"), ("image_iou", "image_iou")):
        threshold, score, _ = best_threshold(probs, truth, THRESHOLD_GRID, metric=metric)
        expected["best_threshold" if name == "salt_score" else f"{name}_best_threshold"] = threshold
        expected[f"{name}_at_best_threshold"] = score
    return expected


def _assert_metrics_equal(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-12, rel=0), name


def test_default_threshold_is_on_the_grid() -> None:
    assert DEFAULT_THRESHOLD == 0.5 and DEFAULT_THRESHOLD in THRESHOLD_GRID
    # 0.05, 0.06, ..., 0.95, immutable, each the float nearest to its two decimals.
    expected = tuple(np.arange(5, 96) / 100)
    assert isinstance(THRESHOLD_GRID, tuple) and expected == THRESHOLD_GRID
    assert [round(t, 2) for t in THRESHOLD_GRID] == list(THRESHOLD_GRID) and len(THRESHOLD_GRID) == 91


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        (TGS, ("salt_score", "iou", "image_iou")),
        (describe_dataset("folder"), ("salt_score", "iou", "image_iou")),
        (describe_dataset("voc_binary"), ("iou", "image_iou")),  # ignore index 255: no TGS metric
        (FOLDER_IGNORE, ("iou", "image_iou")),
        (VOC, ("miou", "image_miou", "pixel_acc")),
        (FOLDER_MULTI, ("miou", "image_miou", "pixel_acc")),
    ],
)
def test_metric_names(spec: DatasetSpec, names: tuple[str, ...]) -> None:
    assert metric_names(spec) == names
    assert set(names) <= set(BINARY_METRICS if spec.binary else MULTICLASS_METRICS)


def test_hard_golden_predictions_give_the_golden_tgs_score(shared_dir: Path) -> None:
    truth, pred = _golden(shared_dir)
    probs = pred.astype(np.float32)[:, None]  # 0/1 predictions as probabilities [N, 1, H, W]
    metrics = _stream(TGS, probs, truth, [7, 8, 250, 599])
    golden = np.load(shared_dir / "golden" / "tgs_metric.npz")
    assert metrics["salt_score"] == pytest.approx(float(golden["mean"]), abs=1e-12, rel=0)
    assert metrics["salt_score"] == 3778 / 6000  # counted exactly, rounded once
    _assert_metrics_equal(metrics, _binary_reference(probs[:, 0], truth))
    # Every grid threshold reproduces a hard prediction: the first one (the lowest) is the best.
    assert metrics["best_threshold"] == metrics["iou_best_threshold"] == metrics["image_iou_best_threshold"] == 0.05
    assert metrics["salt_score_at_best_threshold"] == metrics["salt_score"]


@pytest.mark.parametrize(
    ("cuts", "dtype"), [([1], np.float32), ([100, 101, 333], np.float64), (list(range(50, 600, 50)), np.float32)]
)
def test_soft_probabilities_streamed_equal_the_whole_array_reference(
    shared_dir: Path, cuts: list[int], dtype: type
) -> None:
    truth, pred = _golden(shared_dir)
    rng = np.random.default_rng(len(cuts))
    # Around the golden predictions (so the best threshold is not at an edge), with exact grid values mixed in.
    probs = np.clip(pred * 0.6 + rng.normal(0.2, 0.15, truth.shape), 0, 1).astype(dtype)
    flat = probs.reshape(-1)  # a view
    flat[::97] = rng.choice(THRESHOLD_GRID, size=flat[::97].size)
    metrics = _stream(TGS, probs[:, None], truth, cuts)
    # The Scorer works in float32 (as a model's output): the reference then sees the same numbers.
    _assert_metrics_equal(metrics, _binary_reference(probs.astype(np.float32), truth))
    assert set(metrics) == BINARY_METRIC_KEYS
    assert 0.05 < metrics["best_threshold"] < 0.95


def test_uniform_random_probabilities(shared_dir: Path) -> None:
    truth, _ = _golden(shared_dir)
    probs = np.random.default_rng(7).random(truth.shape, dtype=np.float32)
    _assert_metrics_equal(_stream(TGS, probs[:, None], truth, [3, 300]), _binary_reference(probs, truth))


def _binary_ignore_reference(probs: np.ndarray, masks: np.ndarray, ignore: int) -> dict[str, float]:
    """IoU metrics with ``ignore`` pixels left out, threshold by threshold (float64: exact ``p > t``)."""
    scores = torch.from_numpy(probs).double()
    target = torch.from_numpy(masks)
    curves: dict[str, list[float]] = {"iou": [], "image_iou": []}
    for threshold in THRESHOLD_GRID:
        matrix = ConfusionMatrix(2, ignore)
        matrix.update((scores > threshold).long(), target)
        curves["iou"].append(float(matrix.iou()[1]))
        curves["image_iou"].append(float(binary_iou(scores, target, threshold, ignore_index=ignore).mean()))
    default = THRESHOLD_GRID.index(DEFAULT_THRESHOLD)
    expected = {}
    for name, curve in curves.items():
        best = int(np.argmax(curve))
        expected |= {
            name: curve[default],
            f"{name}_best_threshold": float(THRESHOLD_GRID[best]),
            f"{name}_at_best_threshold": curve[best],
        }
    return expected


@pytest.mark.parametrize("spec", [FOLDER_IGNORE, describe_dataset("voc_binary")])
def test_binary_with_an_ignore_index_leaves_ignored_pixels_out(spec: DatasetSpec) -> None:
    rng = np.random.default_rng(0)
    masks = (rng.random((20, 24, 24)) < 0.4).astype(np.int64)
    masks[:, :, :5] = spec.ignore_index  # a void border
    masks[rng.random(masks.shape) < 0.1] = spec.ignore_index
    masks[3] = spec.ignore_index  # an image with no valid pixel: both "empty", IoU 1
    probs = np.clip(masks * 0.5 + rng.random(masks.shape) * 0.6, 0, 1).astype(np.float32)
    probs[masks == spec.ignore_index] = 1.0  # would be foreground everywhere, were they counted
    metrics = _stream(spec, probs[:, None], masks, [1, 9])
    assert "salt_score" not in metrics and "best_threshold" not in metrics
    assert set(metrics) == BINARY_METRIC_KEYS - {"salt_score", "best_threshold", "salt_score_at_best_threshold"}
    _assert_metrics_equal(metrics, _binary_ignore_reference(probs, masks, spec.ignore_index))
    # What lies under ignored pixels changes nothing.
    probs[masks == spec.ignore_index] = 0.0
    assert _stream(spec, probs[:, None], masks, [1, 9]) == metrics


def test_binary_ignore_pixels_equal_cropping_them_away() -> None:
    rng = np.random.default_rng(1)
    inner = (rng.random((6, 16, 16)) < 0.5).astype(np.int64)
    probs = rng.random((6, 16, 16), dtype=np.float32)
    padded_masks = np.pad(inner, ((0, 0), (3, 5), (2, 2)), constant_values=255)
    padded_probs = np.pad(probs, ((0, 0), (3, 5), (2, 2)), constant_values=0.9)
    with_ignore = _stream(FOLDER_IGNORE, padded_probs[:, None], padded_masks, [2])
    plain = _stream(describe_dataset("folder"), probs[:, None], inner, [2])
    salt = {"salt_score", "best_threshold", "salt_score_at_best_threshold"}
    assert with_ignore == {name: value for name, value in plain.items() if name not in salt}


@pytest.mark.parametrize("spec", [VOC, FOLDER_MULTI])
def test_multiclass_equals_the_confusion_matrix_and_image_iou(spec: DatasetSpec) -> None:
    classes, ignore = spec.num_classes, spec.ignore_index
    rng = np.random.default_rng(classes)
    masks = rng.integers(0, min(classes, 5), (9, 20, 20))  # VOC: a few classes present, the rest absent
    masks[rng.random(masks.shape) < 0.15] = ignore
    masks[4] = ignore  # no valid pixel: that image has no image mIoU (NaN, skipped)
    logits = rng.normal(size=(9, classes, 20, 20)) + 3 * np.eye(classes)[np.clip(masks, 0, classes - 1)].transpose(
        0, 3, 1, 2
    )
    probs = torch.from_numpy(logits).float().softmax(1).numpy()
    metrics = _stream(spec, probs, masks, [2, 3, 8])
    pred, target = torch.from_numpy(probs).argmax(1), torch.from_numpy(masks)
    matrix = ConfusionMatrix(classes, ignore)
    matrix.update(pred, target)
    per_image = image_iou(pred, target, classes, ignore)
    assert torch.isnan(per_image[4]) and not torch.isnan(per_image[torch.arange(9) != 4]).any()
    assert set(metrics) == {"miou", "image_miou", "pixel_acc"}
    assert metrics["miou"] == pytest.approx(matrix.mean_iou(), abs=1e-12, rel=0)
    assert metrics["image_miou"] == pytest.approx(float(np.nanmean(per_image.numpy())), abs=1e-12, rel=0)
    assert metrics["pixel_acc"] == pytest.approx(matrix.pixel_accuracy(), abs=1e-12, rel=0)
    assert 0 < metrics["miou"] < 1


def test_an_empty_scorer_gives_nan_not_an_error() -> None:
    metrics = Scorer(TGS).compute()
    assert set(metrics) == set(BINARY_METRICS) and all(np.isnan(v) for v in metrics.values())
    assert set(Scorer(FOLDER_IGNORE).compute()) == {"iou", "image_iou"}


@pytest.mark.parametrize("gate", [0.0, 0.3, 0.6])
def test_a_gated_scorer_scores_the_images_the_head_calls_empty_as_predicted_empty(gate: float) -> None:
    rng = np.random.default_rng(3)
    probs = rng.random((6, 1, 101, 101)).astype(np.float32)
    masks = (rng.random((6, 101, 101)) < 0.3).astype(np.int64) * (np.arange(6) % 2)[:, None, None]
    heads = np.array([0.1, 0.9, 0.5, 0.2, 0.7, 0.65], dtype=np.float32)
    scorer = Scorer(TGS, empty_gate=gate)
    scorer.update(torch.from_numpy(probs), torch.from_numpy(masks), torch.from_numpy(heads))
    predicted = (probs[:, 0] > DEFAULT_THRESHOLD) & (heads >= gate)[:, None, None]
    metrics = scorer.compute()
    assert metrics["salt_score"] == pytest.approx(float(salt_score(predicted, masks > 0).mean()), abs=1e-12)
    assert metrics["empty_head_accuracy"] == pytest.approx(4 / 6)  # its accuracy is the head's, gated or not
    plain = Scorer(TGS, empty_gate=gate)  # without head probabilities nothing is gated
    plain.update(torch.from_numpy(probs), torch.from_numpy(masks))
    assert plain.compute()["salt_score"] == pytest.approx(float(salt_score(probs[:, 0] > 0.5, masks > 0).mean()))


class _Threshold(nn.Module):
    """Logit ``8 * (image - 0.5)``: the image is its own probability map, sharpened."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 8 * (images[:, :1] - 0.5)


def test_evaluate_crops_padded_batches_back_and_reports_the_plain_loss() -> None:
    # A TGS-like spec: 101x101 originals centre-padded to 128 (13 above/left, 14 below/right).
    rng = np.random.default_rng(5)
    truth = (rng.random((5, 101, 101)) < 0.3).astype(np.int64)
    images = np.clip(truth * 0.4 + rng.random(truth.shape) * 0.6, 0, 1).astype(np.float32)
    padded_images = np.pad(images, ((0, 0), (13, 14), (13, 14)), constant_values=1.0)[:, None]
    padded_masks = np.pad(truth, ((0, 0), (13, 14), (13, 14)), constant_values=0)
    samples = [
        {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}
        for image, mask in zip(padded_images, padded_masks, strict=True)
    ]
    loader = DataLoader(samples, batch_size=2)
    losses: list[float] = []

    def loss_fn(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        assert logits.shape[-2:] == (128, 128)  # the loss sees the model's (uncropped) logits
        losses.append(float(logits.mean()))
        return logits.mean()

    metrics = evaluate(_Threshold(), loader, TGS, device=torch.device("cpu"), loss_fn=loss_fn)
    probs = torch.sigmoid(8 * (torch.from_numpy(images) - 0.5)).numpy()
    _assert_metrics_equal({k: v for k, v in metrics.items() if k != "val_loss"}, _binary_reference(probs, truth))
    assert metrics["val_loss"] == pytest.approx(np.mean(losses), rel=1e-12) and len(losses) == 3
    assert "val_loss" not in evaluate(_Threshold(), loader, TGS, device=torch.device("cpu"))


def test_folder_images_padded_to_the_stride_are_scored_on_their_own_pixels(tmp_path: Path) -> None:
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
    mask = np.zeros((40, 40), np.uint8)
    mask[:, :10] = 1
    for name in ("a", "b"):
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    dataset = build_dataset("folder", tmp_path, "all", train=False)
    assert dataset[0]["image"].shape[-2:] == (64, 64)  # centre-padded: 12 columns on the left
    metrics = evaluate(FirstColumns(), DataLoader(dataset, batch_size=2), describe_dataset("folder"), device="cpu")
    # On the 40x40 images: predicted columns 0..3 (16 - 12), true columns 0..9: IoU 4/10.
    assert metrics["iou"] == pytest.approx(0.4) and metrics["image_iou"] == pytest.approx(0.4)
