"""Optimisers and learning-rate schedules of a stage: per epoch or per step, warm-up, poly, plateau."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import (
    ChainedScheduler,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LinearLR,
    PolynomialLR,
)

from lovaszseg.config import ConfigError, StageConfig, builtin_config, load_config
from lovaszseg.training.schedule import (
    build_optimizer,
    build_scheduler,
    is_snapshot_epoch,
    restore_scheduler,
    step_per_batch,
    step_per_epoch,
    warmup_length,
)


def _step_rates(stage: StageConfig, metrics: list[float], steps_per_epoch: int = 1, mode: str = "max") -> list[float]:
    """The learning rate of every optimiser step, stepping as the trainer does: after each optimiser
    step, and (plateau) after each epoch with that epoch's metric."""
    optimizer = build_optimizer(stage, nn.Linear(2, 1))
    scheduler = build_scheduler(stage, optimizer, mode, steps_per_epoch)
    rates = []
    for metric in metrics:
        for _ in range(steps_per_epoch):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()  # no gradients: changes nothing, but is the order the scheduler expects
            step_per_batch(scheduler)
        step_per_epoch(scheduler, metric)
    return rates


def _learning_rates(
    stage: StageConfig, metrics: list[float], mode: str = "max", steps_per_epoch: int = 1
) -> list[float]:
    """The learning rate of each epoch's first step (what summary.csv shows)."""
    return _step_rates(stage, metrics, steps_per_epoch, mode)[::steps_per_epoch]


def _torch_rates(make: type, steps: int, lr: float = 0.1, **kwargs: float) -> list[float]:
    """The learning rates of a torch scheduler (or several chained) stepped ``steps`` times."""
    optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=lr)
    scheduler = make(optimizer, **kwargs)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    ("name", "optimizer_class", "expected"),
    [
        ("adam", torch.optim.Adam, {"lr": 0.1, "weight_decay": 0.01}),
        ("adamw", torch.optim.AdamW, {"lr": 0.1, "weight_decay": 0.01}),
        ("sgd", torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.01, "momentum": 0.8}),
    ],
)
def test_build_optimizer(name: str, optimizer_class: type, expected: dict[str, float]) -> None:
    model = nn.Linear(3, 1)
    model.bias.requires_grad_(False)  # frozen parameters are left out
    stage = StageConfig(optimizer=name, lr=0.1, weight_decay=0.01, momentum=0.8)
    optimizer = build_optimizer(stage, model)
    assert type(optimizer) is optimizer_class
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in expected} == expected
    assert [p.shape for p in group["params"]] == [model.weight.shape]
    assert group["foreach"] is True


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_the_multi_tensor_optimiser_updates_bitwise_as_the_default_loop(name: str) -> None:
    torch.manual_seed(0)
    built = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1))
    default = copy.deepcopy(built)
    stage = StageConfig(optimizer=name, lr=0.01, weight_decay=0.01, momentum=0.9)
    loop_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    extra = {"momentum": 0.9} if name == "sgd" else {}
    optimizers = (build_optimizer(stage, built), loop_class(default.parameters(), lr=0.01, weight_decay=0.01, **extra))
    assert optimizers[1].param_groups[0]["foreach"] is None  # CPU parameters: the per-tensor loop
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        for first, second in zip(built.parameters(), default.parameters(), strict=True):
            first.grad = torch.randn(first.shape, generator=generator)
            second.grad = first.grad.clone()
        for optimizer in optimizers:
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(built.parameters(), default.parameters(), strict=True))


