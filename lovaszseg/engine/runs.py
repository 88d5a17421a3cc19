"""Using a finished run: evaluate it, predict masks, write a Kaggle submission.

Each function takes a run folder or a model file (see :func:`~lovaszseg.engine.run_folder.load_model`),
so the CLI commands ``eval``, ``predict`` and ``submit`` are thin wrappers and a notebook can call the
same functions. What a model takes and returns comes from its dataset's
:class:`~lovaszseg.data.spec.DatasetSpec`, never from the dataset's name. Their loops show their
progress (:class:`~lovaszseg.engine.reporting.LoopProgress`) as training does, every
``output.progress_seconds`` of the run's config where no bar can be drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader

from lovaszseg.data import build_dataset, build_transform
from lovaszseg.data.io import atomic_write, list_stems
from lovaszseg.data.tgs import TGS_ORIGINAL_SIZE
from lovaszseg.data.voc import save_palette_png
from lovaszseg.engine.distributed import resolve_device
from lovaszseg.engine.evaluate import evaluate
from lovaszseg.engine.reporting import LoopProgress
from lovaszseg.engine.run_folder import EVAL_FILE, LoadedModel, RunFolder, load_model
from lovaszseg.engine.trainer import resolve_data_root
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.inference import Tta, predict_folder, save_overlay, write_submission
from lovaszseg.metrics import DEFAULT_THRESHOLD
from lovaszseg.rle import read_rle_csv

__all__ = ["check_threshold", "evaluate_run", "predict_run", "submit_run"]


def check_threshold(value: float) -> float:
    """A probability threshold, which must lie in [0, 1] (outside it every mask is full or empty).

    Raises:
        ConfigError: the value is not a number in [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"threshold must be a probability in [0, 1], got {value!r}")
    return float(value)


def _predict_images(
    loaded: LoadedModel,
    images_dir: Path,
    tta: Tta,
    device: str,
    *,
    description: str,
    console: Console | None,
    batch_size: int = 16,
) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """Predict a folder with the evaluation preset the model was trained with; its progress counts images."""
    config = loaded.config
    transform = build_transform(config.data.name, train=False, **config.data.options)
    total = len(list_stems(images_dir))
    interval = config.output.progress_seconds
    with LoopProgress(console or Console(), description, total, unit="image", interval=interval) as bar:
        for prediction in predict_folder(
            loaded.model,
            images_dir,
            transform,
            in_channels=loaded.spec.in_channels,
            device=resolve_device(device),
            tta=tta,
            resized=loaded.spec.resize,
            batch_size=batch_size,
        ):
            yield prediction
            bar.advance(1)  # once the caller has used it: writing its files is part of the work


def evaluate_run(
    run_or_checkpoint: str | Path,
    *,
    split: str = "val",
    tta: Tta = "none",
    device: str = "auto",
    data_root: str | Path | None = None,
    out: Path | None = None,
    console: Console | None = None,
) -> dict[str, float]:
    """Score a trained model on a labelled split, streaming, and write ``eval.json``.

    The metrics are those of validation during training (:class:`~lovaszseg.engine.evaluate.Scorer`):
    binary models get the TGS metric (``salt_score``, without an ignore index), ``iou`` and
    ``image_iou`` at the default threshold, and for each the best threshold of the grid and its score
    (``best_threshold`` is the one ``submit --threshold auto`` uses); multi-class models ``miou``,
    ``image_miou`` and ``pixel_acc``.

    Args:
        run_or_checkpoint: Run folder or model file.
        split: Dataset split to score (e.g. ``val``, ``train``, ``all``).
        tta: ``none`` or ``hflip``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root: Dataset root, if not the one in the run's config.
        out: Folder to write ``eval.json`` to (default: the run folder, or the model file's folder).
        console: Where progress goes (default: a new rich console, which finds a terminal or notebook).

    Returns:
        Metric name -> value.

    Raises:
        CheckpointError, ConfigError, DataError: no such run, a bad option, or a split without masks.
    """
    loaded = load_model(run_or_checkpoint)
    config, target = loaded.config, resolve_device(device)
    root = Path(data_root) if data_root else resolve_data_root(config)
    dataset = build_dataset(config.data.name, root, split, train=False, **config.data.options)
    if "mask" not in dataset[0]:
        raise DataError(f"split {split!r} of {root} has no masks to evaluate against")
    loader = DataLoader(dataset, batch_size=config.data.val_batch_size or config.data.batch_size)
    model, interval = loaded.model.to(target), config.output.progress_seconds
    with LoopProgress(console or Console(), f"eval {split}", len(loader), interval=interval) as bar:
        metrics = evaluate(model, loader, loaded.spec, device=target, tta=tta, progress=bar.advance)
    folder = RunFolder(out or loaded.source.parent)
    folder.write_json(EVAL_FILE, {"split": split, "tta": tta, "model": str(loaded.source), **metrics})
    return metrics


