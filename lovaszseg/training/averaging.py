"""Averages of a stage's weights, both torch's ``swa_utils.AveragedModel``: EMA and SWA.

- ``ema``: an exponential moving average updated after every optimiser step, BatchNorm statistics
  averaged too; it is what validation scores and checkpoints hold as ``"model"``.
- ``swa_epochs``: stochastic weight averaging, the equal mean of the weights at the end of the stage's
  last ``swa_epochs`` epochs (with ``cosine_restarts``: at its last ``swa_epochs`` cycle ends, the
  snapshots). Only the parameters are averaged; the BatchNorm statistics of the mean weights are then
  recomputed on the training data (:func:`recompute_batch_norm`), since an average of running statistics
  is not the statistics of the averaged network.

A checkpoint keeps an average as its module's state dict and its ``n_averaged``
(:func:`average_state`, :func:`restore_average`), so that ``--resume`` continues it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lovaszseg.config import StageConfig

__all__ = [
    "SWA_COUNT_KEY",
    "SWA_WEIGHTS_KEY",
    "average_state",
    "build_ema",
    "build_swa",
    "in_swa_window",
    "recompute_batch_norm",
    "restore_average",
    "restore_swa",
    "swa_entries",
]

# Where a checkpoint keeps the SWA average being built (the trained weights stay its "model").
SWA_WEIGHTS_KEY = "swa_model"
SWA_COUNT_KEY = "swa_n_averaged"


def _frozen(average: AveragedModel) -> AveragedModel:
    average.requires_grad_(False)
    return average


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model`` (parameters and buffers) with ``decay``."""
    return _frozen(AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True))


def build_swa(model: nn.Module) -> AveragedModel:
    """An equal-weight running mean of ``model``'s parameters; its buffers follow ``model``'s (never
    averaged) until :func:`recompute_batch_norm` replaces them."""
    return _frozen(AveragedModel(model, use_buffers=False))


def average_state(average: AveragedModel) -> tuple[dict[str, Tensor], int]:
    """The averaged module's state dict and how many weights it averages, for a checkpoint."""
    return average.module.state_dict(), int(average.n_averaged)


def restore_average(average: AveragedModel, weights: dict[str, Tensor], n_averaged: int) -> None:
    """Undo :func:`average_state` into a freshly built ``average``."""
    average.module.load_state_dict(weights)
    average.n_averaged.fill_(n_averaged)


def in_swa_window(stage: StageConfig, epoch: int) -> bool:
    """Whether the weights at the end of 1-based ``epoch`` join the stage's SWA average.

    Without ``cosine_restarts`` these are the last ``swa_epochs`` epochs; with it, ``swa_epochs``
    counts snapshots: the ends of the last ``swa_epochs`` cycles.
    """
    if not stage.swa_epochs:
        return False
    if stage.schedule == "cosine_restarts":
        length = stage.epochs // stage.cycles
        return epoch % length == 0 and epoch > stage.epochs - stage.swa_epochs * length
    return epoch > stage.epochs - stage.swa_epochs


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches: Iterable[Tensor], forward: nn.Module | None = None) -> int:
    """Replace ``model``'s BatchNorm running statistics by those of ``batches``, as ``swa_utils.update_bn``.

    Each running mean and variance becomes the equal mean over the batches of the batch mean and
    (unbiased) variance (``momentum=None``); the modules' momenta and the model's mode are restored.

    Args:
        model: The model whose statistics are recomputed.
        batches: Input images, already on the model's device.
        forward: What runs the forward pass (e.g. ``model`` with its acceleration); default ``model``.

    Returns:
        The number of batches seen (0 leaves a model without BatchNorm untouched).
    """
    norms = _batch_norms(model)
    if not norms:
        return 0
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    was_training = model.training
    runner = forward if forward is not None else model
    runner.train()
    seen = 0
    for images in batches:
        runner(images)
        seen += 1
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    runner.train(was_training)
    return seen


def swa_entries(average: AveragedModel | None) -> dict[str, Any]:
    """What a checkpoint keeps of a stage's SWA average (nothing without one)."""
    if average is None:
        return {}
    weights, count = average_state(average)
    return {SWA_WEIGHTS_KEY: weights, SWA_COUNT_KEY: count}


def restore_swa(average: AveragedModel, checkpoint: dict[str, Any]) -> None:
    """Continue the SWA average a checkpoint's :func:`swa_entries` hold (if it holds them)."""
    if SWA_WEIGHTS_KEY in checkpoint:
        restore_average(average, checkpoint[SWA_WEIGHTS_KEY], int(checkpoint[SWA_COUNT_KEY]))
