"""Run reports: summary.csv rows, the per-stage final table, curves.png, progress, TensorBoard."""

from __future__ import annotations

import importlib.machinery
import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_salt_config
from PIL import Image
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from lovaszseg.config import load_config
from lovaszseg.data import describe_dataset
from lovaszseg.errors import ConfigError
from lovaszseg.runtime.progress import LoopProgress, shows_bar
from lovaszseg.scoring.postprocess.threshold import Threshold
from lovaszseg.storage.summary import append_summary, plot_curves, read_summary
from lovaszseg.training import train
from lovaszseg.training.reporting import OVERLAY_IMAGES, TensorBoardLog, final_table

ROWS = [
    {"stage": "1-bce", "epoch": 1, "train_loss": "0.5", "iou": "0.6", "val_loss": "0.40"},
    {"stage": "1-bce", "epoch": 2, "train_loss": "0.3", "iou": "0.7", "val_loss": "0.30"},
    {"stage": "2-lovasz", "epoch": 1, "train_loss": "1.9", "iou": "0.8", "val_loss": "1.80"},
    {"stage": "2-lovasz", "epoch": 2, "train_loss": "1.7", "iou": "0.75", "val_loss": "1.70"},
]


def test_summary_round_trip(tmp_path: Path) -> None:
    assert read_summary(tmp_path / "summary.csv") == []
    for row in ROWS:
        append_summary(tmp_path / "summary.csv", row)
    assert read_summary(tmp_path / "summary.csv") == [{k: str(v) for k, v in row.items()} for row in ROWS]
    assert (tmp_path / "summary.csv").read_text().splitlines()[0] == "stage,epoch,train_loss,iou,val_loss"


@pytest.mark.parametrize(
    ("monitor", "mode", "expected"),
    [
        ("iou", "max", ["1-bce 2 0.3000 0.7000 0.3000", "2-lovasz 2 1.7000 0.8000 1.8000"]),
        ("val_loss", "min", ["1-bce 2 0.3000 0.7000 0.3000", "2-lovasz 2 1.7000 0.7500 1.7000"]),
    ],
)
def test_final_table_shows_each_stage_at_its_best_epoch(monitor: str, mode: str, expected: list[str]) -> None:
    rows = [{k: str(v) for k, v in row.items()} for row in ROWS]
    table = final_table(rows, ["iou", "val_loss"], monitor, mode)
    console = Console(width=200, record=True)
    console.print(table)
    lines = [" ".join(cell for cell in line.replace("│", " ").split()) for line in console.export_text().splitlines()]
    assert [line for line in lines if line.startswith(("1-", "2-"))] == expected


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    rows = [{k: str(v) for k, v in row.items()} for row in ROWS]
    plot_curves(rows, tmp_path / "curves.png", ["iou", "salt_score"])  # a metric the rows lack is skipped
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- progress -----------------------------------------------------------------------------------------
class Clock:
    """A fake clock for ``Console(get_time=...)``: time moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _plain_console(clock: Clock) -> Console:
    """Output redirected to a file (a log, nohup, CI): no terminal, no notebook."""
    return Console(file=io.StringIO(), force_terminal=False, force_jupyter=False, get_time=clock, width=200)


def test_plain_lines_come_at_most_once_per_interval_with_step_speed_loss_and_eta() -> None:
    clock = Clock()
    console = _plain_console(clock)
    with LoopProgress(console, "1-bce 2/5", total=10, interval=30) as progress:
        assert progress.bar is None
        for step in range(1, 11):  # a step every 10 s, 8 images each
            clock.now = 10.0 * step
            progress.advance(8, loss=1.0 / step)
    lines = console.file.getvalue().splitlines()
    assert lines == [
        "1-bce 2/5  step 3/10  0.8 img/s  loss 0.3333  ETA 0:01:10",
        "1-bce 2/5  step 6/10  0.8 img/s  loss 0.1667  ETA 0:00:40",
        "1-bce 2/5  step 9/10  0.8 img/s  loss 0.1111  ETA 0:00:10",
    ]


def test_plain_lines_of_a_loop_without_loss_and_a_quick_loop_prints_nothing() -> None:
    clock = Clock()
    console = _plain_console(clock)
    with LoopProgress(console, "predict", total=4, unit="image", interval=60) as progress:
        for _ in range(4):
            clock.now += 25.0  # lines at most every 60 s: only after the third image (75 s)
            progress.advance(1)
    assert console.file.getvalue().splitlines() == ["predict  image 3/4  0.0 img/s  ETA 0:00:25"]
    quick = _plain_console(Clock())
    with LoopProgress(quick, "eval val", total=100) as progress:
        for _ in range(100):
            progress.advance(16)
    assert quick.file.getvalue() == ""


def test_disabled_progress_shows_nothing() -> None:
    clock = Clock()
    for console in (_plain_console(clock), Console(file=io.StringIO(), force_terminal=True, force_interactive=True)):
        with LoopProgress(console, "1-bce 1/1", total=2, enabled=False, interval=1) as progress:
            clock.now = 100.0
            progress.advance(8, loss=0.5)
        assert progress.bar is None and console.file.getvalue() == ""


def test_a_terminal_shows_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    console = Console(file=io.StringIO(), force_terminal=True, force_jupyter=False, width=120)
    assert shows_bar(console)
    with LoopProgress(console, "1-bce 1/3", total=5, interval=0.001) as progress:
        assert progress.bar is not None
        for _ in range(3):
            progress.advance(8, loss=0.25)
    drawn = console.file.getvalue()
    assert "1-bce 1/3" in drawn and "3/5" in drawn and "img/s  loss 0.2500" in drawn
    assert "step 3/5" not in drawn  # no plain lines beside the bar


class _Output:
    """Stands in for ``ipywidgets.Output``, where rich draws its live display in a notebook."""

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def clear_output(self, wait: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def _fake_notebook(monkeypatch: pytest.MonkeyPatch, widgets: bool) -> list[object]:
    """Simulate a Jupyter kernel: what rich hands to IPython's ``display`` is recorded, not printed."""
    shown: list[object] = []
    monkeypatch.setattr("IPython.display.display", lambda *objects, **_: shown.extend(objects))
    module = None
    if widgets:
        module = types.ModuleType("ipywidgets")
        module.__spec__ = importlib.machinery.ModuleSpec("ipywidgets", None)
        module.Output = _Output
    monkeypatch.setitem(sys.modules, "ipywidgets", module)  # None: not installed
    return shown


