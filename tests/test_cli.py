"""The lovaszseg command: train -> eval -> predict -> submit on tiny runs, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_salt_config, write_config
from PIL import Image
from typer.testing import CliRunner

from lovaszseg.cli import app
from lovaszseg.rle import read_rle_csv

runner = CliRunner()


@pytest.fixture(scope="module")
def salt_run(tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    config = write_config(tmp / "tiny.yaml", tiny_salt_config(tiny_salt, tmp / "runs"))
    result = runner.invoke(app, ["train", str(config), "stages.1.epochs=1", "--run-dir", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    assert "lovaszseg run" in result.output and "salt_score" in result.output
    return tmp / "run"


@pytest.mark.parametrize("command", ["train", "eval", "predict", "submit", "data"])
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_eval_writes_eval_json_with_the_best_threshold(salt_run: Path) -> None:
    result = runner.invoke(app, ["eval", str(salt_run), "--tta", "hflip", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "best_threshold" in result.output
    metrics = json.loads((salt_run / "eval.json").read_text())
    # Every metric's best threshold is searched on a grid that holds 0.5, so it never scores lower.
    for name in ("salt_score", "iou", "image_iou"):
        best = metrics["salt_score_at_best_threshold" if name == "salt_score" else f"{name}_at_best_threshold"]
        assert metrics[name] <= best <= 1
    assert 0.05 <= metrics["iou_best_threshold"] <= 0.95 and 0.05 <= metrics["image_iou_best_threshold"] <= 0.95


def test_predict_writes_masks_and_overlays(salt_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", str(salt_run), str(tiny_salt / "test" / "images"), str(tmp_path)])
    assert result.exit_code == 0, result.output
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 6 and len(list((tmp_path / "overlays").glob("*.png"))) == 6
    assert np.asarray(Image.open(masks[0])).shape == (101, 101)
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}


def test_submit_on_the_real_tgs_test_images(salt_run: Path, shared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    result = runner.invoke(
        app,
        ["submit", str(salt_run / "best.pt"), str(shared_dir / "tgs" / "test"), "--out", str(out), "--tta", "hflip"],
    )
    assert result.exit_code == 0, result.output
    rows = read_rle_csv(out)
    assert list(rows) == list(read_rle_csv(shared_dir / "tgs" / "sample_submission.csv"))


def test_submit_with_auto_threshold_and_safetensors_export(salt_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    model = salt_run / "model.safetensors"
    result = runner.invoke(
        app, ["submit", str(model), str(tiny_salt / "test"), "--out", str(out), "--threshold", "auto"]
    )
    assert result.exit_code == 0, result.output
    assert len(read_rle_csv(out)) == 6 and "threshold" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "{config}", "model.encodr=x"], "model.encodr: unknown key"),
        (["train", "missing.yaml"], "config file not found"),
        (["eval", "{tmp}"], "no best.pt"),
        (["submit", "{run}", "{tmp}", "--threshold", "high"], "--threshold must be a number"),
        (["predict", "{run}", "{tmp}", "{tmp}/out"], "no images"),
    ],
)
def test_user_errors_are_one_clear_line(
    arguments: list[str], message: str, salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path / "runs"))
    filled = [a.format(config=config, tmp=tmp_path, run=salt_run) for a in arguments]
    result = runner.invoke(app, filled)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_voc_run_evaluates_miou_and_predicts_palette_masks(tiny_voc: Path, tmp_path: Path) -> None:
    config = {
        "model": {
            "arch": "Unet",
            "encoder": "resnet18",
            "encoder_weights": None,
            "options": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
        },
        "data": {
            "name": "voc",
            "root": str(tiny_voc),
            "batch_size": 4,
            "val_batch_size": 1,
            "options": {"crop_size": 64},
        },
        "stages": [{"name": "lovasz", "loss": {"lovasz_softmax": {"per_image": True}}, "epochs": 1}],
        "train": {"device": "cpu"},
        "output": {"runs_dir": str(tmp_path), "name": "voc"},
    }
    path = write_config(tmp_path / "voc.yaml", config)
    assert runner.invoke(app, ["train", str(path)]).exit_code == 0
    result = runner.invoke(app, ["eval", str(tmp_path / "voc")])
    assert result.exit_code == 0, result.output
    assert "miou" in result.output and "image_miou" in result.output
    images = tiny_voc / "VOCdevkit" / "VOC2012" / "JPEGImages"
    result = runner.invoke(app, ["predict", str(tmp_path / "voc"), str(images), str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    mask = Image.open(next((tmp_path / "pred" / "masks").glob("*.png")))
    assert mask.mode == "P" and mask.size == (64, 64)
