"""From a trained model (or an ensemble) to probabilities: batches with test-time augmentation, and folders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lovaszseg.data.io import list_stems, read_image
from lovaszseg.data.transforms import crop_to_original
from lovaszseg.errors import DataError
from lovaszseg.heads import Outputs, split_outputs
from lovaszseg.inference.tta import NO_TTA, Tta, merge_probabilities, tta_plan
from lovaszseg.inference.window import images_per_pass, predict_windows
from lovaszseg.models import check_input_size, output_probabilities, probabilities
from lovaszseg.windowing import SlidingWindow

__all__ = ["model_outputs", "predict_folder", "predict_outputs", "predict_probabilities"]


def predict_outputs(
    model: nn.Module,
    images: Tensor,
    tta: Tta = NO_TTA,
    *,
    logits: Tensor | None = None,
    window: SlidingWindow | None = None,
) -> Outputs:
    """Class probabilities of a batch, and the empty-image head's, merged over test-time augmentations.

    Args:
        model: Segmentation model returning logits ``[B, C, H, W]`` (with an empty-image head, smp's
            ``(masks, labels)``), or probabilities when it says so with ``outputs_probabilities = True``
            (:class:`~lovaszseg.inference.ensemble.Ensemble`).
        images: Normalised images ``[B, in_channels, H, W]`` on the model's device.
        tta: A setting of :mod:`lovaszseg.inference.tta` (``"none"``, ``"hflip"``, ``"d4:gmean"``, ...):
            the model also sees each view of the images, whose prediction is mapped back before merging.
        logits: The model's mask logits of ``images``, when the caller already has them (saves a forward pass).
        window: Predict the images in overlapping crops (:mod:`lovaszseg.inference.window`), each with
            the TTA; None: whole.

    Returns:
        ``masks`` ``[B, C, H, W]`` float32 (see :func:`probabilities`) and ``empty`` ``[B]``, the head's
        probability that each image has foreground (None without a head), both merged over the views
        (and the windows).
    """
    if window is not None:
        if logits is not None:
            raise ValueError("the whole images' logits cannot stand in for their windows'")
        return predict_windows(window, lambda crops: predict_outputs(model, crops, tta), images)
    plan = tta_plan(tta)
    first = model_outputs(model, images) if logits is None else Outputs(probabilities(logits))
    views = [first]
    size = (images.shape[-2], images.shape[-1])
    for view in plan.views:
        seen = model_outputs(model, view.forward(images))
        views.append(Outputs(view.inverse(seen.masks, size), seen.empty))
    masks = merge_probabilities([view.masks for view in views], plan.merge)
    heads = [view.empty for view in views]
    empty = None if any(head is None for head in heads) else merge_probabilities(heads, plan.merge, class_dim=None)
    return Outputs(masks, empty)


def predict_probabilities(
    model: nn.Module,
    images: Tensor,
    tta: Tta = NO_TTA,
    *,
    logits: Tensor | None = None,
    window: SlidingWindow | None = None,
) -> Tensor:
    """The class probabilities ``[B, C, H, W]`` of :func:`predict_outputs` (the masks alone)."""
    return predict_outputs(model, images, tta, logits=logits, window=window).masks


def model_outputs(model: nn.Module, images: Tensor) -> Outputs:
    """Probabilities of a model returning logits, or of one returning probabilities (an ensemble)."""
    outputs = split_outputs(model(images)).to_float()
    return outputs if getattr(model, "outputs_probabilities", False) else output_probabilities(outputs)


@torch.no_grad()
def predict_folder(
    model: nn.Module,
    images_dir: Path,
    transform: Callable[..., dict[str, Any]],
    *,
    in_channels: int,
    device: str | torch.device = "cpu",
    tta: Tta = NO_TTA,
    resized: tuple[int, int] | None = None,
    batch_size: int = 16,
    with_empty: bool = False,
    window: SlidingWindow | None = None,
) -> Iterator[tuple[Any, ...]]:
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
        batch_size: Most images per forward pass (with ``window``, one image at a time, its crops in
            batches of the window's ``crops_per_batch``).
        with_empty: Also yield the empty-image head's probability (None for a model without one).
        window: Predict each image in overlapping crops (:class:`~lovaszseg.windowing.SlidingWindow`).

    Yields:
        ``(path, image, probabilities)``: the image file, the image as read (uint8 ``[H, W]`` or
        ``[H, W, 3]``) and the class probabilities ``[C, H, W]`` cropped back to its size; with
        ``with_empty``, then the head's probability that the image has foreground (a float or None).

    Raises:
        DataError: no images in the folder, or an unreadable image.
        ConfigError: an image whose (padded) size the model cannot take; the message names the file.
    """
    model.eval().to(device)
    paths = list_stems(Path(images_dir))
    if not paths:
        raise DataError(f"no images (png, jpg, ...) in {images_dir}")
    pending: list[tuple[Path, np.ndarray, Tensor]] = []
    per_pass = images_per_pass(window, batch_size)

    def flush() -> Iterator[tuple[Any, ...]]:
        batch = torch.stack([tensor for _, _, tensor in pending]).to(device)
        predicted = predict_outputs(model, batch, tta, window=window)
        probs, empty = predicted.masks, predicted.empty
        heads = [None] * len(pending) if empty is None else empty.cpu().tolist()
        for (path, image, _), prob, head in zip(pending, probs.cpu(), heads, strict=True):
            cropped = crop_to_original(prob, image.shape[:2], resized=resized).numpy()
            yield (path, image, cropped, head) if with_empty else (path, image, cropped)
        pending.clear()

    for path in paths.values():
        image = read_image(path, channels=in_channels)
        tensor = transform(image=image)["image"]
        if not pending or pending[-1][2].shape != tensor.shape:
            what = f"image {path} ({image.shape[0]}x{image.shape[1]} as read)"
            size = (tensor.shape[-2], tensor.shape[-1])
            if window is not None:
                size, what = window.crop_size(size), f"{window.describe()} of {what}"
            check_input_size(model, *size, what)
        if pending and (len(pending) == per_pass or pending[-1][2].shape != tensor.shape):
            yield from flush()
        pending.append((path, image, tensor))
    yield from flush()
