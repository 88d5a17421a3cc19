"""The loss comparison experiment: the same model, data, seed and epoch budget, once per loss.

``compare(config, ["bce", "jaccard", "lovasz_hinge", "bce>lovasz_hinge"], epochs=10)`` trains one run
per entry under ``out/``, evaluates each best checkpoint on the same validation split, and writes
``compare.csv``, ``compare.png`` and returns the rows (also shown as a table by the CLI).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from lovaszseg.config import Config, load_config
from lovaszseg.data.io import atomic_write
from lovaszseg.engine.run_folder import RunFolder
from lovaszseg.engine.runs import evaluate_run
from lovaszseg.engine.trainer import train
from lovaszseg.errors import ConfigError

__all__ = ["STAGE_OPTIONS", "CompareResult", "compare", "parse_entry"]

# Final metrics drawn side by side: binary ones at 0.5 and at their best threshold, then multi-class ones.
_BAR_METRICS = (
    "salt_score",
    "salt_score_at_best_threshold",
    "iou",
    "iou_at_best_threshold",
    "image_iou",
    "image_iou_at_best_threshold",
    "miou",
    "image_miou",
)
_TERM = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")
# Options of a term that set its stage rather than its loss, e.g. ``bce>lovasz_hinge(lr=0.0005)``.
STAGE_OPTIONS = frozenset({"lr", "optimizer", "weight_decay", "momentum", "schedule", "min_lr"})


def _parse_term(text: str) -> tuple[Any, dict[str, Any]]:
    """``lovasz_hinge(variant=elu+1, lr=0.0005)`` -> the loss spec and the stage's own settings."""
    match = _TERM.match(text)
    if match is None:
        raise ConfigError(f"cannot read loss {text!r}; write NAME or NAME(option=value, ...)")
    name, arguments = match.groups()
    options, settings = {}, {}
    for pair in arguments.split(",") if arguments else []:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep:
            raise ConfigError(f"loss {text!r}: {pair!r} is not option=value")
        (settings if key in STAGE_OPTIONS else options)[key] = yaml.safe_load(value)
    return ({name: options} if options else name), settings


def parse_entry(entry: str) -> list[tuple[Any, dict[str, Any]]]:
    """A comparison entry: one loss, or a schedule ``first>second`` (a stage per loss).

    Returns:
        Per stage, the loss spec and the stage settings given with it (keys of :data:`STAGE_OPTIONS`),
        which replace the base config's first-stage settings for that stage only.
    """
    return [_parse_term(part) for part in entry.split(">")]


@dataclass
class CompareResult:
    """One row per entry: the final metrics of its best checkpoint."""

    out_dir: Path
    rows: list[dict[str, Any]]
    stop_signal: int | None = None  # the signal that interrupted the comparison, if one did


