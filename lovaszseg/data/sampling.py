"""Balanced training batches: a set share of images without foreground (or pseudo-labelled) in every batch.

With most images empty (or most full), a per-image loss can collapse to predicting the majority; an
issue on the Lovász authors' repository reports exactly that, fixed by batches balanced between empty
and non-empty images. :class:`BalancedBatchSampler` draws each batch's empty and non-empty images from
two shuffled streams (each image of a pool seen once before any is seen twice), so the epoch keeps its
length and the minority pool is revisited as often as the share asks. The same draw mixes labelled
and pseudo-labelled images at ``data.pseudo_share``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from lovaszseg.data.registry import SegmentationDataset
from lovaszseg.errors import ConfigError

__all__ = ["FOREGROUND_KINDS", "BalancedBatchSampler", "foreground_flags"]

# What a True and a False foreground flag are, in the messages.
FOREGROUND_KINDS = ("image with foreground", "image without foreground")


def foreground_flags(dataset: SegmentationDataset) -> list[bool]:
    """Whether each image (in ``dataset.ids`` order) has a foreground pixel (a class other than 0 and void)."""
    return [dataset.has_foreground(sample_id) for sample_id in dataset.ids]


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices with a fixed share of empty images, the same number of batches as shuffling.

    Every batch holds ``floor((b + 1) * s) - floor(b * s)`` empty images (``s = empty_share *
    batch_size``, ``b`` the batch's place in the epoch): the epoch's share is exact and each batch is
    within one image of it. Under DDP the epoch's batches are drawn once from the seed and dealt to the
    ranks in turn, so the ranks see different images and together the same share.

    Args:
        foreground: Per dataset index, whether the image has foreground (:func:`foreground_flags`).
        batch_size: Images per batch on each rank.
        empty_share: Share of empty images per batch, in (0, 1).
        seed: Seed of the draws; :meth:`set_epoch` varies them per epoch.
        rank: This process's rank.
        world_size: Number of processes.
        option: The config key of the share, for messages.
        kinds: What a True and a False flag are, for messages.

    Raises:
        ConfigError: the images are all of one kind (nothing to balance), or a share outside (0, 1).
    """

    def __init__(
        self,
        foreground: Sequence[bool],
        batch_size: int,
        empty_share: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        option: str = "data.empty_share",
        kinds: tuple[str, str] = FOREGROUND_KINDS,
    ) -> None:
        if not 0 < empty_share < 1:
            raise ConfigError(f"{option} must be in (0, 1), got {empty_share!r}")
        flags = np.asarray(foreground, dtype=bool)
        self.empty, self.full = np.flatnonzero(~flags), np.flatnonzero(flags)
        if not len(self.empty) or not len(self.full):
            kind = kinds[1] if not len(self.empty) else kinds[0]
            raise ConfigError(f"{option}: the training split has no {kind} ({len(flags)} images) to balance")
        self.empty_share, self.seed, self.rank, self.world_size = empty_share, seed, rank, world_size
        per_rank = math.ceil(len(flags) / world_size)
        # As a shuffled loader with drop_last: whole batches only, unless the data fill less than one.
        self.batch_size = min(batch_size, per_rank)
        self.batches = per_rank // self.batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw another epoch's batches (the trainer calls it before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.batches * self.world_size
        per_batch = self.empty_share * self.batch_size
        empty_counts = np.diff(np.floor(np.arange(total + 1) * per_batch).astype(int))
        empty = _stream(self.empty, int(empty_counts.sum()), rng)
        full = _stream(self.full, int((self.batch_size - empty_counts).sum()), rng)
        empty_at = full_at = 0
        for index, count in enumerate(empty_counts.tolist()):
            filled = self.batch_size - count
            chosen = np.concatenate([empty[empty_at : empty_at + count], full[full_at : full_at + filled]])
            batch = rng.permutation(chosen)
            empty_at, full_at = empty_at + count, full_at + filled
            if index % self.world_size == self.rank:
                yield batch.tolist()


def _stream(pool: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` indices from ``pool``: shuffled passes over it, one after another."""
    passes = max(1, math.ceil(length / len(pool)))
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:length]
