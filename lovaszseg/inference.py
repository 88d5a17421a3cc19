"""From a trained model to probabilities, masks, overlay pictures and Kaggle submissions."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from lovaszseg.data.io import atomic_write, list_stems, read_image
from lovaszseg.data.transforms import crop_to_original
from lovaszseg.data.voc import VOC_COLORMAP
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.rle import encode, validate_rles

__all__ = [
    "TTA_MODES",
    "overlay",
    "predict_folder",
    "predict_probabilities",
    "probabilities",
    "save_overlay",
    "write_submission",
]

TTA_MODES = ("none", "hflip")
Tta = Literal["none", "hflip"]


def probabilities(logits: Tensor) -> Tensor:
    """Sigmoid of a one-channel (binary) model's logits, softmax over the classes otherwise, in float32."""
    logits = logits.float()
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(1)


def predict_probabilities(
    model: nn.Module, images: Tensor, tta: Tta = "none", *, logits: Tensor | None = None
) -> Tensor:
    """Class probabilities of a batch, averaged over test-time augmentations.

    Args:
        model: Segmentation model returning logits ``[B, C, H, W]``, or probabilities when it says so
            with ``outputs_probabilities = True`` (:class:`~lovaszseg.engine.ensemble.Ensemble`).
        images: Normalised images ``[B, in_channels, H, W]`` on the model's device.
        tta: ``"none"``, or ``"hflip"`` to average with the prediction of the mirrored images.
        logits: The model's logits of ``images``, when the caller already has them (saves a forward pass).

    Returns:
        ``[B, C, H, W]`` float32: see :func:`probabilities`.
    """
    if tta not in TTA_MODES:
        raise ConfigError(f"tta must be one of {list(TTA_MODES)}, got {tta!r}")
    probs = _model_probabilities(model, images) if logits is None else probabilities(logits)
    if tta == "hflip":
        probs = (probs + _model_probabilities(model, images.flip(-1)).flip(-1)) / 2
    return probs


def _model_probabilities(model: nn.Module, images: Tensor) -> Tensor:
    """Probabilities of a model returning logits, or of one returning probabilities (an ensemble)."""
    return model(images).float() if getattr(model, "outputs_probabilities", False) else probabilities(model(images))


