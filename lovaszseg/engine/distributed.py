"""torchrun / DistributedDataParallel plumbing: process group, device, sharding and sync helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistInfo", "ShardSampler", "any_rank", "broadcast_buffers", "broadcast_object", "cleanup", "setup"]


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
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.

    Returns:
        This process's rank, world size and device.
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available; use train.device=cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return DistInfo(rank, world_size, torch.device("cuda", local_rank))
    return DistInfo(rank, world_size, torch.device("cpu"))


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
