"""The analysis scripts that docs/experiments.md quotes (docs/*.py) run and print consistent numbers."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import tiny_salt_config, write_config
from rich.console import Console

from lovaszseg.config import load_config
from lovaszseg.data import build_dataset
from lovaszseg.storage.cv_folder import FOLDS_FILE
from lovaszseg.training import train
from lovaszseg.workflows.compare import compare
from lovaszseg.workflows.cv import cross_validate
from lovaszseg.workflows.runs import evaluate_run

ROOT = Path(__file__).resolve().parents[1]


def test_demo_empty_images_splits_the_tgs_metric_by_empty_masks(tiny_salt: Path, tmp_path: Path) -> None:
    run = train(load_config(tiny_salt_config(tiny_salt, tmp_path / "runs"))).run_dir
    process = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "demo_empty_images.py"), str(run / "stage1_best.pt"), str(run)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = [line for line in process.stdout.splitlines() if "TGS metric" in line]
    assert len(lines) == 2, process.stdout
    pattern = r"TGS metric ([\d.]+); on the (\d+) images without salt ([\d.]+), on the (\d+) with salt ([\d.]+)"
    validation = build_dataset("tgs", tiny_salt, "val", train=False, fold=0, n_folds=4)
    without_salt = sum(not validation[i]["mask"].any() for i in range(len(validation)))
    for line in lines:
        total, empty, empty_score, salted, salted_score = re.search(pattern, line).groups()
        assert (int(empty), int(empty) + int(salted)) == (without_salt, len(validation))
        # The two groups weigh back to the metric over all images (to the printed digits).
        weighted = (int(empty) * float(empty_score) + int(salted) * float(salted_score)) / len(validation)
        assert np.isclose(weighted, float(total), atol=2e-3)
    assert not (run / "eval.json").exists()  # the script's evaluation leaves the run's eval.json alone


def _one_step_config(tiny_salt: Path, tmp_path: Path) -> dict:
    """The tiny config with one stage of one-step epochs: what the evidence scripts' tests train."""
    config = tiny_salt_config(tiny_salt, tmp_path / "runs")
    config["stages"] = config["stages"][:1]
    config["train"]["max_steps_per_epoch"] = 1
    return config


def test_winners_evidence_scores_every_entry_on_held_out_images_against_the_plain_unet(
    tiny_salt: Path, tmp_path: Path
) -> None:
    config = _one_step_config(tiny_salt, tmp_path)
    out = tmp_path / "winners"
    options = [
        "--out-dir",
        str(out),
        "--seeds",
        "0,1",
        "--entries",
        "plain,empty-head",
        "--holdout",
        "6",
        "--folds",
        "3",
    ]
    process = _run_script("winners_evidence.py", str(write_config(tmp_path / "c.yaml", config)), *options)
    folds = (out / "folds.csv").read_text().splitlines()[1:]
    held = {row.split(",")[0] for row in folds if row.endswith(",holdout")}
    assert len(held) == 6 and set((out / "holdout.txt").read_text().split()) == held
    for run in (out / "plain" / "seed-0", out / "empty-head" / "seed-1"):
        validation = load_config(run / "config.yaml").data.build("val", train=False).ids
        training = load_config(run / "config.yaml").data.build("train", train=False).ids
        assert len(validation) == 6 and len(training) == 12 and not held & (set(validation) | set(training))
    (rows,) = _report_rows(process.stdout, "plain|empty-head(?:, gate off)?")
    assert set(rows) == {"plain", "empty-head", "empty-head, gate off"}, process.stdout
    worth = re.search(r"the gate's worth in empty-head: ([+-][\d.]+)", process.stdout)
    assert np.isclose(float(worth.group(1)), rows["empty-head"] - rows["empty-head, gate off"], atol=2e-4)


