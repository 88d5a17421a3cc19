"""Cross-validation end to end on tiny models: folds, out-of-fold predictions, tuning, resume, use as an ensemble."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_salt_config, write_config
from rich.console import Console
from typer.testing import CliRunner

import lovaszseg.inference.predict
import lovaszseg.inference.submission
from lovaszseg.cli import app
from lovaszseg.config import load_config
from lovaszseg.data import build_dataset, crop_to_original
from lovaszseg.data.io import read_lines
from lovaszseg.errors import ConfigError, DataError, RunFolderError
from lovaszseg.inference.ensemble import load_predictor, resolve_members
from lovaszseg.inference.predict import predict_probabilities
from lovaszseg.rle import read_rle_csv
from lovaszseg.storage.run_folder import RunFolder, load_model
from lovaszseg.workflows.cv import cross_validate, parse_folds
from lovaszseg.workflows.runs import evaluate_run, submit_run

runner = CliRunner()
ONE_EPOCH = [{"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.003}]
TWO_EPOCHS = [{"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.003}]


def _quiet() -> Console:
    return Console(file=io.StringIO())


def _config(root: Path, runs: Path, stages: list[dict[str, Any]] = ONE_EPOCH) -> Any:
    return load_config(tiny_salt_config(root, runs, stages=stages, data={"batch_size": 4, "options": {}}))


def _rows(cv_dir: Path) -> dict[str, dict[str, Any]]:
    return {row["fold"]: row for row in json.loads((cv_dir / "cv.json").read_text())["rows"]}


# The TTA of the cv's out-of-fold predictions: a merge other than the default, recorded with them.
CV_TTA = "hflip:gmean"


@pytest.fixture(scope="module")
def salt_cv(tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-fold cv of the 24 tiny salt images, 3 held out, out-of-fold predictions with :data:`CV_TTA`."""
    tmp = tmp_path_factory.mktemp("cv")
    result = cross_validate(
        _config(tiny_salt, tmp), n_folds=3, holdout=3, tta=CV_TTA, run_dir=tmp / "cv", console=_quiet()
    )
    assert result.completed and result.folds == [0, 1, 2] and result.tuning is not None
    return result.cv_dir


def test_every_training_image_is_predicted_out_of_fold_exactly_once(salt_cv: Path, tiny_salt: Path) -> None:
    every = build_dataset("tgs", tiny_salt, "all", train=False).ids
    holdout = read_lines(salt_cv / "splits" / "holdout.txt", "split")
    val = {k: read_lines(salt_cv / "splits" / f"fold-{k}-val.txt", "split") for k in range(3)}
    train = {k: read_lines(salt_cv / "splits" / f"fold-{k}-train.txt", "split") for k in range(3)}
    oof = np.load(salt_cv / "oof.npz")
    assert sorted(oof.files) == sorted(i for k in range(3) for i in val[k]) == sorted(set(every) - set(holdout))
    assert len(holdout) == 3
    for k in range(3):
        assert not set(train[k]) & set(val[k]) and not set(train[k]) & set(holdout)
        assert sorted(train[k] + val[k]) == sorted(oof.files)
        assert RunFolder(salt_cv / f"fold-{k}").config().data.val_split.endswith(f"fold-{k}-val.txt")
    assert oof[oof.files[0]].shape == (1, 101, 101) and oof[oof.files[0]].dtype == np.float16


def test_out_of_fold_probabilities_come_from_the_model_that_did_not_train_on_them(
    salt_cv: Path, tiny_salt: Path
) -> None:
    oof = np.load(salt_cv / "oof.npz")
    for fold in range(3):
        sample_id = read_lines(salt_cv / "splits" / f"fold-{fold}-val.txt", "split")[0]
        loaded = load_model(salt_cv / f"fold-{fold}")
        sample = build_dataset("tgs", tiny_salt, "all", train=False)
        image = sample[sample.ids.index(sample_id)]["image"][None]
        with torch.no_grad():
            probs = crop_to_original(predict_probabilities(loaded.model, image, CV_TTA), (101, 101))[0]
        np.testing.assert_allclose(oof[sample_id].astype(np.float32), probs.numpy(), atol=1e-3)


