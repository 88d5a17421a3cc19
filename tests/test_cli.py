"""The lovaszseg command: train -> eval -> predict -> submit on tiny runs, user errors, bugs and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_salt_config, write_config
from PIL import Image
from typer.testing import CliRunner, Result

import lovaszseg.training
import lovaszseg.workflows.runs
from lovaszseg.cli import app
from lovaszseg.errors import CheckpointError, ConfigError, DataError, RunFolderError, TrainingError
from lovaszseg.rle import read_rle_csv
from lovaszseg.runtime.interrupt import StopRequest, exit_code
from lovaszseg.storage.checkpoint import load_checkpoint
from lovaszseg.storage.summary import read_summary

runner = CliRunner()


def _text(result: Result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


LOVASZSEG = Path(sys.executable).with_name("lovaszseg")  # the console script of this virtualenv
COMMAND = [str(LOVASZSEG)] if LOVASZSEG.is_file() else [sys.executable, "-m", "lovaszseg"]
START_TIMEOUT = 240  # seconds for a training subprocess to import torch and finish its first epoch
EXIT_TIMEOUT = 120


@pytest.fixture(scope="module")
def salt_run(tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    config = write_config(tmp / "tiny.yaml", tiny_salt_config(tiny_salt, tmp / "runs"))
    result = runner.invoke(app, ["train", str(config), "stages.1.epochs=1", "--run-dir", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    assert "lovaszseg run" in result.output and "salt_score" in result.output
    assert f"done: {tmp / 'run'}" in _text(result)
    assert (tmp / "run" / "model.safetensors").is_file() and not (tmp / "run" / "config.json").exists()
    return tmp / "run"


@pytest.mark.parametrize(
    "command", ["train", "cv", "ensemble", "eval", "predict", "submit", "pseudo-label", "export", "compare", "data"]
)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_help_reflows_a_docstring_paragraph_to_the_terminal() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    # One line at 200 columns, although the docstring breaks it after "salt".
    assert "on built-in synthetic salt data in a few minutes." in result.output, result.output


def test_eval_writes_eval_json_with_the_best_threshold(salt_run: Path) -> None:
    result = runner.invoke(app, ["eval", str(salt_run), "--tta", "hflip", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "best_threshold" in result.output
    metrics = json.loads((salt_run / "eval.json").read_text())
    assert (metrics.pop("split"), metrics.pop("tta"), metrics.pop("model")) == (
        "val",
        "hflip",
        str(salt_run / "model.safetensors"),
    )
    # Every metric's best threshold is searched on a grid that holds 0.5, so it never scores lower.
    for name in ("salt_score", "iou", "image_iou"):
        best = metrics["salt_score_at_best_threshold" if name == "salt_score" else f"{name}_at_best_threshold"]
        assert metrics[name] <= best <= 1
    assert 0.05 <= metrics["iou_best_threshold"] <= 0.95 and 0.05 <= metrics["image_iou_best_threshold"] <= 0.95
    for name, value in metrics.items():  # the table shows what eval.json holds
        assert f"{value:.4f}" in result.output, name


def test_predict_writes_masks_and_overlays(salt_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", str(salt_run), str(tiny_salt / "test" / "images"), str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"wrote 6 masks to {tmp_path / 'masks'} and overlays to {tmp_path / 'overlays'}" in _text(result)
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 6 and len(list((tmp_path / "overlays").glob("*.png"))) == 6
    assert np.asarray(Image.open(masks[0])).shape == (101, 101)
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}


def test_predict_with_bf16_and_channels_last_agrees_with_float32(
    salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    images = str(tiny_salt / "test" / "images")
    fast = runner.invoke(
        app, ["predict", str(salt_run), images, str(tmp_path / "fast"), "--amp", "bf16", "--channels-last"]
    )
    plain = runner.invoke(app, ["predict", str(salt_run), images, str(tmp_path / "plain")])
    assert fast.exit_code == 0 and plain.exit_code == 0, fast.output + plain.output
    masks = {
        kind: np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / kind / "masks").glob("*.png"))])
        for kind in ("fast", "plain")
    }
    assert masks["fast"].shape == (6, 101, 101)
    assert np.mean(masks["fast"] != masks["plain"]) < 0.01  # bf16 moves only pixels near the threshold


def test_submit_on_the_real_tgs_test_images(salt_run: Path, shared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    result = runner.invoke(
        app,
        ["submit", str(salt_run / "best.pt"), str(shared_dir / "tgs" / "test"), "--out", str(out), "--tta", "hflip"],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (threshold 0.50, min-area 0)" in _text(result)
    rows = read_rle_csv(out)
    assert list(rows) == list(read_rle_csv(shared_dir / "tgs" / "sample_submission.csv"))


def test_submit_with_auto_threshold_and_safetensors_export(salt_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    model = salt_run / "model.safetensors"
    result = runner.invoke(
        app, ["submit", str(model), str(tiny_salt / "test"), "--out", str(out), "--threshold", "auto"]
    )
    assert result.exit_code == 0, result.output
    best = json.loads((salt_run / "eval.json").read_text())["best_threshold"]  # written by the auto search
    assert len(read_rle_csv(out)) == 6 and f"(threshold {best:.2f}, min-area 0)" in result.output


def test_a_tta_transform_the_data_has_no_symmetry_for_is_a_warning_line_and_is_used(salt_run: Path) -> None:
    result = runner.invoke(app, ["eval", str(salt_run), "--tta", "hflip+vflip:gmean", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    line = "warning: tta 'hflip+vflip:gmean': vflip is not a symmetry of tgs images (valid there: hflip); used as asked"
    assert line in result.output, result.output
    assert json.loads((salt_run / "eval.json").read_text())["tta"] == "hflip+vflip:gmean"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "{config}", "model.encodr=x"], "model.encodr: unknown key"),
        (["train", "missing.yaml"], "config file not found: missing.yaml"),
        (["train", "{tmp}"], "config {tmp} is a directory, not a YAML file"),
        (["train", "{config}", "stages.0.lr=1e6"], "stages.0.lr"),
        (["train", "{config}", "--resume", "{run}"], "resume continues a run with its saved config"),
        (["train", "--resume", "{tmp}"], "{tmp} is not a run folder: it has no config.yaml"),
        (["eval", "{tmp}"], "{tmp} is not a run folder: it has no config.yaml"),
        (["eval", "{tmp}/nothing.pt"], "no run folder, cv folder, ensemble folder or model file at {tmp}/nothing.pt"),
        (["eval", "{truncated}"], "{truncated} is not a readable .safetensors file"),
        (["eval", "{run}", "--device", "gpu"], "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
        (["eval", "{run}", "--tta", "rot45"], "tta must be 'none' or transforms joined by '+' from hflip, "),
        (["eval", "{run}", "--tta", "hflip:max"], "tta merge must be one of mean, gmean, got 'max' in 'hflip:max'"),
        (["eval", "{run}", "--split", "test", "--device", "cpu"], "split 'test' of"),
        (["submit", "{run}", "{tmp}", "--threshold", "high"], "--threshold must be a number in [0, 1] or 'auto'"),
        (["submit", "{run}", "{test}", "--threshold", "2.0"], "threshold must be a probability in [0, 1], got 2.0"),
        (["submit", "{run}", "{test}", "--out", "{tmp}"], "--out {tmp} is a folder; name the CSV file to write"),
        (["predict", "{run}", "{tmp}", "{tmp}/out"], "no images (png, jpg, ...) in {tmp}"),
        (["predict", "{run}", "{test}/images", "{tmp}/o", "--threshold", "-0.1"], "got -0.1"),
        (["eval", "{run}", "--amp", "half"], "unknown --amp 'half'; use one of none, bf16, fp16, auto"),
        (
            ["submit", "{run}", "{test}", "--out", "{tmp}/s.csv", "--amp", "fp16", "--device", "cpu"],
            "amp fp16 (train.amp or --amp) needs a CUDA device, not cpu",
        ),
    ],
)
def test_user_errors_are_one_clear_line_and_exit_2(
    arguments: list[str], message: str, salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    truncated = tmp_path / "model.safetensors"
    truncated.write_bytes((salt_run / "model.safetensors").read_bytes()[:1000])
    names = {"config": config, "tmp": tmp_path, "run": salt_run, "test": tiny_salt / "test", "truncated": truncated}
    result = runner.invoke(app, [a.format(**names) for a in arguments])
    assert result.exit_code == 2, result.output
    assert message.format(**names) in result.output, result.output
    # One message: a red line (a config's validation errors follow it indented, a line per key).
    first, *rest = result.output.rstrip("\n").splitlines()
    assert first.startswith("error: ") and all(line.startswith("  ") for line in rest), result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("error", [KeyError("bug"), ZeroDivisionError("bug"), ValueError("bug"), OSError("bug")])
@pytest.mark.parametrize(
    ("command", "module", "function"),
    [
        (["eval", "{run}"], lovaszseg.workflows.runs, "evaluate_run"),
        (["predict", "{run}", "{run}", "{run}/pred"], lovaszseg.workflows.runs, "predict_run"),
        (["train", "{run}/config.yaml"], lovaszseg.training, "train"),
    ],
)
def test_internal_bugs_are_not_swallowed(
    error: Exception, command: list[str], module: object, function: str, salt_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(module, function, broken)
    result = runner.invoke(app, [part.format(run=salt_run) for part in command])
    assert result.exit_code == 1 and result.exception is error  # the traceback is kept, not one "error:" line
    assert "error:" not in result.output


@pytest.mark.parametrize(
    "error", [ConfigError("c"), DataError("d"), CheckpointError("k"), RunFolderError("r"), TrainingError("t")]
)
def test_every_typed_error_is_a_user_error(error: Exception, salt_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(lovaszseg.workflows.runs, "evaluate_run", failing)
    result = runner.invoke(app, ["eval", str(salt_run)])
    assert (result.exit_code, result.output) == (2, f"error: {error}\n")


def test_a_keyboard_interrupt_exits_130_without_a_traceback(salt_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lovaszseg.workflows.runs, "evaluate_run", interrupted)
    result = runner.invoke(app, ["eval", str(salt_run)])
    assert (result.exit_code, result.output) == (130, "interrupted\n")


def test_stop_request_first_signal_asks_a_second_forces() -> None:
    assert (exit_code(signal.SIGINT), exit_code(signal.SIGTERM)) == (130, 143)
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: stop.requested, 10, "the first signal to be handled")
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt, match="second SIGINT: stopping now"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # the handler raises in this thread at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_stop_request_holds_a_second_signal_until_a_deferred_block_ends() -> None:
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(lambda: stop.requested, 10, "the first signal to be handled")
        finished = False
        with pytest.raises(KeyboardInterrupt, match="second SIGTERM: stopping now"), stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler has run by now: it only noted the signal
            finished = True
        assert finished and stop.signum == signal.SIGINT
        with stop.deferred():  # a block without a second signal raises nothing
            pass


def test_a_taken_run_dir_is_refused_unless_overwrite(salt_run: Path, tmp_path: Path) -> None:
    def files() -> dict[str, int]:  # the lock file is taken (and its PID rewritten) before the refusal
        return {path.name: path.stat().st_mtime_ns for path in salt_run.iterdir() if path.name != ".lock"}

    before = files()
    config = str(salt_run / "config.yaml")
    result = runner.invoke(app, ["train", config, "--run-dir", str(salt_run)])
    assert result.exit_code == 2, result.output
    assert f"run folder {salt_run} already holds a run; pass --overwrite to replace it" in _text(result)
    assert files() == before
    assert not salt_run.with_name(f"{salt_run.name}-2").exists()  # no longer renamed silently


# --- real signals on a training subprocess ------------------------------------------------------------------


def _wait_for(
    condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the training ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _epochs_done(run: Path) -> int:
    try:
        return len(read_summary(run / "summary.csv"))
    except (OSError, ValueError):
        return 0


@pytest.fixture
def long_config(tiny_salt: Path, tmp_path: Path) -> Callable[[int], Path]:
    """A config of ``epochs`` one-step epochs (each validated and checkpointed)."""

    def make(epochs: int) -> Path:
        config = tiny_salt_config(
            tiny_salt,
            tmp_path / "runs",
            stages=[{"name": "bce", "loss": "bce", "epochs": epochs, "lr": 0.001}],
            train={"seed": 0, "device": "cpu", "max_steps_per_epoch": 1},
        )
        return write_config(tmp_path / f"long{epochs}.yaml", config)

    return make


@contextmanager
def _training(arguments: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """``lovaszseg train ARGUMENTS`` in a subprocess, output to ``log``; killed if the test fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    with log.open("w") as output:
        process = subprocess.Popen(
            [*COMMAND, "train", *arguments], stdout=output, stderr=subprocess.STDOUT, env=env, cwd=log.parent
        )
    try:
        yield process
    except BaseException:
        print(log.read_text()[-5000:])  # shown with the failure
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _exit(process: subprocess.Popen, log: Path) -> int:
    try:
        return process.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"training did not exit within {EXIT_TIMEOUT} s of the signal:\n{log.read_text()[-3000:]}")


