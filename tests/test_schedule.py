"""Optimisers and per-epoch learning-rate schedules of a stage."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lovaszseg.config import ConfigError, StageConfig, builtin_config, load_config
from lovaszseg.engine.schedule import build_optimizer, build_scheduler, is_snapshot_epoch, step_scheduler


def _learning_rates(stage: StageConfig, metrics: list[float], mode: str = "max") -> list[float]:
    """The learning rate of each epoch, stepping after each with that epoch's metric."""
    optimizer = build_optimizer(stage, nn.Linear(2, 1))
    scheduler = build_scheduler(stage, optimizer, mode)
    rates = []
    for metric in metrics:
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: changes nothing, but is the order the scheduler expects
        step_scheduler(scheduler, metric)
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


@pytest.mark.parametrize(
    ("schedule", "extra", "expected"),
    [
        ("none", {}, [0.1, 0.1, 0.1, 0.1]),
        ("cosine", {}, [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
        ("cosine", {"min_lr": 0.02}, [0.02 + 0.08 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
        ("cosine_restarts", {"cycles": 2}, [0.1, 0.05, 0.1, 0.05]),
    ],
)
def test_schedules(schedule: str, extra: dict[str, float], expected: list[float]) -> None:
    stage = StageConfig(epochs=4, lr=0.1, schedule=schedule, **extra)
    assert _learning_rates(stage, [0.0] * 4) == pytest.approx(expected)


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
