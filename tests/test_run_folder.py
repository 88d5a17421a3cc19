"""The run folder: creation policy, the writer's lock (PID, stale locks), stale temporaries, export, loading."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lovaszseg.config import Config, builtin_config, load_config
from lovaszseg.errors import CheckpointError, OutputError, RunFolderError
from lovaszseg.models import build_model
from lovaszseg.storage.checkpoint import load_checkpoint, save_checkpoint
from lovaszseg.storage.cv_folder import CV_FILE, CvFolder
from lovaszseg.storage.run_folder import CONFIG_FILE, LOCK_FILE, RunFolder, load_model

_CONFIG = load_config(
    {
        "model": {
            "encoder": "resnet18",
            "encoder_weights": None,
            "options": {"encoder_depth": 3, "decoder_channels": [8, 8, 8]},
        },
        "output": {"name": "demo"},
    }
)


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes the folder's lock (as RunFolder does) and keeps it until killed."""
    code = (
        "import fcntl, os, sys, time\n"
        f"handle = open({str(folder / LOCK_FILE)!r}, 'a+')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "handle.seek(0); handle.truncate(); handle.write(f'{os.getpid()}\\n'); handle.flush()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_create_writes_the_config_once_and_locks_with_this_pid(tmp_path: Path) -> None:
    folder = RunFolder.create(_CONFIG, tmp_path / "run")
    try:
        assert load_config(folder.config_path) == _CONFIG
        assert (folder.path / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert sorted(p.name for p in folder.path.iterdir()) == [LOCK_FILE, CONFIG_FILE]
    finally:
        folder.release()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        with pytest.raises(RunFolderError, match=rf"being written by another process \(PID {holder.pid}\)"):
            RunFolder(run).lock()
        with pytest.raises(RunFolderError, match=str(holder.pid)):
            RunFolder.create(_CONFIG, run, overwrite=True)  # not even --overwrite takes a live run's folder
    finally:
        holder.kill()
        holder.wait()
    folder = RunFolder(run)
    folder.lock()  # the holder died: its lock went with it
    folder.release()


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(dead.stdout)
    folder = RunFolder(run)
    folder.lock()
    assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    folder.release()


def test_default_names_are_suffixed_but_an_explicit_folder_is_refused(tmp_path: Path) -> None:
    config = load_config({**_CONFIG.model_dump(), "output": {"runs_dir": str(tmp_path), "name": "demo"}})
    first = RunFolder.create(config)
    (first.path / "summary.csv").write_text("x")
    second = RunFolder.create(config)  # runs/demo holds a run (and is locked): runs/demo-2
    assert (first.path.name, second.path.name) == ("demo", "demo-2")
    first.release()
    with pytest.raises(RunFolderError, match=r"already holds a run; pass --overwrite .*--resume"):
        RunFolder.create(config, first.path)
    replaced = RunFolder.create(config, first.path, overwrite=True)
    assert not (replaced.path / "summary.csv").exists() and replaced.config_path.is_file()
    for folder in (second, replaced):
        folder.release()


def test_locking_removes_temporaries_a_killed_writer_left(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    killed_mid_write = (
        "import os, signal; from pathlib import Path; from lovaszseg.data.io import atomic_write\n"
        f"with atomic_write(Path({str(run / 'last.pt')!r}), 'wb') as handle:\n"
        "    handle.write(b'half a checkpoint'); handle.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", killed_mid_write], check=False)
    stale = list(run.glob(".last.pt.*.tmp"))
    assert len(stale) == 1  # what a kill during a checkpoint write leaves
    keep = [run / "notes.tmp", run / ".config.yaml.tmp", run / "last.pt"]
    for path in keep:
        path.write_bytes(b"x" * 10)
    folder = RunFolder(run)
    folder.lock()
    folder.release()
    assert not any(path.exists() for path in stale) and all(path.exists() for path in keep)


def test_save_epoch_writes_each_file_it_belongs_in(tmp_path: Path) -> None:
    folder = RunFolder.create(_CONFIG, tmp_path / "run")
    state = {"model": {"w": torch.ones(2)}, "epoch": 4}
    folder.save_epoch(state, 1, stage_best=True, overall_best=False, snapshot=2)
    names = sorted(p.name for p in folder.path.glob("*.pt"))
    assert names == ["last.pt", "stage2_best.pt", "stage2_last.pt", "stage2_snapshot2.pt"]
    folder.save_epoch({**state, "epoch": 5}, 1, stage_best=False, overall_best=True, snapshot=None)
    assert load_checkpoint(folder.best_path)["epoch"] == 5 and load_checkpoint(folder.stage_best_path(1))["epoch"] == 4
    folder.release()


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_replaced_files_keep_their_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {}})
    path.chmod(mode)
    save_checkpoint(path, {"model": {"w": torch.zeros(1)}})
    assert path.stat().st_mode & 0o777 == mode


