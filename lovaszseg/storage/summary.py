"""A run's ``summary.csv`` (a row per epoch) and its ``curves.png``."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lovaszseg.data.io import atomic_write

__all__ = ["SWA_EPOCH", "append_summary", "plot_curves", "read_summary", "trained_rows"]

# The epoch column of the row of a stage's SWA average (validated after its last epoch; no train loss).
SWA_EPOCH = "swa"


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


def trained_rows(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The rows of trained epochs: without those of SWA averages."""
    return [row for row in rows if row["epoch"] != SWA_EPOCH]


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
