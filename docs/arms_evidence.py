"""Settings against a baseline setting on real TGS, on images held out of everything: one recipe, split and
seeds, a few config keys changed per arm.

Usage:
    python docs/arms_evidence.py CONFIG --out-dir DIR --arm "NAME: KEY=VALUE ..." --arm ... [--seeds 0,1,2]
        [--holdout 300] [--folds 9] [OVERRIDE ...]

e.g. ``--arm "shuffle:" --arm "balanced: data.sampler=balanced data.empty_share=0.3"``. The first arm is the
baseline. Where :mod:`winners_evidence` changes a loss or model key per entry (``lovaszseg compare``), an arm
may change any key: ``data.sampler``, ``data.pseudo``, ``train.amp``, ...

1. **Split**, as :func:`winners_evidence.write_split`: ``--holdout`` images held out (scored here, used for
   nothing else), the rest dealt to ``--folds`` folds; fold 0 validates, the others train.
2. **Train** every arm once per seed into ``DIR/ARM/seed-S`` (a finished run of the same config is reused).
3. **Score** every run on the held-out images, with the threshold and min-area tuned on its validation
   fold; each arm minus the baseline with a paired bootstrap interval over seeds and held-out images.
   The median training time of an epoch per arm (``summary.csv``) is printed with it: for the speed
   settings it is the other half of the answer. ``--raw`` adds the same comparison at threshold 0.5
   without any rule, which shows a collapsed model that a tuned min-area would hide.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
from pathlib import Path

from winners_evidence import held_out_scores, held_out_statistics, report, write_split

from lovaszseg.config import load_config
from lovaszseg.scoring.evidence import ImageStatistics
from lovaszseg.scoring.postprocess import PostProcessing
from lovaszseg.storage.run_folder import RunFolder
from lovaszseg.training import train


def read_arm(text: str) -> tuple[str, list[str]]:
    """``"balanced: data.sampler=balanced"`` -> ``("balanced", ["data.sampler=balanced"])``."""
    name, sep, overrides = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--arm {text!r}: write NAME: KEY=VALUE ... (nothing after the colon for the config as is)")
    return name.strip(), shlex.split(overrides)


def epoch_seconds(run: Path) -> float:
    """The median wall time of the run's epochs (training and validation), from its ``summary.csv``."""
    return statistics.median(float(row["time_s"]) for row in RunFolder(run).summary())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the config, for every arm")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--arm", action="append", required=True, help='"NAME: KEY=VALUE ...", baseline first')
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--holdout", type=int, default=300)
    parser.add_argument("--folds", type=int, default=9)
    parser.add_argument("--raw", action="store_true", help="also compare at threshold 0.5 without rules")
    args = parser.parse_intermixed_args()  # overrides may follow the options
    arms = dict(read_arm(text) for text in args.arm)
    if len(arms) < 2 or len(arms) != len(args.arm):
        raise SystemExit("give two or more --arm, each with its own name")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    folds_csv, holdout = write_split(load_config(args.config, args.overrides), args.out_dir, args.folds, args.holdout)
    split = [f"data.options.folds_csv={folds_csv}", "data.options.fold=0"]
    configs = {  # every config error before any training
        (arm, seed): load_config(args.config, [*args.overrides, *split, *keys, f"train.seed={seed}"])
        for arm, keys in arms.items()
        for seed in seeds
    }
    for (arm, seed), config in configs.items():
        folder = RunFolder(args.out_dir / arm / f"seed-{seed}")
        if folder.finished_as(config):
            print(f"reusing the finished run {folder.path}")
        elif not train(config, run_dir=folder.path, overwrite=True).completed:
            raise SystemExit("interrupted: run the same command again to continue")
    runs = {arm: [args.out_dir / arm / f"seed-{seed}" for seed in seeds] for arm in arms}
    scored: dict[str, list[ImageStatistics]] = {arm: [] for arm in arms}
    for arm, paths in runs.items():
        for run in paths:
            held_out, chosen = held_out_statistics(run, holdout, {})
            scored[arm].append(held_out)
            print(f"{run}: {chosen.describe()} (tuned on the validation fold), epoch {epoch_seconds(run):.1f} s")
        median = statistics.median(epoch_seconds(run) for run in paths)
        print(f"{arm}: {' '.join(arms[arm]) or '(the config as is)'}; median epoch {median:.1f} s")
    report(scored, next(iter(arms)), seeds)
    if args.raw:  # the masks as they come: no tuning, so no pass over the validation fold
        raw = {arm: [held_out_scores(run, holdout, PostProcessing()) for run in paths] for arm, paths in runs.items()}
        report(raw, next(iter(arms)), seeds, "threshold 0.5, no min-area (no post-processing)")


if __name__ == "__main__":
    main()