def test_winners_evidence_compares_the_winners_whole_recipe_with_the_plain_recipe(
    tiny_salt: Path, tmp_path: Path
) -> None:
    config = _one_step_config(tiny_salt, tmp_path)
    config["model"]["options"]["decoder_channels"] = [16, 16, 16]  # scSE needs 16 channels a stage
    out = tmp_path / "recipes"
    entries = ["--entries", "plain-recipe,winners-recipe", "--baseline", "plain-recipe", "stages.0.epochs=4"]
    options = ["--out-dir", str(out), "--seeds", "0,1", "--holdout", "6", "--folds", "3", *entries]
    process = _run_script("winners_evidence.py", str(write_config(tmp_path / "c.yaml", config)), *options)
    (rows,) = _report_rows(process.stdout, "plain-recipe|winners-recipe(?:, gate off)?")
    assert list(rows) == ["plain-recipe", "winners-recipe", "winners-recipe, gate off"], process.stdout
    plain, winners = (load_config(out / name / "seed-1" / "config.yaml") for name in ("plain-recipe", "winners-recipe"))
    assert [stage.loss for stage in plain.stages] == [stage.loss for stage in winners.stages]
    assert [stage.loss for stage in plain.stages] == ["bce", {"lovasz_hinge": {"variant": "elu+1"}}]
    assert (winners.stages[1].empty_images, winners.stages[1].swa_epochs) == ("skip", 2)
    assert (plain.stages[1].empty_images, plain.stages[1].swa_epochs) == ("include", None)
    assert (winners.model.empty_head, winners.model.deep_supervision, winners.model.hypercolumn) == (0.25, 0.5, True)


def test_budget_evidence_scores_the_cv_ensemble_and_one_run_on_the_same_held_out_images(
    tiny_salt: Path, tmp_path: Path
) -> None:
    config = tiny_salt_config(tiny_salt, tmp_path / "runs")
    config["train"]["max_steps_per_epoch"] = 1
    folds = cross_validate(load_config(config), n_folds=2, holdout=6)
    single = dict(config, data={**config["data"], "options": {"folds_csv": str(folds.cv_dir / FOLDS_FILE)}})
    run = train(load_config(single), run_dir=tmp_path / "single").run_dir
    process = _run_script("budget_evidence.py", str(folds.cv_dir), str(run))
    scores = dict(re.findall(r": (2-fold ensemble|one run) \(.*\): ([\d.]+) \[", process.stdout))
    assert set(scores) == {"2-fold ensemble", "one run"}, process.stdout
    # The ensemble's score is what `eval --split holdout` reports with the out-of-fold tuning.
    held_out = evaluate_run(folds.cv_dir, split="holdout")
    assert np.isclose(float(scores["2-fold ensemble"]), held_out["salt_score_postprocessed"], atol=1e-4)
    difference = re.search(r"B - A: ([+-][\d.]+)", process.stdout)
    expected = float(scores["one run"]) - float(scores["2-fold ensemble"])
    assert np.isclose(float(difference.group(1)), expected, atol=2e-4)
    # Two cv folders with the same held-out images: here the same one twice, so B - A is 0.
    same = _run_script("budget_evidence.py", str(folds.cv_dir), str(folds.cv_dir))
    assert re.search(r"B - A: [+-]0\.0000 \[[+-]0\.0000, [+-]0\.0000\] noise", same.stdout), same.stdout
    # One pair per seed: each side's mean over the seeds, and B - A paired over seeds and images. The same
    # pair twice gives that pair's numbers back.
    pooled = _run_script("budget_evidence.py", *[str(folds.cv_dir), str(run)] * 2).stdout
    seeds = re.search(r"B - A over 2 seeds \(paired over seeds and images\): ([+-][\d.]+)", pooled)
    assert seeds and np.isclose(float(seeds.group(1)), expected, atol=2e-4), pooled
    ensemble_mean = re.search(r"A, mean of 2 seeds: ([\d.]+)", pooled)
    assert np.isclose(float(ensemble_mean.group(1)), float(scores["2-fold ensemble"]), atol=1e-4), pooled
    odd = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "budget_evidence.py"), str(folds.cv_dir)], capture_output=True, text=True
    )
    assert odd.returncode == 2 and "pairs" in odd.stderr


