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
from conftest import ACCELERATION_CASES, tiny_salt_config, write_config
from rich.console import Console
from typer.testing import CliRunner

import lovaszseg.inference.predict
import lovaszseg.inference.submission
import lovaszseg.workflows.cv
from lovaszseg.cli import app
from lovaszseg.config import Config, load_config
from lovaszseg.data import build_dataset, crop_to_original
from lovaszseg.data.io import read_lines
from lovaszseg.errors import ConfigError, DataError, RunFolderError
from lovaszseg.inference.ensemble import load_predictor, resolve_members
from lovaszseg.inference.predict import predict_probabilities
from lovaszseg.rle import read_rle_csv
from lovaszseg.storage.cv_folder import OOF_EMPTY_HEAD, CvFolder
from lovaszseg.storage.run_folder import RunFolder, load_model
from lovaszseg.training import RunResult
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


def test_windowed_out_of_fold_predictions_go_one_image_at_a_time_with_the_same_results(
    salt_cv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window_passes: list[int]
) -> None:
    passes = window_passes
    results = {}
    for how in ("one_by_one", "batched"):
        folder = CvFolder(shutil.copytree(salt_cv, tmp_path / how))
        config, settings = folder.settings()
        windowed = load_config(config.model_dump(), ["inference.window=64", "inference.stride=32"])
        if how == "batched":  # as before: a batch of data.batch_size (4) images, their merged maps together
            monkeypatch.setattr(lovaszseg.workflows.cv, "images_per_pass", lambda window, batch_size: batch_size)
        rows, _ = lovaszseg.workflows.cv._out_of_fold(folder, windowed, settings, _quiet())
        oof = np.load(folder.oof_path)
        results[how] = (rows, {name: oof[name] for name in oof.files}, list(passes))
        passes.clear()
    (rows, oof, passes), (batched_rows, batched_oof, batched_passes) = results["one_by_one"], results["batched"]
    assert passes == [1] * 21 and max(batched_passes) == 4  # 21 images out of fold
    assert rows == batched_rows and oof.keys() == batched_oof.keys()
    for name, probs in oof.items():
        np.testing.assert_array_equal(probs, batched_oof[name])


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


