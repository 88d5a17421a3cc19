"""The budget question: a K-fold ensemble against one longer run of the same recipe, on the same held-out images.

Usage:
    python docs/budget_evidence.py runs/budget-cv runs/budget-single [--resamples 2000]

``CV`` is a cv folder made with ``--holdout`` (its ensemble, post-processed as tuned on its out-of-fold
predictions); ``RUN`` is a run whose training split excludes those held-out images (its validation
fold tunes its post-processing, as a user of one model would). Both are scored on the cv's held-out
images, image by image; the difference has a paired bootstrap interval over those images. The mean of
the fold models alone (each at its out-of-fold post-processing) says what the ensemble adds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from winners_evidence import METRIC, held_out_scores, image_counts, interval_text

from lovaszseg.data.folds import HOLDOUT
from lovaszseg.inference.ensemble import load_predictor
from lovaszseg.scoring.evidence import mean_interval, paired_bootstrap
from lovaszseg.scoring.postprocess import tune_postprocessing
from lovaszseg.storage.cv_folder import CvFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    folder = CvFolder.existing(args.cv_dir)
    holdout = folder.split_path(HOLDOUT)
    tuned = load_predictor(folder.path).tuning()
    if tuned is None:
        raise SystemExit(f"{folder.path} has no out-of-fold tuning: run lovaszseg cv --resume {folder.path}")
    run = load_predictor(args.run_dir)
    if seen := set(holdout.read_text().split()) & set(run.config.data.build("train", train=False).ids):
        raise SystemExit(f"{args.run_dir} trained on {len(seen)} of the held-out images, e.g. {sorted(seen)[0]}")
    single_chosen = tune_postprocessing(image_counts(args.run_dir, "val")[1], METRIC).chosen
    ensemble_name = f"{len(folder.model_files())}-fold ensemble ({tuned.chosen.describe()}, out of fold)"
    single_name = f"one run ({single_chosen.describe()}, on its validation fold)"
    scored = {
        ensemble_name: held_out_scores(folder.path, holdout, tuned.chosen),
        single_name: held_out_scores(args.run_dir, holdout, single_chosen),
    }
    folds = [held_out_scores(path, holdout, tuned.chosen).values[METRIC][:, 0] for path in folder.model_files()]
    ensemble, single = scored.values()
    print(f"{METRIC} on the {len(ensemble.ids)} held-out images")
    print(f"mean of the fold models alone: {np.mean(folds):.4f} ({', '.join(f'{f.mean():.4f}' for f in folds)})")
    for name, statistics in scored.items():
        scores = statistics.values[METRIC][:, 0]
        spread = mean_interval(scores)
        print(f"{name}: {scores.mean():.4f} [{spread.low:.4f}, {spread.high:.4f}]")
    print(f"one run - ensemble: {interval_text(paired_bootstrap([single], [ensemble], METRIC))}")


if __name__ == "__main__":
    main()
