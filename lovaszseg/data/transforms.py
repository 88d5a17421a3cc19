"""Albumentations 2.0.8 presets for TGS Salt, Pascal VOC and image folders, and undoing their padding.

Every preset is an ``A.Compose(..., strict=True)`` whose transforms are built with ``strict=True``, so a
misspelt argument or an unexpected input key raises ``ValueError`` instead of a warning. A preset option
out of range (they come from a config's ``data.options``) raises ``ConfigError`` naming it.
``ToTensorV2`` takes no ``strict`` argument; the strict ``Compose`` still validates it. Presets take
``image`` (uint8 ``[H, W]`` or ``[H, W, 3]``) and optionally ``mask`` (integer ``[H, W]``) and return an
image tensor ``[C, H, W]`` (float32, normalised) and a mask tensor ``[H, W]`` (the mask's own dtype).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2

from lovaszseg.errors import ConfigError

__all__ = [
    "GRAY_MEAN",
    "GRAY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TGS_MEAN",
    "TGS_SIZE",
    "TGS_STD",
    "VOC_IGNORE_INDEX",
    "crop_to_original",
    "folder_transforms",
    "tgs_transforms",
    "voc_transforms",
]

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
# Grayscale defaults: the average of the ImageNet channel statistics.
GRAY_MEAN: tuple[float, ...] = (0.449,)
GRAY_STD: tuple[float, ...] = (0.226,)
# Pixel mean/std of the 3000 TGS Salt training images in ../shared (values / 255).
TGS_MEAN: tuple[float, ...] = (0.473,)
TGS_STD: tuple[float, ...] = (0.161,)
TGS_SIZE = 101  # the side of every TGS Salt image and mask, defined here once
VOC_IGNORE_INDEX = 255


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(name: str, values: Sequence[float], count: int) -> tuple[float, ...]:
    """``values`` as ``count`` floats, or a ConfigError naming the option."""
    items = None if isinstance(values, str) or not isinstance(values, Iterable) else tuple(values)
    if items is None or len(items) != count or not all(map(_is_number, items)):
        raise ConfigError(f"{name} must be {count} number(s), got {values!r}")
    return tuple(float(v) for v in items)


def _stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Check that mean/std have one number per channel and std is positive."""
    mean_t, std_t = _numbers("mean", mean, channels), _numbers("std", std, channels)
    if any(s <= 0 for s in std_t):
        raise ConfigError(f"std must be positive, got {std_t}")
    return mean_t, std_t


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _in_range(name: str, value: float, low: float, high: float, *, high_inclusive: bool = True) -> float:
    """``value`` if it is a number in ``[low, high]`` (or ``[low, high)``), else a ConfigError naming it."""
    if not (_is_number(value) and low <= value and (value <= high if high_inclusive else value < high)):
        bracket = "]" if high_inclusive else ")"
        raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}{bracket}, got {value!r}")
    return value


def _probability(name: str, value: float) -> float:
    return _in_range(name, value, 0.0, 1.0)


def _finish(steps: list[A.BasicTransform], mean: tuple[float, ...], std: tuple[float, ...]) -> A.Compose:
    """Append normalisation and tensor conversion and compose strictly."""
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0, strict=True), ToTensorV2()]
    return A.Compose(steps, strict=True)


def tgs_transforms(
    *,
    train: bool,
    pad_size: int = 128,
    resize: int | None = None,
    hflip: float = 0.5,
    shift: float = 0.0,
    brightness: float = 0.0,
    mean: Sequence[float] = TGS_MEAN,
    std: Sequence[float] = TGS_STD,
) -> A.Compose:
    """TGS Salt preset: optional resize, light augmentation (training only), centre reflect-padding.

    Reflect padding (``cv2.BORDER_REFLECT_101``) is applied to image and mask alike, so the padded
    border continues the geology instead of adding a flat frame. Undo it with
    ``crop_to_original(x, (101, 101), resized=(resize, resize) if resize else None)``.

    Args:
        train: Add augmentation (horizontal flip, optional shift and brightness).
        pad_size: Square size after padding (e.g. 128 or 256); at least ``resize`` or 101.
        resize: Square size to resize the 101x101 image to first (e.g. 202), or None.
        hflip: Probability of a horizontal flip (training).
        shift: Largest shift as a fraction of the size, applied with probability 0.5 (training; 0 = off).
        brightness: Largest brightness change, applied with probability 0.5 (training; 0 = off).
        mean: Grayscale mean (one value, in [0, 1] units).
        std: Grayscale standard deviation (one value).

    Returns:
        A strict ``A.Compose`` producing ``image`` ``[1, pad_size, pad_size]`` and ``mask`` ``[pad_size, pad_size]``.

    Raises:
        ConfigError: a size is not a positive integer, ``pad_size`` is too small, or a limit is out of range.
    """
    content = _positive("resize", resize) if resize is not None else TGS_SIZE
    if _positive("pad_size", pad_size) < content:
        raise ConfigError(f"pad_size {pad_size} is smaller than the image size {content} it must contain")
    _in_range("shift", shift, 0.0, 0.5, high_inclusive=False)
    _in_range("brightness", brightness, 0.0, 1.0)
    stats = _stats(mean, std, 1)
    steps: list[A.BasicTransform] = []
    if resize is not None:
        steps.append(A.Resize(height=resize, width=resize, interpolation=cv2.INTER_LINEAR, strict=True))
    if train:
        steps.append(A.HorizontalFlip(p=_probability("hflip", hflip), strict=True))
        if shift > 0:
            steps.append(
                A.Affine(translate_percent=(-shift, shift), border_mode=cv2.BORDER_REFLECT_101, p=0.5, strict=True)
            )
        if brightness > 0:
            steps.append(
                A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=0.0, p=0.5, strict=True)
            )
    steps.append(
        A.PadIfNeeded(
            min_height=pad_size,
            min_width=pad_size,
            position="center",
            border_mode=cv2.BORDER_REFLECT_101,
            strict=True,
        )
    )
    return _finish(steps, *stats)


