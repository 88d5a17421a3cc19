"""A cv folder's fold models and their ensemble on its held-out images, with paired bootstrap intervals.

Usage:
    python docs/cv_holdout.py runs/tgs-cv [--tta hflip] [--resamples 10000] [--seed 0]

Every model is scored by the metrics engine on the cv's ``holdout`` split (images no fold trained on
and the post-processing was not tuned on): each fold model alone and the ensemble of all folds at
threshold 0.5, and the ensemble with the threshold and min-area tuned on the out-of-fold predictions.
Each line gives the mean TGS competition score over the images and a 95% bootstrap interval of that
mean; each difference is paired by image (the same resampled images for both sides), so what varies
between images cancels. The mean of the folds is the average, image by image, of the five single-model
scores: what one fold model scores on average.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from lovaszseg.data.folds import HOLDOUT
from lovaszseg.inference.ensemble import load_predictor
from lovaszseg.inference.predict import predict_probabilities
from lovaszseg.scoring.engine import Scorer, evaluate
from lovaszseg.scoring.postprocess import PostProcessing, image_scores
from lovaszseg.storage.cv_folder import CvFolder


def model_scores(source: Path, holdout: Path, tta: str, chosen: PostProcessing) -> np.ndarray:
    """Per-image TGS scores ``[N]`` of a model (or ensemble) on the held-out images, post-processed."""
    predictor = load_predictor(source)
    config = predictor.config
    dataset = config.data.build(str(holdout), train=False)
    scorer = Scorer(predictor.spec, keep_images=True)
    loader, predict = DataLoader(dataset, batch_size=16), partial(predict_probabilities, tta=tta)
    evaluate(predictor.model, loader, predictor.spec, device="cpu", predict=predict, scorer=scorer)
    return image_scores(scorer.image_counts(), chosen)


def interval(values: np.ndarray, picks: np.ndarray) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of the mean of ``values`` over bootstrap resamples ``picks``."""
    means = values[picks].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("--tta", default="hflip")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = CvFolder.existing(args.cv_dir)
    holdout = folder.split_path(HOLDOUT)
    tuned = load_predictor(folder.path).tuning()
    if tuned is None:
        hint = f"run lovaszseg cv --resume {folder.path}"
        raise SystemExit(f"{folder.path} has no post-processing tuned for its folds: {hint}")
    plain = PostProcessing()
    scores = {f"fold {k}": model_scores(path, holdout, args.tta, plain) for k, path in enumerate(folder.model_files())}
    fold_mean = np.mean(list(scores.values()), axis=0)
    scores["mean of the folds"] = fold_mean
    scores["ensemble"] = model_scores(folder.path, holdout, args.tta, plain)
    label = f"ensemble, threshold {tuned.chosen.threshold:.2f} + min-area {tuned.chosen.min_area} (out of fold)"
    scores[label] = model_scores(folder.path, holdout, args.tta, tuned.chosen)
    picks = np.random.default_rng(args.seed).integers(0, len(fold_mean), (args.resamples, len(fold_mean)))
    print(f"{len(fold_mean)} held-out images, tta {args.tta}, {args.resamples} bootstrap resamples (seed {args.seed})")
    print(f"{'model':<62} {'salt_score':>10}  95% interval")
    for name, values in scores.items():
        low, high = interval(values, picks)
        print(f"{name:<62} {values.mean():>10.4f}  [{low:.4f}, {high:.4f}]")
    print("paired differences:")
    for name, (a, b) in {
        "ensemble - mean of the folds": ("ensemble", "mean of the folds"),
        "tuned ensemble - ensemble": (label, "ensemble"),
        "tuned ensemble - mean of the folds": (label, "mean of the folds"),
    }.items():
        difference = scores[a] - scores[b]
        low, high = interval(difference, picks)
        verdict = "real" if low > 0 or high < 0 else "within noise"
        print(f"{name:<62} {difference.mean():>+10.4f}  [{low:+.4f}, {high:+.4f}]  {verdict}")


if __name__ == "__main__":
    main()