def _run_script(name: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "docs" / name), *arguments], capture_output=True, text=True, timeout=600, check=True
    )


def _report_rows(stdout: str, names: str) -> list[dict[str, float]]:
    """Each report table of winners_evidence.report as {entry: mean}, its differences checked against the means."""
    tables: list[dict[str, float]] = []
    for line in stdout.splitlines():
        if line.startswith("entry "):
            tables.append({})
        elif match := re.match(rf"({names}) +([\d.]+) +\[([-\d.]+), ([-\d.]+)\]", line):
            rows = tables[-1]
            rows[match.group(1)] = float(match.group(2))
            difference = re.search(r"([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\] (real|noise)", line)
            if difference is not None:  # every entry but the first, the baseline
                baseline = next(iter(rows.values()))
                assert np.isclose(float(difference.group(1)), rows[match.group(1)] - baseline, atol=2e-4)
                low, high = float(difference.group(2)), float(difference.group(3))
                assert low <= float(difference.group(1)) <= high
                assert difference.group(4) == ("noise" if low <= 0 <= high else "real")
            else:
                assert len(rows) == 1, line  # only the baseline, the first row, has no difference
    return tables


def test_arms_evidence_trains_each_setting_on_one_split_and_compares_them_held_out(
    tiny_salt: Path, tmp_path: Path
) -> None:
    config = _one_step_config(tiny_salt, tmp_path)
    path, out = str(write_config(tmp_path / "c.yaml", config)), tmp_path / "arms"
    arms = ["--arm", "shuffle:", "--arm", "balanced: data.sampler=balanced data.empty_share=0.5"]
    options = ["--out-dir", str(out), "--seeds", "0,1", "--holdout", "6", "--folds", "3", "--raw"]
    process = _run_script("arms_evidence.py", path, *arms, *options)
    held = set((out / "holdout.txt").read_text().split())
    for arm, sampler in (("shuffle", "shuffle"), ("balanced", "balanced")):
        for seed in (0, 1):
            saved = load_config(out / arm / f"seed-{seed}" / "config.yaml")
            assert (saved.data.sampler, saved.train.seed) == (sampler, seed)
            assert not held & set(saved.data.build("train", train=False).ids)
    tuned, raw = _report_rows(process.stdout, "shuffle|balanced")
    assert set(tuned) == set(raw) == {"shuffle", "balanced"}, process.stdout
    assert "threshold 0.5, no min-area" in process.stdout
    again = _run_script("arms_evidence.py", path, *arms, *options)  # finished runs are reused, not retrained
    assert again.stdout.count("reusing the finished run") == 4
    assert _report_rows(again.stdout, "shuffle|balanced")[0] == tuned


def test_tta_evidence_pairs_each_setting_with_the_runs_own_scores_without_tta(tiny_salt: Path, tmp_path: Path) -> None:
    config = _one_step_config(tiny_salt, tmp_path)
    out = tmp_path / "compare"
    compare(load_config(config), ["bce"], seeds=[0, 1], out_dir=out, console=Console(file=io.StringIO()))
    process = _run_script("tta_evidence.py", str(out), "--entry", "bce", "--tta", "hflip")
    none = re.search(r"^salt_score: no TTA ([\d.]+)", process.stdout, re.MULTILINE)
    rows = [row for row in csv.DictReader((out / "compare.csv").open())]
    assert np.isclose(float(none.group(1)), np.mean([float(row["salt_score"]) for row in rows]), atol=1e-4)
    flipped = re.search(r"^  hflip: ([\d.]+), difference ([+-][\d.]+)", process.stdout, re.MULTILINE)
    expected = np.mean([evaluate_run(out / "bce" / f"seed-{seed}", tta="hflip")["salt_score"] for seed in (0, 1)])
    assert np.isclose(float(flipped.group(1)), expected, atol=1e-4)
    assert np.isclose(float(flipped.group(2)), expected - float(none.group(1)), atol=2e-4)
