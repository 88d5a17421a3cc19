"""From a trained model to probabilities, masks, overlay pictures and Kaggle submissions."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lovaszseg.data.io import atomic_write, list_stems, read_image
from lovaszseg.data.transforms import crop_to_original
from lovaszseg.data.voc import VOC_COLORMAP
from lovaszseg.rle import encode, validate_rles

__all__ = [
    "TTA_MODES",
    "Predictions",
    "predict_dataset",
    "predict_folder",
    "predict_probabilities",
    "save_overlay",
    "write_submission",
]

TTA_MODES = ("none", "hflip")
Tta = Literal["none", "hflip"]


def predict_probabilities(model: nn.Module, images: Tensor, tta: Tta = "none") -> Tensor:
    """Class probabilities of a batch, averaged over test-time augmentations.

    Args:
        model: Segmentation model returning logits ``[B, C, H, W]``.
        images: Normalised images ``[B, in_channels, H, W]`` on the model's device.
        tta: ``"none"``, or ``"hflip"`` to average with the prediction of the mirrored images.

    Returns:
        ``[B, C, H, W]`` float32: sigmoid probabilities for a one-channel (binary) model, softmax otherwise.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {list(TTA_MODES)}, got {tta!r}")

    def probabilities(batch: Tensor) -> Tensor:
        logits = model(batch).float()
        return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(1)

    probs = probabilities(images)
    if tta == "hflip":
        probs = (probs + probabilities(images.flip(-1)).flip(-1)) / 2
    return probs


@dataclass
class Predictions:
    """Predictions over a dataset, cropped back to the original image size.

    Attributes:
        ids: Sample ids in dataset order.
        probabilities: Binary tasks: foreground probabilities ``[N, H, W]`` float32; else None.
        labels: Multi-class tasks: predicted class ids per image (uint8 ``[H, W]``); else None.
        truths: Ground-truth masks per image when the dataset has them (int64 ``[H, W]``); else None.
    """

    ids: list[str]
    probabilities: np.ndarray | None
    labels: list[np.ndarray] | None
    truths: list[np.ndarray] | None


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    tta: Tta = "none",
    resized: tuple[int, int] | None = None,
    num_workers: int = 0,
) -> Predictions:
    """Run a model over a lovaszseg dataset (see :mod:`lovaszseg.data`), in order.

    Args:
        model: Segmentation model; it is put in eval mode.
        dataset: Dataset with the lovaszseg sample contract (``image``, optional ``mask``, ``id``).
        batch_size: Images per forward pass (1 for datasets whose images differ in size).
        device: Where to run the model.
        tta: Test-time augmentation, see :func:`predict_probabilities`.
        resized: The size images were resized to before padding (TGS ``resize``), for the crop-back.
        num_workers: DataLoader workers.

    Returns:
        :class:`Predictions`; probabilities and masks are cropped to ``dataset.original_size`` when set.
    """
    model.eval().to(device)
    original = getattr(dataset, "original_size", None)
    binary = getattr(dataset, "task", "binary") == "binary"
    ids: list[str] = []
    probabilities: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        probs = predict_probabilities(model, batch["image"].to(device), tta).cpu()
        masks = batch.get("mask")
        if original is not None:
            probs = crop_to_original(probs, original, resized=resized)
            masks = None if masks is None else crop_to_original(masks, original, resized=resized)
        ids.extend(batch["id"])
        if binary:
            probabilities.append(probs[:, 0].numpy())
        else:
            labels.extend(probs.argmax(1).to(torch.uint8).numpy())
        if masks is not None:
            truths.extend(masks.numpy())
    return Predictions(
        ids=ids,
        probabilities=np.concatenate(probabilities) if binary and probabilities else None,
        labels=None if binary else labels,
        truths=truths or None,
    )


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
        ``(stem, image, probabilities)``: the image as read (uint8 ``[H, W]`` or ``[H, W, 3]``) and the
        class probabilities ``[C, H, W]`` cropped back to its size.
    """
    model.eval().to(device)
    stems = list_stems(Path(images_dir))
    if not stems:
        raise FileNotFoundError(f"no images (png, jpg, ...) in {images_dir}")
    pending: list[tuple[str, np.ndarray, Tensor]] = []

    def flush() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        batch = torch.stack([tensor for _, _, tensor in pending]).to(device)
        probs = predict_probabilities(model, batch, tta).cpu()
        for (stem, image, _), prob in zip(pending, probs, strict=True):
            yield stem, image, crop_to_original(prob, image.shape[:2], resized=resized).numpy()
        pending.clear()

    for stem, path in stems.items():
        image = read_image(path, channels=in_channels)
        tensor = transform(image=image)["image"]
        if pending and (len(pending) == batch_size or pending[-1][2].shape != tensor.shape):
            yield from flush()
        pending.append((stem, image, tensor))
    yield from flush()


def save_overlay(image: np.ndarray, labels: np.ndarray, path: Path, alpha: float = 0.45) -> None:
    """Save the image with its predicted classes blended in the VOC colours (class 1 is red).

    Args:
        image: uint8 ``[H, W]`` (grayscale) or ``[H, W, 3]`` (RGB).
        labels: Class ids ``[H, W]``; 0 (background) is left uncoloured.
        path: PNG to write.
        alpha: Opacity of the class colours.
    """
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    colours = np.asarray(VOC_COLORMAP, dtype=np.float32)[labels]
    blended = np.where((labels > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    with atomic_write(path, "wb") as handle:
        Image.fromarray(blended.round().astype(np.uint8)).save(handle, format="PNG")


def write_submission(
    ids: Sequence[str], masks: np.ndarray, path: Path, expected_ids: Iterable[str] | None = None
) -> Path:
    """Write a Kaggle TGS submission CSV (``id,rle_mask``), validated before it is written.

    Args:
        ids: Image ids, one per mask.
        masks: Binary masks ``[N, H, W]`` at the original size (101x101 for TGS).
        path: CSV to write; nothing is written when validation fails.
        expected_ids: The ids the competition expects (e.g. ``sample_submission.csv``); then the file
            must hold exactly these.

    Returns:
        ``path``.

    Raises:
        ValueError: ids repeated or not matching ``masks``, or runs that fail validation.
    """
    if len(ids) != len(masks):
        raise ValueError(f"{len(ids)} ids but {len(masks)} masks")
    if len(set(ids)) != len(ids):
        repeated = sorted(i for i, count in Counter(ids).items() if count > 1)[:5]
        raise ValueError(f"ids appear more than once: {repeated}")
    rows = {sample_id: encode(mask.astype(bool)) for sample_id, mask in zip(ids, masks, strict=True)}
    validate_rles(rows, masks.shape[1:], expected_ids)
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "rle_mask"])
        writer.writerows(rows.items())
    return path