def test_a_notebook_shows_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _fake_notebook(monkeypatch, widgets=True)
    console = Console(force_jupyter=True, file=io.StringIO(), width=120)
    assert shows_bar(console)
    with LoopProgress(console, "eval val", total=4, interval=0.001) as progress:
        assert progress.bar is not None
        progress.advance(16)
        progress.bar.refresh()
    assert any(isinstance(item, _Output) for item in shown)
    drawn = [getattr(item, "text", "") for item in shown]
    assert any("eval val" in text and "1/4" in text and "img/s" in text for text in drawn)
    assert not any("step 1/4" in text for text in drawn)


def test_a_notebook_without_ipywidgets_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _fake_notebook(monkeypatch, widgets=False)
    clock = Clock()
    console = Console(force_jupyter=True, file=io.StringIO(), get_time=clock, width=120)
    assert not shows_bar(console)
    with LoopProgress(console, "eval val", total=4, interval=10) as progress:
        clock.now = 20.0
        progress.advance(16)
    assert progress.bar is None
    assert [item.text for item in shown] == ["eval val  step 1/4  0.8 img/s  ETA 0:01:00\n"]


# --- TensorBoard --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def board_run(tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny run with ``output.tensorboard`` (two stages of one one-step epoch, stopped after the first
    and resumed), and what it printed to a log file whose clock moves a minute per reading (a plain
    progress line at every step)."""
    tmp = tmp_path_factory.mktemp("board")
    stages = [
        {"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.01},
        {"name": "lovasz", "loss": "lovasz_hinge", "epochs": 1, "lr": 0.005},
    ]
    config = tiny_salt_config(
        tiny_salt,
        tmp,
        stages=stages,
        train={"max_steps_per_epoch": 1},
        output={"tensorboard": True, "progress_seconds": 30},
    )
    clock = Clock()

    def ticking() -> float:
        clock.now += 60.0
        return clock.now

    console = Console(file=io.StringIO(), force_terminal=False, force_jupyter=False, get_time=ticking, width=200)
    first = train(load_config(config), run_dir=tmp / "run", console=console, stop_after_epochs=1)
    result = train(resume=first.run_dir, console=console)
    assert not first.completed and result.completed
    return result.run_dir, console.file.getvalue()


def test_tensorboard_scalars_equal_summary_csv_and_overlays_are_logged(board_run: tuple[Path, str]) -> None:
    run, _ = board_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rows = read_summary(run / "summary.csv")
    columns = [name for name in rows[0] if name not in ("stage", "epoch", "time_s")]
    assert columns == ["lr", "train_loss", "salt_score", "iou", "image_iou", "val_loss"]
    assert sorted(events.Tags()["scalars"]) == sorted(columns)
    for name in columns:
        logged = [(event.step, event.value) for event in events.Scalars(name)]
        assert logged == [(step, pytest.approx(float(row[name]), rel=1e-6)) for step, row in enumerate(rows, 1)]
    assert events.Tags()["images"] == [f"overlay/{index}" for index in range(OVERLAY_IMAGES)]
    pictures = events.Images("overlay/0")
    assert [(p.step, p.width, p.height) for p in pictures] == [(1, 101, 101), (2, 101, 101)]  # cropped to 101
    assert len(list((run / "tensorboard").iterdir())) == 2  # the resumed run's events continue the steps


def test_training_prints_plain_progress_lines_for_training_and_validation(board_run: tuple[Path, str]) -> None:
    _, printed = board_run
    lines = printed.splitlines()
    assert any(line.startswith("1-bce 1/1  step 1/1  ") and " img/s  loss " in line for line in lines)
    assert any(line.startswith("2-lovasz 1/1 val  step 1/1  ") and "ETA 0:00:00" in line for line in lines)


class _LeftHalfIsClassOne(nn.Module):
    """Three-class logits: class 1 on the left half of the input, background elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        logits = torch.zeros(batch, 3, height, width)
        logits[:, 1, :, : width // 2] = 5 * self.scale
        return logits


def test_tensorboard_overlays_of_images_of_their_own_sizes_show_their_own_pixels(tmp_path: Path) -> None:
    spec = describe_dataset("folder", {"num_classes": 3})  # images keep their sizes, padded to the stride
    generator = torch.Generator().manual_seed(0)
    grey = torch.randn(1, 64, 64, generator=generator).expand(3, -1, -1)  # a 50x40 image padded to 64x64
    dataset = [{"image": grey, "size": torch.tensor([50, 40])}] * 5
    board, row = TensorBoardLog(True, spec), {"stage": "1-ce", "epoch": 1, "lr": "0.01", "train_loss": "0.5"}
    with board.writing(tmp_path, epochs_done=0):
        board.log_epoch(row, _LeftHalfIsClassOne(), dataset)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["scalars"] == ["lr", "train_loss"]
    assert events.Tags()["images"] == [f"overlay/{index}" for index in range(OVERLAY_IMAGES)]  # 4 of 5
    picture = events.Images("overlay/0")[0]
    assert (picture.width, picture.height) == (40, 50)  # the padding cropped away, as evaluation does
    pixels = np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)))
    red, green = pixels[..., 0].astype(int), pixels[..., 1].astype(int)
    # The model's left half (input columns 0-31) is the crop's columns 0-19: class 1, blended in VOC red.
    assert (red[:, :20] > green[:, :20]).all() and (red[:, 20:] == green[:, 20:]).all()


