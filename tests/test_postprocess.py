"""Post-processing (threshold + min-area): exact joint tuning, application, records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lovaszseg.data.spec import DatasetSpec
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.scoring.catalogue import BINARY_METRICS
from lovaszseg.scoring.engine import Scorer
from lovaszseg.scoring.metrics import salt_score
from lovaszseg.scoring.postprocess import (
    AUTO,
    ImageCounts,
    PostProcessing,
    evaluate_postprocessing,
    image_scores,
    load_tuning,
    resolve,
    save_tuning,
    step_classes,
    tune_postprocessing,
)
from lovaszseg.thresholds import THRESHOLD_GRID

SALT = DatasetSpec(
    name="tgs",
    task="binary",
    in_channels=1,
    num_classes=1,
    ignore_index=None,
    original_size=(101, 101),
    resize=None,
    sample_keys=("image", "mask", "id"),
)


def _random_counts(seed: int, images: int = 50) -> ImageCounts:
    """Per-image counts as a model makes them: predicted area shrinks as the threshold grows."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 40, images) * (rng.random(images) < 0.5)
    predicted = np.sort(rng.integers(0, 50, (images, len(THRESHOLD_GRID))), axis=1)[:, ::-1].copy()
    intersection = np.minimum(predicted, truth[:, None]) * (rng.random((images, 1)) < 0.7)
    return ImageCounts(intersection, predicted, truth)


def _brute_force(counts: ImageCounts, metric: str) -> tuple[float, float, int]:
    """Every threshold of the grid and every min-area up to the largest area + 1: the best, first on ties."""
    largest = int(counts.predicted.max()) + 1
    best = None
    for threshold in THRESHOLD_GRID:
        for min_area in range(largest + 1):
            value = evaluate_postprocessing(counts, PostProcessing(threshold, min_area))[metric]
            if best is None or value > best[0]:
                best = (value, threshold, min_area)
    assert best is not None
    return best


@pytest.mark.parametrize("metric", BINARY_METRICS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tuning_finds_the_brute_force_optimum(metric: str, seed: int) -> None:
    counts = _random_counts(seed)
    tuning = tune_postprocessing(counts, metric)
    value, threshold, min_area = _brute_force(counts, metric)
    assert (tuning.chosen.threshold, tuning.chosen.min_area) == (threshold, min_area)
    assert tuning.after[metric] == pytest.approx(value, abs=1e-12)
    assert tuning.images == len(counts)


@pytest.mark.parametrize("metric", BINARY_METRICS)
@pytest.mark.parametrize("seed", range(6))
def test_tuned_post_processing_never_scores_below_the_untuned(metric: str, seed: int) -> None:
    tuning = tune_postprocessing(_random_counts(seed, images=30 + 10 * seed), metric)
    assert tuning.after[metric] >= tuning.before[metric]
    assert tuning.before == evaluate_postprocessing(_random_counts(seed, images=30 + 10 * seed), PostProcessing())


def test_a_known_case_empties_the_small_false_positive() -> None:
    # Three images: a 30-pixel true blob found, an empty image with a 4-pixel false positive, and an
    # empty image predicted empty. The min-area rule (5) empties the false positive: TGS score 2/3 -> 1.
    grid = len(THRESHOLD_GRID)
    counts = ImageCounts(
        intersection=np.array([[30] * grid, [0] * grid, [0] * grid]),
        predicted=np.array([[30] * grid, [4] * grid, [0] * grid]),
        truth=np.array([30, 0, 0]),
    )
    tuning = tune_postprocessing(counts, "salt_score")
    assert tuning.before["salt_score"] == pytest.approx(2 / 3)
    assert (tuning.chosen.threshold, tuning.chosen.min_area, tuning.after["salt_score"]) == (0.05, 5, 1.0)
    assert tuning.threshold_alone == 0.05  # every threshold ties without the rule: the lowest


def test_apply_thresholds_then_empties_small_masks() -> None:
    probs = np.zeros((6, 6), np.float32)
    probs[:2, :2] = 0.9  # 4 pixels
    probs[4, 4] = 0.6
    assert PostProcessing(0.5, 0).apply(probs).sum() == 5
    assert PostProcessing(0.7, 0).apply(probs).sum() == 4
    assert PostProcessing(0.5, 5).apply(probs).sum() == 5  # 5 pixels is not fewer than 5
    assert PostProcessing(0.5, 6).apply(probs).sum() == 0
    assert PostProcessing(0.7, 5).apply(probs).sum() == 0


def test_counts_of_the_metrics_engine_give_the_competition_metric_after_post_processing() -> None:
    """Scorer counts -> evaluate_postprocessing equals applying the rule to each mask and scoring it."""
    rng = np.random.default_rng(3)
    truth = np.zeros((12, 101, 101), np.int64)
    for index in range(0, 12, 2):  # half the images hold salt
        top, left = rng.integers(0, 60, 2)
        truth[index, top : top + 30, left : left + 25] = 1
    probs = np.clip(truth * 0.7 + rng.random(truth.shape) * 0.45, 0, 1).astype(np.float32)
    scorer = Scorer(SALT, keep_images=True)
    scorer.update(torch.from_numpy(probs)[:, None], torch.from_numpy(truth))
    counts = scorer.image_counts()
    for chosen in (PostProcessing(0.5, 0), PostProcessing(0.6, 200), PostProcessing(0.93, 40)):
        masks = np.stack([chosen.apply(p) for p in probs])
        expected = salt_score(masks, truth.astype(bool)).mean()
        assert evaluate_postprocessing(counts, chosen)["salt_score"] == pytest.approx(expected, abs=1e-12)
        per_image = image_scores(counts, chosen)
        np.testing.assert_allclose(per_image, salt_score(masks, truth.astype(bool)), rtol=0, atol=1e-12)
    assert evaluate_postprocessing(counts, PostProcessing())["salt_score"] == pytest.approx(
        scorer.compute()["salt_score"]
    )


def test_a_tuning_is_kept_for_its_models_only(tmp_path: Path) -> None:
    tuning = tune_postprocessing(_random_counts(0), "iou", split="oof", tta="hflip", models=("a*1", "b*1"))
    save_tuning(tmp_path, tuning)
    assert load_tuning(tmp_path, ("a*1", "b*1")) == tuning
    assert load_tuning(tmp_path, ("a*1",)) is None  # another set of models: not theirs
    assert load_tuning(tmp_path / "none", ("a*1",)) is None
    (tmp_path / "postprocess.json").write_text(json.dumps({"metric": "iou"}))
    with pytest.raises(DataError, match=r"postprocess\.json is not a post-processing record"):
        load_tuning(tmp_path, ("a*1", "b*1"))


@pytest.mark.parametrize(
    ("threshold", "min_area", "message"),
    [(1.5, 0, "threshold must be a probability"), (0.5, -1, "min-area must be a non-negative"), (0.5, 2.5, "min-area")],
)
def test_bad_post_processing_values_are_config_errors(threshold: float, min_area: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PostProcessing(threshold, min_area)


def test_tuning_needs_a_known_metric_and_images() -> None:
    with pytest.raises(ConfigError, match="not 'miou'"):
        tune_postprocessing(_random_counts(0), "miou")
    empty = ImageCounts(
        np.zeros((0, len(THRESHOLD_GRID)), int), np.zeros((0, len(THRESHOLD_GRID)), int), np.zeros(0, int)
    )
    with pytest.raises(ConfigError, match="no images"):
        tune_postprocessing(empty)


@pytest.mark.parametrize("metric", BINARY_METRICS)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.77])
def test_a_rule_tuned_at_a_fixed_threshold_is_the_brute_force_optimum_there(metric: str, threshold: float) -> None:
    counts = _random_counts(4)
    tuning = tune_postprocessing(counts, metric, fixed={"threshold": threshold})
    largest = int(counts.predicted.max()) + 1
    values = [evaluate_postprocessing(counts, PostProcessing(threshold, m))[metric] for m in range(largest + 1)]
    assert tuning.chosen == PostProcessing(threshold, int(np.argmax(values)))
    assert tuning.after[metric] == pytest.approx(max(values), abs=1e-12)


