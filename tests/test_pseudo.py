"""Pseudo-labels: the folder `pseudo-label` writes, its confidence rule, and where its images go (training only)."""

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
from conftest import tiny_salt_config
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from lovaszseg.cli import app
from lovaszseg.config import load_config
from lovaszseg.data import build_dataset, build_transform
from lovaszseg.data.pseudo import PSEUDO_RECORD, PSEUDO_TABLE, PseudoLabels
from lovaszseg.data.transforms import crop_to_original
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.inference.predict import predict_folder
from lovaszseg.inference.window import WindowOverride
from lovaszseg.runtime.distributed import DistInfo
from lovaszseg.scoring.postprocess import PostProcessing
from lovaszseg.storage.run_folder import load_model
from lovaszseg.training import train
from lovaszseg.training.trainer import Trainer
from lovaszseg.workflows.cv import cross_validate
from lovaszseg.workflows.pseudo import ConfidenceRule, pseudo_label

ONE_STAGE = [{"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.001}]
# Keeps every image: the folder then holds all six test images.
KEEP_ALL = ConfidenceRule(max_uncertain=1.0, min_agreement=0.0)


def _quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture(scope="module")
def salt_run(tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pseudo")
    config = load_config(tiny_salt_config(tiny_salt, tmp, data={"batch_size": 4}, stages=ONE_STAGE))
    assert train(config, run_dir=tmp / "run", console=_quiet()).completed
    return tmp / "run"


@pytest.fixture(scope="module")
def pseudo_dir(salt_run: Path, tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("labels") / "pseudo"
    result = pseudo_label(salt_run, tiny_salt / "test" / "images", out, threshold=0.5, min_area=0, rule=KEEP_ALL)
    assert (result.images, result.kept, result.out) == (6, 6, out)
    return out


def _rows(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / PSEUDO_TABLE).open() as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def test_the_folder_holds_the_images_their_masks_and_every_images_confidence(
    pseudo_dir: Path, salt_run: Path, tiny_salt: Path
) -> None:
    images = tiny_salt / "test" / "images"
    loaded = load_model(salt_run)
    transform = build_transform("tgs", train=False, **loaded.config.data.options)
    rows = _rows(pseudo_dir)
    for path, _, probs in predict_folder(loaded.model, images, transform, in_channels=1):
        assert (pseudo_dir / "images" / path.name).read_bytes() == path.read_bytes()  # the image as it was
        mask = np.asarray(Image.open(pseudo_dir / "masks" / f"{path.stem}.png"))
        np.testing.assert_array_equal(mask, PostProcessing(threshold=0.5).apply(probs[0]).astype(np.uint8) * 255)
        uncertain = ((probs[0] >= 0.2) & (probs[0] <= 0.8)).mean()
        assert float(rows[path.stem]["uncertain_share"]) == pytest.approx(uncertain, abs=1e-6)
        assert rows[path.stem]["agreement"] == "" and rows[path.stem]["kept"] == "1"  # one model: no agreement
    record = json.loads((pseudo_dir / PSEUDO_RECORD).read_text())
    assert (record["task"], record["tta"], record["images"], record["kept"]) == ("binary", "none", 6, 6)
    assert record["window"] == "none"
    assert record["post_processing"] == {"threshold": 0.5, "min_area": 0, "empty_gate": 0.0}


def test_the_rule_keeps_only_images_with_few_uncertain_pixels(
    pseudo_dir: Path, salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    images = tiny_salt / "test" / "images"
    loaded = load_model(salt_run)
    transform = build_transform("tgs", train=False, **loaded.config.data.options)
    highest = {
        path.stem: float(probs.max())
        for path, _, probs in predict_folder(loaded.model, images, transform, in_channels=1)
    }
    # Uncertain: above a cut between the third and fourth lowest maxima; no uncertain pixel allowed.
    cut = float(np.mean(sorted(highest.values())[2:4]))
    strict = ConfidenceRule(band=(cut, 1.0), max_uncertain=0.0)
    result = pseudo_label(salt_run, images, tmp_path / "strict", threshold=0.5, min_area=0, rule=strict)
    kept = {i for i, row in _rows(tmp_path / "strict").items() if row["kept"] == "1"}
    assert result.kept == len(kept) == 3 and kept == {i for i, value in highest.items() if value < cut}
    assert kept == {p.stem for p in (tmp_path / "strict" / "images").iterdir()}
    assert kept == {p.stem for p in (tmp_path / "strict" / "masks").iterdir()}


def test_a_sliding_window_labels_each_image_from_its_crops_and_is_recorded(
    salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    images, out = tiny_salt / "test" / "images", tmp_path / "pseudo"
    window = WindowOverride((64, 64), (32, 32), "gaussian")
    pseudo_label(salt_run, images, out, threshold=0.5, min_area=0, rule=KEEP_ALL, window=window)
    loaded = load_model(salt_run)
    transform = build_transform("tgs", train=False, **loaded.config.data.options)
    crops = predict_folder(loaded.model, images, transform, in_channels=1, window=window.apply(None))
    whole = {path.stem: probs for path, _, probs in predict_folder(loaded.model, images, transform, in_channels=1)}
    differs = []
    for path, _, probs in crops:
        differs.append(not np.allclose(probs, whole[path.stem]))  # the crops see less context
        mask = np.asarray(Image.open(out / "masks" / f"{path.stem}.png"))
        np.testing.assert_array_equal(mask, PostProcessing(threshold=0.5).apply(probs[0]).astype(np.uint8) * 255)
    assert any(differs) and len(differs) == 6
    assert json.loads((out / PSEUDO_RECORD).read_text())["window"] == "64x64 windows every 32x32 (gaussian)"


def test_an_ensemble_keeps_images_its_members_agree_on(salt_run: Path, pseudo_dir: Path, tmp_path: Path) -> None:
    # Two copies of one model agree exactly (IoU 1) with their ensemble.
    agreeing = ConfidenceRule(max_uncertain=1.0, min_agreement=1.0)
    images = pseudo_dir / "images"
    result = pseudo_label([salt_run, salt_run], images, tmp_path / "two", threshold=0.5, min_area=0, rule=agreeing)
    agreements = {row["agreement"] for row in _rows(tmp_path / "two").values()}
    assert agreements == {"1.000000"} and (result.images, result.kept) == (6, 6)


def test_nothing_is_written_when_no_image_passes_or_an_option_is_bad(
    salt_run: Path, pseudo_dir: Path, tmp_path: Path
) -> None:
    nothing = ConfidenceRule(band=(0.0, 1.0), max_uncertain=0.0)  # every pixel is uncertain
    with pytest.raises(DataError, match=r"none of the 6 images .* passes the rule"):
        pseudo_label(salt_run, pseudo_dir / "images", tmp_path / "none", threshold=0.5, min_area=0, rule=nothing)
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob(".none*"))
    with pytest.raises(ConfigError, match=r"--out .* is not empty"):
        pseudo_label(salt_run, pseudo_dir / "images", pseudo_dir)
    with pytest.raises(ConfigError, match=r"--band must be two probabilities low < high in \[0, 1\], got 0.8,0.2"):
        ConfidenceRule(band=(0.8, 0.2))
    with pytest.raises(ConfigError, match=r"--max-uncertain must be a share in \[0, 1\], got 2"):
        ConfidenceRule(max_uncertain=2)


def test_the_command_writes_the_folder_and_says_how_many_it_kept(
    salt_run: Path, pseudo_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    arguments = ["pseudo-label", str(salt_run), str(pseudo_dir / "images"), "--out", str(out), "--threshold", "0.5"]
    result = CliRunner().invoke(app, [*arguments, "--max-uncertain", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"kept 6 of 6 images in {out}" in result.output.replace("\n", "")
    result = CliRunner().invoke(app, [*arguments, "--band", "0.2"])
    assert result.exit_code == 2 and "--band must be two probabilities LOW,HIGH, got '0.2'" in result.output


def _trainer(config: dict[str, Any]) -> Trainer:
    return Trainer(load_config(config), DistInfo(0, 1, torch.device("cpu")), _quiet(), pretrained=False)


def test_pseudo_labelled_images_join_the_training_split_and_never_the_validation_split(
    pseudo_dir: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    plain = _trainer(tiny_salt_config(tiny_salt, tmp_path, stages=ONE_STAGE))
    config = tiny_salt_config(tiny_salt, tmp_path, stages=ONE_STAGE, data={"pseudo": [str(pseudo_dir)]})
    trainer = _trainer(config)
    pseudo_ids = sorted(PseudoLabels(pseudo_dir, trainer.spec, build_transform("tgs", train=True)).ids)
    assert list(trainer.train_set.ids) == list(plain.train_set.ids) + pseudo_ids
    assert list(trainer.val_set.ids) == list(plain.val_set.ids) and not set(pseudo_ids) & set(trainer.val_set.ids)
    sample = trainer.train_set[len(plain.train_set)]  # the first pseudo-labelled image, as training sees it
    assert set(sample) == {"image", "mask", "id"} and sample["image"].shape == (1, 128, 128)
    mask = np.asarray(Image.open(pseudo_dir / "masks" / f"{sample['id']}.png")) // 255
    seen = crop_to_original(sample["mask"][None], (101, 101))[0].numpy()  # padded as training pads, maybe mirrored
    assert np.array_equal(seen, mask) or np.array_equal(seen, mask[:, ::-1])
    assert set(next(iter(trainer.train_loader))) == {"image", "mask", "id"}  # one batch of both kinds


def test_a_pseudo_share_sets_each_batchs_pseudo_labelled_images(
    pseudo_dir: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    data = {"pseudo": [str(pseudo_dir)], "pseudo_share": 0.25, "batch_size": 4}
    trainer = _trainer(tiny_salt_config(tiny_salt, tmp_path, stages=ONE_STAGE, data=data))
    pseudo = set(PseudoLabels(pseudo_dir, trainer.spec, build_transform("tgs", train=True)).ids)
    batches = list(trainer.train_loader)
    assert [sum(i in pseudo for i in batch["id"]) for batch in batches] == [1] * len(batches)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pseudo_share": 0.3}, "data.pseudo_share needs pseudo-label folders in data.pseudo"),
        ({"pseudo": ["x"], "pseudo_share": 0.3, "sampler": "balanced"}, "both set what a batch holds"),
        ({"pseudo": ["x"], "pseudo_share": 1.0}, "data.pseudo_share"),
    ],
)
def test_bad_pseudo_keys_are_config_errors(data: dict[str, Any], message: str, tiny_salt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(tiny_salt_config(tiny_salt, tmp_path, data=data))


def test_a_folder_holding_labelled_images_or_not_a_pseudo_label_folder_is_refused(
    pseudo_dir: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    leaked = tmp_path / "leaked"
    shutil.copytree(pseudo_dir, leaked)
    labelled = build_dataset("tgs", tiny_salt, "all", train=False).ids[0]
    shutil.copy(next((leaked / "images").iterdir()), leaked / "images" / f"{labelled}.png")
    shutil.copy(next((leaked / "masks").iterdir()), leaked / "masks" / f"{labelled}.png")
    config = tiny_salt_config(tiny_salt, tmp_path, stages=ONE_STAGE, data={"pseudo": [str(leaked)]})
    with pytest.raises(DataError, match=f"holds 1 labelled image.* e.g. {labelled}: pseudo-labels are for unlabelled"):
        _trainer(config)
    with pytest.raises(DataError, match=r"is not a pseudo-label folder: it has no pseudo\.json"):
        _trainer(tiny_salt_config(tiny_salt, tmp_path, stages=ONE_STAGE, data={"pseudo": [str(tiny_salt / "test")]}))


def test_cv_with_pseudo_labels_trains_on_them_and_predicts_only_labelled_images_out_of_fold(
    pseudo_dir: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    config = load_config(
        tiny_salt_config(
            tiny_salt, tmp_path, stages=ONE_STAGE, data={"batch_size": 4, "options": {}, "pseudo": [str(pseudo_dir)]}
        )
    )
    result = cross_validate(config, n_folds=2, holdout=4, run_dir=tmp_path / "cv", console=_quiet())
    assert result.completed
    pseudo_ids = set(PseudoLabels(pseudo_dir, config.data.spec(), build_transform("tgs", train=True)).ids)
    labelled = set(build_dataset("tgs", tiny_salt, "all", train=False).ids)
    holdout = set((tmp_path / "cv" / "splits" / "holdout.txt").read_text().split())
    oof = set(np.load(tmp_path / "cv" / "oof.npz").files)
    assert oof == labelled - holdout and not oof & pseudo_ids
    for fold in range(2):  # each fold trained on its split and the pseudo-labels, validated on its split only
        fold_config = load_model(tmp_path / "cv" / f"fold-{fold}").config
        assert fold_config.data.pseudo == [str(pseudo_dir)]
        trainer = Trainer(fold_config, DistInfo(0, 1, torch.device("cpu")), _quiet(), pretrained=False)
        assert pseudo_ids <= set(trainer.train_set.ids) and not holdout & set(trainer.train_set.ids)
        assert not pseudo_ids & set(trainer.val_set.ids) and not holdout & set(trainer.val_set.ids)