def test_sigterm_saves_last_pt_exits_143_and_resume_completes(
    long_config: Callable[[int], Path], tmp_path: Path
) -> None:
    run, log, epochs = tmp_path / "run", tmp_path / "train.log", 4
    with _training([str(long_config(epochs)), "--run-dir", str(run)], log) as process:
        _wait_for(lambda: _epochs_done(run) >= 1, START_TIMEOUT, "the first epoch", process)
        process.send_signal(signal.SIGTERM)
        assert _exit(process, log) == 143, log.read_text()
    done = _epochs_done(run)
    assert 1 <= done < epochs
    assert (run / "last.pt").is_file() and not (run / "model.safetensors").exists()
    last = load_checkpoint(run / "last.pt")
    assert (last["stage"], last["epoch"]) == (0, done)  # the end of the last whole epoch
    output = " ".join(log.read_text().split())
    assert f"continue with: lovaszseg train --resume {run}" in output and "Traceback" not in output
    assert f"done: {run}" not in output

    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert f"done: {run}" in _text(result) and (run / "model.safetensors").is_file()
    assert [int(row["epoch"]) for row in read_summary(run / "summary.csv")] == list(range(1, epochs + 1))


def test_a_second_writer_is_refused_naming_the_pid_and_sigint_exits_130(
    long_config: Callable[[int], Path], tmp_path: Path
) -> None:
    run, log = tmp_path / "run", tmp_path / "train.log"
    with _training([str(long_config(200)), "--run-dir", str(run)], log) as process:
        _wait_for(lambda: _epochs_done(run) >= 1, START_TIMEOUT, "the first epoch", process)
        for arguments in (["--resume", str(run)], [str(long_config(3)), "--run-dir", str(run), "--overwrite"]):
            result = runner.invoke(app, ["train", *arguments])
            assert result.exit_code == 2, result.output
            assert f"run folder {run} is being written by another process (PID {process.pid})" in _text(result)
        assert process.poll() is None and (run / "last.pt").is_file()  # the first writer goes on, untouched
        process.send_signal(signal.SIGINT)
        assert _exit(process, log) == 130, log.read_text()
    assert (run / "last.pt").is_file() and not (run / "model.safetensors").exists()
    assert "Traceback" not in log.read_text()


