"""Synthetic datasets written in the exact real layouts (Kaggle TGS Salt, Pascal VOC 2012).

Nothing can be downloaded at run time, so the demo, the tests and a new user's first run use these
generators; the same readers, trainers and submission code then run on them as on the real files.
Everything is deterministic given the seed: each image draws from its own child of one SeedSequence.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from lovaszseg.data.transforms import TGS_SIZE
from lovaszseg.data.voc import save_palette_png
from lovaszseg.errors import ConfigError, DataError
from lovaszseg.rle import encode

__all__ = ["SALT_COVERAGE_BINS", "ensure_demo_salt", "synth_salt", "synth_voc"]

# Share of non-empty real TGS masks per salt-coverage decile (measured on the 3000 masks in ../shared):
# small bodies are common, the rest spread evenly. 39% of real masks are empty.
SALT_COVERAGE_BINS = np.array([0.235, 0.117, 0.093, 0.077, 0.094, 0.086, 0.070, 0.060, 0.058, 0.110])
SALT_EMPTY_FRACTION = 0.39
DEMO_VERSION = "synth-salt-v3"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise scaled to unit standard deviation."""
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return field / (field.std() + 1e-6)


def _salt_mask(rng: np.random.Generator, size: int, coverage: float) -> np.ndarray:
    """A smooth irregular body covering ``coverage`` of the image, usually attached to the top or bottom."""
    rows = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
    anchor = rng.choice(["top", "bottom", "inside"], p=[0.45, 0.35, 0.20])
    if anchor == "top":
        bias = 1.0 - rows
    elif anchor == "bottom":
        bias = rows
    else:
        centre = rng.uniform(0.3, 0.7, size=2)
        cols = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :]
        bias = 1.0 - np.hypot(rows - centre[0], cols - centre[1]) * 1.5
    field = rng.uniform(1.5, 3.0) * bias + _smooth_noise(rng, (size, size), rng.uniform(6, 14))
    # Threshold at the quantile that gives the drawn coverage exactly (up to ties).
    return field > np.quantile(field, 1.0 - coverage)


