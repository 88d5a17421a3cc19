"""Test-time augmentation against none, on the models of a finished ``lovaszseg compare``: paired per image.

Usage:
    python docs/tta_evidence.py runs/voc-weights --entry ENTRY --tta "hflip+scale=0.75,1.25" [--tta d4 ...]

Every seed's run of ``ENTRY`` is scored on its validation split once per ``--tta`` setting, recording each
image's statistics (:class:`~lovaszseg.scoring.evidence.ImageRecorder`); the comparison's own statistics
(no TTA) are the baseline. Each setting minus none gets the paired bootstrap interval over seeds and images
that ``lovaszseg compare`` reports between losses: "real" when it excludes 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from winners_evidence import interval_text

from lovaszseg.scoring.evidence import ImageRecorder, ImageStatistics, mean_interval, paired_bootstrap
from lovaszseg.storage.run_folder import RunFolder
from lovaszseg.workflows.compare import IMAGE_STATISTICS_FILE, summarised_metrics
from lovaszseg.workflows.runs import evaluate_run


def scored_with(run: Path, tta: str) -> ImageStatistics:
    """A run's per-image statistics on its validation split under ``tta``."""
    recorder = ImageRecorder(RunFolder(run).config().data.spec())
    evaluate_run(run, tta=tta, recorder=recorder, console=Console(quiet=True))
    return recorder.statistics


def mean_over_seeds(statistics: list[ImageStatistics], metric: str) -> float:
    return sum(float(s.metric(metric)[0]) for s in statistics) / len(statistics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("compare_dir", type=Path)
    parser.add_argument("--entry", required=True, help="the entry's folder name in COMPARE_DIR")
    parser.add_argument("--tta", action="append", required=True, help="a TTA setting; repeat for several")
    args = parser.parse_args()
    runs = sorted((args.compare_dir / args.entry).glob("seed-*"))
    if not runs:
        raise SystemExit(f"{args.compare_dir / args.entry} holds no seed-* runs of a finished comparison")
    baseline = [ImageStatistics.load(run / IMAGE_STATISTICS_FILE) for run in runs]
    metrics = summarised_metrics(dict.fromkeys(baseline[0].values))
    scored = {tta: [scored_with(run, tta) for run in runs] for tta in args.tta}
    print(f"{args.entry} in {args.compare_dir}: {len(runs)} seeds, {len(baseline[0].ids)} validation images each")
    for metric in metrics:
        none = mean_interval([float(s.metric(metric)[0]) for s in baseline])
        print(f"\n{metric}: no TTA {none.estimate:.4f} [{none.low:.4f}, {none.high:.4f}] (mean over seeds)")
        for tta, statistics in scored.items():
            difference = interval_text(paired_bootstrap(statistics, baseline, metric))
            print(f"  {tta}: {mean_over_seeds(statistics, metric):.4f}, difference {difference}")


if __name__ == "__main__":
    main()
