"""The budget question: two ways of spending a budget (a K-fold ensemble, one longer run, another setting) on
the same held-out images.

Usage:
    python docs/budget_evidence.py runs/budget-cv runs/budget-single
    python docs/budget_evidence.py runs/budget-cv runs/budget-cv-fast
    python docs/budget_evidence.py runs/cv-seed0 runs/single-seed0 runs/cv-seed1 runs/single-seed1 ...

``A`` is a cv folder made with ``--holdout``; its held-out images are the test of both. ``B`` is another cv
folder with the same held-out images, or a run whose training split excludes them. A cv folder's ensemble
is post-processed as tuned on its out-of-fold predictions; a run's as tuned on its validation fold (as a
user of one model would). Both are scored image by image; ``B - A`` has a paired bootstrap interval over
those images. The mean of a cv's fold models alone (each at its out-of-fold post-processing) says what its
ensemble adds. Several ``A B`` pairs (one per training seed, the same held-out images) add the mean over
seeds of each side with its interval over seeds, and ``B - A`` with a paired bootstrap over seeds and
images.
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


def scored(a: Path, b: Path) -> tuple[tuple[str, ImageStatistics], tuple[str, ImageStatistics]]:
    """Both sides of one pair on ``a``'s held-out images."""
    holdout = CvFolder.existing(a).split_path(HOLDOUT)
    return cv_scores(a, holdout), (cv_scores if CvFolder.is_cv_folder(b) else run_scores)(b, holdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pairs",
        type=Path,
        nargs="+",
        help="A B [A B ...]: a cv folder made with --holdout, then "
        "a cv folder with the same held-out images or a run; one pair per seed",
    )
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give A B pairs: an even number of folders")
    pairs = [scored(a, b) for a, b in zip(args.pairs[::2], args.pairs[1::2], strict=True)]
    if len({tuple(a[1].ids) for a, _ in pairs}) > 1:
        raise SystemExit("the pairs hold out different images; a paired comparison needs the same ones")
    print(f"{METRIC} on the {len(pairs[0][0][1].ids)} held-out images")
    for a, b in pairs:
        for name, statistics in (a, b):
            spread = mean_interval(statistics.values[METRIC][:, 0])
            print(f"{name}: {spread.estimate:.4f} [{spread.low:.4f}, {spread.high:.4f}]")
        print(f"B - A: {interval_text(paired_bootstrap([b[1]], [a[1]], METRIC))}")
    if len(pairs) > 1:
        for side, label in ((0, "A"), (1, "B")):
            means = [pair[side][1].values[METRIC][:, 0].mean() for pair in pairs]
            spread = mean_interval(means)
            print(
                f"{label}, mean of {len(pairs)} seeds: {spread.estimate:.4f} [{spread.low:.4f}, {spread.high:.4f}] "
                f"({', '.join(f'{m:.4f}' for m in means)})"
            )
        difference = paired_bootstrap([b[1] for _, b in pairs], [a[1] for a, _ in pairs], METRIC)
        print(f"B - A over {len(pairs)} seeds (paired over seeds and images): {interval_text(difference)}")


if __name__ == "__main__":
    main()
