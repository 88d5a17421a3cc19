"""Tests for lovaszseg.scoring.metrics: confusion matrix, per-image IoU, TGS score and threshold search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from lovaszseg.scoring.metrics import (
    SALT_IOU_THRESHOLDS,
    THRESHOLD_GRID,
    ConfusionMatrix,
    MeanMeter,
    best_threshold,
    binary_iou,
    image_iou,
    salt_score,
)

# --- brute-force references -------------------------------------------------------------------------


def _reference_confusion(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int | None) -> np.ndarray:
    mat = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        if t != ignore:
            mat[t, p] += 1
    return mat


def _reference_image_iou(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int | None) -> list[float]:
    scores = []
    for p, t in zip(pred, target, strict=True):
        valid = t != ignore
        ious = []
        for c in range(num_classes):
            union = np.sum(((p == c) | (t == c)) & valid)
            if union:
                ious.append(np.sum((p == c) & (t == c) & valid) / union)
        scores.append(float(np.mean(ious)) if ious else float("nan"))
    return scores


def _reference_salt(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    scores = []
    for p, t in zip(pred.astype(bool), truth.astype(bool), strict=True):
        union = np.sum(p | t)
        if union == 0:
            scores.append(1.0)
            continue
        iou = np.sum(p & t) / union
        scores.append(float(np.mean([iou > th for th in np.arange(0.5, 1.0, 0.05)])))
    return scores


def _brute_force_scores(probs: np.ndarray, truth: np.ndarray, thresholds: np.ndarray, metric: str) -> np.ndarray:
    scores = []
    for th in thresholds:
        pred = probs.astype(np.float64) > np.float64(th)
        if metric == "salt":  # the mean of scores k / 10, rounded once
            scores.append(np.rint(np.sum(_reference_salt(pred, truth)) * 10) / (10 * len(pred)))
        elif metric == "image_iou":
            scores.append(np.mean(binary_iou(torch.from_numpy(pred), torch.from_numpy(truth.astype(np.int64))).numpy()))
        else:
            union = np.sum(pred | truth)
            scores.append(np.sum(pred & truth) / union if union else 1.0)
    return np.array(scores)


# --- ConfusionMatrix ----------------------------------------------------------------------------------


def test_confusion_matrix_hand_example() -> None:
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
    cm = ConfusionMatrix(num_classes=4, ignore_index=255)
    cm.update(pred, target)
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.mat, expected)
    iou = cm.iou()
    assert iou.dtype == torch.float64
    torch.testing.assert_close(iou[:3], torch.tensor([1 / 2, 2 / 4, 0.0], dtype=torch.float64))
    assert torch.isnan(iou[3])  # class 3 never occurs: left out of the mean
    assert cm.mean_iou() == pytest.approx(1 / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)
    cm.update(pred, target)
    assert torch.equal(cm.mat, 2 * expected)
    assert cm.mean_iou() == pytest.approx(1 / 3)
    cm.reset()
    assert int(cm.mat.sum()) == 0
    assert np.isnan(cm.mean_iou()) and np.isnan(cm.pixel_accuracy())


@pytest.mark.parametrize(("num_classes", "ignore"), [(2, None), (3, 255), (21, 255), (5, 0)])
def test_confusion_matrix_matches_reference(num_classes: int, ignore: int | None) -> None:
    generator = torch.Generator().manual_seed(num_classes)
    target = torch.randint(0, num_classes, (3, 9, 11), generator=generator)
    pred = torch.randint(0, num_classes, (3, 9, 11), generator=generator)
    if ignore is not None:
        target[torch.rand(target.shape, generator=generator) < 0.2] = ignore
    cm = ConfusionMatrix(num_classes, ignore_index=ignore)
    cm.update(pred[:2], target[:2])
    cm.update(pred[2:], target[2:])
    reference = _reference_confusion(pred.numpy(), target.numpy(), num_classes, ignore)
    np.testing.assert_array_equal(cm.mat.numpy(), reference)
    tp = np.diag(reference).astype(float)
    with np.errstate(invalid="ignore"):
        iou = tp / (reference.sum(0) + reference.sum(1) - tp)
    np.testing.assert_allclose(cm.iou().numpy(), iou)
    assert cm.mean_iou() == pytest.approx(np.nanmean(iou))


def test_confusion_matrix_on_real_voc_masks(shared_dir: Path) -> None:
    root = shared_dir / "voc_masks" / "VOC2012"
    ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:4]
    cm = ConfusionMatrix(21, ignore_index=255)
    reference = np.zeros((21, 21), dtype=np.int64)
    for i, image_id in enumerate(ids):
        target = np.array(Image.open(root / "SegmentationClass" / f"{image_id}.png"))
        assert set(np.unique(target)) <= set(range(21)) | {255}
        pred = np.where(target == 255, i % 21, np.roll(target, 7, axis=1) % 255)  # a shifted "prediction"
        cm.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
        reference += _reference_confusion(pred, target, 21, 255)
    np.testing.assert_array_equal(cm.mat.numpy(), reference)
    assert 0 < cm.mean_iou() < 1


def test_confusion_matrix_binary_foreground_is_dataset_iou() -> None:
    target = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    pred = torch.tensor([[[1, 0, 0, 0]], [[0, 1, 0, 0]]])
    cm = ConfusionMatrix(2, ignore_index=None)
    cm.update(pred, target)
    assert float(cm.iou()[1]) == pytest.approx(1 / 3)  # summed intersection 1 over summed union 3


@pytest.mark.parametrize(
    ("pred", "target", "error", "message"),
    [
        (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), TypeError, "pred must hold integer"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long), ValueError, "same shape"),
        (torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long), ValueError, "pred holds class id 3"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), -1), ValueError, "target holds class id -1"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 254), ValueError, "target holds class id 254"),
        (np.zeros((1, 2, 2), dtype=np.int64), torch.zeros(1, 2, 2, dtype=torch.long), TypeError, "torch.Tensor"),
    ],
)
def test_confusion_matrix_rejects(pred: torch.Tensor, target: torch.Tensor, error: type, message: str) -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(error, match=message):
        cm.update(pred, target)


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True])
def test_confusion_matrix_rejects_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        ConfusionMatrix(num_classes)  # type: ignore[arg-type]


def test_confusion_matrix_table() -> None:
    cm = ConfusionMatrix(2, ignore_index=None)
    cm.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]))
    lines = cm.table(["background", "salt"]).splitlines()
    assert lines[1].split() == ["background", "50.00"]
    assert lines[2].split() == ["salt", "50.00"]
    assert lines[3].split()[-1] == "50.00"  # mean IoU
    assert lines[4].split()[-1] == "66.67"  # pixel accuracy
    assert str(cm).splitlines()[1].split() == ["0", "50.00"]
    with pytest.raises(ValueError, match="class_names must have 2 entries"):
        cm.table(["one"])


# --- per-image IoU -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_classes", "ignore"), [(2, None), (4, 255), (21, 255)])
def test_image_iou_matches_reference(num_classes: int, ignore: int | None) -> None:
    generator = torch.Generator().manual_seed(10 + num_classes)
    target = torch.randint(0, min(num_classes, 4), (5, 6, 7), generator=generator)
    pred = torch.randint(0, min(num_classes, 4), (5, 6, 7), generator=generator)
    if ignore is not None:
        target[torch.rand(target.shape, generator=generator) < 0.3] = ignore
    scores = image_iou(pred, target, num_classes, ignore_index=ignore)
    assert scores.dtype == torch.float64 and scores.shape == (5,)
    expected = _reference_image_iou(pred.numpy(), target.numpy(), num_classes, ignore)
    np.testing.assert_allclose(scores.numpy(), expected)


def test_image_iou_special_cases() -> None:
    target = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [0, 0]], [[255, 255], [255, 255]], [[0, 1], [2, 2]]])
    pred = torch.tensor([[[0, 0], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 1]], [[0, 1], [2, 2]]])
    scores = image_iou(pred, target, num_classes=3, ignore_index=255)
    assert scores[0] == 1.0  # empty vs empty: background alone, perfect
    assert scores[1] == pytest.approx(0.25)  # background 2/4, foreground 0/2
    assert torch.isnan(scores[2])  # all void: nothing to score
    assert scores[3] == 1.0


def test_binary_iou() -> None:
    target = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]], [[1, 255], [0, 0]]])
    probs = torch.tensor(
        [[[0.9, 0.2], [0.7, 0.1]], [[0.1, 0.5], [0.0, 0.3]], [[0.2, 0.6], [0.0, 0.0]], [[0.8, 0.9], [0, 0]]]
    )
    expected = torch.tensor([1 / 3, 1.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(binary_iou(probs, target, ignore_index=255), expected)
    torch.testing.assert_close(binary_iou(probs[:, None], target, ignore_index=255), expected)
    torch.testing.assert_close(
        binary_iou(torch.logit(probs.clamp(1e-4, 1 - 1e-4)), target, from_logits=True, ignore_index=255), expected
    )
    torch.testing.assert_close(binary_iou((probs > 0.5).long(), target, ignore_index=255), expected)
    # A lower threshold adds pixel (0, 1) to the first and third images and two false positives to the second.
    lowered = binary_iou(probs, target, threshold=0.15, ignore_index=255)
    torch.testing.assert_close(lowered, torch.tensor([2 / 3, 0.0, 0.5, 1.0], dtype=torch.float64))


def test_binary_iou_rejects_non_binary_target() -> None:
    with pytest.raises(ValueError, match="target holds class id 2"):
        binary_iou(torch.rand(1, 2, 2), torch.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match="target holds class id 255"):
        binary_iou(torch.rand(1, 2, 2), torch.full((1, 2, 2), 255))
    with pytest.raises(TypeError, match=r"scores must be a torch\.Tensor"):
        binary_iou(np.zeros((1, 2, 2)), torch.zeros(1, 2, 2, dtype=torch.long))  # type: ignore[arg-type]


# --- MeanMeter and distributed reduction ---------------------------------------------------------------


def test_mean_meter() -> None:
    meter = MeanMeter()
    assert np.isnan(meter.compute()) and meter.count == 0
    meter.update(torch.tensor([1.0, 0.5]))
    meter.update(torch.tensor([float("nan"), 0.0], dtype=torch.float64))
    assert meter.count == 3
    assert meter.compute() == pytest.approx(0.5)
    meter.reduce_from_all_processes()  # no process group: unchanged
    assert meter.compute() == pytest.approx(0.5)
    meter.reset()
    assert meter.count == 0


def test_reduce_from_all_processes_single_rank_group(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cm = ConfusionMatrix(2, ignore_index=None)
        cm.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]))
        meter = MeanMeter()
        meter.update(torch.tensor([0.25, 0.75]))
        cm.reduce_from_all_processes()
        meter.reduce_from_all_processes()
        assert torch.equal(cm.mat, torch.tensor([[1, 1], [0, 1]]))
        assert meter.compute() == pytest.approx(0.5) and meter.count == 2
    finally:
        dist.destroy_process_group()


# --- TGS competition score -------------------------------------------------------------------------------


def test_salt_score_matches_golden(shared_dir: Path) -> None:
    golden = np.load(shared_dir / "golden" / "tgs_metric.npz")
    scores = salt_score(golden["pred"], golden["truth"])
    assert scores.shape == (600,) and scores.dtype == np.float64
    np.testing.assert_array_equal(scores, golden["score"])
    assert scores.mean() == golden["mean"]
    np.testing.assert_array_equal(scores, _reference_salt(golden["pred"], golden["truth"]))


def _pair(truth_pixels: int, pred_pixels: int, shared: int) -> tuple[np.ndarray, np.ndarray]:
    """1×20 masks with the given areas and overlap."""
    truth = np.zeros((1, 1, 20), dtype=bool)
    pred = np.zeros((1, 1, 20), dtype=bool)
    truth[0, 0, :truth_pixels] = True
    start = truth_pixels - shared
    pred[0, 0, start : start + pred_pixels] = True
    return pred, truth


@pytest.mark.parametrize(
    ("truth_pixels", "pred_pixels", "shared", "expected"),
    [
        (0, 0, 0, 1.0),  # both empty
        (0, 3, 0, 0.0),  # false positive on an empty image
        (3, 0, 0, 0.0),  # missed salt (the histogram-kernel bug case)
        (4, 4, 4, 1.0),
        (2, 2, 1, 0.0),  # IoU 1/3
        (2, 4, 2, 0.0),  # IoU exactly 0.5: not > 0.5
        (3, 5, 3, 0.2),  # IoU exactly 0.6: > 0.5, 0.55 only (0.6 is 0.6000000000000001)
        (7, 10, 7, 0.4),  # IoU 0.7: > 0.5 .. 0.65 (0.7 is 0.7000000000000002)
        (19, 20, 19, 0.9),  # IoU 0.95: every threshold but 0.95
    ],
)
def test_salt_score_cases(truth_pixels: int, pred_pixels: int, shared: int, expected: float) -> None:
    pred, truth = _pair(truth_pixels, pred_pixels, shared)
    assert salt_score(pred, truth)[0] == pytest.approx(expected)
    assert salt_score(pred.astype(np.uint8), truth.astype(np.int64))[0] == pytest.approx(expected)


def test_salt_thresholds_follow_the_reference() -> None:
    assert len(SALT_IOU_THRESHOLDS) == 10
    np.testing.assert_array_equal(SALT_IOU_THRESHOLDS, np.arange(0.5, 1.0, 0.05))


@pytest.mark.parametrize(
    ("pred", "truth", "error", "message"),
    [
        (np.zeros((2, 3)), np.zeros((2, 3)), TypeError, "pred must be a boolean"),
        (np.zeros((2, 3), dtype=bool), np.zeros((2, 3), dtype=bool), ValueError, r"\[N, H, W\]"),
        (np.zeros((1, 2, 3), dtype=bool), np.zeros((1, 3, 2), dtype=bool), ValueError, r"\[N, H, W\]"),
        (np.full((1, 2, 2), 2), np.zeros((1, 2, 2), dtype=bool), ValueError, "pred must hold only 0 and 1"),
    ],
)
def test_salt_score_rejects(pred: np.ndarray, truth: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        salt_score(pred, truth)


# --- threshold search ----------------------------------------------------------------------------------

_THRESHOLD_SETS = {
    "default": None,
    "dense": np.linspace(0.0, 1.0, 101),
    "unsorted_with_duplicates": np.array([0.7, 0.15, 0.5, 0.15, 0.35, 0.5 + 1e-12, 0.95]),
    "outside_unit_range": np.array([-2.0, -0.25, 0.25, 1.5, 3.0]),
    "wide_range_fallback": np.array([0.5, 0.25, 1e7]),  # no small lookup table: binary search
    "one": np.array([0.5]),
}


@pytest.mark.parametrize("thresholds", list(_THRESHOLD_SETS), ids=str)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("metric", ["salt", "iou", "image_iou"])
def test_best_threshold_equals_brute_force(thresholds: str, dtype: type, metric: str) -> None:
    rng = np.random.default_rng(7)
    truth = rng.random((24, 6, 5)) < 0.4
    truth[:4] = False  # empty images
    truth[4] = True
    # Probabilities on a 0.05 grid so many pixels sit exactly on (or one rounding step from) thresholds.
    probs = (np.round(rng.random(truth.shape) * 20) / 20 + truth * rng.random(truth.shape) * 0.3).astype(dtype)
    probs[5] = 0.5
    given = _THRESHOLD_SETS[thresholds]
    best, best_score, scores = best_threshold(probs, truth, given, metric=metric)
    candidates = np.asarray(THRESHOLD_GRID) if given is None else given
    expected = _brute_force_scores(probs, truth, candidates, metric)
    np.testing.assert_array_equal(scores, expected)
    assert best == candidates[int(np.argmax(expected))]
    assert best_score == expected.max()


def test_best_threshold_tiny_gaps_use_exact_comparisons() -> None:
    t = np.float32(0.3)
    probs = np.array([[[np.nextafter(t, np.float32(0)), t, np.nextafter(t, np.float32(1))]]], dtype=np.float32)
    truth = np.array([[[False, False, True]]])
    thresholds = np.array([float(probs[0, 0, 0]), float(t), 0.3, float(probs[0, 0, 2])])
    _, _, scores = best_threshold(probs, truth, thresholds, metric="iou")
    np.testing.assert_array_equal(scores, _brute_force_scores(probs, truth, thresholds, "iou"))
    # float32 0.3 lies above float64 0.3, so thresholds 0.3f and 0.3 differ; at the last nothing is predicted.
    np.testing.assert_array_equal(scores, [0.5, 1.0, 0.5, 0.0])


def test_best_threshold_on_golden_masks(shared_dir: Path) -> None:
    golden = np.load(shared_dir / "golden" / "tgs_metric.npz")
    truth = golden["truth"] > 0
    # Hard predictions as probabilities: any threshold in [0, 1) reproduces the golden score.
    _, best_score, scores = best_threshold(golden["pred"].astype(np.float32), truth, [0.0, 0.5, 0.99])
    # The search rounds the mean once (0.6296666666666667); the golden np.mean is one ulp lower.
    np.testing.assert_allclose(scores, [golden["mean"]] * 3, rtol=1e-15)
    assert best_score == scores[0] == 3778 / 6000
    # Soft probabilities around the golden predictions: the search equals brute force.
    rng = np.random.default_rng(3)
    probs = np.clip(golden["pred"] * 0.6 + rng.normal(0.2, 0.15, truth.shape), 0, 1).astype(np.float32)
    thresholds = np.linspace(0.1, 0.9, 9)
    for metric in ("salt", "iou", "image_iou"):
        _, _, scores = best_threshold(probs, truth, thresholds, metric=metric)
        np.testing.assert_array_equal(scores, _brute_force_scores(probs, truth, thresholds, metric))


def test_best_threshold_takes_torch_tensors_as_numpy() -> None:
    probs = torch.tensor([[[0.2, 0.8], [0.6, 0.1]]])
    truth = torch.tensor([[[0, 1], [0, 0]]])
    best, score, scores = best_threshold(probs.numpy(), truth.numpy(), [0.5, 0.7], metric="iou")
    assert (best, score) == (0.7, 1.0)
    np.testing.assert_array_equal(scores, [0.5, 1.0])


@pytest.mark.parametrize(
    ("probs", "truth", "kwargs", "error", "message"),
    [
        (np.zeros((1, 2, 2), dtype=np.int64), np.zeros((1, 2, 2), dtype=bool), {}, TypeError, "floating-point"),
        (np.zeros((1, 2, 2)), np.zeros((1, 2, 3), dtype=bool), {}, ValueError, r"\[N, H, W\]"),
        (np.zeros((0, 2, 2)), np.zeros((0, 2, 2), dtype=bool), {}, ValueError, "non-empty"),
        (np.full((2, 2, 2), np.nan), np.zeros((2, 2, 2), dtype=bool), {}, ValueError, "image 0 contain NaN"),
        (np.zeros((1, 2, 2)), np.zeros((1, 2, 2), dtype=bool), {"metric": "dice"}, ValueError, "metric must be"),
        (np.zeros((1, 2, 2)), np.zeros((1, 2, 2), dtype=bool), {"thresholds": []}, ValueError, "non-empty 1-D"),
        (np.zeros((1, 2, 2)), np.zeros((1, 2, 2), dtype=bool), {"thresholds": [np.inf]}, ValueError, "finite"),
        (np.zeros((1, 2, 2)), np.full((1, 2, 2), 3), {}, ValueError, "truth must hold only 0 and 1"),
    ],
)
def test_best_threshold_rejects(
    probs: np.ndarray, truth: np.ndarray, kwargs: dict[str, object], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        best_threshold(probs, truth, **kwargs)  # type: ignore[arg-type]