def _entry_config(base: Config, entry: str, epochs: int) -> Config:
    template = base.stages[0]
    terms = parse_entry(entry)
    lengths = [epochs // len(terms)] * len(terms)
    lengths[-1] += epochs - sum(lengths)
    if min(lengths) < 1:
        raise ConfigError(f"{entry!r} has {len(terms)} stages but the budget is only {epochs} epochs")
    stages = [
        {**template.model_dump(), "name": str(index + 1), "loss": loss, "epochs": length, **settings}
        for index, ((loss, settings), length) in enumerate(zip(terms, lengths, strict=True))
    ]
    return load_config({**base.model_dump(), "stages": stages})


def _finished_run(folder: RunFolder, config: Config) -> bool:
    """Whether ``folder`` holds a run of exactly ``config`` that trained to the end."""
    return folder.finished and folder.config_path.is_file() and folder.config() == config


def _safe_name(entry: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", entry.replace(">", "-then-")).strip("_")


def compare(
    config: Config | str | Path,
    losses: Sequence[str],
    *,
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    out_dir: Path | None = None,
    retrain: bool = False,
    console: Console | None = None,
) -> CompareResult:
    """Train and evaluate the same setup once per loss.

    Args:
        config: Base config (its first stage gives optimiser, learning rate and schedule).
        losses: Entries such as ``bce``, ``jaccard``, ``lovasz_hinge``, ``lovasz_hinge(variant=elu+1)``
            or ``bce>lovasz_hinge`` (two stages, each half the budget, the second from the first's best).
            Stage settings can go with a loss: ``bce>lovasz_hinge(lr=0.0005)`` (see :data:`STAGE_OPTIONS`).
        overrides: ``key.path=value`` overrides of the base config.
        epochs: Epoch budget of every entry (default: the base config's total).
        out_dir: Where the runs and the comparison go (default ``runs_dir/NAME-compare``).
        retrain: Train every entry again. By default an entry whose folder already holds a finished run
            of the same config is only evaluated again, so an interrupted comparison continues where it
            stopped and a finished one can be re-scored.
        console: Where progress and the table go.

    Returns:
        :class:`CompareResult`.
    """
    console = console or Console()
    base = config if isinstance(config, Config) else load_config(config, overrides)
    budget = epochs or sum(stage.epochs for stage in base.stages)
    out_dir = Path(out_dir or Path(base.output.runs_dir) / f"{base.output.name or 'run'}-compare")
    configs = {entry: _entry_config(base, entry, budget) for entry in losses}  # all errors before training
    rows, histories, stop_signal = [], {}, None
    for entry, entry_config in configs.items():
        console.rule(f"[bold]{entry}")
        folder = RunFolder(out_dir / _safe_name(entry))
        if not retrain and _finished_run(folder, entry_config):
            console.print(f"reusing the finished run {folder.path}")
            histories[entry] = folder.summary()
        else:
            result = train(entry_config, run_dir=folder.path, overwrite=True, console=console)
            if not result.completed:  # Ctrl-C / SIGTERM: stop the whole comparison, keep what finished
                console.print(f"[yellow]interrupted during {entry!r}; the comparison covers the entries before it")
                stop_signal = result.stop_signal
                break
            histories[entry] = result.history
        metrics = evaluate_run(folder.path, console=console)
        rows.append({"loss": entry, "epochs": budget, **{k: round(v, 6) for k, v in metrics.items()}})
    if not rows:
        return CompareResult(out_dir, rows, stop_signal)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_write(out_dir / "compare.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    _plot(histories, rows, out_dir / "compare.png")
    console.print(comparison_table(rows))
    return CompareResult(out_dir, rows, stop_signal)


def comparison_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="loss comparison (best checkpoint of each run, validation split)")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, justify="left" if column == "loss" else "right")
    for row in rows:
        table.add_row(*(f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in columns))
    return table


def _plot(histories: dict[str, list[dict[str, str]]], rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "salt_score" if "salt_score" in rows[0] else ("iou" if "iou" in rows[0] else "miou")
    figure, (curve_axis, bar_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20").colors
    for (entry, history), colour in zip(histories.items(), colours, strict=False):
        epochs = range(1, len(history) + 1)
        curve_axis.plot(epochs, [float(r[metric]) for r in history], marker=".", color=colour, label=entry)
    curve_axis.set(xlabel="epoch", ylabel=f"validation {metric}", title="per epoch")
    curve_axis.grid(alpha=0.3)
    names = [m for m in _BAR_METRICS if m in rows[0]]
    width = 0.8 / len(rows)
    for index, (row, colour) in enumerate(zip(rows, colours, strict=False)):
        positions = [i + index * width for i in range(len(names))]
        bar_axis.bar(positions, [row[n] for n in names], width=width, color=colour)
    labels = [name.replace("_at_best_threshold", "\n@ best threshold") for name in names]
    bar_axis.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], labels, fontsize=8)
    bar_axis.set(title="best checkpoint", ylim=(0, 1))
    bar_axis.grid(axis="y", alpha=0.3)
    # One legend below both panels: the same colour is the same entry in each.
    columns = min(len(rows), 3)
    figure.legend(*curve_axis.get_legend_handles_labels(), loc="lower center", ncol=columns, fontsize=9)
    figure.tight_layout(rect=(0, 0.06 * -(-len(rows) // columns), 1, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)
