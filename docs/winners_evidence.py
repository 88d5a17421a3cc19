"""The winners' model on real TGS: each of its additions against the plain UNet, on images held out of everything.

Usage:
    python docs/winners_evidence.py docs/experiments-tgs-winners.yaml --out-dir runs/winners [--seeds 0,1,2]
        [--entries plain,empty-head,...] [--baseline plain] [--holdout 300] [--folds 9] [OVERRIDE ...]

1. **Split.** The config's labelled images, stratified by salt coverage: ``--holdout`` of them are held out
   (scored here and used for nothing else), the rest dealt to ``--folds`` folds; fold 0 validates (the
   best epoch and every post-processing choice), the other folds train. Written to ``OUT/folds.csv``.
2. **Train.** ``lovaszseg compare`` of the entries (:data:`ENTRIES`) on that split, once per seed: the
   same data, budget and seeds for each, a loss or model key changed per entry (its tables compare them
   on the validation fold, in ``OUT/compare.csv``).
3. **Score.** For every run: the threshold and min-area (and the empty gate, for a model with an
   empty-image head) tuned on the validation fold, then applied to the held-out images; for a head
   also with the gate off (threshold and min-area tuned without it), which is the gate's own worth.
   Every entry minus the plain UNet, and the gate's worth, with a paired hierarchical bootstrap interval
   (seeds and held-out images resampled, the same draws for both sides): "real" when it excludes 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from lovaszseg.config import Config, load_config
from lovaszseg.data.folds import make_cv_split, write_folds_csv, write_id_list
from lovaszseg.inference.ensemble import load_predictor
from lovaszseg.inference.predict import predict_outputs
from lovaszseg.scoring.engine import Scorer, evaluate
from lovaszseg.scoring.evidence import ImageStatistics, Interval, mean_interval, paired_bootstrap
from lovaszseg.scoring.postprocess import ImageCounts, PostProcessing, image_scores, tune_postprocessing
from lovaszseg.scoring.postprocess.empty_gate import EmptyGate
from lovaszseg.workflows.compare import compare

METRIC = "salt_score"
BASELINE = "plain"
GATE_OFF = {EmptyGate.name: EmptyGate.default}
HEAD = {"empty_head": 0.25}
WINNERS_MODEL = {**HEAD, "deep_supervision": 0.5, "hypercolumn": True, "options": {"decoder_attention_type": "scse"}}
# The two-stage recipe of the budget question (docs/experiments-tgs-budget.yaml): BCE, then the per-image
# ELU+1 hinge at a quarter of the learning rate from the BCE stage's best weights.
RECIPE = "bce>lovasz_hinge(variant=elu+1, lr=0.0005{})"
# Each addition alone, then all of them together as the 1st and 4th places combined them; then the
# winners' whole recipe (their model, a hinge stage whose pixel loss skips empty images, SWA over that
# stage) against the plain UNet trained with the same two stages (run them with --baseline plain-recipe).
ENTRIES: dict[str, dict[str, Any]] = {
    BASELINE: {"loss": "bce"},
    "empty-head": {"loss": "bce", "model": HEAD},
    "deep-supervision": {"loss": "bce", "model": {"deep_supervision": 0.5}},
    "hypercolumn": {"loss": "bce", "model": {"hypercolumn": True}},
    "scse": {"loss": "bce", "model": {"options": {"decoder_attention_type": "scse"}}},
    "swa": {"loss": "bce(swa_epochs=2)"},
    "combination": {"loss": "bce(swa_epochs=2)", "model": WINNERS_MODEL},
    "plain-recipe": {"loss": RECIPE.format("")},
    "winners-recipe": {"loss": RECIPE.format(", empty_images=skip, swa_epochs=2"), "model": WINNERS_MODEL},
}


def write_split(config: Config, out_dir: Path, n_folds: int, holdout: int) -> tuple[Path, Path]:
    """The stratified folds CSV (fold 0 validates) and the held-out ids' list, in ``out_dir``."""
    pool = config.data.build(config.data.spec().labelled_split, train=False)
    # The split seed of `lovaszseg cv` (data.options.seed): its --holdout holds out the same images.
    split = make_cv_split(pool, n_folds, int(config.data.options.get("seed", 0)), holdout)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_folds_csv(out_dir / "folds.csv", split), write_id_list(out_dir / "holdout.txt", split.holdout)


def image_counts(run: Path, split: str) -> tuple[tuple[str, ...], ImageCounts]:
    """The ids of a split and the per-image counts (with the empty-image head's probabilities, if any)
    of a run's best model on it."""
    predictor = load_predictor(run)
    scorer = Scorer(predictor.spec, keep_images=True)
    dataset = predictor.config.data.build(split, train=False)
    loader = DataLoader(dataset, batch_size=predictor.config.data.eval_batch_size)
    evaluate(predictor.model, loader, predictor.spec, device="cpu", predict=predict_outputs, scorer=scorer)
    return tuple(dataset.ids), scorer.image_counts()