def test_out_of_fold_metrics_pool_the_folds_and_tuning_never_lowers_them(salt_cv: Path) -> None:
    rows = _rows(salt_cv)
    assert list(rows) == ["0", "1", "2", "oof", "oof, tuned"]
    folds = [rows[str(k)] for k in range(3)]
    assert rows["oof"]["images"] == sum(r["images"] for r in folds) == 21
    for name in ("salt_score", "image_iou"):  # means over images: the image-weighted mean of the folds'
        pooled = sum(r[name] * r["images"] for r in folds) / 21
        assert rows["oof"][name] == pytest.approx(pooled, abs=1e-12)
    assert rows["oof, tuned"]["salt_score"] >= rows["oof"]["salt_score"]
    tuning = json.loads((salt_cv / "postprocess.json").read_text())
    assert (tuning["split"], tuning["tta"], tuning["metric"], len(tuning["models"])) == (
        "oof",
        CV_TTA,
        "salt_score",
        3,
    )
    assert json.loads((salt_cv / "cv.json").read_text())["settings"]["tta"] == CV_TTA
    assert rows["oof, tuned"]["min_area"] == tuning["chosen"]["min_area"]
    with (salt_cv / "cv.csv").open() as handle:
        assert [row["fold"] for row in csv.DictReader(handle)] == list(rows)


def test_eval_of_a_cv_folder_is_out_of_fold_or_on_its_held_out_images(salt_cv: Path) -> None:
    rows = _rows(salt_cv)
    oof = evaluate_run(salt_cv, device="cpu")
    assert oof["salt_score"] == rows["oof"]["salt_score"]
    assert oof["salt_score_postprocessed"] == rows["oof, tuned"]["salt_score"]
    held = evaluate_run(salt_cv, split="holdout", device="cpu", tta="hflip")
    # The held-out images are scored with the out-of-fold tuning, not re-tuned on themselves.
    assert (held["postprocess_threshold"], held["postprocess_min_area"]) == (
        rows["oof, tuned"]["threshold"],
        rows["oof, tuned"]["min_area"],
    )
    assert json.loads((salt_cv / "postprocess.json").read_text())["split"] == "oof"
    with pytest.raises(ConfigError, match=r"images of split 'val' were used to train a model of .*--split holdout"):
        evaluate_run(salt_cv, split="val", device="cpu")
    with pytest.raises(ConfigError, match="images of split 'all' were used to train"):
        evaluate_run(salt_cv, split="all", device="cpu")


def test_submit_with_a_cv_folder_uses_the_out_of_fold_tuning(salt_cv: Path, tiny_salt: Path, tmp_path: Path) -> None:
    path, used = submit_run(
        salt_cv, tiny_salt / "test", tmp_path / "s.csv", threshold="auto", min_area="auto", device="cpu"
    )
    tuning = json.loads((salt_cv / "postprocess.json").read_text())
    assert (used.threshold, used.min_area) == (tuning["chosen"]["threshold"], tuning["chosen"]["min_area"])
    assert len(read_rle_csv(path)) == 6
    _, alone = submit_run(salt_cv, tiny_salt / "test", tmp_path / "t.csv", threshold="auto", device="cpu")
    assert (alone.threshold, alone.min_area) == (tuning["threshold_alone"], 0)