def _pad_to_multiple(divisor: int, **border: Any) -> A.PadIfNeeded:
    """Centre-pad both sides up to a multiple of ``divisor`` (the model's output stride)."""
    return A.PadIfNeeded(
        min_height=None,
        min_width=None,
        pad_height_divisor=divisor,
        pad_width_divisor=divisor,
        position="center",
        strict=True,
        **border,
    )


def _voc_train_steps(
    crop_size: int, scale_range: Sequence[float], hflip: float, fill: tuple[int, ...] | int
) -> list[A.BasicTransform]:
    """Random scale, pad to the crop (mask with void), random crop, flip."""
    low, high = _numbers("scale_range", scale_range, 2)
    if not 0 < low <= high:
        raise ConfigError(f"scale_range must be (low, high) with 0 < low <= high, got {tuple(scale_range)}")
    size = _positive("crop_size", crop_size)
    return [
        # RandomScale samples 1 + limit, so (low - 1, high - 1) gives factors in [low, high].
        A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0, strict=True),
        A.PadIfNeeded(
            min_height=size,
            min_width=size,
            border_mode=cv2.BORDER_CONSTANT,
            fill=fill,
            fill_mask=VOC_IGNORE_INDEX,
            strict=True,
        ),
        A.RandomCrop(height=size, width=size, strict=True),
        A.HorizontalFlip(p=_probability("hflip", hflip), strict=True),
    ]


def _voc_eval_steps(
    eval_mode: str, eval_size: int, size_divisor: int, fill: tuple[int, ...] | int
) -> list[A.BasicTransform]:
    """Centre-pad to a multiple of ``size_divisor`` (mask with void), or resize to ``eval_size``."""
    if eval_mode == "pad":
        divisor = _positive("size_divisor", size_divisor)
        return [_pad_to_multiple(divisor, border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=VOC_IGNORE_INDEX)]
    if eval_mode == "resize":
        size = _positive("eval_size", eval_size)
        return [A.Resize(height=size, width=size, interpolation=cv2.INTER_LINEAR, strict=True)]
    raise ConfigError(f"eval_mode must be 'pad' or 'resize', got {eval_mode!r}")


