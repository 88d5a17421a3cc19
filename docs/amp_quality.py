"""Does a faster setting (bf16, channels-last) train as well as float32? Pair two ``lovaszseg compare`` runs.

Run the same comparison twice, once per setting, with the same entries and seeds, e.g.

    lovaszseg compare docs/experiments-tgs-finetune.yaml train.amp=none --seeds 0,1,2 --epochs 2 \
        --losses bce --out-dir runs/quality-fp32
    lovaszseg compare docs/experiments-tgs-finetune.yaml train.amp=bf16 train.channels_last=true \
        --seeds 0,1,2 --epochs 2 --losses bce --out-dir runs/quality-fast

then summarise them as one comparison whose entries are the settings:

    python docs/amp_quality.py runs/quality-fp32 runs/quality-fast [--names fp32,fast] [--entry E] [--out FILE]

Each run keeps its per-image statistics, so the difference of every metric (fast minus float32) gets
the paired bootstrap interval of :mod:`lovaszseg.scoring.evidence` (seeds and validation images
resampled together), as ``lovaszseg compare`` reports between losses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from lovaszseg.workflows.compare import comparison_tables, load_comparison, summarise, write_rows_csv


def merged(folders: list[Path], names: list[str], entry: str | None = None) -> tuple[list[dict], dict]:
    """The rows and statistics of one entry of several comparisons (``entry``, or the only one each
    holds), the entry renamed per folder."""
    rows, statistics = [], {}
    for folder, name in zip(folders, names, strict=True):
        folder_rows, folder_statistics = load_comparison(folder)
        entries = {row["loss"] for row in folder_rows}
        chosen = entry if entry is not None else next(iter(entries)) if len(entries) == 1 else None
        if chosen not in entries:
            raise SystemExit(f"{folder} compares {sorted(entries)}: name one of them with --entry")
        rows += [{**row, "loss": name} for row in folder_rows if row["loss"] == chosen]
        statistics |= {(name, seed): value for (loss, seed), value in folder_statistics.items() if loss == chosen}
    return rows, statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline_dir", type=Path, help="the float32 comparison's --out-dir")
    parser.add_argument("fast_dir", type=Path, help="the faster setting's --out-dir (same entry and seeds)")
    parser.add_argument("--names", default="fp32,fast", help="the two settings' names in the table")
    parser.add_argument("--out", type=Path, help="write the summary rows to this CSV file")
    parser.add_argument("--entry", help="the entry to pair, where the comparisons hold several")
    args = parser.parse_args()
    names = args.names.split(",")
    rows, statistics = merged([args.baseline_dir, args.fast_dir], names, args.entry)
    summary = summarise(rows, statistics, names[0])
    for table in comparison_tables(summary, names[0]):
        Console(width=200).print(table)
    if args.out:
        write_rows_csv(args.out, summary)


if __name__ == "__main__":
    main()
