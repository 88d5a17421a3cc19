"""The analysis scripts that docs/experiments.md quotes (docs/*.py) run and print consistent numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import tiny_salt_config

from lovaszseg.config import load_config
from lovaszseg.data import build_dataset
from lovaszseg.training import train

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
