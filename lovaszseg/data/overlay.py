"""Pictures of predictions: an image with its predicted classes blended in the VOC colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lovaszseg.data.io import atomic_write
from lovaszseg.data.voc import VOC_COLORMAP

__all__ = ["overlay", "save_overlay"]


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