def _salt_image(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Seismic-like section: dipping, folded reflectors; salt has a dim, smooth interior and a bright rim.

    Several draws make the task hard on purpose: faint rims, reflector ghosts inside the salt,
    bright fault-like streaks away from any salt, blurry or noisy sections, weak layering.
    """
    size = mask.shape[0]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    warp = rng.uniform(1.5, 5.0) * _smooth_noise(rng, (size, size), rng.uniform(10, 18))
    fold = rng.uniform(0, 8) * np.sin(2 * np.pi * cols / rng.uniform(40, 160) + rng.uniform(0, 2 * np.pi))
    depth = rows + np.tan(rng.uniform(-0.6, 0.6)) * cols + fold + warp
    layers = sum(
        rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * depth / rng.uniform(4.0, 14.0) + rng.uniform(0, 2 * np.pi))
        for _ in range(3)
    )
    # Reflector strength fades laterally, and some sections are weakly layered (like salt interiors).
    layers *= np.clip(1.0 + rng.uniform(0.1, 0.5) * _smooth_noise(rng, (size, size), 15), 0.4, None)
    # Amplitudes below are relative to the sediment, so a section that is almost all salt stays dim.
    layers /= layers.std() + 1e-6
    interior = rng.uniform(0.1, 0.35) * _smooth_noise(rng, (size, size), rng.uniform(1.0, 3.0))
    # Ghost reflectors inside the salt on some sections (migration artefacts).
    interior += rng.choice([0.0, rng.uniform(0.05, 0.2)], p=[0.75, 0.25]) * layers
    image = np.where(mask, interior, layers)
    if mask.any() and not mask.all():
        rim = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(np.float32)
        # Bright along only part of the boundary, and faint on some sections.
        strength = np.clip(0.6 + 0.8 * _smooth_noise(rng, (size, size), 10), 0.0, 1.5)
        image += rng.uniform(0.3, 2.5) * cv2.GaussianBlur(rim * strength, (0, 0), rng.uniform(0.7, 1.5))
    for _ in range(rng.integers(0, 3)):
        # A bright, curved streak away from the salt that looks like a boundary.
        start = rng.uniform(0, size, 2)
        path = start + np.cumsum(rng.normal(0, 1.0, (40, 2)) + rng.normal(0, 2.5, 2), axis=0)
        streak = cv2.polylines(np.zeros((size, size), np.float32), [path.round().astype(np.int32)], False, 1.0, 1)
        image += rng.uniform(0.8, 2.5) * cv2.GaussianBlur(streak, (0, 0), 1.0) * ~mask
    image += rng.uniform(0.05, 0.35) * rng.standard_normal((size, size)).astype(np.float32)
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), rng.uniform(0.3, 1.2))
    return np.clip(rng.uniform(95, 145) + rng.uniform(20, 45) * (image - image.mean()), 0, 255).astype(np.uint8)


def _hex_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        candidate = f"{int(rng.integers(0, 16**10)):010x}"
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ids


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@contextmanager
def _fresh_tree(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Build into a temporary sibling folder and move it into place only when complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def synth_salt(
    out_dir: str | Path, n_train: int = 400, n_test: int = 100, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a synthetic TGS Salt dataset in the Kaggle layout.

    ``train/images/ID.png`` (101x101, RGB with equal channels), ``train/masks/ID.png`` (16-bit
    {0, 65535} when salt is present, 8-bit zeros otherwise, like the real files), ``train.csv`` (RLE),
    ``depths.csv`` (train and test ids), ``test/images/ID.png`` and ``sample_submission.csv``.
    About 39% of the masks are empty and the others follow the real coverage histogram.

    Args:
        out_dir: Folder to create (must be empty or absent unless ``overwrite``).
        n_train: Number of training images with masks.
        n_test: Number of test images.
        seed: Seed; the same seed gives byte-identical files.
        overwrite: Replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: ``n_train < 1`` or ``n_test < 0``.
        DataError: ``out_dir`` is not empty and ``overwrite`` is false.
    """
    if n_train < 1 or n_test < 0:
        raise ConfigError(f"n_train must be >= 1 and n_test >= 0, got {n_train} and {n_test}")
    out_dir = Path(out_dir)
    id_seed, *image_seeds = np.random.SeedSequence(seed).spawn(n_train + n_test + 1)
    ids = _hex_ids(np.random.default_rng(id_seed), n_train + n_test)
    with _fresh_tree(out_dir, overwrite) as tree:
        for folder in ("train/images", "train/masks", "test/images"):
            (tree / folder).mkdir(parents=True)
        rle_rows, depth_rows = [], []
        for index, (sample_id, child) in enumerate(zip(ids, image_seeds, strict=True)):
            rng = np.random.default_rng(child)
            depth = int(rng.integers(51, 960))
            # Deeper sections hold salt more often (as in the real data, weakly).
            has_salt = rng.random() < (1 - SALT_EMPTY_FRACTION) + 0.2 * (depth - 505) / 455
            if has_salt:
                decile = rng.choice(10, p=SALT_COVERAGE_BINS / SALT_COVERAGE_BINS.sum())
                coverage = min(1.0, (decile + rng.uniform(0.02, 1.0)) / 10)
                mask = _salt_mask(rng, TGS_SIZE, coverage)
            else:
                mask = np.zeros((TGS_SIZE, TGS_SIZE), dtype=bool)
            image = _salt_image(rng, mask)
            depth_rows.append([sample_id, depth])
            if index < n_train:
                _write_png(tree / "train/images" / f"{sample_id}.png", np.repeat(image[..., None], 3, axis=2))
                stored = mask.astype(np.uint16) * 65535 if mask.any() else mask.astype(np.uint8)
                _write_png(tree / "train/masks" / f"{sample_id}.png", stored)
                rle_rows.append([sample_id, encode(mask)])
            else:
                _write_png(tree / "test/images" / f"{sample_id}.png", np.repeat(image[..., None], 3, axis=2))
        _write_csv(tree / "train.csv", ["id", "rle_mask"], rle_rows)
        _write_csv(tree / "depths.csv", ["id", "z"], depth_rows)
        _write_csv(tree / "sample_submission.csv", ["id", "rle_mask"], [[i, "1 1"] for i in ids[n_train:]])
    return out_dir


def ensure_demo_salt(cache_dir: str | Path | None = None) -> Path:
    """The built-in demo dataset: synthetic salt generated on first use and cached.

    Args:
        cache_dir: Cache folder; default ``$LOVASZSEG_CACHE`` or ``~/.cache/lovaszseg``.

    Returns:
        The dataset root (Kaggle TGS layout).
    """
    cache = Path(cache_dir or os.environ.get("LOVASZSEG_CACHE") or Path.home() / ".cache" / "lovaszseg")
    root = cache / DEMO_VERSION
    if not (root / "sample_submission.csv").is_file():  # written last: a complete tree
        synth_salt(root, overwrite=True)
    return root


# Object classes of the synthetic VOC data: (class id, shape, base colour RGB, stripe period, angle).
_VOC_OBJECTS = (
    (1, "triangle", (200, 200, 210), 0, 0.0),  # aeroplane: plain light grey
    (3, "ellipse", (180, 120, 40), 6, 0.0),  # bird: horizontal stripes
    (7, "rectangle", (30, 60, 200), 10, 90.0),  # car: vertical stripes
    (8, "star", (230, 200, 30), 4, 45.0),  # cat: fine diagonal stripes
    (12, "cross", (150, 40, 40), 0, 0.0),  # horse: plain dark red
    (15, "ring", (240, 170, 150), 8, 135.0),  # person: diagonal stripes
)


def _shape_mask(rng: np.random.Generator, shape: str, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    radius = rng.uniform(0.12, 0.28) * min(height, width)
    cy, cx = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
    canvas = np.zeros(size, np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    if shape in ("triangle", "star"):
        points = 3 if shape == "triangle" else 10
        radii = np.full(points, radius) if shape == "triangle" else np.tile([radius, radius * 0.45], 5)
        theta = angle + np.arange(points) * 2 * np.pi / points
        polygon = np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], 1)
        cv2.fillPoly(canvas, [polygon.round().astype(np.int32)], 1)
    elif shape == "ellipse":
        axes = (int(radius), int(radius * rng.uniform(0.45, 0.8)))
        cv2.ellipse(canvas, (int(cx), int(cy)), axes, float(np.degrees(angle)), 0, 360, 1, -1)
    elif shape == "rectangle":
        half = (radius, radius * rng.uniform(0.4, 0.7))
        box = cv2.boxPoints(((cx, cy), (2 * half[0], 2 * half[1]), float(np.degrees(angle))))
        cv2.fillPoly(canvas, [box.round().astype(np.int32)], 1)
    elif shape == "cross":
        thickness = max(2, int(radius * 0.35))
        for theta in (angle, angle + np.pi / 2):
            dx, dy = radius * np.cos(theta), radius * np.sin(theta)
            cv2.line(canvas, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, thickness)
    else:  # ring
        cv2.circle(canvas, (int(cx), int(cy)), int(radius), 1, max(2, int(radius * 0.4)))
    return canvas.astype(bool)


def _texture(rng: np.random.Generator, size: tuple[int, int], colour: tuple[int, ...], period: int, angle: float):
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    pattern = np.ones(size, np.float32)
    if period:
        direction = np.radians(angle)
        pattern = 0.75 + 0.25 * np.sign(
            np.sin(2 * np.pi * (cols * np.cos(direction) + rows * np.sin(direction)) / period)
        )
    shade = rng.uniform(0.8, 1.15)
    return np.clip(np.asarray(colour, np.float32)[None, None] * (pattern * shade)[..., None], 0, 255)


def synth_voc(
    out_dir: str | Path,
    n_images: int = 60,
    seed: int = 0,
    size: tuple[int, int] = (160, 160),
    val_fraction: float = 0.25,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic Pascal VOC 2012 tree: ``VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets}``.

    Each image holds 1-3 objects of six classes (aeroplane, bird, car, cat, horse, person), each class
    with its own shape, colour and stripe texture, on a textured background; masks are palette PNGs
    with a void (255) band around every object, as in the real annotations.

    Args:
        out_dir: Folder to create (must be empty or absent unless ``overwrite``).
        n_images: Number of image/mask pairs.
        seed: Seed; the same seed gives identical files.
        size: ``(height, width)`` of every image.
        val_fraction: Share of the images in the ``val`` split (the rest is ``train``).
        overwrite: Replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir`` (the folder that holds ``VOCdevkit``).

    Raises:
        ConfigError: ``n_images < 2`` or ``val_fraction`` outside (0, 1).
        DataError: ``out_dir`` is not empty and ``overwrite`` is false.
    """
    if n_images < 2 or not 0 < val_fraction < 1:
        raise ConfigError(f"need n_images >= 2 and 0 < val_fraction < 1, got {n_images} and {val_fraction}")
    out_dir = Path(out_dir)
    children = np.random.SeedSequence(seed).spawn(n_images)
    names = [f"2007_{index:06d}" for index in range(n_images)]
    with _fresh_tree(out_dir, overwrite) as tree:
        voc = tree / "VOCdevkit" / "VOC2012"
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (voc / folder).mkdir(parents=True)
        for name, child in zip(names, children, strict=True):
            rng = np.random.default_rng(child)
            background = cv2.resize(rng.uniform(40, 160, (4, 4, 3)).astype(np.float32), size[::-1])
            image = background + rng.normal(0, 12, (*size, 3))
            mask = np.zeros(size, np.uint8)
            void = np.zeros(size, bool)
            for index in rng.choice(len(_VOC_OBJECTS), size=int(rng.integers(1, 4)), replace=False):
                class_id, shape, colour, period, angle = _VOC_OBJECTS[index]
                body = _shape_mask(rng, shape, size)
                image[body] = _texture(rng, size, colour, period, angle)[body] + rng.normal(0, 8, (int(body.sum()), 3))
                mask[body] = class_id
                band = cv2.morphologyEx(body.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8))
                void |= band.astype(bool)
            mask[void] = 255
            rgb = np.clip(image, 0, 255).astype(np.uint8)
            if not cv2.imwrite(str(voc / "JPEGImages" / f"{name}.jpg"), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92]):
                raise OSError(f"could not write {voc / 'JPEGImages' / f'{name}.jpg'}")
            save_palette_png(mask, voc / "SegmentationClass" / f"{name}.png")
        n_val = max(1, round(n_images * val_fraction))
        splits = {"train": names[n_val:], "val": names[:n_val], "trainval": names}
        for split, members in splits.items():
            (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{m}\n" for m in members))
    return out_dir
