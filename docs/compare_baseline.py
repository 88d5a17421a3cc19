"""Summarise a finished ``lovaszseg compare`` again against another baseline, without its models.

Every run of a comparison keeps its per-image statistics (``image-statistics.npz``), so the paired
bootstrap differences can be recomputed from the comparison folder alone:

    python docs/compare_baseline.py runs/tgs-finetune "lovasz_hinge(variant=elu+1)" [--out summary.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from lovaszseg.workflows.compare import comparison_tables, load_comparison, summarise, write_rows_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_dir", type=Path, help="a comparison's --out-dir")
    parser.add_argument("baseline", help="one of its entries, as written in compare.csv")
    parser.add_argument("--out", type=Path, help="write the summary rows to this CSV file")
    args = parser.parse_args()
    rows, statistics = load_comparison(args.compare_dir)
    summary = summarise(rows, statistics, args.baseline)
    for table in comparison_tables(summary, args.baseline):
        Console(width=200).print(table)
    if args.out:
        write_rows_csv(args.out, summary)


if __name__ == "__main__":
    main()
