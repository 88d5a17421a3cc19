"""What a run shows and leaves behind: progress bars, summary.csv, curves.png and a final table."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from lovaszseg.data.io import atomic_write

__all__ = ["EpochProgress", "append_summary", "final_table", "plot_curves", "read_summary"]


class EpochProgress:
    """A rich progress bar for one epoch (loss, speed, ETA); plain lines when not on a terminal."""

    def __init__(self, console: Console, description: str, total: int, enabled: bool) -> None:
        self.console, self.description, self.total, self.enabled = console, description, total, enabled
        self.progress: Progress | None = None
        if enabled and console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} img/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.task = self.progress.add_task(description, total=total, loss=math.nan, speed=0.0)
            self.progress.start()

    def update(self, step: int, loss: float, images_per_second: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, speed=images_per_second)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


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
        table.add_column(column, justify="left" if column == "stage" else "right")
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
