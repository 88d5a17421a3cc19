"""The training loop on tiny data: two stages, resume, faults, run folders, checkpoints, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_salt_config, write_config

import lovaszseg.engine.trainer as engine_train
from lovaszseg.config import load_config
from lovaszseg.engine import TrainingError, train
from lovaszseg.engine.checkpoint import load_checkpoint, save_checkpoint
from lovaszseg.engine.runs import evaluate_run


def _config(root: Path, runs: Path, **sections):
    return load_config(tiny_salt_config(root, runs, **sections))


def test_two_stage_run_writes_the_run_folder_and_stage_two_starts_from_stage_one_best(
    tiny_salt: Path, tmp_path: Path
) -> None:
    # Stage 2 with a vanishing learning rate: its weights stay those it started from.
    config = _config(
        tiny_salt,
        tmp_path,
        stages=[
            {"name": "bce", "loss": "bce", "epochs": 3, "lr": 0.02},
            {"name": "frozen", "loss": "lovasz_hinge", "epochs": 1, "lr": 1e-12, "schedule": "none"},
        ],
    )
    result = train(config)
    run = result.run_dir
    for name in ("config.yaml", "summary.csv", "curves.png", "last.pt", "best.pt", "model.safetensors", "config.json"):
        assert (run / name).is_file(), name
    assert [row["stage"] for row in result.history] == ["1-bce", "1-bce", "1-bce", "2-frozen"]
    assert set(result.best_metrics) >= {"salt_score", "iou", "image_iou"}
    stage_one_best = load_checkpoint(run / "stage1_best.pt")["model"]
    stage_two = load_checkpoint(run / "stage2_last.pt")["model"]
    for name, tensor in stage_two.items():
        if name.endswith(("weight", "bias")) and "bn" not in name and "running" not in name:
            torch.testing.assert_close(tensor, stage_one_best[name], rtol=0, atol=1e-9)


def test_resume_after_an_interruption_gives_the_same_weights(tiny_salt: Path, tmp_path: Path) -> None:
    config = _config(tiny_salt, tmp_path)
    straight = train(config, run_dir=tmp_path / "straight")
    interrupted = train(config, run_dir=tmp_path / "interrupted", stop_after_epochs=3)
    assert not interrupted.completed
    assert load_checkpoint(tmp_path / "interrupted" / "last.pt")["stage"] == 1  # inside stage 2
    resumed = train(resume=tmp_path / "interrupted")
    assert resumed.completed and len(resumed.history) == 4
    final_a = load_checkpoint(straight.run_dir / "last.pt")["model"]
    final_b = load_checkpoint(resumed.run_dir / "last.pt")["model"]
    assert all(torch.equal(final_a[name], final_b[name]) for name in final_a)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_non_finite_loss_stops_with_stage_epoch_and_step_and_keeps_the_last_checkpoint(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_build_loss = engine_train.build_loss

    def exploding(spec, ignore_index=None):
        loss = real_build_loss(spec, ignore_index=ignore_index)

        def forward(logits, masks):
            calls["n"] += 1
            value = loss(logits, masks)
            return value * float("nan") if calls["n"] == 5 else value  # step 2 of epoch 2

        return forward

    monkeypatch.setattr(engine_train, "build_loss", exploding)
    config = _config(tiny_salt, tmp_path)
    with pytest.raises(TrainingError, match=r"stage 1-bce, epoch 2, step 2.*last\.pt"):
        train(config, run_dir=tmp_path / "nan")
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["epoch"] == 1


def test_existing_run_folder_is_never_overwritten_silently(tiny_salt: Path, tmp_path: Path) -> None:
    config = _config(tiny_salt, tmp_path, stages=[{"name": "bce", "loss": "bce", "epochs": 1}])
    first = train(config)
    second = train(config)
    assert first.run_dir == tmp_path / "tiny" and second.run_dir == tmp_path / "tiny-2"
    marker = first.run_dir / "mine.txt"
    marker.write_text("x")
    third = train(config, overwrite=True)
    assert third.run_dir == first.run_dir and not marker.exists()


def test_checkpoints_load_with_weights_only_and_refuse_code(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}, "config": {"a": 1}, "rng": [1, 2]})
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["model"]["w"], torch.ones(2))
    torch.save({"model": {}, "config": {}, "payload": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable lovaszseg checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no 'model' and 'config'"):
        load_checkpoint(tmp_path / "other.pt")
    assert not list(tmp_path.glob(".*.tmp"))


class _Payload:
    """Any object that is not a tensor or plain data: weights_only loading must refuse it."""


def test_distributed_two_cpu_processes_match_single_process_evaluation(tiny_salt: Path, tmp_path: Path) -> None:
    config = tiny_salt_config(
        tiny_salt,
        tmp_path,
        stages=[{"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.01}],
        data={"batch_size": 4},
        train={"find_unused_parameters": True},  # the tiny encoder_depth=3 model leaves resnet layers unused
    )
    path = write_config(tmp_path / "ddp.yaml", config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lovaszseg",
        "train",
        str(path),
        "--run-dir",
        str(tmp_path / "ddp"),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    checksums = json.loads((tmp_path / "ddp" / "distributed.json").read_text())["weights_checksum_per_rank"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    last = load_checkpoint(tmp_path / "ddp" / "last.pt")
    single = evaluate_run(tmp_path / "ddp" / "last.pt", device="cpu", out=tmp_path)
    for name in ("salt_score", "iou", "image_iou"):
        assert last["metrics"][name] == pytest.approx(single[name], rel=1e-6, abs=1e-9), name


def test_early_stopping_ends_a_stage_after_patience_epochs_without_improvement(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flat = {"salt_score": 0.5, "iou": 0.5, "image_iou": 0.5, "val_loss": 1.0}
    monkeypatch.setattr(engine_train, "evaluate", lambda *args, **kwargs: dict(flat))
    config = _config(
        tiny_salt,
        tmp_path,
        stages=[{"name": "a", "loss": "bce", "epochs": 5}, {"name": "b", "loss": "bce", "epochs": 1}],
        train={"seed": 0, "device": "cpu", "early_stopping": 2, "max_steps_per_epoch": 1},
    )
    result = train(config)
    assert [row["stage"] for row in result.history] == ["1-a", "1-a", "1-a", "2-b"]
