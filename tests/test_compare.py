"""The loss comparison: one run per entry with the same budget, a CSV, a table and a plot."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_salt_config, write_config
from typer.testing import CliRunner

import lovaszseg.compare
from lovaszseg.cli import app
from lovaszseg.compare import compare, parse_entry
from lovaszseg.config import Config, ConfigError, load_config


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


def test_parse_entry_errors() -> None:
    with pytest.raises(ConfigError, match="option=value"):
        parse_entry("lovasz_hinge(elu)")


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