@torch.no_grad()
def predict_folder(
    model: nn.Module,
    images_dir: Path,
    transform: Callable[..., dict[str, Any]],
    *,
    in_channels: int,
    device: str | torch.device = "cpu",
    tta: Tta = "none",
    resized: tuple[int, int] | None = None,
    batch_size: int = 16,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Predict every image of a folder, in file-name order.

    Consecutive images of the same size share a forward pass; sizes may differ across the folder.

    Args:
        model: Segmentation model; it is put in eval mode.
        images_dir: Folder of images (png, jpg, ...).
        transform: The evaluation preset the model was trained with (pads and normalises).
        in_channels: 1 to read images as grayscale, 3 for RGB.
        device: Where to run the model.
        tta: Test-time augmentation, see :func:`predict_probabilities`.
        resized: The size images are resized to before padding, if the preset resizes.
        batch_size: Most images per forward pass.

    Yields:
        ``(path, image, probabilities)``: the image file, the image as read (uint8 ``[H, W]`` or
        ``[H, W, 3]``) and the class probabilities ``[C, H, W]`` cropped back to its size.

    Raises:
        DataError: no images in the folder, or an unreadable image.
        ConfigError: an image whose (padded) size the model cannot take; the message names the file.
    """
    from lovaszseg.models import check_input_size

    model.eval().to(device)
    paths = list_stems(Path(images_dir))
    if not paths:
        raise DataError(f"no images (png, jpg, ...) in {images_dir}")
    pending: list[tuple[Path, np.ndarray, Tensor]] = []

    def flush() -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
        batch = torch.stack([tensor for _, _, tensor in pending]).to(device)
        probs = predict_probabilities(model, batch, tta).cpu()
        for (path, image, _), prob in zip(pending, probs, strict=True):
            yield path, image, crop_to_original(prob, image.shape[:2], resized=resized).numpy()
        pending.clear()

    for path in paths.values():
        image = read_image(path, channels=in_channels)
        tensor = transform(image=image)["image"]
        if not pending or pending[-1][2].shape != tensor.shape:
            check_input_size(model, *tensor.shape[-2:], f"image {path} ({image.shape[0]}x{image.shape[1]} as read)")
        if pending and (len(pending) == batch_size or pending[-1][2].shape != tensor.shape):
            yield from flush()
        pending.append((path, image, tensor))
    yield from flush()


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with its predicted classes blended in the VOC colours (class 1 is red).

    Args:
        image: uint8 ``[H, W]`` (grayscale) or ``[H, W, 3]`` (RGB).
        labels: Class ids ``[H, W]``; 0 (background) is left uncoloured.
        alpha: Opacity of the class colours.

    Returns:
        uint8 RGB ``[H, W, 3]``.
    """
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    colours = np.asarray(VOC_COLORMAP, dtype=np.float32)[labels]
    blended = np.where((labels > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    return blended.round().astype(np.uint8)


def save_overlay(image: np.ndarray, labels: np.ndarray, path: Path, alpha: float = 0.45) -> None:
    """Save :func:`overlay` of the image and its predicted classes as a PNG at ``path``."""
    with atomic_write(path, "wb") as handle:
        Image.fromarray(overlay(image, labels, alpha)).save(handle, format="PNG")


def write_submission(
    masks: Iterable[tuple[str, np.ndarray]],
    path: Path,
    *,
    shape: tuple[int, int],
    expected_ids: Iterable[str] | None = None,
) -> Path:
    """Write a Kaggle submission CSV (``id,rle_mask``), validated before anything is written.

    Masks are run-length encoded and checked as they come and spooled to a temporary file, so memory
    holds only the ids, whatever the number of images and the length of their rows; the file is
    written (atomically, in ``expected_ids`` order when given) only once every row and id is checked.

    Args:
        masks: ``(id, binary mask [H, W])`` pairs, e.g. straight from a prediction loop.
        path: CSV to write; nothing is written when validation fails.
        shape: ``(height, width)`` every mask must have (TGS: 101x101).
        expected_ids: The ids the competition expects (e.g. ``sample_submission.csv``); then the file
            must hold exactly these, and in their order.

    Returns:
        ``path``.

    Raises:
        DataError: a mask of another size, an id given twice, or runs that fail validation.
        ConfigError: ``path`` is a folder.
    """
    if path.is_dir():
        raise ConfigError(f"submission path {path} is a folder; name the CSV file to write")
    expected = list(expected_ids) if expected_ids is not None else None
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as spool:
        rows = _spool_rows(masks, spool, shape)
        try:
            validate_rles(dict.fromkeys(rows, ""), shape, expected)  # the ids; every row was checked as it came
        except ValueError as error:
            raise DataError(f"submission not written: {error}") from error
        with atomic_write(path, "w", newline="") as handle:
            csv.writer(handle).writerow(["id", "rle_mask"])
            for sample_id in expected if expected is not None else rows:
                spool.seek(rows[sample_id])
                handle.write(spool.readline())
    return path


def _spool_rows(masks: Iterable[tuple[str, np.ndarray]], spool: IO[str], shape: tuple[int, int]) -> dict[str, int]:
    """Encode, check and append each mask's CSV row to ``spool``; return each id's row offset."""
    offsets: dict[str, int] = {}
    writer = csv.writer(spool)
    for sample_id, mask in masks:
        if mask.shape != tuple(shape):
            raise DataError(
                f"mask of id {sample_id!r} is {mask.shape[0]}x{mask.shape[1]}; a submission needs {shape[0]}x{shape[1]}"
            )
        if sample_id in offsets:
            raise DataError(f"id {sample_id!r} appears more than once")
        rle = encode(mask.astype(bool))
        try:
            validate_rles({sample_id: rle}, shape)
        except ValueError as error:
            raise DataError(f"submission not written: {error}") from error
        offsets[sample_id] = spool.tell()
        writer.writerow((sample_id, rle))
    return offsets
