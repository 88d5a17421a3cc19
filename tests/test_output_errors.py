"""A path the system refuses to create, seen from the command line: one ``error:`` line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_salt_config, write_config
from typer.testing import CliRunner

from lovaszseg.cli import app
from lovaszseg.training.trainer import Trainer

runner = CliRunner()


@pytest.mark.parametrize("run_dir", ["/proc/lovaszseg-test/run", "/proc/lovaszseg-test-run"])
def test_train_into_a_run_folder_under_proc_exits_2_with_one_line_before_training(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_dir: str
) -> None:
    def fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started although the run folder cannot be created")

    monkeypatch.setattr(Trainer, "fit", fit)
    config = write_config(tmp_path / "tiny.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    result = runner.invoke(app, ["train", str(config), "--run-dir", run_dir], env={"COLUMNS": "80"})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        f"error: cannot create run folder {run_dir}: /proc is on a kernel file system that takes no new files"
    ], result.output
    assert result.exception is not None and not isinstance(result.exception, AssertionError)
    assert not (tmp_path / "runs").exists()
