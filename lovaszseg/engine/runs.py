"""Using a finished run: load its model, evaluate it, predict masks, write a Kaggle submission.

Each function takes a run folder or a checkpoint file, so the CLI commands ``eval``, ``predict`` and
``submit`` are thin wrappers and a notebook can call the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from lovaszseg.config import Config, load_config
from lovaszseg.data import build_dataset, build_transform
from lovaszseg.data.io import atomic_write
from lovaszseg.data.voc import save_palette_png
from lovaszseg.engine.checkpoint import load_checkpoint
from lovaszseg.engine.trainer import resolve_data_root
from lovaszseg.inference import Predictions, Tta, predict_dataset, predict_folder, save_overlay, write_submission
from lovaszseg.metrics import ConfusionMatrix, MeanMeter, best_threshold, binary_iou, image_iou, salt_score
from lovaszseg.rle import read_rle_csv

__all__ = ["evaluate_run", "load_model", "predict_run", "submit_run"]


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def load_model(run_or_checkpoint: str | Path) -> tuple[nn.Module, Config]:
    """Load a trained model and its config, without executing code from any file.

    Args:
        run_or_checkpoint: A run folder (``best.pt``, else ``model.safetensors`` + ``config.json``, else
            ``last.pt``), a ``.pt`` checkpoint, or a ``.safetensors`` file with ``config.json`` beside it.

    Returns:
        ``(model in eval mode on the CPU, config)``.
    """
    from lovaszseg.models import build_model

    path = Path(run_or_checkpoint)
    if path.is_dir():
        for candidate in ("best.pt", "model.safetensors", "last.pt"):
            if (path / candidate).is_file():
                path = path / candidate
                break
        else:
            raise FileNotFoundError(f"{path} holds no best.pt, model.safetensors or last.pt: is it a run folder?")
    if path.suffix == ".safetensors":
        config_path = path.with_name("config.json")
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: a .safetensors model needs its config.json beside it")
        config, weights = load_config(json.loads(config_path.read_text())), load_file(str(path))
    else:
        checkpoint = load_checkpoint(path)
        config, weights = load_config(checkpoint["config"]), checkpoint["model"]
    model = build_model(config.model, _in_channels(config), _classes(config), pretrained=False)
    model.load_state_dict(weights)
    return model.eval(), config


def _in_channels(config: Config) -> int:
    if config.data.name == "tgs":
        return 1
    return config.data.options.get("in_channels", 3) if config.data.name == "folder" else 3


def _classes(config: Config) -> int:
    if config.data.name == "voc":
        return 21
    if config.data.name == "folder":
        num_classes = config.data.options.get("num_classes", 2)
        return 1 if num_classes == 2 else num_classes
    return 1


def _resized(config: Config) -> tuple[int, int] | None:
    size = config.data.options.get("resize")
    return (size, size) if size else None


def _predict_images(
    model: nn.Module, config: Config, images_dir: Path, tta: Tta, device: str, batch_size: int = 16
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Predict a folder with the evaluation preset of the run's dataset."""
    transform = build_transform(config.data.name, train=False, **config.data.options)
    yield from predict_folder(
        model,
        images_dir,
        transform,
        in_channels=_in_channels(config),
        device=_device(device),
        tta=tta,
        resized=_resized(config),
        batch_size=batch_size,
    )


def _predict_split(
    model: nn.Module, config: Config, split: str, tta: Tta, device: torch.device, data_root: Path | None
) -> Predictions:
    root = data_root or resolve_data_root(config)
    dataset = build_dataset(config.data.name, root, split, train=False, **config.data.options)
    batch_size = config.data.val_batch_size or config.data.batch_size
    return predict_dataset(model, dataset, batch_size=batch_size, device=device, tta=tta, resized=_resized(config))