@pytest.mark.parametrize(("options", "expected"), ACCELERATION_CASES)
def test_cv_acceleration_options_set_the_config_of_every_fold(
    options: list[str],
    expected: tuple[str, bool, bool],
    tiny_salt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--amp, --channels-last and --compile set train.amp, .channels_last and .compile of the cv's config,
    so each fold trains, validates and predicts out of fold with them. Nothing trains here: the first
    fold's config is taken and the cv stops as if interrupted."""
    train = {"seed": 0, "device": "cpu", "amp": "auto", "compile": True}
    config = write_config(tmp_path / "c.yaml", tiny_salt_config(tiny_salt, tmp_path, stages=ONE_EPOCH, train=train))
    given: list[Config] = []

    def taking_the_config(config: Config, **kwargs: Any) -> RunResult:
        given.append(config)
        return RunResult(kwargs["run_dir"], {}, completed=False)

    monkeypatch.setattr(lovaszseg.workflows.cv, "train", taking_the_config)
    cv_dir = tmp_path / "cv"
    arguments = ["cv", str(config), "train.amp=none", "--folds", "2", "--run-dir", str(cv_dir), *options]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert [(c.train.amp, c.train.channels_last, c.train.compile) for c in given] == [expected]
    saved = CvFolder.existing(cv_dir).settings()[0].train  # cv.yaml: what a resumed cv continues with
    assert (saved.amp, saved.channels_last, saved.compile) == expected
    resumed = runner.invoke(app, ["cv", "--resume", str(cv_dir), "--amp", "none"])
    assert resumed.exit_code == 2 and "nor --amp, --channels-last or --compile" in resumed.output
    unknown = runner.invoke(app, ["cv", str(config), "--amp", "half"])
    assert unknown.exit_code == 2 and "unknown --amp 'half'" in unknown.output


# --- a cv of models with an empty-image head: the gate tuned out of fold ------------------------------


@pytest.fixture(scope="module")
def head_cv(tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A 2-fold cv of models with an empty-image head (``model.empty_head``), 3 images held out, out-of-fold
    predictions with :data:`CV_TTA`; with the per-image counts its post-processing was tuned on."""
    tmp = tmp_path_factory.mktemp("head-cv")
    config = _config(tiny_salt, tmp)
    config.model.empty_head = 0.5
    tuned_on = []
    real_tune = lovaszseg.workflows.cv.tune_postprocessing

    def recording_tune(counts: Any, *args: Any, **kwargs: Any) -> Any:
        tuned_on.append(counts)
        return real_tune(counts, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lovaszseg.workflows.cv, "tune_postprocessing", recording_tune)
        result = cross_validate(config, n_folds=2, holdout=3, tta=CV_TTA, run_dir=tmp / "cv", console=_quiet())
    assert result.completed and result.tuning is not None and len(tuned_on) == 1
    return result.cv_dir, tuned_on[0]


def _predicted(model: Any, dataset: Any, tta: str = CV_TTA) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """Each image's probabilities ``[101, 101]``, head probability and true mask, by hand."""
    from torch.utils.data import DataLoader

    from lovaszseg.inference.predict import predict_outputs

    found = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=4):
            outputs = predict_outputs(model.eval(), batch["image"], tta)
            assert outputs.empty is not None
            probs = crop_to_original(outputs.masks[:, 0], (101, 101)).numpy()
            masks = crop_to_original(batch["mask"], (101, 101)).numpy() > 0
            found += list(zip(probs, outputs.empty.numpy().tolist(), masks, strict=True))
    return found


def _mean_salt_score(found: list[tuple[np.ndarray, float, np.ndarray]], post: Any) -> float:
    from lovaszseg.scoring.metrics import salt_score

    predicted = np.stack([post.apply(prob, head) for prob, head, _ in found])
    return float(salt_score(predicted, np.stack([mask for _, _, mask in found])).mean())


def _with_gate(folder: Path, gate: float) -> Any:
    """Replace the kept tuning's choice by threshold 0.5, no min-area and ``gate`` (as a tuning with a
    discriminating head would leave it; the tiny models' heads are not), for every threshold."""
    from lovaszseg.scoring.postprocess import PostProcessing

    record = json.loads((folder / "postprocess.json").read_text())
    record["chosen"] = {"threshold": 0.5, "min_area": 0, "empty_gate": gate}
    record["by_threshold"] = {
        name: [value] * len(values)
        for (name, values), value in zip(record["by_threshold"].items(), (0, gate), strict=True)
    }
    (folder / "postprocess.json").write_text(json.dumps(record))
    return PostProcessing(0.5, 0, gate)


def test_a_cv_with_an_empty_head_tunes_its_gate_out_of_fold_on_the_heads_probabilities(
    head_cv: tuple[Path, Any], tiny_salt: Path
) -> None:
    from lovaszseg.scoring.postprocess import PostProcessing

    cv_dir, counts = head_cv
    rows, tuning = _rows(cv_dir), json.loads((cv_dir / "postprocess.json").read_text())
    chosen = PostProcessing(**tuning["chosen"])
    assert tuning["split"] == "oof" and rows["oof, tuned"]["empty_gate"] == chosen.empty_gate
    assert list(tuning["by_threshold"]) == ["min_area", "empty_gate"] and "empty_gate" in tuning["without"]
    # Each training image, predicted by the fold model that did not train on it: masks and head, by hand.
    found, ids = [], []
    for fold in range(2):
        dataset = build_dataset("tgs", tiny_salt, str(cv_dir / "splits" / f"fold-{fold}-val.txt"), train=False)
        of_fold = _predicted(load_model(cv_dir / f"fold-{fold}").model, dataset)
        ids += dataset.ids
        accuracy = np.mean([(head > 0.5) == mask.any() for _, head, mask in of_fold])
        assert rows[str(fold)]["empty_head_accuracy"] == pytest.approx(accuracy, abs=1e-9)
        found += of_fold
    oof = np.load(cv_dir / "oof.npz")
    kept_heads = sorted(name for name in oof.files if name.startswith(OOF_EMPTY_HEAD))
    assert len(found) == rows["oof"]["images"] == len(oof.files) - len(kept_heads) == len(kept_heads) == 21
    heads = np.array([head for _, head, _ in found])
    assert ((heads > 0.0) & (heads < 1.0)).all()
    # oof.npz keeps each image's head probability beside its mask probabilities.
    np.testing.assert_allclose([oof[f"{OOF_EMPTY_HEAD}{i}"] for i in ids], heads, rtol=0, atol=1e-6)
    assert rows["oof"]["empty_head_accuracy"] == pytest.approx(
        np.mean([(head > 0.5) == mask.any() for _, head, mask in found]), abs=1e-9
    )
    # The per-image records the gate was tuned on carry each image's out-of-fold head probability.
    assert counts.empty is not None and len(counts) == 21
    np.testing.assert_allclose(counts.empty, heads, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(counts.truth, [mask.sum() for _, _, mask in found])
    # The tuned numbers are those of the chosen steps on these predictions, the gate included.
    assert rows["oof, tuned"]["salt_score"] == pytest.approx(_mean_salt_score(found, chosen), abs=1e-9)
    assert rows["oof"]["salt_score"] == pytest.approx(_mean_salt_score(found, PostProcessing()), abs=1e-9)
    without = tuning["without"]["empty_gate"]["salt_score"]
    assert rows["oof"]["salt_score"] <= without <= rows["oof, tuned"]["salt_score"]


def test_eval_and_submit_of_a_head_cv_use_the_out_of_fold_gate(
    head_cv: tuple[Path, Any], tiny_salt: Path, tmp_path: Path
) -> None:
    from lovaszseg.scoring.postprocess import PostProcessing

    cv_dir = tmp_path / "cv"
    shutil.copytree(head_cv[0], cv_dir)  # a copied cv folder keeps its tuning
    rows, tuning = _rows(cv_dir), json.loads((cv_dir / "postprocess.json").read_text())
    chosen = PostProcessing(**tuning["chosen"])
    oof = evaluate_run(cv_dir, device="cpu", console=_quiet())
    assert oof["postprocess_empty_gate"] == chosen.empty_gate
    assert oof["salt_score_postprocessed"] == rows["oof, tuned"]["salt_score"]
    assert oof["salt_score_postprocessed_without_empty_gate"] == tuning["without"]["empty_gate"]["salt_score"]
    assert oof["empty_head_accuracy"] == rows["oof"]["empty_head_accuracy"]
    written = json.loads((cv_dir / "eval.json").read_text())
    assert written["split"] == "oof" and written["postprocess_empty_gate"] == chosen.empty_gate
    # The held-out images: the ensemble of the folds (its head's probability their mean), with the
    # out-of-fold tuning, not tuned again on themselves.
    holdout = build_dataset("tgs", tiny_salt, str(cv_dir / "splits" / "holdout.txt"), train=False)
    ensemble = load_predictor(cv_dir).model
    plain = _predicted(ensemble, holdout, "none")
    folds = [_predicted(load_model(cv_dir / f"fold-{k}").model, holdout, "none") for k in range(2)]
    for k, (prob, head, _) in enumerate(plain):
        assert head == pytest.approx((folds[0][k][1] + folds[1][k][1]) / 2, abs=1e-6)
        np.testing.assert_allclose(prob, (folds[0][k][0] + folds[1][k][0]) / 2, rtol=0, atol=1e-6)
    held = evaluate_run(cv_dir, split="holdout", tta=CV_TTA, device="cpu", console=_quiet())
    assert held["postprocess_empty_gate"] == chosen.empty_gate
    expected = _mean_salt_score(_predicted(ensemble, holdout), chosen)
    assert held["salt_score_postprocessed"] == pytest.approx(expected, abs=1e-9)
    assert json.loads((cv_dir / "postprocess.json").read_text()) == tuning
    # A kept gate that empties one held-out image: eval applies it to the ensemble's head.
    heads = sorted(head for _, head, _ in plain)
    assert heads[0] < heads[1]
    kept = _with_gate(cv_dir, (heads[0] + heads[1]) / 2)
    held = evaluate_run(cv_dir, split="holdout", device="cpu", console=_quiet())
    assert held["postprocess_empty_gate"] == kept.empty_gate
    assert held["salt_score_postprocessed"] == pytest.approx(_mean_salt_score(plain, kept), abs=1e-9)
    # submit: auto is the kept gate (one that empties half the test images here) ...
    from lovaszseg.data import build_transform
    from lovaszseg.inference.predict import predict_folder
    from lovaszseg.rle import encode

    images, transform = tiny_salt / "test" / "images", build_transform("tgs", train=False)
    predicted = {
        path.stem: (probs[0], head)
        for path, _, probs, head in predict_folder(ensemble, images, transform, in_channels=1, with_empty=True)
    }
    heads = sorted(head for _, head in predicted.values())
    assert heads[2] < heads[3]
    kept = _with_gate(cv_dir, (heads[2] + heads[3]) / 2)
    auto = {"threshold": "auto", "min_area": "auto", "empty_gate": "auto"}
    path, used = submit_run(cv_dir, tiny_salt / "test", tmp_path / "auto.csv", device="cpu", **auto)
    assert used == kept
    rows = read_rle_csv(path)
    assert rows == {i: encode(kept.apply(prob, head)) for i, (prob, head) in predicted.items()}
    assert sum(rows[i] == "" for i, (_, head) in predicted.items() if head < kept.empty_gate) == 3
    # ... and an explicit gate overrides it (1.0: every image submitted empty).
    path, used = submit_run(
        cv_dir, tiny_salt / "test", tmp_path / "one.csv", device="cpu", **auto | {"empty_gate": 1.0}
    )
    assert used == PostProcessing(0.5, 0, 1.0)
    assert len(read_rle_csv(path)) == 6 and set(read_rle_csv(path).values()) == {""}
