"""The empty gate: images whose empty-image head probability is below it are predicted empty; tuned jointly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lovaszseg.errors import ConfigError
from lovaszseg.scoring.postprocess import (
    ImageCounts,
    PostProcessing,
    evaluate_postprocessing,
    load_tuning,
    save_tuning,
    tune_postprocessing,
)
from lovaszseg.scoring.postprocess.empty_gate import EmptyGate
from lovaszseg.thresholds import THRESHOLD_GRID


def _counts(seed: int, images: int = 60) -> ImageCounts:
    """Counts with head probabilities that mostly know the empty images (truth 0) from the others."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 40, images) * (rng.random(images) < 0.5)
    predicted = np.sort(rng.integers(0, 50, (images, len(THRESHOLD_GRID))), axis=1)[:, ::-1].copy()
    intersection = np.minimum(predicted, truth[:, None]) * (rng.random((images, 1)) < 0.7)
    head = np.clip(np.where(truth > 0, 0.7, 0.3) + rng.normal(0, 0.25, images), 0, 1).astype(np.float32)
    return ImageCounts(intersection, predicted, truth, head)


def _same_at_every_threshold(
    predicted: list[int], intersection: list[int], truth: list[int], heads: list[float]
) -> ImageCounts:
    """Hand-made counts: each image's predicted and overlapping pixels the same at every threshold."""
    columns = len(THRESHOLD_GRID)
    return ImageCounts(
        np.repeat(np.array(intersection)[:, None], columns, axis=1),
        np.repeat(np.array(predicted)[:, None], columns, axis=1),
        np.array(truth),
        np.array(heads),
    )


@pytest.mark.parametrize("seed", range(4))
def test_a_gate_at_0_changes_nothing(seed: int) -> None:
    counts = _counts(seed)
    for threshold, min_area in ((0.5, 0), (0.3, 12)):
        plain = evaluate_postprocessing(replace(counts, empty=None), PostProcessing(threshold, min_area))
        assert evaluate_postprocessing(counts, PostProcessing(threshold, min_area, 0.0)) == plain
    probs = np.random.default_rng(seed).random((3, 8, 8))
    heads = np.array([0.0, 0.2, 1.0])
    np.testing.assert_array_equal(PostProcessing(0.5, 0, 0.0).apply(probs, heads), probs > 0.5)
    np.testing.assert_array_equal(PostProcessing(0.5, 0, 0.0).apply(probs), probs > 0.5)


def test_a_gate_empties_exactly_the_images_below_it() -> None:
    probs = np.full((3, 4, 4), 0.9)
    masks = PostProcessing(0.5, 0, 0.25).apply(probs, np.array([0.1, 0.25, 0.8]))
    assert masks.reshape(3, -1).all(1).tolist() == [False, True, True]
    assert not masks[0].any()
    counts = ImageCounts(np.full((3, 91), 16), np.full((3, 91), 16), np.array([16, 16, 0]), np.array([0.1, 0.25, 0.8]))
    assert EmptyGate(0.25).empties(counts)[:, 0].tolist() == [True, False, False]


@pytest.mark.parametrize("metric", ["salt_score", "iou", "image_iou"])
@pytest.mark.parametrize("seed", range(4))
def test_the_tuned_gate_never_scores_below_no_gate_on_the_tuning_set(metric: str, seed: int) -> None:
    counts = _counts(seed)
    tuning = tune_postprocessing(counts, metric)
    without = tune_postprocessing(counts, metric, fixed={"empty_gate": 0.0})
    assert tuning.after[metric] >= without.after[metric]
    assert tuning.without["empty_gate"] == without.after  # reported with and without the gate
    # The tuned gate is the best of every cut at the chosen threshold and min-area (brute force).
    chosen = tuning.chosen
    cuts = np.concatenate([[0.0], np.sort(counts.empty) + 1e-6])
    best = max(
        evaluate_postprocessing(counts, PostProcessing(chosen.threshold, chosen.min_area, float(c)))[metric]
        for c in cuts
        if c <= 1
    )
    assert tuning.after[metric] == pytest.approx(best)


def test_a_known_case_where_only_the_gate_empties_the_large_false_positives() -> None:
    # Two salt images predicted right (30 px) and two empty ones with larger false positives (40 px):
    # no min-area can empty the false positives and keep the salt; the head tells them apart.
    counts = _same_at_every_threshold([30, 30, 40, 40], [30, 30, 0, 0], [30, 30, 0, 0], [0.9, 0.8, 0.1, 0.2])
    tuning = tune_postprocessing(counts, "salt_score")
    assert tuning.chosen.empty_gate == pytest.approx(0.5)  # the midpoint between 0.2 and 0.8
    assert tuning.after["salt_score"] == 1.0 and tuning.without["empty_gate"]["salt_score"] == 0.5


