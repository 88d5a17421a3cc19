"""eval / predict / submit on tiny trained runs: numbers, eval.json, and every bad input as a typed error."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import BINARY_METRIC_KEYS, POSTPROCESSED_KEYS, tiny_salt_config
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader

import lovaszseg.workflows.runs
from lovaszseg.config import load_config
from lovaszseg.data import build_dataset, build_transform
from lovaszseg.errors import CheckpointError, ConfigError, DataError, RunFolderError
from lovaszseg.inference.predict import predict_folder
from lovaszseg.inference.window import WindowOverride
from lovaszseg.rle import decode, read_rle_csv
from lovaszseg.scoring.engine import Scorer
from lovaszseg.scoring.metrics import ConfusionMatrix, binary_iou
from lovaszseg.scoring.postprocess import PostProcessing
from lovaszseg.storage.checkpoint import load_checkpoint
from lovaszseg.storage.run_folder import RunFolder, load_model
from lovaszseg.thresholds import DEFAULT_THRESHOLD, THRESHOLD_GRID
from lovaszseg.training import train
from lovaszseg.windowing import SlidingWindow
from lovaszseg.workflows.runs import evaluate_run, predict_run, submit_run

# One short epoch at a low rate: probabilities spread over (0, 1) rather than collapsed to 0 or 1.
ONE_STAGE = [{"name": "bce", "loss": "bce", "epochs": 1, "lr": 0.001}]
BAD_THRESHOLDS = [2.0, -0.1, 1.0000001, math.nan, math.inf, True, "0.5"]


def _quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture(scope="module")
def salt_run(tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny TGS run trained for one epoch (6 validation images)."""
    tmp = tmp_path_factory.mktemp("runs")
    config = load_config(tiny_salt_config(tiny_salt, tmp, data={"batch_size": 4}, stages=ONE_STAGE))
    result = train(config, run_dir=tmp / "salt", console=_quiet())
    assert result.completed and (tmp / "salt" / "model.safetensors").is_file()
    return tmp / "salt"


@pytest.fixture(scope="module")
def real_test_images(shared_dir: Path) -> list[Path]:
    """Five real 101x101 TGS test images, in file-name order."""
    return sorted((shared_dir / "tgs" / "test" / "images").iterdir())[:5]


