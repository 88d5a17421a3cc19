"""Synthetic TGS and VOC trees: deterministic, in the real layouts, accepted by the readers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lovaszseg.cli import app
from lovaszseg.data import TGSSalt, VOCSegmentation
from lovaszseg.data.io import read_mask
from lovaszseg.data.synth import ensure_demo_salt, synth_salt, synth_voc
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.rle import decode, read_rle_csv


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_salt_is_deterministic_by_seed(tmp_path: Path) -> None:
    first = _digest(synth_salt(tmp_path / "a", n_train=6, n_test=2, seed=3))
    assert first == _digest(synth_salt(tmp_path / "b", n_train=6, n_test=2, seed=3))
    assert first != _digest(synth_salt(tmp_path / "c", n_train=6, n_test=2, seed=4))


def test_salt_tree_has_the_kaggle_layout_and_rle_matches_masks(tmp_path: Path) -> None:
    root = synth_salt(tmp_path / "salt", n_train=120, n_test=10, seed=0)
    rles = read_rle_csv(root / "train.csv")
    assert len(rles) == 120 and len(read_rle_csv(root / "sample_submission.csv")) == 10
    coverages = []
    for sample_id, rle in rles.items():
        mask = read_mask(root / "train" / "masks" / f"{sample_id}.png") > 0
        np.testing.assert_array_equal(decode(rle, (101, 101)), mask)
        coverages.append(mask.mean())
        image = np.asarray(Image.open(root / "train" / "images" / f"{sample_id}.png"))
        assert image.shape == (101, 101, 3) and (image[..., 0] == image[..., 2]).all()
    coverages = np.array(coverages)
    assert 0.25 < (coverages == 0).mean() < 0.55  # about 39% empty, as in the real data
    assert (coverages > 0.5).sum() >= 10 and ((coverages > 0) & (coverages < 0.1)).sum() >= 5
    assert len(TGSSalt(root, "all")) == 120 and len(TGSSalt(root, "test")) == 10
    assert len(TGSSalt(root, "val", fold=0, n_folds=5)) == 24


def test_voc_tree_is_read_by_the_voc_reader(tmp_path: Path) -> None:
    root = synth_voc(tmp_path / "voc", n_images=8, seed=1, size=(96, 128))
    train, val = VOCSegmentation(root, "train"), VOCSegmentation(root, "val")
    assert len(train) == 6 and len(val) == 2
    mask_path = root / "VOCdevkit/VOC2012/SegmentationClass" / f"{train.ids[0]}.png"
    assert Image.open(mask_path).mode == "P"
    values = np.unique(np.asarray(Image.open(mask_path)))
    assert 0 in values and 255 in values and set(values) <= {0, 1, 3, 7, 8, 12, 15, 255}


def test_refuses_to_overwrite_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match=r"x exists and is not empty; pass overwrite=True \(--overwrite\)"):
        synth_salt(tmp_path / "x", n_train=2, n_test=1)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda out: synth_salt(out, n_train=0), "n_train must be >= 1 and n_test >= 0, got 0 and 100"),
        (lambda out: synth_salt(out, n_test=-1), "n_train must be >= 1 and n_test >= 0, got 400 and -1"),
        (lambda out: synth_voc(out, n_images=1), "need n_images >= 2 and 0 < val_fraction < 1, got 1 and 0.25"),
        (lambda out: synth_voc(out, val_fraction=1), "need n_images >= 2 and 0 < val_fraction < 1, got 60 and 1"),
    ],
)
def test_bad_sizes_are_config_errors(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_demo_dataset_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOVASZSEG_CACHE", str(tmp_path))
    root = ensure_demo_salt()
    assert root.parent == tmp_path and (root / "sample_submission.csv").is_file()
    stamp = (root / "train.csv").stat().st_mtime_ns
    assert ensure_demo_salt() == root and (root / "train.csv").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("command", ["synth-salt", "synth-voc"])
def test_cli_writes_trees(tmp_path: Path, command: str) -> None:
    size = ["--n-train", "3", "--n-test", "1"] if command == "synth-salt" else ["--n-images", "3"]
    result = CliRunner().invoke(app, ["data", command, str(tmp_path / "out"), *size])
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "out").iterdir())
    again = CliRunner().invoke(app, ["data", command, str(tmp_path / "out"), *size])
    assert again.exit_code != 0 and "overwrite" in again.output
