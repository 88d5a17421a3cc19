"""SWA's pieces on hand-made weights and batches: its window, the equal mean, BatchNorm statistics, resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from lovaszseg.config import StageConfig
from lovaszseg.training.averaging import (
    average_state,
    build_swa,
    in_swa_window,
    recompute_batch_norm,
    restore_average,
)


@pytest.mark.parametrize(
    ("settings", "averaged"),
    [
        ({"epochs": 5, "swa_epochs": 2}, [4, 5]),
        ({"epochs": 5, "swa_epochs": 5}, [1, 2, 3, 4, 5]),
        ({"epochs": 5, "swa_epochs": 1, "schedule": "plateau"}, [5]),
        ({"epochs": 6, "swa_epochs": 2, "schedule": "cosine_restarts", "cycles": 3}, [4, 6]),  # snapshots
        ({"epochs": 6, "swa_epochs": 3, "schedule": "cosine_restarts", "cycles": 3}, [2, 4, 6]),
        ({"epochs": 6, "swa_epochs": 1, "schedule": "cosine_restarts", "cycles": 1}, [6]),
        ({"epochs": 5, "swa_epochs": 0}, []),
        ({"epochs": 5, "swa_epochs": None}, []),
    ],
)
def test_swa_window(settings: dict, averaged: list[int]) -> None:
    stage = StageConfig(**settings)
    assert [epoch for epoch in range(1, stage.epochs + 1) if in_swa_window(stage, epoch)] == averaged


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 1, 1))


def _perturbed(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        model[1].running_mean.fill_(float(seed))  # running statistics, which SWA must not average


def test_swa_is_the_equal_mean_of_the_parameters_and_leaves_the_buffers() -> None:
    model = _net()
    swa = build_swa(model)
    snapshots = []
    for seed in range(4):
        _perturbed(model, seed)
        swa.update_parameters(model)
        snapshots.append({name: p.detach().clone() for name, p in model.named_parameters()})
    assert int(swa.n_averaged) == 4
    averaged = dict(swa.module.named_parameters())
    for name in averaged:
        expected = sum(snapshot[name] for snapshot in snapshots) / 4
        torch.testing.assert_close(averaged[name], expected, rtol=0, atol=1e-6)
    assert torch.equal(swa.module[1].running_mean, torch.full((3,), 3.0))  # the last model's, never averaged
    assert not any(p.requires_grad for p in swa.parameters())


def test_a_restored_average_continues_exactly() -> None:
    model = _net()
    straight, first = build_swa(model), build_swa(model)
    for seed in range(2):
        _perturbed(model, seed)
        straight.update_parameters(model)
        first.update_parameters(model)
    weights, count = average_state(first)
    resumed = build_swa(_net())
    restore_average(resumed, weights, count)
    for seed in range(2, 5):
        _perturbed(model, seed)
        straight.update_parameters(model)
        resumed.update_parameters(model)
    assert int(resumed.n_averaged) == int(straight.n_averaged) == 5
    torch.testing.assert_close(resumed.module.state_dict(), straight.module.state_dict(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("batches", [1, 3])
def test_batch_norm_statistics_are_the_mean_over_batches_of_their_statistics(batches: int) -> None:
    model = _net().eval()
    model[1].momentum = 0.3
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(4, 2, 5, 5, generator=generator) * 2 + 1 for _ in range(batches)]
    assert recompute_batch_norm(model, iter(images)) == batches

    with torch.no_grad():  # by hand: the BatchNorm sees the first conv's output
        features = [model[0](batch) for batch in images]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features]).mean(0)
    variances = torch.stack([f.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(model[1].running_mean, means, rtol=0, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, variances, rtol=0, atol=1e-5)
    assert model[1].momentum == 0.3 and not model.training  # both restored

    reference = _net()
    reference.load_state_dict(model.state_dict())
    update_bn(images, reference)  # torch's own, on the same batches
    torch.testing.assert_close(model[1].running_var, reference[1].running_var, rtol=0, atol=1e-6)


def test_a_model_without_batch_norm_is_left_alone() -> None:
    model = nn.Conv2d(1, 1, 1)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert recompute_batch_norm(model, iter([torch.ones(1, 1, 2, 2)])) == 0
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
