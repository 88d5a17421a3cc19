"""torchrun / DistributedDataParallel plumbing: process group, device, sharding and sync helpers."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from lovaszseg.errors import ConfigError, LovaszsegError

__all__ = [
    "DEVICE_NAMES",
    "DistInfo",
    "ShardSampler",
    "any_rank",
    "broadcast_buffers",
    "broadcast_object",
    "cleanup",
    "mean_over_ranks",
    "on_main",
    "open_on_main",
    "resolve_device",
    "setup",
    "wrap_model",
]

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
T = TypeVar("T")


class _HasPath(Protocol):
    path: Path


Folder = TypeVar("Folder", bound=_HasPath)


def resolve_device(name: str) -> torch.device:
    """The device a user named: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: an unknown name, or CUDA asked for where there is none (or not that many GPUs).
    """
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ConfigError(f"unknown device {name!r}; use {DEVICE_NAMES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available here; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    return device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank 0 of 1 when not launched by torchrun."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> DistInfo:
    """Join the torchrun process group if launched by torchrun (nccl on GPU, gloo on CPU).

    Args:
        device: See :func:`resolve_device`.

    Returns:
        This process's rank, world size and device.

    Raises:
        ConfigError: see :func:`resolve_device`.
    """
    use_cuda = resolve_device(device).type == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return DistInfo(rank, world_size, torch.device("cuda", local_rank))
    return DistInfo(rank, world_size, torch.device("cpu"))


def joined() -> bool:
    """Whether this process is already in a process group (then :func:`setup` keeps it)."""
    return dist.is_available() and dist.is_initialized()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run folder rank 0 chose)."""
    if not info.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def on_main(info: DistInfo, compute: Callable[[], T]) -> T:
    """Rank 0 computes a value (e.g. generates the demo data, returning its folder) and every rank gets
    it; a user error raised there is raised on every rank, so that all of them stop."""
    value, error = None, None
    if info.is_main:
        try:
            value = compute()
        except LovaszsegError as caught:
            error = caught
    value, error = broadcast_object((value, error), info)
    if error is not None:
        raise error
    return value


def open_on_main(info: DistInfo, open_folder: Callable[[], Folder], reopen: Callable[[Path], Folder]) -> Folder:
    """Rank 0 creates (or reopens) and locks a run or cv folder; the other ranks get one at its path."""
    opened: list[Folder] = []

    def path() -> Path:
        opened.append(open_folder())
        return opened[0].path

    where = on_main(info, path)
    return opened[0] if opened else reopen(where)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is set on any rank, e.g. a stop request that reached only some processes.

    All ranks must then leave the training loop at the same step: a rank that stopped alone would
    leave the others waiting in the gradient all-reduce.
    """
    if not info.distributed:
        return flag
    value = torch.tensor([float(flag)], device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(total: float, count: int, info: DistInfo) -> float:
    """``sum(total) / sum(count)`` over all ranks (e.g. the epoch's training loss)."""
    if not info.distributed:
        return total / max(count, 1)
    sums = torch.tensor([total, count], dtype=torch.float64, device=info.device)
    dist.all_reduce(sums)
    return float(sums[0] / sums[1].clamp_min(1))


def wrap_model(model: nn.Module, info: DistInfo, find_unused_parameters: bool) -> nn.Module:
    """The model to train: wrapped in DistributedDataParallel under torchrun, else itself."""
    if not info.distributed:
        return model
    return DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP syncs buffers at the start of each forward pass, so after the last training step every rank
    holds statistics of its own batch; validation and checkpoints must all use the same ones.
    """
    if info.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, in order, without the padding DistributedSampler adds.

    For evaluation: each sample is scored exactly once across ranks, so reduced metrics equal a
    single-process evaluation.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