def test_two_sigints_exit_promptly_with_130(long_config: Callable[[int], Path], tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "train.log"
    with _training([str(long_config(200)), "--run-dir", str(run)], log) as process:
        _wait_for(lambda: _epochs_done(run) >= 1, START_TIMEOUT, "the first epoch", process)
        process.send_signal(signal.SIGINT)
        time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        second = time.monotonic()
        assert _exit(process, log) == 130, log.read_text()
        assert time.monotonic() - second < 20
    assert "Traceback" not in log.read_text() and not (run / "model.safetensors").exists()


# --- multi-class -------------------------------------------------------------------------------------------


def test_voc_run_evaluates_miou_and_predicts_palette_masks(tiny_voc: Path, tmp_path: Path) -> None:
    config = {
        "model": {
            "arch": "Unet",
            "encoder": "resnet18",
            "encoder_weights": None,
            "options": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
        },
        "data": {
            "name": "voc",
            "root": str(tiny_voc),
            "batch_size": 4,
            "val_batch_size": 1,
            "options": {"crop_size": 64},
        },
        "stages": [{"name": "lovasz", "loss": {"lovasz_softmax": {"per_image": True}}, "epochs": 1}],
        "train": {"device": "cpu"},
        "output": {"runs_dir": str(tmp_path), "name": "voc"},
    }
    path = write_config(tmp_path / "voc.yaml", config)
    assert runner.invoke(app, ["train", str(path)]).exit_code == 0
    result = runner.invoke(app, ["eval", str(tmp_path / "voc")])
    assert result.exit_code == 0, result.output
    assert "miou" in result.output and "image_miou" in result.output and "best_threshold" not in result.output
    images = tiny_voc / "VOCdevkit" / "VOC2012" / "JPEGImages"
    result = runner.invoke(app, ["predict", str(tmp_path / "voc"), str(images), str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    mask = Image.open(next((tmp_path / "pred" / "masks").glob("*.png")))
    assert mask.mode == "P" and mask.size == (64, 64)
    # Binary-only options are refused, not ignored, and nothing is written.
    for option in (["--threshold", "0.3"], ["--min-area", "20"], ["--threshold", "auto"]):
        arguments = ["predict", str(tmp_path / "voc"), str(images), str(tmp_path / "binary"), *option]
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2, result.output
        assert f"{option[0]} {option[1]}: binary models only" in result.output and "is multi-class" in result.output
        assert not (tmp_path / "binary" / "masks").exists()
    # A multi-class model cannot make a (binary RLE) submission.
    result = runner.invoke(app, ["submit", str(tmp_path / "voc"), str(images), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and "this model is multi-class" in result.output
    assert not (tmp_path / "s.csv").exists()
