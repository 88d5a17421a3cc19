"""What a run shows and leaves behind: progress, summary.csv, curves.png, TensorBoard events and a final table."""

from __future__ import annotations

import csv
import importlib.util
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import Dataset

from lovaszseg.config import PROGRESS_SECONDS
from lovaszseg.data.io import atomic_write
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.data.transforms import crop_to_original
from lovaszseg.errors import ConfigError
from lovaszseg.inference import overlay, predict_probabilities
from lovaszseg.metrics import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "OVERLAY_IMAGES",
    "LoopProgress",
    "TensorBoardLog",
    "append_summary",
    "final_table",
    "plot_curves",
    "read_summary",
    "shows_bar",
]

# Validation images drawn with their predicted masks in TensorBoard after every epoch.
OVERLAY_IMAGES = 4


def shows_bar(console: Console) -> bool:
    """Whether ``console`` can show a live progress bar rather than plain lines.

    A terminal that redraws can; so can a Jupyter/Kaggle/Colab notebook, where rich renders its live
    display into an ipywidgets ``Output`` (without ipywidgets rich would show nothing there).
    """
    if console.is_jupyter:
        return importlib.util.find_spec("ipywidgets") is not None
    return console.is_interactive


class LoopProgress:
    """Progress of a loop of steps (a training epoch, an evaluation, a prediction) wherever output goes.

    A live rich bar (steps, images/s, loss, elapsed time, ETA) where it can be redrawn (see
    :func:`shows_bar`); elsewhere (a log file, ``nohup``, CI, a scheduler) a plain line such as
    ``1-bce 2/10  step 40/120  35.2 img/s  loss 0.3141  ETA 0:00:09`` at most every ``interval``
    seconds, so that a log shows a long loop is alive without filling up. Times come from the console's
    clock (``Console(get_time=...)``).

    Use it as a context manager and call :meth:`advance` after each step, or pass ``advance`` as a
    callback (``evaluate(..., progress=progress.advance)``).

    Args:
        console: Where the bar or lines go.
        description: What the loop is, e.g. ``1-bce 2/10`` or ``eval val``.
        total: Steps of the loop.
        unit: What a step is, for the plain lines (``step``, ``image``).
        enabled: False shows nothing (e.g. on every DDP rank but the first).
        interval: Seconds between plain lines.
    """

    def __init__(
        self,
        console: Console,
        description: str,
        total: int,
        *,
        unit: str = "step",
        enabled: bool = True,
        interval: float = PROGRESS_SECONDS,
    ) -> None:
        self.console, self.description, self.total = console, description, total
        self.unit, self.interval = unit, interval
        self.steps, self.images = 0, 0
        self.loss: float | None = None
        self.started = self.last_line = console.get_time()
        self.lines = enabled and not shows_bar(console)
        self.bar: Progress | None = None
        if enabled and not self.lines:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,  # the caller prints the loop's result line
            )
            self.task = self.bar.add_task(description, total=total, stats="")
            self.bar.start()

    def advance(self, images: int, loss: float | None = None) -> None:
        """Count one finished step.

        Args:
            images: Images the step processed.
            loss: The loss to show (e.g. the epoch's running mean), if the loop has one.
        """
        self.steps, self.images = self.steps + 1, self.images + images
        self.loss = loss if loss is not None else self.loss
        now = self.console.get_time()
        if self.bar is not None:
            self.bar.update(self.task, completed=self.steps, stats=self._stats(now - self.started))
        elif self.lines and now - self.last_line >= self.interval:
            self.last_line = now
            self.console.print(self._line(now - self.started), soft_wrap=True, markup=False, highlight=False)

    def _stats(self, elapsed: float) -> str:
        speed = f"{self.images / max(elapsed, 1e-9):.1f} img/s"
        return speed if self.loss is None else f"{speed}  loss {self.loss:.4f}"

    def _line(self, elapsed: float) -> str:
        eta = elapsed / self.steps * max(self.total - self.steps, 0)
        where = f"{self.unit} {self.steps}/{self.total}"
        return f"{self.description}  {where}  {self._stats(elapsed)}  ETA {timedelta(seconds=round(eta))}"

    def close(self) -> None:
        """Remove the bar (plain lines need no ending: the caller prints the loop's result)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> LoopProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _summary_writer() -> type[SummaryWriter]:
    """torch's TensorBoard writer, or a ConfigError saying how to install what it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch.utils.tensorboard imports the tensorboard package
        raise ConfigError(
            "output.tensorboard is true but the tensorboard package is not installed: "
            "pip install 'lovaszseg[tensorboard]' (or set output.tensorboard=false)"
        ) from error
    return SummaryWriter


