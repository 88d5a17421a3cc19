"""The loss comparison: one run per entry with the same budget, a CSV, a table and a plot."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_salt_config, write_config
from typer.testing import CliRunner

import lovaszseg.compare
from lovaszseg.cli import app
from lovaszseg.compare import compare, parse_entry
from lovaszseg.config import Config, load_config
from lovaszseg.engine.run_folder import RunFolder
from lovaszseg.errors import ConfigError


@pytest.mark.parametrize(
    ("entry", "spec"),
    [
        ("bce", [("bce", {})]),
        ("bce>lovasz_hinge", [("bce", {}), ("lovasz_hinge", {})]),
        (
            "lovasz_hinge(variant=elu+1, per_image=false)",
            [({"lovasz_hinge": {"variant": "elu+1", "per_image": False}}, {})],
        ),
        (
            "bce>lovasz_hinge(variant=elu+1, lr=0.0005, optimizer=sgd)",
            [("bce", {}), ({"lovasz_hinge": {"variant": "elu+1"}}, {"lr": 0.0005, "optimizer": "sgd"})],
        ),
        ("lovasz_hinge(lr=0.0001)", [("lovasz_hinge", {"lr": 0.0001})]),
    ],
)
def test_parse_entry(entry: str, spec: list) -> None:
    assert parse_entry(entry) == spec


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("lovasz_hinge(elu)", "loss 'lovasz_hinge(elu)': 'elu' is not option=value"),
        ("Lovasz-Hinge", "cannot read loss 'Lovasz-Hinge'; write NAME or NAME(option=value, ...)"),
        ("bce>", "cannot read loss ''"),
    ],
)
def test_parse_entry_errors(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_entry(entry)
    assert str(caught.value) == message or str(caught.value).startswith(message)


def test_compare_cli_on_tiny_salt(tiny_salt: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(config),
            "--losses",
            "bce,lovasz_hinge(variant=elu+1),bce>lovasz_hinge(lr=0.002;optimizer=sgd)",
            "--epochs",
            "2",
            "--out-dir",
            str(tmp_path / "cmp"),
        ],
    )
    assert result.exit_code == 0, result.output
    with (tmp_path / "cmp" / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    schedule = "bce>lovasz_hinge(lr=0.002,optimizer=sgd)"
    assert [row["loss"] for row in rows] == ["bce", "lovasz_hinge(variant=elu+1)", schedule]
    assert all(0 <= float(row["salt_score"]) <= 1 and row["epochs"] == "2" for row in rows)
    assert (tmp_path / "cmp" / "compare.png").is_file()
    run = tmp_path / "cmp" / "bce-then-lovasz_hinge_lr_0.002_optimizer_sgd"
    summary = (run / "summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary[1:]] == ["1-1", "2-2"]
    stages = load_config(run / "config.yaml").stages  # the second stage has its own settings, the first the base's
    assert [(s.loss, s.lr, s.optimizer) for s in stages] == [("bce", 0.01, "adam"), ("lovasz_hinge", 0.002, "sgd")]
    for row, name in zip(rows, ["bce", "lovasz_hinge_variant_elu+1", run.name], strict=True):
        folder = tmp_path / "cmp" / name
        # A finished run folder: one saved config, the exported model, and the eval.json its row comes from.
        assert RunFolder(folder).finished and not (folder / "config.json").exists()
        scored = json.loads((folder / "eval.json").read_text())
        assert scored["model"] == str(folder / "model.safetensors")
        for metric in ("salt_score", "iou", "image_iou", "best_threshold", "salt_score_at_best_threshold"):
            assert float(row[metric]) == round(scored[metric], 6), (name, metric)


def test_compare_rejects_a_bad_entry_before_training(tiny_salt: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    result = CliRunner().invoke(
        app, ["compare", str(config), "--losses", "bce,lovasz", "--out-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "unknown loss 'lovasz'" in result.output
    assert not (tmp_path / "x").exists()
    result = CliRunner().invoke(
        app, ["compare", str(config), "--losses", "bce>lovasz_hinge(lr=-1)", "--out-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "lr" in result.output and "greater than 0" in result.output
    assert not (tmp_path / "x").exists()


def test_compare_on_cuda_without_a_gpu_is_an_error_line(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    result = CliRunner().invoke(
        app, ["compare", str(config), "train.device=cuda", "--losses", "bce", "--out-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2, result.output
    message = "error: device 'cuda' asked for, but no CUDA GPU is available here; use cpu or auto\n"
    assert result.output.endswith(message) and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_compare_refuses_a_run_folder_another_process_writes(tiny_salt: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    held = RunFolder(tmp_path / "cmp" / "bce")
    held.lock()  # as a training of that folder would: compare must neither wait nor overwrite it
    (held.path / "last.pt").write_bytes(b"another run's checkpoint")
    try:
        result = CliRunner().invoke(
            app, ["compare", str(config), "--losses", "bce", "--epochs", "1", "--out-dir", str(tmp_path / "cmp")]
        )
    finally:
        held.release()
    assert result.exit_code == 2, result.output
    assert f"is being written by another process (PID {os.getpid()})" in " ".join(result.output.split())
    assert (held.path / "last.pt").read_bytes() == b"another run's checkpoint"
    assert not (tmp_path / "cmp" / "compare.csv").exists()


def test_compare_again_rescores_finished_runs_and_retrains_changed_ones(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(tiny_salt_config(tiny_salt, tmp_path / "runs"))
    first = compare(config, ["bce"], epochs=1, out_dir=tmp_path / "cmp")
    real_train, seeds_trained = lovaszseg.compare.train, []

    def recording_train(entry_config: Config, **kwargs: Any) -> Any:
        seeds_trained.append(entry_config.train.seed)
        return real_train(entry_config, **kwargs)

    monkeypatch.setattr(lovaszseg.compare, "train", recording_train)
    again = compare(config, ["bce"], epochs=1, out_dir=tmp_path / "cmp")
    assert seeds_trained == [] and again.rows == first.rows  # the same best checkpoint, evaluated again
    compare(config, ["bce"], epochs=1, out_dir=tmp_path / "cmp", retrain=True)
    changed = load_config(tiny_salt_config(tiny_salt, tmp_path / "runs", train={"seed": 1, "device": "cpu"}))
    compare(changed, ["bce"], epochs=1, out_dir=tmp_path / "cmp")
    assert seeds_trained == [0, 1]