def evaluate_run(
    run_or_checkpoint: str | Path,
    *,
    split: str = "val",
    tta: Tta = "none",
    device: str = "auto",
    data_root: str | Path | None = None,
    out: Path | None = None,
) -> dict[str, float]:
    """Score a trained model on a labelled split and write ``eval.json``.

    Binary models: the TGS metric (``salt_score``), dataset ``iou`` and per-image ``image_iou`` at
    threshold 0.5; the threshold that maximises the TGS metric (``best_threshold``, the one
    ``submit --threshold auto`` uses) and its score; and for ``iou`` and ``image_iou`` the threshold
    that maximises each (``NAME_best_threshold``) and its value (``NAME_at_best_threshold``). Multi-class:
    ``miou`` (VOC), ``image_miou`` and ``pixel_acc``.

    Args:
        run_or_checkpoint: Run folder or checkpoint (see :func:`load_model`).
        split: Dataset split to score (e.g. ``val``, ``train``, ``all``).
        tta: ``none`` or ``hflip``.
        device: ``auto``, ``cpu`` or ``cuda``.
        data_root: Dataset root, if not the one in the run's config.
        out: Where to write ``eval.json`` (default: the run folder).

    Returns:
        Metric name -> value.
    """
    model, config = load_model(run_or_checkpoint)
    predictions = _predict_split(model, config, split, tta, _device(device), Path(data_root) if data_root else None)
    if predictions.truths is None:
        raise ValueError(f"split {split!r} has no masks to evaluate against")
    metrics: dict[str, float] = {}
    if predictions.probabilities is not None:
        probs = predictions.probabilities
        truths = np.stack(predictions.truths)
        ignore = 255 if config.data.name == "voc_binary" else None
        pred = torch.from_numpy((probs > 0.5).astype(np.int64))
        target = torch.from_numpy(truths.astype(np.int64))
        matrix = ConfusionMatrix(2, ignore)
        matrix.update(pred, target)
        metrics["iou"] = float(matrix.iou()[1])
        metrics["image_iou"] = float(binary_iou(pred, target, ignore_index=ignore).mean())
        if ignore is None:
            positive = truths > 0
            metrics["salt_score"] = float(salt_score(probs > 0.5, positive).mean())
            # Each loss calibrates its probabilities differently: compare losses at each metric's best threshold.
            grid = np.linspace(0.05, 0.95, 91)
            threshold, score, _ = best_threshold(probs, positive, grid, metric="salt")
            metrics["best_threshold"], metrics["salt_score_at_best_threshold"] = float(threshold), float(score)
            for name in ("iou", "image_iou"):
                threshold, score, _ = best_threshold(probs, positive, grid, metric=name)
                metrics[f"{name}_best_threshold"], metrics[f"{name}_at_best_threshold"] = float(threshold), float(score)
    else:
        num_classes = _classes(config)
        matrix, images = ConfusionMatrix(num_classes, 255), MeanMeter()
        for labels, truth in zip(predictions.labels, predictions.truths, strict=True):
            pred, target = torch.from_numpy(labels.astype(np.int64))[None], torch.from_numpy(truth)[None]
            matrix.update(pred, target)
            images.update(image_iou(pred, target, num_classes, 255))
        metrics.update(miou=matrix.mean_iou(), image_miou=images.compute(), pixel_acc=matrix.pixel_accuracy())
    target_dir = out or (
        Path(run_or_checkpoint) if Path(run_or_checkpoint).is_dir() else Path(run_or_checkpoint).parent
    )
    with atomic_write(target_dir / "eval.json") as handle:
        json.dump({"split": split, "tta": tta, **metrics}, handle, indent=2)
    return metrics


def predict_run(
    run_or_checkpoint: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    tta: Tta = "none",
    threshold: float = 0.5,
    device: str = "auto",
) -> int:
    """Predict every image of a folder: ``OUT/masks/STEM.png`` and ``OUT/overlays/STEM.png``.

    Binary masks are saved as 0/255 grayscale PNGs, multi-class ones as VOC palette PNGs.

    Returns:
        The number of images predicted.
    """
    model, config = load_model(run_or_checkpoint)
    out_dir = Path(out_dir)
    count = 0
    for stem, image, probs in _predict_images(model, config, Path(images_dir), tta, device):
        labels = (probs[0] > threshold).astype(np.uint8) if probs.shape[0] == 1 else probs.argmax(0).astype(np.uint8)
        if probs.shape[0] == 1:
            with atomic_write(out_dir / "masks" / f"{stem}.png", "wb") as handle:
                Image.fromarray(labels * 255).save(handle, format="PNG")
        else:
            save_palette_png(labels, out_dir / "masks" / f"{stem}.png")
        save_overlay(image, labels, out_dir / "overlays" / f"{stem}.png")
        count += 1
    return count


def submit_run(
    run_or_checkpoint: str | Path,
    test_dir: str | Path,
    out: str | Path,
    *,
    tta: Tta = "none",
    threshold: float | Literal["auto"] = 0.5,
    sample_submission: str | Path | None = None,
    device: str = "auto",
) -> tuple[Path, float]:
    """Write a Kaggle TGS Salt submission (``id,rle_mask``) for every image of a test folder.

    Args:
        run_or_checkpoint: Run folder or checkpoint of a binary (salt) model.
        test_dir: The test images, or a folder holding ``images/`` (Kaggle's ``test/``).
        out: CSV to write; it is validated first and written only if valid.
        tta: ``none`` or ``hflip``.
        threshold: Probability threshold, or ``"auto"``: the one maximising the TGS metric on the
            run's validation split.
        sample_submission: Kaggle's ``sample_submission.csv``: the file must then hold exactly its ids.
            By default the one beside ``test_dir`` (``test/../sample_submission.csv``) is used if present.
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        ``(path of the CSV, threshold used)``.
    """
    model, config = load_model(run_or_checkpoint)
    if _classes(config) != 1:
        raise ValueError("submit writes binary RLE masks; this run's model is multi-class")
    if threshold == "auto":
        threshold = evaluate_run(run_or_checkpoint, tta=tta, device=device)["best_threshold"]
    test_dir = Path(test_dir)
    images_dir = test_dir / "images" if (test_dir / "images").is_dir() else test_dir
    if sample_submission is None and (images_dir.parent.parent / "sample_submission.csv").is_file():
        sample_submission = images_dir.parent.parent / "sample_submission.csv"
    ids, masks = [], []
    for stem, _, probs in _predict_images(model, config, images_dir, tta, device, batch_size=64):
        ids.append(stem)
        masks.append(probs[0] > threshold)
    expected = list(read_rle_csv(Path(sample_submission))) if sample_submission else None
    if expected is not None:  # Kaggle's row order
        order = {sample_id: index for index, sample_id in enumerate(expected)}
        ranked = sorted(range(len(ids)), key=lambda i: order.get(ids[i], len(order)))
        ids, masks = [ids[i] for i in ranked], [masks[i] for i in ranked]
    path = write_submission(ids, np.stack(masks), Path(out), expected_ids=expected)
    return path, float(threshold)