def held_out_scores(source: Path, holdout: Path, chosen: PostProcessing) -> ImageStatistics:
    """Per-image TGS scores of a model (a run, a cv or ensemble folder) on the held-out images under ``chosen``."""
    ids, counts = image_counts(source, str(holdout))
    scores = image_scores(counts, chosen, METRIC)
    columns = np.stack([scores, np.ones(len(scores))], axis=1)  # a mean over images: sum(score) / sum(1)
    return ImageStatistics(ids, {METRIC: columns}, {METRIC: "ratio"})


def held_out_statistics(run: Path, holdout: Path, fixed: dict[str, Any]) -> tuple[ImageStatistics, PostProcessing]:
    """The run's per-image TGS scores on the held-out images, post-processed as tuned on its validation fold."""
    chosen = tune_postprocessing(image_counts(run, "val")[1], METRIC, fixed=fixed).chosen
    return held_out_scores(run, holdout, chosen), chosen


def interval_text(difference: Interval) -> str:
    """``+0.0123 [-0.0040, +0.0290] noise``: a difference, its interval, and whether it excludes 0."""
    verdict = "noise" if difference.low <= 0 <= difference.high else "real"
    return f"{difference.estimate:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}] {verdict}"


def report(
    scored: dict[str, list[ImageStatistics]],
    baseline: str,
    seeds: list[int],
    masks: str = "post-processing tuned on the validation fold",
) -> None:
    """Per entry: its held-out mean over seeds with a t-interval, and its paired difference to ``baseline``."""
    images = len(scored[baseline][0].ids)
    print(f"\n{METRIC} on the {images} held-out images, {masks}; seeds {seeds}")
    print(f"{'entry':<28} {'mean over seeds':>16}  95% interval (seeds)   difference to {baseline} [95% paired]")
    for name, statistics in scored.items():
        per_seed = [float(s.metric(METRIC)[0]) for s in statistics]
        spread = mean_interval(per_seed)
        line = f"{name:<28} {spread.estimate:>16.4f}  [{spread.low:.4f}, {spread.high:.4f}]"
        if name != baseline:
            line += f"   {interval_text(paired_bootstrap(statistics, scored[baseline], METRIC))}"
        print(f"{line}   per seed {', '.join(f'{value:.4f}' for value in per_seed)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the config")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--entries", default=",".join(ENTRIES), help=f"a subset of {', '.join(ENTRIES)}")
    parser.add_argument("--baseline", default=BASELINE, help="the entry the others are compared with")
    parser.add_argument("--holdout", type=int, default=300)
    parser.add_argument("--folds", type=int, default=9)
    args = parser.parse_intermixed_args()  # overrides may follow the options
    names = args.entries.split(",")
    if unknown := sorted(set(names) - set(ENTRIES)):
        raise SystemExit(f"--entries: unknown {', '.join(unknown)}; the entries are {', '.join(ENTRIES)}")
    if args.baseline not in names:
        raise SystemExit(f"--entries must include the baseline {args.baseline!r}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    base = load_config(args.config, args.overrides)
    folds_csv, holdout = write_split(base, args.out_dir, args.folds, args.holdout)
    overrides = [*args.overrides, f"data.options.folds_csv={folds_csv}", "data.options.fold=0"]
    entries = [{"name": name, **ENTRIES[name]} for name in names]
    result = compare(
        args.config, entries, overrides=overrides, seeds=seeds, baseline=args.baseline, out_dir=args.out_dir
    )
    if result.stop_signal is not None:
        raise SystemExit("interrupted: run the same command again to continue")
    scored: dict[str, list[ImageStatistics]] = {}
    for name in names:
        runs = [args.out_dir / name / f"seed-{seed}" for seed in seeds]
        scored[name] = []
        for run in runs:
            statistics, chosen = held_out_statistics(run, holdout, {})
            scored[name].append(statistics)
            print(f"{run}: {chosen.describe()} (tuned on the validation fold)")
        if "empty_head" in ENTRIES[name].get("model", {}):
            scored[f"{name}, gate off"] = [held_out_statistics(run, holdout, GATE_OFF)[0] for run in runs]
    report(scored, args.baseline, seeds)
    for name in [name for name in scored if f"{name}, gate off" in scored]:
        worth = paired_bootstrap(scored[name], scored[f"{name}, gate off"], METRIC)
        print(f"the gate's worth in {name}: {interval_text(worth)}")


if __name__ == "__main__":
    main()
