"""Operating-system errors a user causes (a path that cannot be made, a full disk) are one clear line."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import tiny_salt_config, write_config
from typer.testing import CliRunner

import lovaszseg.data.io
from lovaszseg.cli import app
from lovaszseg.data.io import atomic_write, check_writable
from lovaszseg.errors import OutputError
from lovaszseg.storage.checkpoint import save_checkpoint
from lovaszseg.storage.run_folder import RunFolder

runner = CliRunner()


def _not_a_folder(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "run"


def _under_proc(tmp_path: Path) -> Path:
    return Path("/proc/lovaszseg-test/run")


@pytest.mark.parametrize("make", [_under_proc, _not_a_folder])
def test_a_run_folder_that_cannot_be_made_is_an_output_error_naming_it(
    make: Callable[[Path], Path], tmp_path: Path
) -> None:
    folder = make(tmp_path)
    with pytest.raises(OutputError, match=rf"cannot create run folder {folder}: \w"):
        RunFolder(folder).lock()
    with pytest.raises(OutputError, match=rf"cannot write --out {folder}"):
        check_writable(folder, "--out", folder=True)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_disk_keeps_the_previous_file(code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}, "epoch": 1})
    before = path.read_bytes()
    real_replace = lovaszseg.data.io.os.replace

    def full(*args: object) -> None:
        raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Read-only file system")

    monkeypatch.setattr(lovaszseg.data.io.os, "replace", full)
    with pytest.raises(OutputError, match=rf"cannot write {path}: (No space|Read-only)"):
        save_checkpoint(path, {"model": {}, "epoch": 2})
    monkeypatch.setattr(lovaszseg.data.io.os, "replace", real_replace)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


def test_a_write_failing_inside_the_block_is_the_destinations_and_other_errors_pass_through(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("old\n")
    full = pytest.raises(OutputError, match=rf"cannot write {path}: No space left on device")
    with full, atomic_write(path) as handle:
        handle.write("new")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError, match="the caller's"), atomic_write(path):
        raise ValueError("the caller's")
    with pytest.raises(FileNotFoundError), atomic_write(path):
        (tmp_path / "missing.txt").read_text()  # reading another file: not the destination's fault
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]


def test_train_into_a_run_folder_under_proc_exits_2_with_one_line(tiny_salt: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    result = runner.invoke(app, ["train", str(config), "--run-dir", "/proc/lovaszseg-test/run"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot create run folder /proc/lovaszseg-test/run")
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()
