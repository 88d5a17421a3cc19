"""The budget question: two ways of spending a budget (a K-fold ensemble, one longer run, another setting) on
the same held-out images.

Usage:
    python docs/budget_evidence.py runs/budget-cv runs/budget-single
    python docs/budget_evidence.py runs/budget-cv runs/budget-cv-fast

``A`` is a cv folder made with ``--holdout``; its held-out images are the test of both. ``B`` is another cv
folder with the same held-out images, or a run whose training split excludes them. A cv folder's ensemble
is post-processed as tuned on its out-of-fold predictions; a run's as tuned on its validation fold (as a
user of one model would). Both are scored image by image; ``B - A`` has a paired bootstrap interval over
those images. The mean of a cv's fold models alone (each at its out-of-fold post-processing) says what its
ensemble adds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from winners_evidence import METRIC, held_out_scores, image_counts, interval_text

from lovaszseg.data.folds import HOLDOUT
from lovaszseg.inference.ensemble import load_predictor
from lovaszseg.scoring.evidence import ImageStatistics, mean_interval, paired_bootstrap
from lovaszseg.scoring.postprocess import tune_postprocessing
from lovaszseg.storage.cv_folder import CvFolder


def cv_scores(path: Path, holdout: Path) -> tuple[str, ImageStatistics]:
    """A cv folder's ensemble on the held-out images, post-processed as tuned out of fold, and its name."""
    folder = CvFolder.existing(path)
    if set(folder.split_path(HOLDOUT).read_text().split()) != set(holdout.read_text().split()):
        raise SystemExit(f"{path} holds out other images than {holdout}")
    tuned = load_predictor(folder.path).tuning()
    if tuned is None:
        raise SystemExit(f"{folder.path} has no out-of-fold tuning: run lovaszseg cv --resume {folder.path}")
    folds = [held_out_scores(model, holdout, tuned.chosen).values[METRIC][:, 0] for model in folder.model_files()]
    print(f"{path}: mean of the fold models alone {np.mean(folds):.4f} ({', '.join(f'{f.mean():.4f}' for f in folds)})")
    name = f"{path}: {len(folds)}-fold ensemble ({tuned.chosen.describe()}, out of fold)"
    return name, held_out_scores(folder.path, holdout, tuned.chosen)


def run_scores(path: Path, holdout: Path) -> tuple[str, ImageStatistics]:
    """One run on the held-out images, post-processed as tuned on its validation fold, and its name."""
    run = load_predictor(path)
    if seen := set(holdout.read_text().split()) & set(run.config.data.build("train", train=False).ids):
        raise SystemExit(f"{path} trained on {len(seen)} of the held-out images, e.g. {sorted(seen)[0]}")
    chosen = tune_postprocessing(image_counts(path, "val")[1], METRIC).chosen
    return f"{path}: one run ({chosen.describe()}, on its validation fold)", held_out_scores(path, holdout, chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="a cv folder made with --holdout")
    parser.add_argument("b", type=Path, help="a cv folder with the same held-out images, or a run")
    args = parser.parse_args()
    holdout = CvFolder.existing(args.a).split_path(HOLDOUT)
    a = cv_scores(args.a, holdout)
    b = (cv_scores if CvFolder.is_cv_folder(args.b) else run_scores)(args.b, holdout)
    print(f"{METRIC} on the {len(a[1].ids)} held-out images")
    for name, statistics in (a, b):
        spread = mean_interval(statistics.values[METRIC][:, 0])
        print(f"{name}: {spread.estimate:.4f} [{spread.low:.4f}, {spread.high:.4f}]")
    print(f"B - A: {interval_text(paired_bootstrap([b[1]], [a[1]], METRIC))}")


if __name__ == "__main__":
    main()
