"""Checkpoints: atomic writes, weights_only loading, RNG states that survive a save/load round trip."""

from __future__ import annotations

import errno
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lovaszseg.errors import CheckpointError, OutputError
from lovaszseg.storage.checkpoint import capture_rng, checkpoint_bytes, load_checkpoint, restore_rng, save_checkpoint


def _draw() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    _draw()
    save_checkpoint(tmp_path / "rng.pt", {"model": {}, "config": {}, "rng": capture_rng()})
    expected = _draw()
    _draw()  # move every generator on
    restore_rng(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draw() == expected


def test_checkpoints_load_with_weights_only_and_refuse_code(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}, "config": {"a": 1}, "metrics": {"iou": 0.5}})
    state = load_checkpoint(tmp_path / "ok.pt")
    assert torch.equal(state["model"]["w"], torch.ones(2)) and state["metrics"] == {"iou": 0.5}
    torch.save({"model": {}, "config": {}, "payload": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt is not a readable lovaszseg checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is not a readable"):
        load_checkpoint(tmp_path / "truncated.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    """Any object that is not a tensor or plain data: weights_only loading must refuse it."""


def test_a_failed_rename_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "config": {}})

    def crash_before_rename(source: str, target: str) -> None:  # the data is written, the rename never happens
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", crash_before_rename)
    with pytest.raises(OutputError, match=rf"^cannot write {re.escape(str(path))}: Input/output error$"):
        save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("serialised", [False, True], ids=["dict", "bytes"])
@pytest.mark.parametrize("size", [2, 100_000], ids=["small", "larger_than_the_buffer"])
def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one_byte_for_byte(
    tmp_path: Path, request: pytest.FixtureRequest, serialised: bool, size: int
) -> None:
    path = tmp_path / "stage1_last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "epoch": 1})
    before = path.read_bytes()
    request.getfixturevalue("full_disk")
    state = {"model": {"w": torch.ones(size)}, "epoch": 2}
    with pytest.raises(OutputError, match=rf"^cannot write {re.escape(str(path))}: No space left on device$"):
        save_checkpoint(path, checkpoint_bytes(state) if serialised else state)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1_last.pt"]  # no temporary left


def test_serialised_once_equals_saved_directly(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3}
    save_checkpoint(tmp_path / "a.pt", checkpoint_bytes(state))
    save_checkpoint(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert load_checkpoint(tmp_path / "a.pt")["epoch"] == 3