def test_the_joint_tuning_keeps_every_thresholds_best_rule_for_auto_at_that_threshold() -> None:
    counts = _random_counts(5)
    joint = tune_postprocessing(counts, "salt_score")
    for threshold in (0.2, 0.5, 0.9):
        at = tune_postprocessing(counts, "salt_score", fixed={"threshold": threshold})
        assert resolve({"threshold": threshold, "min_area": AUTO}, joint, "m") == at.chosen
    assert resolve({"threshold": AUTO, "min_area": AUTO}, joint, "m") == joint.chosen
    alone = resolve({"threshold": AUTO, "min_area": 0}, joint, "m")
    assert alone == tune_postprocessing(counts, "salt_score", fixed={"min_area": 0}).chosen
    assert resolve({"threshold": 0.4}, None, "m") == PostProcessing(0.4, 0)  # nothing auto: no tuning needed


@pytest.mark.parametrize(
    ("requested", "tuning", "message"),
    [
        ({"threshold": AUTO}, None, "m has no tuned post-processing for 'auto'"),
        ({"threshold": 0.333, "min_area": AUTO}, "joint", r"threshold 0\.333 is not one of them"),
        ({"threshold": 0.4, "min_area": AUTO}, "fixed", r"min_area auto was tuned for threshold 0\.50 only"),
        ({"threshold": 1.5, "min_area": AUTO}, "joint", r"threshold must be a probability in \[0, 1\], got 1\.5"),
        ({"gate": 0.5}, None, "unknown post-processing step"),
    ],
)
def test_auto_that_cannot_be_resolved_says_why(requested: dict, tuning: str | None, message: str) -> None:
    made = {
        "joint": tune_postprocessing(_random_counts(0)),
        "fixed": tune_postprocessing(_random_counts(0), fixed={"threshold": 0.5}),
    }
    with pytest.raises(ConfigError, match=message):
        resolve(requested, made.get(tuning or ""), "m")


def test_steps_run_in_order_and_apply_to_a_batch_as_to_each_image() -> None:
    assert [step.name for step in step_classes()] == ["threshold", "min_area", "empty_gate"]
    probs = np.random.default_rng(0).random((4, 9, 9)).astype(np.float32) ** 3
    chosen = PostProcessing(threshold=0.5, min_area=8)
    np.testing.assert_array_equal(chosen.apply(probs), np.stack([chosen.apply(p) for p in probs]))
    assert chosen.values() == {"threshold": 0.5, "min_area": 8, "empty_gate": 0.0} and chosen.min_area == 8
    assert repr(chosen) == "PostProcessing(threshold=0.5, min_area=8, empty_gate=0.0)"