def _as_uint8(image: Tensor) -> np.ndarray:
    """A normalised ``[C, H, W]`` image contrast-stretched to uint8 ``[H, W]`` or ``[H, W, 3]`` for display."""
    low, high = image.min(), image.max()
    scaled = ((image - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8)
    return scaled[0].numpy() if scaled.shape[0] == 1 else scaled.permute(1, 2, 0).numpy()


class TensorBoardLog:
    """TensorBoard event files of a run (``output.tensorboard``): a scalar per ``summary.csv`` column
    (same names, same values, one step per epoch of the whole run), the stage as text, and the first
    :data:`OVERLAY_IMAGES` validation images with the masks the model predicts after each epoch.

    Built before the run folder, so that a missing tensorboard package fails before anything is
    written; :meth:`writing` then opens the event files for a run. Disabled, every method does nothing.

    Args:
        enabled: Whether to write (the config asks for it and this process writes the run's files).
        spec: The dataset's description (how predictions become masks and are cropped).

    Raises:
        ConfigError: ``enabled`` and tensorboard is not installed.
    """

    def __init__(self, enabled: bool, spec: DatasetSpec) -> None:
        self._writer_class = _summary_writer() if enabled else None
        self.spec = spec
        self.writer: SummaryWriter | None = None
        self.step = 0

    @contextmanager
    def writing(self, log_dir: Path, epochs_done: int) -> Iterator[None]:
        """Write events into ``log_dir`` while the block runs.

        Args:
            log_dir: The run's TensorBoard folder.
            epochs_done: Epochs already in ``summary.csv`` (a resumed run continues their steps).
        """
        if self._writer_class is None:
            yield
            return
        self.writer, self.step = self._writer_class(log_dir=str(log_dir)), epochs_done
        try:
            yield
        finally:
            self.writer.close()
            self.writer = None

    def log_epoch(self, row: Mapping[str, Any], model: nn.Module, dataset: Dataset) -> None:
        """Log an epoch's ``summary.csv`` row and the overlays of ``model`` on the first images of ``dataset``."""
        if self.writer is None:
            return
        self.step += 1
        for name, value in row.items():
            if name not in ("stage", "epoch"):
                self.writer.add_scalar(name, float(value), self.step)
        self.writer.add_text("stage", f"{row['stage']} epoch {row['epoch']}", self.step)
        for index, picture in enumerate(self._overlays(model, dataset)):
            self.writer.add_image(f"overlay/{index}", picture, self.step, dataformats="HWC")
        self.writer.flush()  # readable while the run goes on, and kept if it is killed

    @torch.no_grad()
    def _overlays(self, model: nn.Module, dataset: Dataset) -> list[np.ndarray]:
        model.eval()
        device = next(model.parameters()).device
        pictures = []
        for index in range(min(OVERLAY_IMAGES, len(dataset))):
            sample = dataset[index]
            probs = predict_probabilities(model, sample["image"][None].to(device))[0].cpu()
            image, probs = self._crop(sample["image"], sample), self._crop(probs, sample)
            labels = probs[0] > DEFAULT_THRESHOLD if self.spec.binary else probs.argmax(0)
            pictures.append(overlay(_as_uint8(image), labels.numpy().astype(np.intp)))
        return pictures

    def _crop(self, tensor: Tensor, sample: Mapping[str, Any]) -> Tensor:
        """The pixels of the image itself, as evaluation scores them (no padding)."""
        if self.spec.original_size is not None:
            return crop_to_original(tensor, self.spec.original_size, resized=self.spec.resize)
        if "size" in sample:
            return crop_to_original(tensor, self.spec.resize or tuple(sample["size"].tolist()))
        return tensor


def append_summary(path: Path, row: dict[str, Any]) -> None:
    """Append one epoch's row to ``summary.csv`` (header written with the first row).

    Rows of later stages may carry metrics the header lacks only if the task changes, which a run
    never does; the columns are fixed by the first row.
    """
    existing = path.read_text() if path.is_file() else ""
    with atomic_write(path, "w", newline="") as handle:  # rewritten whole: a crash never leaves half a row
        handle.write(existing)
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if not existing:
            writer.writeheader()
        writer.writerow(row)


def read_summary(path: Path) -> list[dict[str, str]]:
    """The rows of ``summary.csv`` (empty when the file does not exist yet)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _broken_at_stages(rows: Sequence[dict[str, str]], column: str) -> tuple[list[float], list[float]]:
    """Epochs and values of a column with a gap (NaN) between stages: their losses are not comparable."""
    xs: list[float] = []
    ys: list[float] = []
    for index, row in enumerate(rows):
        if index and row["stage"] != rows[index - 1]["stage"]:
            xs.append(index + 0.5)
            ys.append(math.nan)
        xs.append(index + 1)
        ys.append(float(row[column]))
    return xs, ys


def plot_curves(rows: Sequence[dict[str, str]], path: Path, metrics: Sequence[str]) -> None:
    """Loss and validation metrics per epoch, stage boundaries marked, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(rows) + 1)
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for column, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        if rows and column in rows[0]:
            loss_axis.plot(*_broken_at_stages(rows, column), marker=".", label=label)
    for name in metrics:
        if rows and name in rows[0]:
            metric_axis.plot(epochs, [float(r[name]) for r in rows], marker=".", label=name)
    for index in range(1, len(rows)):
        if rows[index]["stage"] != rows[index - 1]["stage"]:
            for axis in (loss_axis, metric_axis):
                axis.axvline(index + 0.5, color="grey", linestyle="--", linewidth=1)
    for axis, title in ((loss_axis, "loss"), (metric_axis, "validation")):
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=90)
    plt.close(figure)


def final_table(rows: Sequence[dict[str, str]], metrics: Sequence[str], monitor: str, mode: str) -> Table:
    """One line per stage: its epochs, last train loss and the validation metrics of its best epoch."""
    sign = 1.0 if mode == "max" else -1.0
    table = Table(title="lovaszseg run")
    for column in ("stage", "epochs", "train loss", *metrics):
        table.add_column(column, justify="left" if column == "stage" else "right", overflow="fold")
    stages: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        stages.setdefault(row["stage"], []).append(row)
    for stage, stage_rows in stages.items():
        best = max(stage_rows, key=lambda r: sign * float(r[monitor]))
        table.add_row(
            stage,
            str(len(stage_rows)),
            f"{float(stage_rows[-1]['train_loss']):.4f}",
            *(f"{float(best[m]):.4f}" if m in best else "-" for m in metrics),
        )
    return table
