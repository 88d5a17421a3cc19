"""Pascal VOC 2012 segmentation: palette masks (class ids 0-20, 255 = void), splits, colour map.

ROOT may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOCdevkit/VOC2012``. Masks are
read as palette indices, never through RGB, so the stored index is the class id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from lovaszseg.data.io import (
    atomic_write,
    check_mask_values,
    check_same_size,
    read_image,
    read_lines,
    read_mask,
    require_dir,
)
from lovaszseg.data.registry import own_options, register_dataset
from lovaszseg.data.spec import DatasetSpec
from lovaszseg.data.transforms import VOC_IGNORE_INDEX, voc_transforms
from lovaszseg.errors import ConfigError, DataError

__all__ = [
    "VOC_CLASSES",
    "VOC_COLORMAP",
    "VOC_IGNORE_INDEX",
    "VOCSegmentation",
    "binary_view",
    "colorize",
    "read_split",
    "read_voc_mask",
    "resolve_voc_root",
    "save_palette_png",
]

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
OFFICIAL_SPLITS = ("train", "val", "trainval")
_ALLOWED_VALUES = frozenset(range(len(VOC_CLASSES))) | {VOC_IGNORE_INDEX}


def _bit_colormap() -> np.ndarray:
    """The VOC devkit colour map: bits 0/1/2 of each 3-bit group of the index go to R/G/B, high bit first."""
    index = np.arange(256)
    cmap = np.zeros((256, 3), dtype=np.uint8)
    for group in range(8):
        for channel in range(3):
            cmap[:, channel] |= (((index >> (3 * group + channel)) & 1) << (7 - group)).astype(np.uint8)
    return cmap


VOC_COLORMAP: np.ndarray = _bit_colormap()
VOC_COLORMAP.setflags(write=False)


def resolve_voc_root(root: str | Path) -> Path:
    """Find the ``VOC2012`` folder from ROOT, ``ROOT/VOCdevkit`` or ``ROOT/VOCdevkit/VOC2012``.

    Args:
        root: A folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or the ``VOC2012`` folder.

    Returns:
        The folder holding ``ImageSets``/``JPEGImages``/``SegmentationClass``.

    Raises:
        DataError: none of the candidates is such a folder.
    """
    root = Path(root)
    candidates = (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root)
    for candidate in candidates:
        if any((candidate / name).is_dir() for name in ("ImageSets", "JPEGImages", "SegmentationClass")):
            return candidate
    raise DataError(
        f"no Pascal VOC 2012 folder (with ImageSets/, JPEGImages/ or SegmentationClass/) at any of "
        f"{', '.join(str(c) for c in candidates)}"
    )


def read_split(voc_dir: Path, split: str | Path) -> list[str]:
    """Read the ids of a split.

    Args:
        voc_dir: The ``VOC2012`` folder (see ``resolve_voc_root``).
        split: ``"train"``, ``"val"``, ``"trainval"``, another name with a file
            ``ImageSets/Segmentation/NAME.txt`` (e.g. ``"train_aug"``), or a path to a ``.txt`` file.
            Each line's first field is an id or a path whose stem is the id (SBD ``train_aug.txt`` style).

    Returns:
        Ids in file order.

    Raises:
        ConfigError: unknown split name.
        DataError: the split file of an official split or a given path is missing or unreadable, or
            lists no ids.
    """
    split_dir = voc_dir / "ImageSets" / "Segmentation"
    as_path = Path(split)
    if isinstance(split, Path) or as_path.suffix == ".txt" or len(as_path.parts) > 1:
        path = as_path
    else:
        path = split_dir / f"{split}.txt"
        if not path.is_file() and split not in OFFICIAL_SPLITS:
            available = sorted(p.stem for p in split_dir.glob("*.txt")) if split_dir.is_dir() else []
            raise ConfigError(
                f"unknown VOC split {split!r}; expected one of {sorted(set(OFFICIAL_SPLITS) | set(available))} "
                "or a path to a .txt file"
            )
    lines = read_lines(path, "VOC split file")
    ids = [Path(line.split()[0]).stem for line in lines]
    if not ids:
        raise DataError(f"VOC split file {path} lists no ids")
    return ids


def read_voc_mask(path: Path) -> np.ndarray:
    """Read a VOC mask as class ids.

    Args:
        path: Palette PNG (``SegmentationClass``) or 8-bit grayscale PNG of ids (``SegmentationClassAug``).

    Returns:
        uint8 ``[H, W]`` with values in ``0..20`` and 255 (void).

    Raises:
        DataError: missing, unreadable, colour (RGB) mask, or values outside ``{0..20, 255}``.
    """
    mask = read_mask(path)
    check_mask_values(mask, _ALLOWED_VALUES, path)
    return mask.astype(np.uint8, copy=False)


def binary_view(mask: np.ndarray, ignore_index: int = VOC_IGNORE_INDEX) -> np.ndarray:
    """Foreground/background view of a class-id mask: every object class -> 1, background 0, void kept.

    Args:
        mask: Class ids ``[H, W]``.
        ignore_index: Void value, left unchanged.

    Returns:
        uint8 mask ``[H, W]`` with values 0, 1 and ``ignore_index``.
    """
    return np.where(mask == ignore_index, ignore_index, mask > 0).astype(np.uint8)


def colorize(mask: np.ndarray) -> Image.Image:
    """Palette image of a class-id mask with the VOC colour map (what ``SegmentationClass`` stores).

    Args:
        mask: Integer ``[H, W]`` with values in ``0..255``.

    Returns:
        PIL image in mode ``"P"`` whose indices are the mask values.

    Raises:
        TypeError: ``mask`` is not an integer array.
        ValueError: ``mask`` is not 2-D or has values outside ``0..255``.
    """
    mask = np.asarray(mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise TypeError(f"mask must be an integer array, got dtype {mask.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must be in 0..255, got {mask.min()}..{mask.max()}")
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(VOC_COLORMAP.tobytes())
    return image


def save_palette_png(mask: np.ndarray, path: str | Path) -> None:
    """Save a class-id mask as a VOC-style palette PNG (atomically).

    Args:
        mask: Integer ``[H, W]`` with values in ``0..255``.
        path: Destination ``.png``; parent folders are created.
    """
    image = colorize(mask)
    with atomic_write(Path(path), "wb") as handle:
        image.save(handle, format="PNG")


# Decorators apply bottom-up: ``voc`` registers first.
@register_dataset("voc_binary", transforms=voc_transforms, fixed={"binary": True})
@register_dataset("voc", transforms=voc_transforms, fixed={"binary": False})
class VOCSegmentation(Dataset):
    """Pascal VOC 2012 samples: ``{"image": [3,H,W] float32, "mask": [H,W] int64, "id": str}``.

    Multi-class (21 classes) by default (``voc``); ``binary=True`` (``voc_binary``) gives the
    foreground/background view (``binary_view``) for the paper's binary Lovász-hinge setting. Void
    (255) is kept as the ignore index through every transform.

    Attributes:
        ids: Sample ids in split order.
        spec: What the dataset is (:meth:`describe`): 21 classes or binary, RGB, ignore index 255, no
            fixed original size (images differ in size).
    """

    @classmethod
    def describe(cls, options: Mapping[str, Any]) -> DatasetSpec:
        """The spec of ``voc`` (21 classes) or, with ``options["binary"]``, ``voc_binary``.

        Args:
            options: The resolved dataset and ``voc_transforms`` options.

        Returns:
            The :class:`DatasetSpec`.
        """
        binary = options["binary"]
        return DatasetSpec(
            name="voc_binary" if binary else "voc",
            task="binary" if binary else "multiclass",
            in_channels=3,
            num_classes=1 if binary else len(VOC_CLASSES),
            ignore_index=VOC_IGNORE_INDEX,
            original_size=None,
            resize=None,
            sample_keys=("image", "mask", "id"),
            class_names=None if binary else VOC_CLASSES,
            labelled_split="trainval",
            # Photographs have an up and down; mmsegmentation's VOC test-time augmentation is flip + scales.
            valid_tta=("hflip", "scale"),
        )

    def __init__(
        self,
        root: str | Path,
        split: str | Path = "train",
        *,
        binary: bool = False,
        mask_dir: str | Path = "SegmentationClass",
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        """Index the split and check that every image and mask file exists.

        Args:
            root: See ``resolve_voc_root``.
            split: See ``read_split``.
            binary: Foreground/background view instead of 21 classes.
            mask_dir: Mask folder, relative to ``VOC2012`` (e.g. ``"SegmentationClassAug"`` for SBD) or absolute.
            transform: Albumentations pipeline producing tensors; default ``voc_transforms(train=False)``.

        Raises:
            ConfigError: unknown split.
            DataError: missing folder, split file, image or mask, or an empty split.
        """
        self.voc_dir = resolve_voc_root(root)
        self.ids = read_split(self.voc_dir, split)
        self.binary = binary
        self.spec = self.describe(own_options(voc_transforms, binary=binary, mask_dir=mask_dir))
        self.transform = transform if transform is not None else voc_transforms(train=False)
        self.image_dir = require_dir(self.voc_dir / "JPEGImages", "VOC image")
        self.mask_dir = require_dir(self.voc_dir / mask_dir, "VOC mask")
        for folder, suffix, what in ((self.image_dir, ".jpg", "images"), (self.mask_dir, ".png", "masks")):
            present = {p.name for p in folder.iterdir()}
            if missing := [i for i in self.ids if f"{i}{suffix}" not in present]:
                raise DataError(
                    f"{len(missing)} {what} of split {split!r} missing in {folder}, e.g. "
                    + ", ".join(f"{i}{suffix}" for i in missing[:5])
                )

    def fold_key(self, sample_id: str) -> float:
        """What cross-validation folds are stratified by: nothing (a seeded random split)."""
        return 0.0

    def has_foreground(self, sample_id: str) -> bool:
        """Whether the id's mask has an object pixel (a class other than background, not void)."""
        mask = read_voc_mask(self.mask_dir / f"{sample_id}.png")
        return bool(((mask > 0) & (mask != VOC_IGNORE_INDEX)).any())

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        image_path, mask_path = self.image_dir / f"{sample_id}.jpg", self.mask_dir / f"{sample_id}.png"
        image = read_image(image_path, channels=3)
        mask = read_voc_mask(mask_path)
        check_same_size(image, mask, image_path, mask_path)
        if self.binary:
            mask = binary_view(mask)
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": out["mask"].long(), "id": sample_id}
