"""DDP plumbing: evaluation shards, and a real 2-process gloo run against single-process evaluation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_salt_config, write_config

from lovaszseg.errors import ConfigError
from lovaszseg.runtime import distributed
from lovaszseg.storage.checkpoint import load_checkpoint
from lovaszseg.storage.summary import read_summary
from lovaszseg.workflows.runs import evaluate_run


@pytest.mark.parametrize(("length", "world_size"), [(10, 1), (10, 3), (7, 2), (1, 4), (0, 2)])
def test_shards_cover_every_sample_exactly_once(length: int, world_size: int) -> None:
    shards = [list(distributed.ShardSampler(length, rank, world_size)) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))  # no padding duplicates
    assert [len(distributed.ShardSampler(length, rank, world_size)) for rank in range(world_size)] == [
        len(shard) for shard in shards
    ]


def test_setup_outside_torchrun_is_rank_zero_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.setup("cpu")
    assert (info.rank, info.world_size, info.device, info.is_main, info.distributed) == (
        0,
        1,
        torch.device("cpu"),
        True,
        False,
    )
    assert distributed.broadcast_object("runs/x", info) == "runs/x"
    assert (distributed.any_rank(True, info), distributed.any_rank(False, info)) == (True, False)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "auto"])
def test_cuda_without_a_gpu_is_a_config_error_saying_what_to_use(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if name == "auto":  # auto falls back to the CPU
        assert distributed.resolve_device(name) == torch.device("cpu") and distributed.setup(name).device.type == "cpu"
        return
    message = f"device {name!r} asked for, but no CUDA GPU is available here; use cpu or auto"
    with pytest.raises(ConfigError, match=re.escape(message)):
        distributed.resolve_device(name)
    with pytest.raises(ConfigError, match=re.escape(message)):
        distributed.setup(name)


@pytest.mark.parametrize("name", ["gpu", "GPU", "cuda0", "cuda:", "cuda:-1", "cpu:0", "mps", "", " cpu", 0, None])
def test_unknown_devices_name_the_value_and_the_allowed_names(name: object) -> None:
    with pytest.raises(ConfigError) as caught:
        distributed.resolve_device(name)  # type: ignore[arg-type]
    assert str(caught.value) == f"unknown device {name!r}; use {distributed.DEVICE_NAMES}"
    assert distributed.DEVICE_NAMES == "auto, cpu, cuda or cuda:N"


def test_a_gpu_index_beyond_the_gpus_there_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert distributed.resolve_device("cuda") == torch.device("cuda")
    assert distributed.resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match=re.escape("device 'cuda:2' asked for, but only 2 GPU(s) exist")):
        distributed.resolve_device("cuda:2")


def test_cpu_is_always_available() -> None:
    assert distributed.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "stage",
    [
        {},
        # The weight average is validated and saved: each rank must hold the same one (its BatchNorm
        # statistics are broadcast before validation), or the sharded scores would not match one process.
        {"ema": 0.9, "warmup_steps": 3, "schedule": "poly", "by_epoch": False},
    ],
    ids=["plain", "ema-warmup-per-step-poly"],
)
def test_two_cpu_processes_end_equal_and_match_single_process_evaluation(
    tiny_salt: Path, tmp_path: Path, stage: dict
) -> None:
    config = tiny_salt_config(
        tiny_salt,
        tmp_path,
        stages=[{"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.01, **stage}],
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
    # Only rank 0 writes: one summary row per epoch, not one per rank.
    assert [row["epoch"] for row in read_summary(tmp_path / "ddp" / "summary.csv")] == ["1", "2"]
    last = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ("train_model" in last) == ("ema" in stage)  # with ema, "model" is the average
    single = evaluate_run(tmp_path / "ddp" / "last.pt", device="cpu", out=tmp_path)
    for name in ("salt_score", "iou", "image_iou"):
        assert last["metrics"][name] == pytest.approx(single[name], rel=1e-6, abs=1e-9), name
    # The finished run: one saved config (also in the exported model's header), no config.json.
    assert (tmp_path / "ddp" / "config.yaml").is_file() and (tmp_path / "ddp" / "model.safetensors").is_file()
    assert not (tmp_path / "ddp" / "config.json").exists()


def test_cross_validation_under_torchrun_trains_every_fold_with_both_processes(tiny_salt: Path, tmp_path: Path) -> None:
    """One process group for all folds; rank 0 alone writes the cv folder and the out-of-fold predictions."""
    config = tiny_salt_config(
        tiny_salt,
        tmp_path,
        stages=[{"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.01}],
        data={"batch_size": 4, "options": {}},
        train={"find_unused_parameters": True},
    )
    path = write_config(tmp_path / "ddp.yaml", config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lovaszseg"]
    command += ["cv", str(path), "--folds", "2", "--run-dir", str(tmp_path / "cv")]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for fold in range(2):
        checksums = json.loads((tmp_path / "cv" / f"fold-{fold}" / "distributed.json").read_text())
        assert len(checksums["weights_checksum_per_rank"]) == 2
        assert checksums["weights_checksum_per_rank"][0] == checksums["weights_checksum_per_rank"][1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cv")) == ["cv"]  # no second folder
    rows = json.loads((tmp_path / "cv" / "cv.json").read_text())["rows"]
    assert [row["fold"] for row in rows] == ["0", "1", "oof", "oof, tuned"] and rows[2]["images"] == 24
    assert completed.stdout.count("lovaszseg cv") == 1  # the table, printed by rank 0 only


def test_two_cpu_processes_train_heads_and_an_swa_average_that_scores_as_one_process(
    tiny_salt: Path, tmp_path: Path
) -> None:
    """An empty-image head, deep supervision and an SWA average under DDP: the ranks end equal, and the
    average (its BatchNorm statistics recomputed on each rank's shard, then rank 0's broadcast) scores in
    two processes what it scores in one."""
    config = tiny_salt_config(
        tiny_salt,
        tmp_path,
        model={**tiny_salt_config(tiny_salt, tmp_path)["model"], "empty_head": 0.5, "deep_supervision": 0.5},
        stages=[{"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.01, "swa_epochs": 2}],
        data={"batch_size": 4},
        train={"find_unused_parameters": True},
    )
    path = write_config(tmp_path / "ddp.yaml", config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lovaszseg"]
    command += ["train", str(path), "--run-dir", str(tmp_path / "ddp")]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    checksums = json.loads((tmp_path / "ddp" / "distributed.json").read_text())["weights_checksum_per_rank"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    rows = read_summary(tmp_path / "ddp" / "summary.csv")
    assert [row["epoch"] for row in rows] == ["1", "2", "swa"]  # rank 0 alone writes; the average validated once
    swa = load_checkpoint(tmp_path / "ddp" / "stage1_swa.pt")
    assert swa["swa_n_averaged"] == 2
    heads = {name.split(".")[0] for name in swa["model"]} & {"classification_head", "deep_heads"}
    assert heads == {"classification_head", "deep_heads"}
    scored = ("salt_score", "iou", "image_iou", "empty_head_accuracy")
    for name in ("stage1_swa.pt", "last.pt"):
        checkpoint = load_checkpoint(tmp_path / "ddp" / name)
        single = evaluate_run(tmp_path / "ddp" / name, device="cpu", out=tmp_path / name)
        for metric in scored:
            assert checkpoint["metrics"][metric] == pytest.approx(single[metric], rel=1e-6, abs=1e-9), (name, metric)
    assert float(rows[-1]["salt_score"]) == pytest.approx(swa["metrics"]["salt_score"], abs=1e-6)
    # best.pt is the best of the epochs and the average.
    best = load_checkpoint(tmp_path / "ddp" / "best.pt")["metrics"]["salt_score"]
    assert best == pytest.approx(max(float(row["salt_score"]) for row in rows), abs=1e-6)