@pytest.mark.parametrize(
    ("schedule", "extra", "expected"),
    [
        ("none", {}, [0.1, 0.1, 0.1, 0.1]),
        ("cosine", {}, [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
        ("cosine", {"min_lr": 0.02}, [0.02 + 0.08 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
        ("cosine_restarts", {"cycles": 2}, [0.1, 0.05, 0.1, 0.05]),
        ("poly", {}, [0.1 * (1 - e / 4) ** 0.9 for e in range(4)]),
        ("poly", {"poly_power": 2, "min_lr": 0.02}, [0.02 + 0.08 * (1 - e / 4) ** 2 for e in range(4)]),
    ],
)
@pytest.mark.parametrize("steps_per_epoch", [1, 3])
def test_schedules_by_epoch(
    schedule: str, extra: dict[str, float], expected: list[float], steps_per_epoch: int
) -> None:
    stage = StageConfig(epochs=4, lr=0.1, schedule=schedule, **extra)
    rates = _step_rates(stage, [0.0] * 4, steps_per_epoch)
    assert rates[::steps_per_epoch] == pytest.approx(expected)
    assert rates == [rate for rate in rates[::steps_per_epoch] for _ in range(steps_per_epoch)]  # flat in an epoch


@pytest.mark.parametrize(
    ("schedule", "extra", "reference", "reference_kwargs"),
    [
        ("cosine", {"min_lr": 0.01}, CosineAnnealingLR, {"T_max": 6, "eta_min": 0.01}),
        ("cosine_restarts", {"cycles": 3, "min_lr": 0.005}, CosineAnnealingWarmRestarts, {"T_0": 2, "eta_min": 0.005}),
    ],
)
def test_per_epoch_cosine_schedules_give_the_torch_schedulers_values(
    schedule: str, extra: dict[str, float], reference: type, reference_kwargs: dict[str, float]
) -> None:
    # The per-epoch schedules were these torch schedulers, stepped after every epoch.
    stage = StageConfig(epochs=6, lr=0.1, schedule=schedule, **extra)
    expected = _torch_rates(reference, 6, **reference_kwargs)
    assert _learning_rates(stage, [0.0] * 6, steps_per_epoch=4) == pytest.approx(expected, rel=1e-12)


def test_per_step_cosine_counts_optimiser_steps() -> None:
    stage = StageConfig(epochs=2, lr=0.1, schedule="cosine", min_lr=0.01, by_epoch=False)
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * k / 8)) / 2 for k in range(8)]
    assert _step_rates(stage, [0.0, 0.0], steps_per_epoch=4) == pytest.approx(expected)
    restarts = StageConfig(epochs=4, lr=0.1, schedule="cosine_restarts", cycles=2, by_epoch=False)
    assert _step_rates(restarts, [0.0] * 4, steps_per_epoch=2) == pytest.approx(
        2 * [0.1 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    )


def test_per_step_poly_is_mmseg_poly_lr() -> None:
    # mmseg's PolyLR(power, eta_min, by_epoch=False): (lr - eta_min) * (1 - t / T) ** power + eta_min.
    stage = StageConfig(epochs=3, lr=0.1, schedule="poly", poly_power=0.9, min_lr=1e-4, by_epoch=False)
    expected = [(0.1 - 1e-4) * (1 - k / 12) ** 0.9 + 1e-4 for k in range(12)]
    assert _step_rates(stage, [0.0] * 3, steps_per_epoch=4) == pytest.approx(expected)
    # Without a floor, torch's PolynomialLR over the stage's steps.
    plain = StageConfig(epochs=3, lr=0.1, schedule="poly", poly_power=2.0, by_epoch=False)
    torch_poly = _torch_rates(PolynomialLR, 12, total_iters=12, power=2.0)
    assert _step_rates(plain, [0.0] * 3, steps_per_epoch=4) == pytest.approx(torch_poly, rel=1e-9)


def test_warm_up_rises_linearly_then_leaves_the_schedule() -> None:
    stage = StageConfig(epochs=2, lr=0.1, schedule="none", warmup_steps=4, warmup_start_factor=0.1)
    assert _step_rates(stage, [0.0, 0.0], steps_per_epoch=3) == pytest.approx([0.01, 0.0325, 0.055, 0.0775, 0.1, 0.1])


def test_warm_up_multiplies_the_schedule_as_torch_linear_lr_chained_with_it() -> None:
    stage = StageConfig(epochs=3, lr=0.1, schedule="cosine", by_epoch=False, warmup_steps=5, warmup_start_factor=0.01)

    def chained(optimizer: torch.optim.Optimizer) -> ChainedScheduler:
        warmup = LinearLR(optimizer, start_factor=0.01, total_iters=5)
        return ChainedScheduler([warmup, CosineAnnealingLR(optimizer, T_max=12)])

    assert _step_rates(stage, [0.0] * 3, steps_per_epoch=4) == pytest.approx(_torch_rates(chained, 12), rel=1e-9)
    by_epoch = stage.model_copy(update={"by_epoch": True})
    cosine = [0.1 * (1 + math.cos(math.pi * (k // 4) / 3)) / 2 for k in range(12)]
    warm = [0.01 + 0.99 * min(k, 5) / 5 for k in range(12)]
    assert _step_rates(by_epoch, [0.0] * 3, steps_per_epoch=4) == pytest.approx(
        [c * w for c, w in zip(cosine, warm, strict=True)]
    )


def test_a_warm_up_longer_than_the_stage_is_shortened_to_it() -> None:
    stage = StageConfig(epochs=2, lr=0.1, schedule="none", warmup_steps=1000, warmup_start_factor=0.2)
    assert warmup_length(stage, steps_per_epoch=3) == 6
    assert _step_rates(stage, [0.0, 0.0], steps_per_epoch=3) == pytest.approx(
        [0.1 * (0.2 + 0.8 * k / 6) for k in range(6)]
    )


def test_warm_up_does_not_combine_with_plateau() -> None:
    with pytest.raises(ConfigError, match=r"stages\.0: .*warmup_steps \(5\) does not combine with schedule plateau"):
        load_config(builtin_config("salt"), ["stages.0.schedule=plateau", "stages.0.warmup_steps=5"])


def test_a_saved_schedule_continues_exactly() -> None:
    stage = StageConfig(epochs=3, lr=0.1, schedule="poly", by_epoch=False, warmup_steps=3)
    straight = _step_rates(stage, [0.0] * 3, steps_per_epoch=4)
    optimizer = build_optimizer(stage, nn.Linear(2, 1))
    scheduler = build_scheduler(stage, optimizer, "max", 4)
    for _ in range(5):
        optimizer.step()
        step_per_batch(scheduler)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as checkpoints are read
    optimizer = build_optimizer(stage, nn.Linear(2, 1))
    scheduler = build_scheduler(stage, optimizer, "max", 4)
    optimizer.load_state_dict(saved["optimizer"])
    restore_scheduler(scheduler, saved["scheduler"], steps_done=4)  # the saved count wins over this one
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_per_batch(scheduler)
    assert rates == straight[5:]


@pytest.mark.parametrize("schedule", ["none", "cosine"])
def test_a_per_epoch_scheduler_state_of_older_runs_restarts_at_its_epoch(schedule: str) -> None:
    # What runs saved before schedules were counted in steps: {} for none, CosineAnnealingLR's state.
    stage = StageConfig(epochs=4, lr=0.1, schedule=schedule)
    optimizer = build_optimizer(stage, nn.Linear(2, 1))
    saved = CosineAnnealingLR(optimizer, T_max=4).state_dict() if schedule == "cosine" else {}
    scheduler = build_scheduler(stage, optimizer, "max", 3)
    restore_scheduler(scheduler, saved, steps_done=6)  # two epochs of 3 steps done
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_per_batch(scheduler)
    assert rates == pytest.approx(_step_rates(stage, [0.0] * 4, steps_per_epoch=3)[6:])


@pytest.mark.parametrize(("mode", "metrics"), [("max", [0.5, 0.5, 0.4, 0.5, 0.6]), ("min", [0.5, 0.5, 0.6, 0.5, 0.4])])
def test_plateau_divides_by_ten_after_patience_epochs_without_improvement(mode: str, metrics: list[float]) -> None:
    stage = StageConfig(epochs=6, lr=0.1, schedule="plateau", patience=2)
    assert _learning_rates(stage, [*metrics, 0.0], mode) == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_snapshot_epochs_end_each_cosine_cycle() -> None:
    stage = StageConfig(epochs=6, schedule="cosine_restarts", cycles=3)
    assert [epoch for epoch in range(1, 7) if is_snapshot_epoch(stage, epoch)] == [2, 4, 6]
    assert not any(is_snapshot_epoch(StageConfig(epochs=6, schedule="cosine"), epoch) for epoch in range(1, 7))


def test_restart_cycles_must_divide_the_stage() -> None:
    with pytest.raises(ConfigError, match=r"stages\.1: .*epochs \(50\) to be a multiple of cycles \(3\)"):
        load_config(builtin_config("salt"), ["stages.1.cycles=3"])