def test_the_export_loads_alone_and_bad_files_are_named(tmp_path: Path) -> None:
    folder = RunFolder.create(_CONFIG, tmp_path / "run")
    model = build_model(_CONFIG.model, 1, 1, pretrained=False)
    folder.export({"model": model.state_dict()}, _CONFIG)
    folder.release()
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes(folder.export_path.read_bytes())
    loaded = load_model(alone)
    assert loaded.config == _CONFIG and loaded.spec.in_channels == 1 and not loaded.model.training
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in loaded.model.state_dict().items())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(folder.export_path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors is not a readable \.safetensors file"):
        load_model(truncated)
    with pytest.raises(CheckpointError, match=r"has no trained model yet"):
        load_model(RunFolder.create(_CONFIG, tmp_path / "empty").path)
    with pytest.raises(CheckpointError, match=r"is not a run folder: it has no config\.yaml"):
        load_model(tmp_path)


def test_weights_that_do_not_fit_the_config_are_a_checkpoint_error(tmp_path: Path) -> None:
    folder = RunFolder.create(_CONFIG, tmp_path / "run")
    save_checkpoint(folder.best_path, {"model": {"unrelated": torch.ones(1)}})
    folder.release()
    with pytest.raises(CheckpointError, match=r"best\.pt do not fit the model its config describes"):
        load_model(folder.path)


def test_lock_is_released_when_the_writer_ends(tmp_path: Path) -> None:
    code = (
        "import sys; from lovaszseg.storage.run_folder import RunFolder; "
        f"RunFolder({str(tmp_path / 'run')!r}).lock(); print('ok')"
    )
    started = time.perf_counter()
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    folder = RunFolder(tmp_path / "run")
    folder.lock()
    folder.release()
    assert time.perf_counter() - started < 60


def _under_proc(tmp_path: Path) -> tuple[Path, str]:
    return Path("/proc/lovaszseg-test/run"), "/proc is on a kernel file system that takes no new files"


def _under_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "file").write_text("kept")
    return tmp_path / "file" / "run", f"{tmp_path / 'file'} is not a folder"


def _a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "file").write_text("kept")
    return tmp_path / "file", f"{tmp_path / 'file'} is not a folder"


def _open(entry: str, folder: Path) -> RunFolder:
    """Open ``folder`` for writing through ``entry`` (``*_default``: as the default run folder)."""
    if entry == "lock":
        run = RunFolder(folder)
        run.lock()
        return run
    if entry.startswith("claim"):
        return RunFolder.claim(folder if entry == "claim" else None, folder, overwrite=False)
    config = load_config({**_CONFIG.model_dump(), "output": {"runs_dir": str(folder.parent), "name": folder.name}})
    return RunFolder.create(config, folder if entry == "create" else None)


@pytest.mark.parametrize("where", [_under_proc, _under_a_file, _a_file], ids=["under_proc", "under_a_file", "a_file"])
@pytest.mark.parametrize("entry", ["lock", "claim", "claim_default", "create", "create_default"])
def test_a_run_folder_that_cannot_be_created_is_an_output_error_naming_it(
    tmp_path: Path, where: Callable[[Path], tuple[Path, str]], entry: str
) -> None:
    folder, reason = where(tmp_path)
    with pytest.raises(OutputError, match=rf"^cannot create run folder {re.escape(str(folder))}: {re.escape(reason)}$"):
        _open(entry, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if where is _under_proc else ["file"])


@pytest.mark.usefixtures("full_disk")
def test_a_config_that_cannot_be_written_releases_the_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(OutputError, match=rf"^cannot write {re.escape(str(run / CONFIG_FILE))}: No space left"):
        RunFolder.create(_CONFIG, run)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # no config, no temporary
    folder = RunFolder(run)
    folder.lock()  # the failed create let go of the lock
    folder.release()


def test_a_folder_that_cannot_be_emptied_is_an_output_error_and_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)

    def refuse(path: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with pytest.raises(OutputError, match=rf"^cannot empty run folder {re.escape(str(run))}: Permission denied$"):
        RunFolder.claim(run, tmp_path / "default", overwrite=True)
    monkeypatch.undo()
    folder = RunFolder(run)
    folder.lock()
    folder.release()


@pytest.mark.parametrize("name", ["salt", "voc"])
def test_cv_yaml_holds_the_config_as_the_config_writes_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    to_yaml = Config.to_yaml
    monkeypatch.setattr(Config, "to_yaml", lambda self: to_yaml(self) + "# Config.to_yaml\n")  # marks its text
    config, settings = load_config(builtin_config(name)), {"folds": [0, 1], "n_folds": 5, "holdout": 0, "tta": "none"}
    folder = CvFolder(tmp_path / "cv")
    folder.write_settings(config, settings)
    text = (folder.path / CV_FILE).read_text(encoding="utf-8")
    head, config_part = text.split("config:\n", 1)
    assert head.startswith("cv:\n") and textwrap.dedent(config_part) == config.to_yaml()
    assert folder.settings() == (config, settings)