def test_submit_streams_images_through_the_ensemble(
    salt_cv: Path, tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are encoded while images are still being read: nothing holds the whole test set."""
    test = tmp_path / "test" / "images"
    test.mkdir(parents=True)
    sources = sorted((tiny_salt / "test" / "images").iterdir())
    for index in range(40):
        shutil.copy(sources[index % len(sources)], test / f"img{index:03d}.png")
    reads: list[int] = []
    read_at_encode: list[int] = []
    real_read, real_encode = lovaszseg.inference.predict.read_image, lovaszseg.inference.submission.encode
    monkeypatch.setattr(
        lovaszseg.inference.predict, "read_image", lambda *a, **k: reads.append(1) or real_read(*a, **k)
    )
    monkeypatch.setattr(
        lovaszseg.inference.submission, "encode", lambda mask: read_at_encode.append(len(reads)) or real_encode(mask)
    )
    path, _ = submit_run(salt_cv, tmp_path / "test", tmp_path / "s.csv", tta="hflip", device="cpu")
    assert len(read_rle_csv(path)) == 40
    assert read_at_encode[0] <= 17  # the first row is encoded after one batch (16) and the next read
    assert read_at_encode[-1] == 40


def test_an_interrupted_cv_resumes_to_the_same_result(tiny_salt: Path, tmp_path: Path) -> None:
    cross_validate(_config(tiny_salt, tmp_path, TWO_EPOCHS), n_folds=2, run_dir=tmp_path / "whole", console=_quiet())
    stopped = cross_validate(
        _config(tiny_salt, tmp_path, TWO_EPOCHS),
        n_folds=2,
        run_dir=tmp_path / "cv",
        stop_after_epochs=1,
        console=_quiet(),
    )
    assert not stopped.completed and not (tmp_path / "cv" / "oof.npz").exists()
    assert (tmp_path / "cv" / "fold-0" / "last.pt").is_file() and not RunFolder(tmp_path / "cv" / "fold-0").finished
    resumed = cross_validate(resume=tmp_path / "cv", console=_quiet())
    assert resumed.completed and all(RunFolder(tmp_path / "cv" / f"fold-{k}").finished for k in range(2))
    assert len(RunFolder(tmp_path / "cv" / "fold-0").summary()) == 2  # epoch 1, then epoch 2 after resuming
    a, b = np.load(tmp_path / "whole" / "oof.npz"), np.load(tmp_path / "cv" / "oof.npz")
    assert a.files == b.files and all(np.array_equal(a[i], b[i]) for i in a.files)
    assert _rows(tmp_path / "whole") == _rows(tmp_path / "cv")
    # Running it again changes nothing: every fold is finished and is skipped.
    again = cross_validate(resume=tmp_path / "cv", console=_quiet())
    assert again.rows == resumed.rows


def test_a_subset_of_folds_is_trained_and_predicted(tiny_salt: Path, tmp_path: Path) -> None:
    result = cross_validate(
        _config(tiny_salt, tmp_path), n_folds=4, folds=[2], run_dir=tmp_path / "cv", console=_quiet()
    )
    assert result.completed and sorted(p.name for p in (tmp_path / "cv").glob("fold-*")) == ["fold-2"]
    val = read_lines(tmp_path / "cv" / "splits" / "fold-2-val.txt", "split")
    assert sorted(np.load(tmp_path / "cv" / "oof.npz").files) == sorted(val) and len(val) == 6
    assert len(load_predictor(tmp_path / "cv").members) == 1


def test_cv_of_multiclass_voc_data_keeps_every_class_probability(tiny_voc: Path, tmp_path: Path) -> None:
    config = tiny_salt_config(
        tiny_voc,
        tmp_path,
        data={"name": "voc", "root": str(tiny_voc), "batch_size": 4, "options": {"crop_size": 64}},
        stages=[{"name": "ce", "loss": {"lovasz_softmax": {"per_image": True}}, "epochs": 1}],
    )
    result = cross_validate(load_config(config), n_folds=2, run_dir=tmp_path / "cv", console=_quiet())
    oof = np.load(tmp_path / "cv" / "oof.npz")
    assert len(oof.files) == 12 and oof[oof.files[0]].shape == (21, 64, 64)
    assert result.tuning is None and not (tmp_path / "cv" / "postprocess.json").exists()
    assert set(_rows(tmp_path / "cv")) == {"0", "1", "oof"} and "miou" in _rows(tmp_path / "cv")["oof"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_folds": 1}, ConfigError, "at least 2"),
        ({"n_folds": 3, "folds": [3]}, ConfigError, r"folds to train must be in 0..2, got \[3\]"),
        ({"n_folds": 3, "tta": "rot45"}, ConfigError, "tta must be 'none' or transforms joined by"),
        (
            {"n_folds": 3, "holdout": 22},
            ConfigError,
            r"n_folds must be an integer in \[2, 2\] \(the 24 labelled images less the 22 held out\), got 3",
        ),
    ],
)
def test_bad_cv_settings_fail_before_any_folder_exists(
    kwargs: dict[str, Any], error: type, message: str, tiny_salt: Path, tmp_path: Path
) -> None:
    with pytest.raises(error, match=message):
        cross_validate(_config(tiny_salt, tmp_path), run_dir=tmp_path / "cv", console=_quiet(), **kwargs)
    assert not (tmp_path / "cv").exists()


def test_missing_data_fails_before_any_folder_exists(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="TGS Salt root"):
        cross_validate(_config(tmp_path / "nowhere", tmp_path), n_folds=2, run_dir=tmp_path / "cv", console=_quiet())
    assert not (tmp_path / "cv").exists()


def test_resume_takes_no_config_and_keeps_its_folds(salt_cv: Path, tiny_salt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pass no config, overrides or holdout"):
        cross_validate(_config(tiny_salt, tmp_path), resume=salt_cv, console=_quiet())
    with pytest.raises(ConfigError, match="has 3 folds, not 5"):
        cross_validate(resume=salt_cv, n_folds=5, console=_quiet())
    with pytest.raises(RunFolderError, match="already holds a run"):
        cross_validate(_config(tiny_salt, tmp_path), n_folds=3, run_dir=salt_cv, console=_quiet())


@pytest.mark.parametrize(
    ("text", "expected"), [("5", (5, None)), ("0,3", (None, [0, 3])), ("2,", (None, [2])), ("3,1,3", (None, [1, 3]))]
)
def test_folds_option_is_a_count_or_a_list(text: str, expected: tuple) -> None:
    assert parse_folds(text) == expected


def test_cv_and_ensemble_commands(tiny_salt: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path, stages=ONE_EPOCH))
    result = runner.invoke(
        app, ["cv", str(config), "data.batch_size=4", "--folds", "2", "--run-dir", str(tmp_path / "cv")]
    )
    assert result.exit_code == 0, result.output
    assert "lovaszseg cv" in result.output and f"done: {tmp_path / 'cv'}" in result.output
    bad = runner.invoke(app, ["cv", str(config), "--folds", "0,x"])
    assert bad.exit_code == 2 and "--folds must be a number of folds" in bad.output
    made = runner.invoke(app, ["ensemble", str(tmp_path / "cv"), "--out", str(tmp_path / "ens")])
    assert made.exit_code == 0 and "wrote" in made.output and "post-processing: threshold" in made.output
    shown = runner.invoke(app, ["eval", str(tmp_path / "cv")])
    assert shown.exit_code == 0 and "on oof" in shown.output and "salt_score_postprocessed" in shown.output
    weights = runner.invoke(
        app, ["eval", str(tmp_path / "cv" / "fold-0"), str(tmp_path / "cv" / "fold-1"), "--weights", "1"]
    )
    assert weights.exit_code == 2 and "got 1 weights for 2 members" in weights.output


def test_a_cv_folder_shares_its_weight_among_its_folds(salt_cv: Path) -> None:
    snapshot = salt_cv / "fold-0" / "best.pt"
    members = resolve_members([salt_cv, snapshot], weights=[3, 1])
    assert [(m.path.parent.name, m.path.name, m.weight) for m in members] == [
        ("fold-0", "model.safetensors", 1.0),
        ("fold-1", "model.safetensors", 1.0),
        ("fold-2", "model.safetensors", 1.0),
        ("fold-0", "best.pt", 1.0),
    ]


@pytest.mark.parametrize("how", ["copy", "move"])
def test_a_copied_or_moved_cv_folder_keeps_its_tuning(how: str, salt_cv: Path, tiny_salt: Path, tmp_path: Path) -> None:
    original = evaluate_run(salt_cv, device="cpu", out=tmp_path / "original")
    copy = tmp_path / "copy"
    shutil.copytree(salt_cv, copy, symlinks=True)  # cp -a
    if how == "move":
        copy = Path(shutil.move(copy, tmp_path / "elsewhere" / "moved"))
    moved = evaluate_run(copy, device="cpu")
    assert dict(moved) == dict(original) and "postprocess_min_area" in moved
    _, used = submit_run(copy, tiny_salt / "test", tmp_path / "s.csv", threshold="auto", min_area="auto", device="cpu")
    assert (used.threshold, used.min_area) == (original["postprocess_threshold"], original["postprocess_min_area"])


def test_an_interrupted_cv_says_to_resume_the_cv(tiny_salt: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    stopped = cross_validate(
        _config(tiny_salt, tmp_path, TWO_EPOCHS),
        n_folds=2,
        run_dir=tmp_path / "cv",
        stop_after_epochs=1,
        console=Console(file=out, width=300),
    )
    assert not stopped.completed
    assert f"continue with: lovaszseg cv --resume {tmp_path / 'cv'}" in out.getvalue()
    assert "lovaszseg train --resume" not in out.getvalue()