def voc_transforms(
    *,
    train: bool,
    crop_size: int = 320,
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    image_fill: Literal["mean", "zero"] = "mean",
    eval_mode: Literal["pad", "resize"] = "pad",
    eval_size: int = 512,
    size_divisor: int = 32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Pascal VOC preset. Padded mask pixels always get the void value 255, never background.

    Training: random scale in ``scale_range``, pad to ``crop_size`` (image with the mean colour or 0,
    mask with 255), random ``crop_size`` crop, horizontal flip. Evaluation: either centre-pad
    to a multiple of ``size_divisor`` (``eval_mode="pad"``; the whole image is scored and padding is
    ignored) or resize to ``eval_size`` squared (``eval_mode="resize"``; masks resized with nearest).

    Args:
        train: Training (random) or evaluation (deterministic) preset.
        crop_size: Square training crop, e.g. 320 or 512 (a multiple of the model output stride).
        scale_range: ``(low, high)`` random scale factors (training).
        hflip: Probability of a horizontal flip (training).
        image_fill: Image padding colour: ``"mean"`` (the mean colour, which normalises to 0) or ``"zero"``.
        eval_mode: ``"pad"`` or ``"resize"`` (evaluation).
        eval_size: Square size for ``eval_mode="resize"``.
        size_divisor: Padded height and width are multiples of this (``eval_mode="pad"``).
        mean: RGB mean (three values in [0, 1] units).
        std: RGB standard deviation.

    Returns:
        A strict ``A.Compose`` producing ``image`` ``[3, H, W]`` and ``mask`` ``[H, W]``.

    Raises:
        ConfigError: an option is out of range or unknown.
    """
    stats = _stats(mean, std, 3)
    if image_fill not in ("mean", "zero"):
        raise ConfigError(f"image_fill must be 'mean' or 'zero', got {image_fill!r}")
    fill = tuple(round(m * 255) for m in stats[0]) if image_fill == "mean" else 0
    if train:
        steps = _voc_train_steps(crop_size, scale_range, hflip, fill)
    else:
        steps = _voc_eval_steps(eval_mode, eval_size, size_divisor, fill)
    return _finish(steps, *stats)


def folder_transforms(
    *,
    train: bool,
    in_channels: int = 3,
    size: int | None = None,
    size_divisor: int = 32,
    hflip: float = 0.5,
    ignore_index: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> A.Compose:
    """Preset for image/mask folders: optional square resize, flip (training), centre pad to a multiple.

    Padding fills the mask with ``ignore_index`` when there is one (and the image with 0); without an
    ignore value both are reflect-padded, so no pixel gets an invented label. Images of different sizes
    only batch together when ``size`` is set.

    Args:
        train: Add a random horizontal flip.
        in_channels: 1 (grayscale) or 3 (RGB); picks the default mean/std.
        size: Square size to resize to, or None to keep the size.
        size_divisor: Padded height and width are multiples of this.
        hflip: Probability of a horizontal flip (training).
        ignore_index: Mask padding value, or None for reflect padding.
        mean: Per-channel mean in [0, 1] units (default ImageNet, or its average for grayscale).
        std: Per-channel standard deviation (default likewise).

    Returns:
        A strict ``A.Compose`` producing ``image`` ``[in_channels, H, W]`` and ``mask`` ``[H, W]``.

    Raises:
        ConfigError: an option is out of range.
    """
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 or 3, got {in_channels!r}")
    default_mean, default_std = (GRAY_MEAN, GRAY_STD) if in_channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    stats = _stats(default_mean if mean is None else mean, default_std if std is None else std, in_channels)
    steps: list[A.BasicTransform] = []
    if size is not None:
        side = _positive("size", size)
        steps.append(A.Resize(height=side, width=side, interpolation=cv2.INTER_LINEAR, strict=True))
    if train:
        steps.append(A.HorizontalFlip(p=_probability("hflip", hflip), strict=True))
    divisor = _positive("size_divisor", size_divisor)
    border = {"border_mode": cv2.BORDER_REFLECT_101}
    if ignore_index is not None:
        border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": ignore_index}
    steps.append(_pad_to_multiple(divisor, **border))
    return _finish(steps, *stats)


def crop_to_original(
    x: torch.Tensor,
    original_size: tuple[int, int],
    *,
    resized: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Undo a preset's centre padding (and resize) on predictions or masks.

    Albumentations' ``PadIfNeeded(position="center")`` puts ``(padded - size) // 2`` rows on top and
    the rest at the bottom (101 -> 128: 13 above, 14 below), and likewise left/right; this crops that
    window back out. With ``resized``, the window is ``resized`` and is then resized to
    ``original_size``: bilinear for floating tensors (probabilities, logits), nearest for integer ones
    (labels).

    Args:
        x: Tensor ``[..., H, W]`` (at least 2-D).
        original_size: ``(height, width)`` of the original image, e.g. ``(101, 101)``.
        resized: ``(height, width)`` the image was resized to before padding, or None.

    Returns:
        Tensor ``[..., original_height, original_width]`` with ``x``'s dtype.

    Shape:
        ``[..., H, W] -> [..., h, w]`` with ``(h, w) = original_size``.

    Raises:
        ValueError: ``x`` has fewer than 2 dimensions or is smaller than the window to crop.
    """
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions [..., H, W], got shape {tuple(x.shape)}")
    window = resized if resized is not None else original_size
    height, width = x.shape[-2:]
    if height < window[0] or width < window[1]:
        raise ValueError(f"x is {height}x{width}, smaller than the {window[0]}x{window[1]} window to crop back")
    top, left = (height - window[0]) // 2, (width - window[1]) // 2
    x = x[..., top : top + window[0], left : left + window[1]]
    if tuple(window) == tuple(original_size):
        return x
    flat = x.reshape(-1, 1, window[0], window[1])
    if flat.is_floating_point():
        out = F.interpolate(flat, size=tuple(original_size), mode="bilinear", align_corners=False)
    else:
        out = F.interpolate(flat.float(), size=tuple(original_size), mode="nearest").to(x.dtype)
    return out.reshape(*x.shape[:-2], *original_size)
