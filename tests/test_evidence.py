"""Intervals over seeds and the paired bootstrap: known answers, and per-image sums that give the engine's metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lovaszseg.data import describe_dataset
from lovaszseg.errors import ConfigError
from lovaszseg.scoring.engine import Scorer
from lovaszseg.scoring.evidence import ImageRecorder, ImageStatistics, Interval, mean_interval, paired_bootstrap


def _means(values: np.ndarray, ids: tuple[str, ...] | None = None) -> ImageStatistics:
    """Statistics of a metric that is the mean of per-image ``values``."""
    ids = ids or tuple(str(i) for i in range(len(values)))
    columns = np.stack([values, np.ones_like(values)], axis=1)
    return ImageStatistics(ids, {"score": columns}, {"score": "ratio"})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # mean 2, sd 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3)
        ([1.0, 2.0, 3.0], (2.0, 2.0 - 2.484138, 2.0 + 2.484138)),
        # mean 0.5, sd sqrt(0.00625), t(0.975, 4) = 2.776445: half-width 2.776445 * 0.0790569 / sqrt(5)
        ([0.4, 0.45, 0.5, 0.55, 0.6], (0.5, 0.5 - 0.0981622, 0.5 + 0.0981622)),
        ([0.7, 0.7], (0.7, 0.7, 0.7)),
    ],
)
def test_mean_interval_is_the_student_t_interval(values: list[float], expected: tuple[float, float, float]) -> None:
    interval = mean_interval(values)
    assert (interval.estimate, interval.low, interval.high) == pytest.approx(expected, abs=1e-6)


def test_mean_interval_of_one_run_has_no_bounds() -> None:
    interval = mean_interval([0.61])
    assert interval.estimate == 0.61 and math.isnan(interval.low) and math.isnan(interval.high)
    assert not interval.excludes_zero


@pytest.mark.parametrize(("low", "high", "real"), [(0.01, 0.03, True), (-0.03, -0.01, True), (-0.01, 0.02, False)])
def test_an_interval_is_real_when_it_excludes_zero(low: float, high: float, real: bool) -> None:
    assert Interval(0.0, low, high).excludes_zero is real


def test_paired_bootstrap_of_a_constant_shift_is_exact() -> None:
    rng = np.random.default_rng(0)
    base = [_means(rng.uniform(0, 0.8, 300)) for _ in range(3)]
    shifted = [_means(stats.values["score"][:, 0] + 0.05) for stats in base]
    interval = paired_bootstrap(shifted, base, "score")
    # Every image of every seed gains exactly 0.05: the pairing removes all image-to-image spread.
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((0.05, 0.05, 0.05), abs=1e-12)
    same = paired_bootstrap(base, base, "score")
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero


def test_paired_bootstrap_over_images_matches_the_normal_interval_of_a_mean() -> None:
    # One seed, n per-image differences d_i ~ N(0.02, 0.3): the interval is mean +- 1.96 sd / sqrt(n).
    rng = np.random.default_rng(1)
    n = 4000
    base = rng.uniform(0, 1, n)
    difference = rng.normal(0.02, 0.3, n)
    interval = paired_bootstrap([_means(base + difference)], [_means(base)], "score", samples=4000)
    half = 1.959964 * difference.std(ddof=1) / math.sqrt(n)
    assert interval.estimate == pytest.approx(difference.mean(), abs=1e-12)
    assert interval.low == pytest.approx(difference.mean() - half, abs=0.1 * half)
    assert interval.high == pytest.approx(difference.mean() + half, abs=0.1 * half)
    assert interval.excludes_zero  # 0.02 is 6.7 standard errors from 0


def test_paired_bootstrap_resamples_seeds() -> None:
    # Per seed the difference is exact (no image noise) but it is +0.1 for one seed and -0.1 for another:
    # seed-to-seed spread alone must make the difference noise.
    rng = np.random.default_rng(2)
    base = [_means(rng.uniform(0, 0.8, 200)) for _ in range(2)]
    entry = [_means(base[0].values["score"][:, 0] + 0.1), _means(base[1].values["score"][:, 0] - 0.1)]
    interval = paired_bootstrap(entry, base, "score")
    assert interval.estimate == pytest.approx(0.0, abs=1e-12)
    assert interval.low == pytest.approx(-0.1) and interval.high == pytest.approx(0.1)
    assert not interval.excludes_zero


def test_paired_bootstrap_refuses_unpaired_runs() -> None:
    first, second = _means(np.zeros(3), ("a", "b", "c")), _means(np.zeros(3), ("a", "b", "d"))
    with pytest.raises(ConfigError, match="different images"):
        paired_bootstrap([first], [second], "score")
    with pytest.raises(ConfigError, match="same seeds"):
        paired_bootstrap([first, first], [first], "score")


def _random_batches(classes: int, ignore: int | None, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for size in (4, 3):
        logits = torch.randn(size, max(classes, 1), 12, 12, generator=generator)
        probs = torch.sigmoid(logits) if classes == 1 else torch.softmax(logits, 1)
        masks = torch.randint(0, max(classes, 2), (size, 12, 12), generator=generator)
        masks[0] = 0  # an empty mask: image scores of empty truths count too
        if ignore is not None:
            masks[:, :2] = ignore
        batches.append((probs, masks))
    return batches


@pytest.mark.parametrize(("name", "options"), [("tgs", {}), ("voc", {}), ("voc_binary", {})])
def test_per_image_sums_give_the_metrics_engine_values(name: str, options: dict) -> None:
    spec = describe_dataset(name, options)
    scorer, recorder = Scorer(spec, keep_images=True), ImageRecorder(spec)
    batches = _random_batches(spec.num_classes if not spec.binary else 1, spec.ignore_index, seed=3)
    for index, (probs, masks) in enumerate(batches):
        scorer.update(probs, masks)
        recorder([f"{index}-{i}" for i in range(len(probs))], probs, masks)
    metrics = scorer.compute()
    statistics = recorder.finish(metrics, scorer.image_counts() if spec.binary else None)
    assert len(statistics.ids) == 7 and set(statistics.values) <= set(metrics)
    expected = {"salt_score", "iou", "image_iou"} if spec.binary else {"miou", "image_miou", "pixel_acc"}
    assert expected - {"salt_score"} <= set(statistics.values)
    for metric in statistics.values:
        assert statistics.metric(metric)[0] == pytest.approx(metrics[metric], abs=1e-9), metric


def test_image_statistics_round_trip_through_a_file(tmp_path) -> None:
    values = {"miou": np.arange(12.0).reshape(3, 4), "pixel_acc": np.ones((3, 2))}
    statistics = ImageStatistics(("a", "b", "c"), values, {"miou": "class_ratio", "pixel_acc": "ratio"})
    statistics.save(tmp_path / "s.npz")
    loaded = ImageStatistics.load(tmp_path / "s.npz")
    assert loaded.ids == statistics.ids and loaded.aggregates == statistics.aggregates
    assert all(np.array_equal(loaded.values[name], values[name]) for name in values)
    assert loaded.metric("miou")[0] == statistics.metric("miou")[0]
