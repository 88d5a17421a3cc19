"""A stage's optimiser and learning-rate schedule, stepped once per epoch."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, CosineAnnealingWarmRestarts, LRScheduler, ReduceLROnPlateau

from lovaszseg.config import StageConfig

__all__ = ["build_optimizer", "build_scheduler", "cycle_length", "is_snapshot_epoch", "step_scheduler"]


def build_optimizer(stage: StageConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with momentum) over the trainable parameters, at the stage's learning rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
    optimizer_class = torch.optim.AdamW if stage.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(params, lr=stage.lr, weight_decay=stage.weight_decay)


def cycle_length(stage: StageConfig) -> int:
    """Epochs per cosine cycle: the whole stage, or ``epochs / cycles`` for ``cosine_restarts``."""
    return stage.epochs // stage.cycles if stage.schedule == "cosine_restarts" else stage.epochs


def build_scheduler(
    stage: StageConfig, optimizer: torch.optim.Optimizer, mode: str
) -> LRScheduler | ReduceLROnPlateau | None:
    """The stage's schedule: ``none``, ``cosine`` (to ``min_lr`` over the stage), ``cosine_restarts``
    (``cycles`` equal cosine cycles, the learning rate jumping back up after each) or ``plateau``
    (divide by 10 after ``patience`` epochs without improvement of the monitored metric).

    Args:
        stage: The stage config.
        optimizer: Its optimiser.
        mode: ``"max"`` or ``"min"``: the direction in which the monitored metric improves.

    Returns:
        A scheduler to pass to :func:`step_scheduler` after every epoch, or None for ``none``.
    """
    if stage.schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=stage.epochs, eta_min=stage.min_lr)
    if stage.schedule == "cosine_restarts":
        return CosineAnnealingWarmRestarts(optimizer, T_0=cycle_length(stage), eta_min=stage.min_lr)
    if stage.schedule == "plateau":
        return ReduceLROnPlateau(optimizer, mode=mode, patience=stage.patience, min_lr=stage.min_lr)
    return None


def step_scheduler(scheduler: LRScheduler | ReduceLROnPlateau | None, metric: float) -> None:
    """Advance the schedule by one epoch (``plateau`` looks at the epoch's monitored metric)."""
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(metric)
    elif scheduler is not None:
        scheduler.step()


def is_snapshot_epoch(stage: StageConfig, epoch: int) -> bool:
    """Whether 1-based ``epoch`` ends a ``cosine_restarts`` cycle (a snapshot-ensemble member)."""
    return stage.schedule == "cosine_restarts" and epoch % cycle_length(stage) == 0