def predict_run(
    run_or_checkpoint: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    tta: Tta = "none",
    threshold: float = DEFAULT_THRESHOLD,
    device: str = "auto",
    console: Console | None = None,
) -> int:
    """Predict every image of a folder: ``OUT/masks/STEM.png`` and ``OUT/overlays/STEM.png``.

    Binary masks are saved as 0/255 grayscale PNGs, multi-class ones as VOC palette PNGs. Progress goes
    to ``console`` (default: a new rich console).

    Returns:
        The number of images predicted.
    """
    threshold = check_threshold(threshold)
    loaded = load_model(run_or_checkpoint)
    out_dir = Path(out_dir)
    if out_dir.is_file():
        raise ConfigError(f"output folder {out_dir} is a file")
    count = 0
    for path, image, probs in _predict_images(
        loaded, Path(images_dir), tta, device, description="predict", console=console
    ):
        mask_path = out_dir / "masks" / f"{path.stem}.png"
        if loaded.spec.binary:
            labels = (probs[0] > threshold).astype(np.uint8)
            with atomic_write(mask_path, "wb") as handle:
                Image.fromarray(labels * 255).save(handle, format="PNG")
        else:
            labels = probs.argmax(0).astype(np.uint8)
            save_palette_png(labels, mask_path)
        save_overlay(image, labels, out_dir / "overlays" / f"{path.stem}.png")
        count += 1
    return count


def submit_run(
    run_or_checkpoint: str | Path,
    test_dir: str | Path,
    out: str | Path,
    *,
    tta: Tta = "none",
    threshold: float | Literal["auto"] = DEFAULT_THRESHOLD,
    sample_submission: str | Path | None = None,
    device: str = "auto",
    console: Console | None = None,
) -> tuple[Path, float]:
    """Write a Kaggle TGS Salt submission (``id,rle_mask``) for every image of a test folder.

    Masks are encoded as they are predicted; every image must be 101x101 (the competition's size)
    and the file is validated before it is written or replaces anything.

    Args:
        run_or_checkpoint: Run folder or model file of a binary (salt) model.
        test_dir: The test images, or a folder holding ``images/`` (Kaggle's ``test/``).
        out: CSV to write.
        tta: ``none`` or ``hflip``.
        threshold: Probability threshold in [0, 1], or ``"auto"``: the one maximising the TGS metric
            on the run's validation split.
        sample_submission: Kaggle's ``sample_submission.csv``: the file must then hold exactly its ids,
            in its order. By default the one beside ``test_dir`` (``test/../sample_submission.csv``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        console: Where progress goes (default: a new rich console).

    Returns:
        ``(path of the CSV, threshold used)``.

    Raises:
        ConfigError: a multi-class model, a threshold outside [0, 1], or ``out`` naming a folder.
        DataError: an image that is not 101x101 (named), ids that do not match the sample submission.
    """
    out, test_dir = Path(out), Path(test_dir)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the CSV file to write")
    loaded = load_model(run_or_checkpoint)
    if not loaded.spec.binary:
        raise ConfigError("submit writes binary RLE masks; this run's model is multi-class")
    if threshold == "auto":
        threshold = evaluate_run(run_or_checkpoint, tta=tta, device=device, console=console)["best_threshold"]
    threshold = check_threshold(threshold)
    images_dir = test_dir / "images" if (test_dir / "images").is_dir() else test_dir
    if sample_submission is None and (images_dir.parent.parent / "sample_submission.csv").is_file():
        sample_submission = images_dir.parent.parent / "sample_submission.csv"
    expected = list(read_rle_csv(Path(sample_submission))) if sample_submission else None

    def masks() -> Iterator[tuple[str, np.ndarray]]:
        predictions = _predict_images(loaded, images_dir, tta, device, description="submit", console=console)
        for path, image, probs in predictions:
            if image.shape[:2] != TGS_ORIGINAL_SIZE:
                raise DataError(
                    f"image {path} is {image.shape[0]}x{image.shape[1]}; TGS submissions need "
                    f"{TGS_ORIGINAL_SIZE[0]}x{TGS_ORIGINAL_SIZE[1]} images"
                )
            yield path.stem, probs[0] > threshold

    return write_submission(masks(), out, shape=TGS_ORIGINAL_SIZE, expected_ids=expected), threshold
