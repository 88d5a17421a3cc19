"""A path the system refuses to create, seen from the command line: one ``error:`` line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_salt_config, write_config
from typer.testing import CliRunner

from lovaszseg.cli import app
from lovaszseg.training.trainer import Trainer

runner = CliRunner()
PROC_REASON = "/proc is on a kernel file system that takes no new files"


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the datasets and the model (the Trainer) fails the test: the run folder is checked first."""

    def build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the datasets and the model were built before the run folder was checked")

    monkeypatch.setattr(Trainer, "__init__", build)


def _one_error_line(arguments: list[str], expected: str) -> None:
    result = runner.invoke(app, arguments, env={"COLUMNS": "80"})
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [f"error: {expected}"], result.output
    assert result.exception is not None and not isinstance(result.exception, AssertionError)


@pytest.mark.usefixtures("nothing_built")
@pytest.mark.parametrize("run_dir", ["/proc/lovaszseg-test/run", "/proc/lovaszseg-test-run"])
def test_train_into_a_run_folder_under_proc_exits_2_with_one_line_before_any_dataset_or_model(
    tiny_salt: Path, tmp_path: Path, run_dir: str
) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    _one_error_line(["train", str(config), "--run-dir", run_dir], f"cannot write run folder {run_dir}: {PROC_REASON}")
    assert not (tmp_path / "runs").exists()


@pytest.mark.usefixtures("nothing_built")
def test_train_into_a_default_run_folder_under_proc_exits_2_before_any_dataset_or_model(
    tiny_salt: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_salt_config(tiny_salt, Path("/proc/lovaszseg-test/runs")))
    expected = f"cannot write run folder /proc/lovaszseg-test/runs/tiny: {PROC_REASON}"
    _one_error_line(["train", str(config)], expected)
