"""Run reports: summary.csv rows, the per-stage final table, curves.png."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from lovaszseg.engine.reporting import append_summary, final_table, plot_curves, read_summary

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