@pytest.mark.parametrize("metric", ["salt_score", "iou", "image_iou"])
@pytest.mark.parametrize("seed", range(3))
def test_min_area_and_gate_are_tuned_together_to_the_best_pair(metric: str, seed: int) -> None:
    counts = _counts(seed, images=14)
    column = seed * 20 + 10
    threshold = THRESHOLD_GRID[column]
    tuning = tune_postprocessing(counts, metric, fixed={"threshold": threshold})
    areas = [0, *(int(a) + 1 for a in np.unique(counts.predicted[:, column]))]
    gates = [0.0, *(float(g) + 1e-6 for g in np.unique(counts.empty) if g + 1e-6 <= 1)]
    best = max(  # every pair of cuts, brute force
        evaluate_postprocessing(counts, PostProcessing(threshold, area, gate))[metric]
        for area in areas
        for gate in gates
    )
    assert tuning.after[metric] == pytest.approx(best, abs=1e-12)


def test_a_known_case_where_the_min_area_alone_would_empty_a_right_mask() -> None:
    # One empty image with a small false positive the head cannot tell (0.97), one salt image predicted
    # right (60 px), two empty ones with larger false positives that the head knows (0.1). Tuned one after
    # the other, the min-area (72 px: three right, one lost) leaves the gate nothing; together, min-area
    # 51 px empties the small one, the gate the large ones, and every image is right.
    counts = _same_at_every_threshold([50, 60, 70, 71], [0, 60, 0, 0], [0, 60, 0, 0], [0.97, 0.95, 0.1, 0.1])
    tuning = tune_postprocessing(counts, "salt_score")
    assert (tuning.chosen.min_area, tuning.chosen.empty_gate) == (51, pytest.approx(0.525))
    assert tuning.after["salt_score"] == 1.0
    assert tuning.without["empty_gate"]["salt_score"] == 0.75  # min-area alone: 72 px


def test_counts_without_head_probabilities_tune_the_gate_off() -> None:
    counts = replace(_counts(1), empty=None)
    assert tune_postprocessing(counts, "salt_score").chosen.empty_gate == 0.0


def test_a_gate_above_0_without_head_probabilities_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--empty-gate 0.3 needs .*model.empty_head"):
        PostProcessing(0.5, 0, 0.3).apply(np.zeros((4, 4)))
    with pytest.raises(ConfigError, match=r"empty-gate must be a probability in \[0, 1\], got 1.5"):
        PostProcessing(empty_gate=1.5)


def test_the_gate_is_saved_with_the_tuning_and_old_records_load_without_it(tmp_path: Path) -> None:
    tuning = tune_postprocessing(_counts(0, images=200), "salt_score", models=("m*1",))
    save_tuning(tmp_path, tuning)
    loaded = load_tuning(tmp_path, ("m*1",))
    assert loaded is not None and loaded.chosen == tuning.chosen and loaded.without == tuning.without
    record = json.loads((tmp_path / "postprocess.json").read_text())
    del record["chosen"]["empty_gate"], record["without"], record["by_threshold"]["empty_gate"]
    (tmp_path / "postprocess.json").write_text(json.dumps(record))
    old = load_tuning(tmp_path, ("m*1",))
    assert old is not None and old.chosen.empty_gate == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_a_rule_asked_auto_without_a_threshold_is_the_one_tuned_for_the_default_threshold(seed: int) -> None:
    """``submit --empty-gate auto`` (or ``--min-area auto``) with no ``--threshold``: the threshold is the
    default 0.5 and the rule the one tuned for it (this was a KeyError)."""
    from lovaszseg.scoring.postprocess import AUTO, resolve
    from lovaszseg.thresholds import DEFAULT_THRESHOLD

    tuning = tune_postprocessing(_counts(seed))
    column = THRESHOLD_GRID.index(DEFAULT_THRESHOLD)
    gate, area = tuning.by_threshold["empty_gate"][column], tuning.by_threshold["min_area"][column]
    at_default = {"threshold": DEFAULT_THRESHOLD}
    assert resolve({"empty_gate": AUTO}, tuning, "m") == resolve({**at_default, "empty_gate": AUTO}, tuning, "m")
    assert resolve({"empty_gate": AUTO}, tuning, "m") == PostProcessing(DEFAULT_THRESHOLD, 0, gate)
    assert resolve({"min_area": AUTO, "empty_gate": AUTO}, tuning, "m") == PostProcessing(DEFAULT_THRESHOLD, area, gate)
    assert resolve({"min_area": AUTO, "empty_gate": 0.0}, tuning, "m") == PostProcessing(DEFAULT_THRESHOLD, area, 0.0)