def _copy_images(paths: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for path in paths:
        shutil.copy(path, folder)
    return folder


def _no_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


# --- eval ---------------------------------------------------------------------------------------------


def test_evaluate_run_equals_the_validation_metrics_of_training_and_writes_eval_json(salt_run: Path) -> None:
    (salt_run / "eval.json").unlink(missing_ok=True)
    metrics = evaluate_run(salt_run, device="cpu")
    # One metrics engine: the numbers training stored for its best epoch are the numbers eval gives.
    stored = load_checkpoint(salt_run / "best.pt")["metrics"]
    for name in ("salt_score", "iou", "image_iou"):
        assert metrics[name] == pytest.approx(stored[name], abs=1e-12), name
    assert set(metrics) == BINARY_METRIC_KEYS | POSTPROCESSED_KEYS
    assert (
        metrics["best_threshold"] in THRESHOLD_GRID and metrics["salt_score_at_best_threshold"] >= metrics["salt_score"]
    )
    written = json.loads((salt_run / "eval.json").read_text())
    assert written == {"split": "val", "tta": "none", "model": str(salt_run / "model.safetensors"), **metrics}
    # From the exported model: the same weights, the same numbers; the record goes where asked.
    exported = evaluate_run(salt_run / "model.safetensors", device="cpu", out=salt_run / "elsewhere")
    assert exported == metrics
    assert json.loads((salt_run / "elsewhere" / "eval.json").read_text())["model"] == str(
        salt_run / "model.safetensors"
    )


def test_evaluate_run_streams_batch_by_batch(salt_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    real_update = Scorer.update

    def update(self: Any, probs: torch.Tensor, masks: torch.Tensor, empty: torch.Tensor | None = None) -> None:
        batches.append(len(probs))
        assert probs.shape[-2:] == masks.shape[-2:] == (101, 101)  # cropped back before scoring
        real_update(self, probs, masks, empty)

    monkeypatch.setattr(Scorer, "update", update)
    metrics = evaluate_run(salt_run, split="all", device="cpu", out=salt_run / "all")
    assert batches == [4] * 6 and 0 <= metrics["iou"] <= 1  # 24 images, data.batch_size 4


def test_a_window_the_size_of_the_padded_image_is_whole_image_inference_and_eval_json_names_a_window(
    salt_run: Path, tmp_path: Path
) -> None:
    whole = evaluate_run(salt_run, device="cpu", out=tmp_path / "whole")
    # TGS images are padded to 128x128 as in training: one 128x128 window is the whole image.
    one = evaluate_run(salt_run, device="cpu", window=WindowOverride((128, 128)), out=tmp_path / "one")
    assert one.metrics == pytest.approx(whole.metrics, abs=1e-6)
    crops = evaluate_run(
        salt_run, device="cpu", window=WindowOverride((64, 64), (32, 32), "gaussian"), out=tmp_path / "crops"
    )
    assert 0 <= crops["salt_score"] <= 1 and crops.metrics != whole.metrics
    written = json.loads((tmp_path / "crops" / "eval.json").read_text())
    assert written["window"] == "64x64 windows every 32x32 (gaussian)"
    assert "window" not in json.loads((tmp_path / "whole" / "eval.json").read_text())


def test_windowed_eval_predicts_one_image_at_a_time_with_the_same_numbers(
    salt_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window_passes: list[int]
) -> None:
    passes = window_passes
    window = WindowOverride((64, 64), (32, 32), "gaussian")
    one_by_one = evaluate_run(salt_run, device="cpu", window=window, out=tmp_path / "one")
    assert passes == [1] * 6  # the 6 validation images; data.batch_size is 4
    passes.clear()
    monkeypatch.setattr(lovaszseg.workflows.runs, "images_per_pass", lambda window, batch_size: batch_size)
    batched = evaluate_run(salt_run, device="cpu", window=window, out=tmp_path / "batched")
    assert passes == [4, 2] and batched.metrics == one_by_one.metrics  # as before: a batch of merged maps


def test_predict_with_a_window_writes_the_windows_masks(salt_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    images = tiny_salt / "test" / "images"
    expected = _probabilities(salt_run, images, window=SlidingWindow((64, 64), (32, 32)))
    whole = _probabilities(salt_run, images)
    assert any(not np.allclose(expected[i], whole[i]) for i in whole)  # the crops see less context
    assert predict_run(salt_run, images, tmp_path, window=WindowOverride((64, 64), (32, 32)), device="cpu") == 6
    for sample_id, prob in expected.items():
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{sample_id}.png"))
        np.testing.assert_array_equal(mask, (prob > DEFAULT_THRESHOLD).astype(np.uint8) * 255)


def test_evaluate_run_needs_masks(salt_run: Path) -> None:
    with pytest.raises(DataError, match=r"split 'test' of .* has no masks to evaluate against"):
        evaluate_run(salt_run, split="test", device="cpu")


def _folder_dataset(root: Path, count: int = 10) -> Path:
    """RGB 40x40 images with 0/1 masks and 255 (ignored) borders and speckles."""
    rng = np.random.default_rng(0)
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    for index in range(count):
        mask = np.zeros((40, 40), np.uint8)
        top, left = rng.integers(0, 25, 2)
        mask[top : top + 15, left : left + 12] = 1
        image = rng.integers(0, 80, (40, 40, 3)).astype(np.uint8)
        image[mask == 1] += 150
        mask[:, :3] = 255
        mask[rng.random(mask.shape) < 0.05] = 255
        Image.fromarray(image).save(root / "images" / f"s{index:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{index:02d}.png")
    return root


def test_evaluate_run_on_a_binary_folder_dataset_with_an_ignore_index(
    tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder_dataset(tmp_path / "data")
    options = {"num_classes": 2, "ignore_index": 255}
    config = load_config(
        tiny_salt_config(
            root,
            tmp_path,
            data={"name": "folder", "root": str(root), "batch_size": 4, "val_batch_size": 3, "options": options},
            stages=ONE_STAGE,
        )
    )
    assert train(config, run_dir=tmp_path / "run", console=_quiet()).completed
    metrics = evaluate_run(tmp_path / "run", split="all", device="cpu")
    assert "salt_score" not in metrics and "best_threshold" not in metrics  # the TGS metric needs every pixel
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["iou"] == metrics["iou"]

    # Reference: the whole split's probabilities at once, scored by the reference functions, void left out.
    model = load_model(tmp_path / "run").model
    dataset = build_dataset("folder", root, "all", train=False, **options)
    with torch.no_grad():
        batches = [(model(b["image"]).sigmoid()[:, 0].double(), b["mask"]) for b in DataLoader(dataset, batch_size=3)]
    probs, masks = torch.cat([p for p, _ in batches]), torch.cat([m for _, m in batches])
    assert masks.shape == (10, 64, 64) and set(masks.unique().tolist()) == {0, 1, 255}  # padded with 255
    iou, image_iou = [], []
    for threshold in THRESHOLD_GRID:
        matrix = ConfusionMatrix(2, 255)
        matrix.update((probs > threshold).long(), masks)
        iou.append(float(matrix.iou()[1]))
        image_iou.append(float(binary_iou(probs, masks, threshold, ignore_index=255).mean()))
    default = list(THRESHOLD_GRID).index(DEFAULT_THRESHOLD)
    for name, curve in (("iou", iou), ("image_iou", image_iou)):
        best = int(np.argmax(curve))
        assert metrics[name] == pytest.approx(curve[default], abs=1e-9), name
        assert metrics[f"{name}_best_threshold"] == THRESHOLD_GRID[best], name
        assert metrics[f"{name}_at_best_threshold"] == pytest.approx(curve[best], abs=1e-9), name

    # predict works on such a model too: binary masks at the images' own size.
    assert predict_run(tmp_path / "run", root / "images", tmp_path / "pred", device="cpu") == 10
    mask = np.asarray(Image.open(tmp_path / "pred" / "masks" / "s00.png"))
    assert mask.shape == (40, 40) and set(np.unique(mask)) <= {0, 255}


# --- submit ---------------------------------------------------------------------------------------------


def _probabilities(
    run: Path, images: Path, tta: str = "none", window: SlidingWindow | None = None
) -> dict[str, np.ndarray]:
    """Foreground probabilities ``[101, 101]`` of a folder, by id, straight from predict_folder."""
    loaded = load_model(run)
    transform = build_transform("tgs", train=False, **loaded.config.data.options)
    predicted = predict_folder(loaded.model, images, transform, in_channels=1, tta=tta, window=window)
    return {path.stem: probs[0] for path, _, probs in predicted}


@pytest.mark.parametrize(("threshold", "tta"), [(0.0, "none"), (0.5, "hflip"), (0.73, "none"), (1.0, "none")])
def test_submit_writes_every_image_in_order_at_the_threshold(
    threshold: float, tta: str, salt_run: Path, real_test_images: list[Path], tmp_path: Path
) -> None:
    folder = _copy_images(real_test_images, tmp_path / "test" / "images")
    probs = _probabilities(salt_run, folder, tta)
    path, used = submit_run(salt_run, folder.parent, tmp_path / "s.csv", threshold=threshold, tta=tta, device="cpu")
    assert (path, used) == (tmp_path / "s.csv", PostProcessing(threshold, 0))
    rows = read_rle_csv(path)
    assert list(rows) == [p.stem for p in real_test_images] == list(probs)
    for sample_id, rle in rows.items():
        np.testing.assert_array_equal(decode(rle, (101, 101)), probs[sample_id] > threshold)
    if threshold == 1.0:  # no probability lies above 1
        assert set(rows.values()) == {""}


def test_submit_auto_threshold_is_the_best_validation_threshold(
    salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    path, used = submit_run(salt_run, tiny_salt / "test", tmp_path / "s.csv", threshold="auto", device="cpu")
    assert used == PostProcessing(evaluate_run(salt_run, device="cpu")["best_threshold"], 0)
    # tiny_salt/sample_submission.csv beside test/ fixes the ids and their order.
    assert list(read_rle_csv(path)) == list(read_rle_csv(tiny_salt / "sample_submission.csv"))


def test_submit_refuses_ids_that_differ_from_the_sample_submission(
    salt_run: Path, real_test_images: list[Path], tmp_path: Path
) -> None:
    folder = _copy_images(real_test_images, tmp_path / "images")
    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle_mask\n" + "".join(f"{p.stem},1 1\n" for p in real_test_images[:4]) + "other,1 1\n")
    out = tmp_path / "out" / "s.csv"
    message = rf"sample submission {sample} does not match the test images: 1 id\(s\) with no image in {folder}, "
    message += rf"e\.g\. other; 1 image\(s\) it does not list, e\.g\. {real_test_images[4].stem}"
    with pytest.raises(DataError, match=message):
        submit_run(salt_run, folder, out, sample_submission=sample, device="cpu")
    assert not out.parent.exists() or not _no_files(out.parent)


def test_submit_on_64x64_images_names_the_first_and_writes_nothing(salt_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    for name in ("b", "a", "c"):
        Image.fromarray(np.full((64, 64), 100, np.uint8)).save(folder / f"{name}.png")
    out = tmp_path / "out" / "submission.csv"
    with pytest.raises(DataError) as caught:
        submit_run(salt_run, folder, out, device="cpu")
    assert str(caught.value) == f"image {folder / 'a.png'} is 64x64; TGS submissions need 101x101 images"
    assert not out.exists() and not (out.parent.exists() and _no_files(out.parent))


def test_submit_names_the_one_odd_sized_image_among_real_ones(
    salt_run: Path, real_test_images: list[Path], tmp_path: Path
) -> None:
    folder = _copy_images(real_test_images, tmp_path / "images")
    odd = folder / real_test_images[2].name
    Image.open(odd).crop((0, 0, 96, 90)).save(odd)  # the middle file, 90 high and 96 wide
    out = tmp_path / "submission.csv"
    out.write_text("id,rle_mask\n")  # an earlier file is not replaced
    with pytest.raises(DataError) as caught:
        submit_run(salt_run, folder, out, device="cpu")
    assert str(caught.value) == f"image {odd} is 90x96; TGS submissions need 101x101 images"
    assert out.read_text() == "id,rle_mask\n"


@pytest.mark.parametrize("threshold", BAD_THRESHOLDS)
def test_thresholds_outside_zero_one_are_config_errors(
    threshold: Any, salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    message = rf"threshold must be a probability in \[0, 1\], got {threshold!r}"
    with pytest.raises(ConfigError, match=message):
        PostProcessing(threshold=threshold)
    with pytest.raises(ConfigError, match=message):
        submit_run(salt_run, tiny_salt / "test", tmp_path / "s.csv", threshold=threshold, device="cpu")
    with pytest.raises(ConfigError, match=message):
        predict_run(salt_run, tiny_salt / "test" / "images", tmp_path / "pred", threshold=threshold, device="cpu")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("threshold", [0, 0.0, 0.5, 1, 1.0])
def test_thresholds_in_zero_one_are_accepted(threshold: float) -> None:
    chosen = PostProcessing(threshold=threshold).threshold
    assert chosen == float(threshold) and isinstance(chosen, float)


def test_submit_out_naming_a_folder_is_a_config_error(salt_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"--out {tmp_path} is a folder; name the CSV file to write"):
        submit_run(salt_run, tiny_salt / "test", tmp_path, device="cpu")
    assert not list(tmp_path.iterdir())


def _run_command(command: str, run: Path, tiny_salt: Path, tmp_path: Path, **options: Any) -> Any:
    if command == "eval":
        return evaluate_run(run, out=tmp_path / "eval", **options)
    if command == "predict":
        return predict_run(run, tiny_salt / "test" / "images", tmp_path / "pred", **options)
    return submit_run(run, tiny_salt / "test", tmp_path / "s.csv", **options)


@pytest.mark.parametrize("command", ["eval", "predict", "submit"])
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "", "tpu"])
def test_unknown_devices_name_the_value_and_the_allowed_names(
    command: str, device: str, salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=rf"unknown device {device!r}; use auto, cpu, cuda or cuda:N"):
        _run_command(command, salt_run, tiny_salt, tmp_path, device=device)
    assert not _no_files(tmp_path)


@pytest.mark.parametrize("command", ["eval", "predict", "submit"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_config_error(
    command: str, device: str, salt_run: Path, tiny_salt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"device {device!r} asked for, but no CUDA GPU is available here"):
        _run_command(command, salt_run, tiny_salt, tmp_path, device=device)
    assert not _no_files(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "best.pt"])
@pytest.mark.parametrize("command", ["eval", "predict", "submit"])
def test_a_truncated_model_file_is_a_checkpoint_error_naming_it(
    name: str, command: str, salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy" / name
    copy.parent.mkdir()
    data = (salt_run / name).read_bytes()
    copy.write_bytes(data[: len(data) // 2])
    shutil.copy(salt_run / "config.yaml", copy.parent)
    with pytest.raises(CheckpointError, match=str(copy)):
        _run_command(command, copy, tiny_salt, tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match=str(copy)):  # as the model of its run folder too
        _run_command(command, copy.parent, tiny_salt, tmp_path, device="cpu")
    assert set(_no_files(tmp_path)) == {copy, copy.parent / "config.yaml"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "no run folder, cv folder, ensemble folder or model file at {tmp}/missing"),
        (lambda tmp: tmp, "{tmp} is not a run folder: it has no config.yaml"),
        (lambda tmp: tmp / "missing.pt", "no run folder, cv folder, ensemble folder or model file at {tmp}/missing.pt"),
    ],
)
def test_no_run_is_a_checkpoint_error(make: Any, message: str, tiny_salt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=message.format(tmp=tmp_path)):
        evaluate_run(make(tmp_path), device="cpu")


# --- predict --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, DEFAULT_THRESHOLD, 0.81, 1.0])
def test_predict_writes_binary_masks_at_the_threshold(
    threshold: float, salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    images = tiny_salt / "test" / "images"
    probs = _probabilities(salt_run, images)
    assert predict_run(salt_run, images, tmp_path, threshold=threshold, device="cpu") == 6
    assert sorted(p.stem for p in (tmp_path / "masks").iterdir()) == list(probs)
    assert sorted(p.stem for p in (tmp_path / "overlays").iterdir()) == list(probs)
    for sample_id, prob in probs.items():
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{sample_id}.png"))
        np.testing.assert_array_equal(mask, (prob > threshold).astype(np.uint8) * 255)
        overlay = np.asarray(Image.open(tmp_path / "overlays" / f"{sample_id}.png"))
        assert overlay.shape == (101, 101, 3)


def test_predict_and_submit_empty_masks_smaller_than_the_min_area(
    salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    images = tiny_salt / "test" / "images"
    probs = _probabilities(salt_run, images)
    areas = sorted(int((p > 0.3).sum()) for p in probs.values())
    min_area = areas[len(areas) // 2]  # about half the masks fall below it
    predict_run(salt_run, images, tmp_path / "p", threshold=0.3, min_area=min_area, device="cpu")
    path, used = submit_run(salt_run, images.parent, tmp_path / "s.csv", threshold=0.3, min_area=min_area, device="cpu")
    assert used == PostProcessing(0.3, min_area)
    rows = read_rle_csv(path)
    for sample_id, prob in probs.items():
        expected = (prob > 0.3) if (prob > 0.3).sum() >= min_area else np.zeros_like(prob, dtype=bool)
        mask = np.asarray(Image.open(tmp_path / "p" / "masks" / f"{sample_id}.png"))
        np.testing.assert_array_equal(mask, expected.astype(np.uint8) * 255)
        np.testing.assert_array_equal(decode(rows[sample_id], (101, 101)), expected)
    assert sum(rle == "" for rle in rows.values()) == sum(area < min_area or area == 0 for area in areas)


@pytest.mark.parametrize("min_area", [-1, 2.5, True])
def test_a_bad_min_area_is_a_config_error(min_area: object, salt_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min-area must be a non-negative number of pixels"):
        submit_run(salt_run, tiny_salt / "test", tmp_path / "s.csv", min_area=min_area, device="cpu")
    assert not (tmp_path / "s.csv").exists()


def test_predict_into_a_file_is_a_config_error(salt_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(ConfigError, match=f"output folder {target} is a file"):
        predict_run(salt_run, tiny_salt / "test" / "images", target, device="cpu")


# --- progress -------------------------------------------------------------------------------------------
def test_eval_predict_and_submit_show_their_progress(salt_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    ticks = iter(range(0, 10_000, 60))  # a minute per reading: a plain progress line at every step
    console = Console(file=io.StringIO(), force_terminal=False, force_jupyter=False, get_time=lambda: next(ticks))
    evaluate_run(salt_run, device="cpu", out=tmp_path, console=console)
    predict_run(salt_run, tiny_salt / "test" / "images", tmp_path / "pred", device="cpu", console=console)
    submit_run(salt_run, tiny_salt / "test", tmp_path / "s.csv", device="cpu", console=console)
    lines = console.file.getvalue().splitlines()
    assert all(" img/s  ETA " in line for line in lines)
    assert ["  ".join(line.split("  ")[:2]) for line in lines] == [
        *(f"eval val  step {step}/2" for step in (1, 2)),  # 6 validation images in batches of 4
        *(f"predict  image {index}/6" for index in range(1, 7)),
        *(f"submit  image {index}/6" for index in range(1, 7)),
    ]


# --- run folders without config.yaml -------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["", "best.pt", "last.pt"])
def test_a_folder_without_config_yaml_is_refused_by_name(source: str, salt_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("best.pt", "last.pt"):
        shutil.copy(salt_run / name, folder / name)
    with pytest.raises(CheckpointError, match=rf"{folder} is not a run folder: it has no config\.yaml"):
        load_model(folder / source if source else folder)


# --- post-processing asked for, and folders another process writes ----------------------------------------


def test_min_area_auto_at_a_given_threshold_is_the_one_tuned_for_that_threshold(
    salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(salt_run, run)
    evaluate_run(run, device="cpu")
    tuning = json.loads((run / "postprocess.json").read_text())
    column = THRESHOLD_GRID.index(0.3)
    _, used = submit_run(run, tiny_salt / "test", tmp_path / "s.csv", threshold=0.3, min_area="auto", device="cpu")
    assert used == PostProcessing(threshold=0.3, min_area=tuning["by_threshold"]["min_area"][column])
    # ... which is what tuning the min-area alone at 0.3 on the validation predictions gives.
    scorer = Scorer(load_model(run).spec, keep_images=True)
    loaded = load_model(run)
    dataset = build_dataset("tgs", tiny_salt, loaded.config.data.val_split, train=False, **loaded.config.data.options)
    from lovaszseg.scoring.engine import evaluate
    from lovaszseg.scoring.postprocess import tune_postprocessing

    evaluate(loaded.model, DataLoader(dataset, batch_size=4), loaded.spec, device="cpu", scorer=scorer)
    alone = tune_postprocessing(scorer.image_counts(), tuning["metric"], fixed={"threshold": 0.3})
    assert used == alone.chosen
    with pytest.raises(ConfigError, match=r"threshold 0\.337 is not one of them"):
        submit_run(run, tiny_salt / "test", tmp_path / "t.csv", threshold=0.337, min_area="auto", device="cpu")


@pytest.mark.parametrize("first", [WindowOverride((64, 64), (32, 32)), WindowOverride()])
def test_a_tuning_names_its_window_and_a_run_is_tuned_again_for_another_one(
    first: WindowOverride, salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(salt_run, run)
    (run / "postprocess.json").unlink(missing_ok=True)
    evaluate_run(run, device="cpu", window=first)
    tuned = json.loads((run / "postprocess.json").read_text())
    windowed = first.size is not None
    assert tuned["window"] == ("64x64 windows every 32x32 (uniform)" if windowed else "none")
    # submit with the other window: the validation split is scored and tuned again, as for another TTA
    other = WindowOverride() if windowed else WindowOverride((64, 64), (32, 32))
    submit_run(
        run, tiny_salt / "test", tmp_path / "s.csv", threshold="auto", min_area="auto", window=other, device="cpu"
    )
    retuned = json.loads((run / "postprocess.json").read_text())
    assert retuned["window"] == ("none" if windowed else "64x64 windows every 32x32 (uniform)")
    assert retuned["before"] != tuned["before"]  # other predictions: other counts


def test_eval_of_a_run_another_process_writes_scores_it_without_writing_into_it(salt_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(salt_run, run)
    for name in ("eval.json", "postprocess.json"):
        (run / name).unlink(missing_ok=True)
    trainer = RunFolder(run)
    trainer.lock()  # as a training process holds it
    try:
        output = io.StringIO()
        metrics = evaluate_run(run, device="cpu", console=Console(file=output, width=300))
    finally:
        trainer.release()
    assert "still training; scored without writing eval.json or postprocess.json" in output.getvalue()
    assert f"PID {os.getpid()}" in output.getvalue()
    assert metrics.written is None and metrics.split == "val"
    assert not (run / "eval.json").exists() and not (run / "postprocess.json").exists()
    assert dict(metrics) == dict(evaluate_run(run, device="cpu"))  # once it is free, the same numbers, written
    assert (run / "eval.json").is_file() and (run / "postprocess.json").is_file()


@pytest.mark.parametrize("source", ["the_run_itself", "another_run"])
def test_eval_out_into_a_run_another_process_holds_is_refused_before_loading_and_writes_nothing(
    salt_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(salt_run, run)
    for name in ("eval.json", "postprocess.json"):
        (run / name).unlink(missing_ok=True)
    before = sorted(path.name for path in run.iterdir())
    evaluated = run if source == "the_run_itself" else salt_run
    loaded: list[object] = []
    load_predictor = lovaszseg.workflows.runs.load_predictor
    monkeypatch.setattr(
        lovaszseg.workflows.runs, "load_predictor", lambda *args: loaded.append(args) or load_predictor(*args)
    )
    trainer = RunFolder(run)
    trainer.lock()  # as a training process holds it
    try:
        message = rf"^--out {re.escape(str(run))} is being written by another process \(PID {os.getpid()}\)"
        with pytest.raises(RunFolderError, match=message):
            evaluate_run(evaluated, device="cpu", out=run)
    finally:
        trainer.release()
    assert not loaded and sorted(path.name for path in run.iterdir()) == before
    # Once it is free, eval writes into it, also when it is the folder evaluated (locked once, not twice).
    assert evaluate_run(evaluated, device="cpu", out=run).written == run / "eval.json"


def test_a_sample_submission_that_does_not_match_is_refused_before_any_prediction(
    salt_run: Path, real_test_images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy_images(real_test_images, tmp_path / "test" / "images")
    (tmp_path / "sample_submission.csv").write_text(
        "id,rle_mask\n" + "".join(f"{p.stem},1 1\n" for p in real_test_images[1:]) + "ghost,1 1\n"
    )
    monkeypatch.setattr(lovaszseg.workflows.runs, "load_predictor", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(DataError, match=rf"sample submission {tmp_path / 'sample_submission.csv'} does not match"):
        submit_run(salt_run, folder.parent, tmp_path / "s.csv", device="cpu")
    assert not (tmp_path / "s.csv").exists()


# --- a model with an empty-image head and an SWA average: the empty gate, and the average as a member ------


@pytest.fixture(scope="module")
def head_run(tiny_salt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny TGS run with an empty-image head (``model.empty_head``) and a 2-epoch SWA average
    (``stage1_swa.pt``), its post-processing (the gate with it) tuned on its 6 validation images."""
    tmp = tmp_path_factory.mktemp("head")
    stages = [{"name": "bce", "loss": "bce", "epochs": 2, "lr": 0.001, "swa_epochs": 2}]
    config = tiny_salt_config(tiny_salt, tmp, data={"batch_size": 4}, stages=stages)
    config["model"]["empty_head"] = 0.5
    result = train(load_config(config), run_dir=tmp / "head", console=_quiet())
    assert result.completed and (tmp / "head" / "stage1_swa.pt").is_file()
    metrics = evaluate_run(tmp / "head", device="cpu", console=_quiet())
    assert metrics["salt_score_postprocessed"] >= metrics["salt_score_postprocessed_without_empty_gate"]
    return tmp / "head"


def _with_heads(run: Path, images: Path) -> dict[str, tuple[np.ndarray, float]]:
    """Each image's foreground probabilities ``[101, 101]`` and its head probability, by id."""
    loaded = load_model(run)
    transform = build_transform("tgs", train=False, **loaded.config.data.options)
    predicted = predict_folder(loaded.model, images, transform, in_channels=1, with_empty=True)
    return {path.stem: (probs[0], head) for path, _, probs, head in predicted}


def _written(out: Path, csv: Path, ids: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The masks predict wrote to ``out`` and the ones submit wrote to ``csv``, as bool arrays by id."""
    rows = read_rle_csv(csv)
    assert sorted(rows) == sorted(ids)  # in the order of the sample submission beside test/
    pngs = {i: np.asarray(Image.open(out / "masks" / f"{i}.png")) == 255 for i in ids}
    return pngs, {i: decode(rows[i], (101, 101)) for i in ids}


@pytest.mark.parametrize("threshold", [0.0, 0.4])
@pytest.mark.parametrize("gate", [0.0, "middle", 1.0])
def test_an_explicit_empty_gate_empties_exactly_the_images_whose_head_is_below_it(
    gate: float | str, threshold: float, head_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    images = tiny_salt / "test" / "images"
    predicted = _with_heads(head_run, images)
    heads = sorted(head for _, head in predicted.values())
    assert len(set(heads)) == 6 and heads[0] > 0.0 and heads[-1] < 1.0  # 6 distinct probabilities inside (0, 1)
    value = (heads[2] + heads[3]) / 2 if gate == "middle" else gate  # "middle": half the images are below it
    predict_run(head_run, images, tmp_path / "p", threshold=threshold, empty_gate=value, device="cpu")
    path, used = submit_run(
        head_run, images.parent, tmp_path / "s.csv", threshold=threshold, empty_gate=value, device="cpu"
    )
    assert used == PostProcessing(threshold, 0, value)
    pngs, rows = _written(tmp_path / "p", path, list(predicted))
    for sample_id, (prob, head) in predicted.items():
        expected = (prob > threshold) & (head >= value)
        np.testing.assert_array_equal(pngs[sample_id], expected)
        np.testing.assert_array_equal(rows[sample_id], expected)
    gated = {sample_id for sample_id, (_, head) in predicted.items() if head < value}
    assert len(gated) == {0.0: 0, "middle": 3, 1.0: 6}[gate]
    assert all(not rows[i].any() for i in gated)
    if threshold == 0.0:  # every probability is above 0: an image the gate lets through is all foreground
        assert all(rows[i].all() for i in predicted if i not in gated)


def _with_gate(run: Path, gate: float) -> PostProcessing:
    """Replace the run's kept tuning by threshold 0.5, no min-area and ``gate`` at every threshold (as a
    tuning with a discriminating head would leave it; the tiny model's head is not, its tuned gate is 0)."""
    record = json.loads((run / "postprocess.json").read_text())
    record["chosen"] = {"threshold": 0.5, "min_area": 0, "empty_gate": gate}
    record["by_threshold"] = {"min_area": [0] * len(THRESHOLD_GRID), "empty_gate": [gate] * len(THRESHOLD_GRID)}
    (run / "postprocess.json").write_text(json.dumps(record))
    return PostProcessing(0.5, 0, gate)


def test_empty_gate_auto_is_the_tuned_gate_and_an_explicit_gate_overrides_it(
    head_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    from lovaszseg.rle import encode

    run = tmp_path / "run"
    shutil.copytree(head_run, run)
    tuning = json.loads((run / "postprocess.json").read_text())
    chosen = PostProcessing(**tuning["chosen"])
    assert json.loads((run / "eval.json").read_text())["postprocess_empty_gate"] == chosen.empty_gate
    images = tiny_salt / "test" / "images"
    predicted = _with_heads(run, images)
    ids = list(predicted)

    def expect(post: PostProcessing) -> dict[str, np.ndarray]:
        return {i: post.apply(prob, head) for i, (prob, head) in predicted.items()}

    auto = {"threshold": "auto", "min_area": "auto", "empty_gate": "auto"}
    path, used = submit_run(run, images.parent, tmp_path / "tuned.csv", device="cpu", **auto)
    assert used == chosen and read_rle_csv(path) == {i: encode(mask) for i, mask in expect(chosen).items()}
    # auto at a given threshold: the gate tuned for it; with no threshold given, for the default 0.5.
    for given, column in ((0.3, THRESHOLD_GRID.index(0.3)), (None, THRESHOLD_GRID.index(DEFAULT_THRESHOLD))):
        _, used = submit_run(run, images.parent, tmp_path / "at.csv", threshold=given, empty_gate="auto", device="cpu")
        assert used == PostProcessing(THRESHOLD_GRID[column], 0, tuning["by_threshold"]["empty_gate"][column])
        assert read_rle_csv(tmp_path / "at.csv") == {i: encode(mask) for i, mask in expect(used).items()}

    # A kept gate that empties half the test images: predict and submit auto apply it.
    heads = sorted(head for _, head in predicted.values())
    assert len(set(heads)) == 6
    kept = _with_gate(run, (heads[2] + heads[3]) / 2)
    record = json.loads((run / "postprocess.json").read_text())
    predict_run(run, images, tmp_path / "auto", device="cpu", **auto)
    path, used = submit_run(run, images.parent, tmp_path / "auto.csv", device="cpu", **auto)
    assert used == kept
    for written in _written(tmp_path / "auto", path, ids):
        assert all(np.array_equal(written[i], mask) for i, mask in expect(kept).items())
        assert sum(not written[i].any() for i, (_, head) in predicted.items() if head < kept.empty_gate) == 3
    # An explicit gate overrides the kept one, the other steps staying auto: 1.0 empties every image,
    # 0 turns the gate off.
    for gate in (1.0, 0.0):
        override = {**auto, "empty_gate": gate}
        predict_run(run, images, tmp_path / f"p{gate}", device="cpu", **override)
        path, used = submit_run(run, images.parent, tmp_path / f"s{gate}.csv", device="cpu", **override)
        assert used == PostProcessing(0.5, 0, gate)
        for written in _written(tmp_path / f"p{gate}", path, ids):
            assert all(np.array_equal(written[i], mask) for i, mask in expect(used).items())
        if gate == 1.0:
            assert set(read_rle_csv(path).values()) == {""}
        else:
            assert read_rle_csv(path) == {i: encode(prob > 0.5) for i, (prob, _) in predicted.items()}
    assert json.loads((run / "postprocess.json").read_text()) == record  # an override is not a new tuning


def test_empty_gate_on_the_command_line(head_run: Path, tiny_salt: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lovaszseg.cli import app
    from lovaszseg.rle import encode

    run = tmp_path / "run"
    shutil.copytree(head_run, run)
    images = tiny_salt / "test" / "images"
    predicted = _with_heads(run, images)
    heads = sorted(head for _, head in predicted.values())
    kept = _with_gate(run, (heads[2] + heads[3]) / 2)
    runner = CliRunner()
    common = ["--threshold", "auto", "--min-area", "auto", "--device", "cpu"]
    result = runner.invoke(app, ["predict", str(run), str(images), str(tmp_path / "p"), *common, "--empty-gate", "1"])
    assert result.exit_code == 0, result.output
    assert not any(np.asarray(Image.open(tmp_path / "p" / "masks" / f"{i}.png")).any() for i in predicted)
    for gate, value in (("auto", kept.empty_gate), ("1", 1.0), ("0", 0.0)):
        out = tmp_path / f"{gate}.csv"
        arguments = ["submit", str(run), str(tiny_salt / "test"), "--out", str(out), *common, "--empty-gate", gate]
        result = runner.invoke(app, arguments)
        assert result.exit_code == 0, result.output
        shown = f", empty-gate {value:.3f}" if value else ""
        assert f"(threshold 0.50, min-area 0{shown})" in " ".join(result.output.split())
        post = PostProcessing(0.5, 0, value)
        assert read_rle_csv(out) == {i: encode(post.apply(prob, head)) for i, (prob, head) in predicted.items()}
    assert set(read_rle_csv(tmp_path / "1.csv").values()) == {""}
    assert sum(rle == "" for rle in read_rle_csv(tmp_path / "auto.csv").values()) >= 3
    result = runner.invoke(app, ["submit", str(run), str(tiny_salt / "test"), "--empty-gate", "half"])
    assert result.exit_code == 2
    assert "--empty-gate must be a number in [0, 1] or 'auto', got 'half'" in " ".join(result.output.split())


@pytest.mark.parametrize("gate", [0.5, "auto"])
def test_an_empty_gate_for_a_model_without_a_head_is_a_config_error(
    gate: float | str, salt_run: Path, tiny_salt: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"--empty-gate reads the empty-image head .* lack: .*model\.safetensors"):
        submit_run(salt_run, tiny_salt / "test", tmp_path / "s.csv", empty_gate=gate, device="cpu")
    assert not (tmp_path / "s.csv").exists()
    _, used = submit_run(salt_run, tiny_salt / "test", tmp_path / "s.csv", empty_gate=0.0, device="cpu")
    assert used == PostProcessing(0.5, 0, 0.0)  # a gate of 0 is off: no head needed


def test_an_swa_checkpoint_is_an_ensemble_member_like_any_model_file(head_run: Path, tmp_path: Path) -> None:
    from lovaszseg.inference.ensemble import load_predictor
    from lovaszseg.inference.predict import predict_outputs

    swa, last = head_run / "stage1_swa.pt", head_run / "stage1_last.pt"
    checkpoint = load_checkpoint(swa)
    assert checkpoint["swa_n_averaged"] == 2
    alone = load_predictor(swa)
    weights = alone.model.state_dict()
    # The average's weights (and recomputed BatchNorm statistics), not the last epoch's.
    assert all(torch.equal(weights[name], checkpoint["model"][name]) for name in weights)
    trained = load_checkpoint(last)["model"]
    assert any(not torch.equal(weights[name], trained[name]) for name in weights if "classification_head" in name)
    images = torch.randn(3, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        single = predict_outputs(alone.model, images, "hflip")
        other = predict_outputs(load_predictor(last).model, images, "hflip")
        twice = predict_outputs(load_predictor([swa, swa]).model, images, "hflip")
        mixed = predict_outputs(load_predictor([swa, last], weights=[1, 3]).model, images, "hflip")
    assert single.empty is not None and other.empty is not None
    torch.testing.assert_close(twice.masks, single.masks, rtol=0, atol=1e-6)
    torch.testing.assert_close(twice.empty, single.empty, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed.masks, (single.masks + 3 * other.masks) / 4, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed.empty, (single.empty + 3 * other.empty) / 4, rtol=0, atol=1e-6)
    assert (mixed.masks - single.masks).abs().max() > 1e-4  # the members differ: the mix is not one of them
    # Scored: the ensemble of the file with itself gives the file's numbers, its head's accuracy and gate included.
    run = tmp_path / "run"
    shutil.copytree(head_run, run)
    by_file = evaluate_run(run / "stage1_swa.pt", device="cpu", console=_quiet())
    by_ensemble = evaluate_run([run / "stage1_swa.pt"] * 2, device="cpu", console=_quiet())
    assert by_file["salt_score"] == pytest.approx(checkpoint["metrics"]["salt_score"], abs=1e-6)
    names = ("salt_score", "iou", "image_iou", "empty_head_accuracy", "postprocess_empty_gate")
    for name in (*names, "salt_score_postprocessed", "salt_score_postprocessed_without_empty_gate"):
        assert by_ensemble[name] == pytest.approx(by_file[name], abs=1e-6), name