class _Everywhere(nn.Module):
    """A binary model whose probability is ``probability`` at every pixel."""

    def __init__(self, probability: float) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.logit(torch.tensor(probability)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(images.shape[0], 1, *images.shape[-2:])


@pytest.mark.parametrize(("threshold", "foreground"), [(0.5, False), (0.3, True)])
def test_tensorboard_binary_overlays_take_the_post_processing_default_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: float, foreground: bool
) -> None:
    monkeypatch.setattr(Threshold, "default", threshold)  # the one place the default threshold is applied
    spec = describe_dataset("folder", {})
    dataset = [{"image": torch.zeros(3, 32, 32), "size": torch.tensor([32, 32])}] * OVERLAY_IMAGES
    board, row = TensorBoardLog(True, spec), {"stage": "1-bce", "epoch": 1, "lr": "0.01", "train_loss": "0.5"}
    with board.writing(tmp_path, epochs_done=0):
        board.log_epoch(row, _Everywhere(0.4), dataset)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    pixels = np.asarray(Image.open(io.BytesIO(events.Images("overlay/0")[0].encoded_image_string)))
    tinted = pixels[..., 0].astype(int) != pixels[..., 1].astype(int)  # foreground is blended in red
    assert tinted.all() if foreground else not tinted.any()


def test_tensorboard_without_the_package_is_a_config_error_before_any_folder(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    config = load_config(tiny_salt_config(tiny_salt, tmp_path / "runs", output={"tensorboard": True}))
    with pytest.raises(ConfigError, match=r"pip install 'lovaszseg\[tensorboard\]'"):
        train(config, console=Console(file=io.StringIO()))
    assert not (tmp_path / "runs").exists()
