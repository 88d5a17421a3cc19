"""Balanced batches: the share of empty images per batch, the epoch's length, seeds, DDP ranks, the datasets' flags."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_salt_config
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader, DistributedSampler

from lovaszseg.config import load_config
from lovaszseg.data import build_dataset
from lovaszseg.data.pseudo import PSEUDO_KINDS
from lovaszseg.data.sampling import BalancedBatchSampler, foreground_flags
from lovaszseg.errors import ConfigError
from lovaszseg.runtime.distributed import DistInfo
from lovaszseg.training.trainer import Trainer


def _flags(n: int, empty: int) -> list[bool]:
    flags = [True] * n
    for index in np.random.default_rng(0).choice(n, empty, replace=False):
        flags[index] = False
    return flags


def _shuffled_batches(n: int, batch_size: int, world_size: int) -> int:
    """How many batches the trainer's shuffled loader gives one rank (DistributedSampler and drop_last)."""
    sampler = DistributedSampler(range(n), world_size, 0, shuffle=True) if world_size > 1 else None
    loader = DataLoader(range(n), batch_size=batch_size, sampler=sampler, drop_last=n > batch_size * world_size)
    return len(loader)


@pytest.mark.parametrize(("n", "batch_size", "world_size"), [(40, 8, 1), (41, 8, 1), (40, 8, 2), (45, 8, 3), (5, 8, 1)])
def test_an_epoch_has_as_many_batches_as_shuffling(n: int, batch_size: int, world_size: int) -> None:
    sampler = BalancedBatchSampler(_flags(n, 10 if n > 5 else 2), batch_size, 0.5, seed=0, world_size=world_size)
    batches = list(sampler)
    assert len(batches) == len(sampler) == _shuffled_batches(n, batch_size, world_size)
    assert all(len(batch) == min(batch_size, math.ceil(n / world_size)) for batch in batches)


@pytest.mark.parametrize(("share", "counts"), [(0.5, [4, 4, 4, 4]), (0.25, [2, 2, 2, 2]), (0.3, [2, 2, 3, 2])])
def test_every_batch_holds_the_share_of_empty_images(share: float, counts: list[int]) -> None:
    flags = _flags(33, 5)  # 15% empty: balancing oversamples them
    batches = list(BalancedBatchSampler(flags, 8, share, seed=1))
    assert [sum(not flags[i] for i in batch) for batch in batches] == counts
    # Over the epoch the share is exact to within one image.
    assert abs(sum(counts) - share * 8 * len(batches)) < 1


def test_the_minority_is_revisited_evenly() -> None:
    flags = _flags(80, 6)
    sampler = BalancedBatchSampler(flags, 8, 0.5, seed=2)
    batches = list(sampler)
    seen = Counter(i for batch in batches for i in batch if not flags[i])
    assert set(seen) == {i for i, flag in enumerate(flags) if not flag}
    assert max(seen.values()) - min(seen.values()) <= 1  # shuffled passes: each once before any twice


def test_seeded_per_epoch() -> None:
    flags = _flags(40, 12)
    first, again = BalancedBatchSampler(flags, 8, 0.5, seed=3), BalancedBatchSampler(flags, 8, 0.5, seed=3)
    assert list(first) == list(again)
    epoch_zero = list(first)
    first.set_epoch(1)
    assert list(first) != epoch_zero
    assert list(BalancedBatchSampler(flags, 8, 0.5, seed=4)) != epoch_zero


def test_ranks_share_one_draw_and_each_keeps_the_share() -> None:
    flags = _flags(48, 20)
    ranks = [list(BalancedBatchSampler(flags, 4, 0.5, seed=5, rank=r, world_size=3)) for r in range(3)]
    assert [len(batches) for batches in ranks] == [4, 4, 4]
    assert all(sum(not flags[i] for i in batch) == 2 for batches in ranks for batch in batches)
    # Dealt from one sequence of batches: at each step the ranks hold different images.
    for step in range(4):
        images = [i for batches in ranks for i in batches[step]]
        assert len(set(images)) == len(images)


@pytest.mark.parametrize(("flags", "kind"), [([True] * 10, "without"), ([False] * 10, "with")])
def test_nothing_to_balance_is_an_error_naming_the_share(flags: list[bool], kind: str) -> None:
    with pytest.raises(ConfigError, match=f"data.empty_share: the training split has no image {kind} foreground"):
        BalancedBatchSampler(flags, 4, 0.5, seed=0)
    with pytest.raises(ConfigError, match=r"data.pseudo_share: the training split has no (labelled|pseudo-labelled) "):
        BalancedBatchSampler(flags, 4, 0.5, seed=0, option="data.pseudo_share", kinds=PSEUDO_KINDS)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.2])
def test_a_share_outside_0_1_is_an_error(share: float) -> None:
    with pytest.raises(ConfigError, match=r"data\.empty_share must be in"):
        BalancedBatchSampler([True, False], 2, share, seed=0)


def test_config_refuses_a_bad_sampler_or_share() -> None:
    with pytest.raises(ConfigError, match=r"data\.sampler: .*'shuffle' or 'balanced'"):
        load_config(None, ["data.sampler=uniform"])
    with pytest.raises(ConfigError, match=r"data\.empty_share: Input should be less than 1"):
        load_config(None, ["data.empty_share=1"])


def test_tgs_flags_are_the_masks_salt(tiny_salt: Path) -> None:
    dataset = build_dataset("tgs", tiny_salt, "all", train=False)
    flags = foreground_flags(dataset)
    expected = [bool(dataset[i]["mask"].any()) for i in range(len(dataset))]
    assert flags == expected and True in flags and False in flags


def test_folder_and_voc_flags_ignore_void(tmp_path: Path, tiny_voc: Path) -> None:
    masks = {
        "void": np.full((8, 8), 255, np.uint8),
        "background": np.zeros((8, 8), np.uint8),
        "object": np.pad(np.full((2, 2), 2, np.uint8), 3),
        "object-and-void": np.where(np.eye(8, dtype=bool), 255, 1).astype(np.uint8),
    }
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for sample_id, mask in masks.items():
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"{sample_id}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{sample_id}.png")
    dataset = build_dataset("folder", tmp_path, "all", train=False, num_classes=3, ignore_index=255)
    flags = dict(zip(dataset.ids, foreground_flags(dataset), strict=True))
    assert flags == {"void": False, "background": False, "object": True, "object-and-void": True}
    voc = build_dataset("voc", tiny_voc, "train", train=False)
    expected = [bool(((m := voc[i]["mask"]) > 0).logical_and(m != 255).any()) for i in range(len(voc))]
    assert foreground_flags(voc) == expected


def test_the_trainer_feeds_balanced_batches(tiny_salt: Path, tmp_path: Path) -> None:
    overrides = {"data": {"sampler": "balanced", "empty_share": 0.25, "batch_size": 4}}
    config = load_config(tiny_salt_config(tiny_salt, tmp_path, **overrides))
    trainer = Trainer(config, DistInfo(0, 1, torch.device("cpu")), Console(quiet=True), pretrained=False)
    shuffled = _shuffled_batches(len(trainer.train_set), 4, 1)
    batches = list(trainer.train_loader)
    assert len(batches) == shuffled
    assert [int((batch["mask"].flatten(1).sum(1) == 0).sum()) for batch in batches] == [1] * shuffled
