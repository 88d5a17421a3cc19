"""Reading images, masks and CSV tables with errors that name the file and what is wrong."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "atomic_write",
    "check_mask_values",
    "check_same_size",
    "list_stems",
    "read_csv_column",
    "read_csv_rows",
    "read_image",
    "read_mask",
    "require_dir",
    "require_file",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# 8-bit modes that convert losslessly (or by the usual luma/RGB rules) to "L" or "RGB"; 16-bit and float
# images are refused rather than silently clipped to 255 by PIL's conversion.
_IMAGE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
# Single-channel modes whose pixel values are the labels themselves (palette indices for "P").
_MASK_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16B", "I;16L"})


class DatasetError(ValueError):
    """A dataset file exists but its content is unusable (corrupt, wrong size, bad values, bad table)."""


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory.

    Args:
        path: Folder that must exist.
        what: What the folder is for, used in the error message.

    Returns:
        ``path`` unchanged.

    Raises:
        FileNotFoundError: ``path`` is not a directory.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file.

    Args:
        path: File that must exist.
        what: What the file is for, used in the error message.

    Returns:
        ``path`` unchanged.

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _open_decoded(path: Path) -> Image.Image:
    """Open and fully decode an image so truncated or corrupt files fail here, not later."""
    require_file(path, "image file")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot decode image {path}: {exc}") from exc
    return image


def read_image(path: Path, *, channels: int) -> np.ndarray:
    """Read an 8-bit image as grayscale or RGB.

    PIL is used rather than ``cv2.imread`` because OpenCV returns a partly grey picture for a
    truncated JPEG instead of failing. For an RGB file with equal channels (TGS Salt), grayscale
    conversion returns the channel exactly. EXIF orientation is not applied, so images stay aligned
    with their masks pixel for pixel.

    Args:
        path: Image file (PNG, JPEG, ...).
        channels: 1 for grayscale, 3 for RGB.

    Returns:
        uint8 array, ``[H, W]`` for ``channels=1`` and ``[H, W, 3]`` for ``channels=3``.

    Raises:
        ValueError: ``channels`` is not 1 or 3.
        FileNotFoundError: the file does not exist.
        DatasetError: the file cannot be decoded or is not an 8-bit image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    image = _open_decoded(path)
    if image.mode not in _IMAGE_MODES:
        raise DatasetError(f"image {path} has mode {image.mode!r}; expected an 8-bit grayscale or colour image")
    return np.asarray(image.convert("L" if channels == 1 else "RGB"))


def read_mask(path: Path) -> np.ndarray:
    """Read a single-channel label mask without any colour conversion.

    Palette ("P") PNGs give their palette indices, which are the class ids (Pascal VOC); 8-bit and
    16-bit grayscale give their values; 1-bit images give 0/1.

    Args:
        path: Mask file.

    Returns:
        Integer array ``[H, W]`` (uint8, uint16 or int32, as stored).

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: the file cannot be decoded or has several channels (e.g. an RGB colour mask).
    """
    image = _open_decoded(path)
    if image.mode not in _MASK_MODES:
        raise DatasetError(
            f"mask {path} has mode {image.mode!r}; expected a single-channel mask "
            "(palette, 8-bit or 16-bit grayscale), not colours"
        )
    mask = np.asarray(image)
    return mask.astype(np.uint8) if mask.dtype == np.bool_ else mask


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path | str) -> None:
    """Raise unless image and mask have the same height and width.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` array.
        mask: ``[H, W]`` array.
        image_path: Image file, for the message.
        mask_path: Mask file (or its source, e.g. a CSV row), for the message.

    Raises:
        DatasetError: the sizes differ.
    """
    if image.shape[:2] != mask.shape[:2]:
        raise DatasetError(
            f"image {image_path} is {image.shape[0]}x{image.shape[1]} (HxW) but its mask {mask_path} is "
            f"{mask.shape[0]}x{mask.shape[1]}"
        )


def check_mask_values(mask: np.ndarray, allowed: Iterable[int], path: Path | str) -> None:
    """Raise unless every mask value is in ``allowed``.

    Args:
        mask: Integer mask.
        allowed: Permitted values (class ids and the ignore value).
        path: Mask file, for the message.

    Raises:
        DatasetError: some values are not allowed; the message lists them.
    """
    allowed_set = set(allowed)
    # Counting is much faster than sorting (np.unique) for 8/16-bit masks, the usual case.
    small = mask.dtype in (np.uint8, np.uint16, np.bool_)
    present = np.flatnonzero(np.bincount(mask.ravel())) if small else np.unique(mask)
    bad = [int(v) for v in present if int(v) not in allowed_set]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise DatasetError(f"mask {path} has values {shown}; expected only {sorted(allowed_set)}")


def list_stems(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """Map file stem to file for the image files directly in ``folder``.

    Args:
        folder: Directory to list (must exist).
        extensions: Accepted suffixes, lower case with the dot; matching ignores case.

    Returns:
        ``{stem: path}`` sorted by stem.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        DatasetError: two files share a stem (e.g. ``a.png`` and ``a.jpg``).
    """
    require_dir(folder, "image")
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        if path.stem in found:
            raise DatasetError(
                f"ambiguous files for id {path.stem!r} in {folder}: {found[path.stem].name}, {path.name}"
            )
        found[path.stem] = path
    return dict(sorted(found.items()))


def read_csv_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Read a CSV file with a header that must contain ``columns``.

    Args:
        path: CSV file.
        columns: Required column names.

    Returns:
        One dict per data row (all columns of the file, values as strings).

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: the file is not a CSV with those columns, or a row is short.
    """
    require_file(path, "CSV file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(f"CSV {path} lacks column(s) {missing}; its header is {header}")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if any(row[c] is None for c in columns):
            raise DatasetError(f"CSV {path} line {line} has fewer fields than the header")
    return rows


def read_csv_column(path: Path, key: str, value: str) -> dict[str, str]:
    """Read two columns of a CSV file as a mapping.

    Args:
        path: CSV file.
        key: Column giving the keys (must be unique).
        value: Column giving the values.

    Returns:
        ``{row[key]: row[value]}`` in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: a column is missing or a key repeats.
    """
    table: dict[str, str] = {}
    for row in read_csv_rows(path, (key, value)):
        if row[key] in table:
            raise DatasetError(f"CSV {path} has {key} {row[key]!r} more than once")
        table[row[key]] = row[value]
    return table


@contextmanager
def atomic_write(path: Path, mode: str = "w", **open_kwargs: object) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it onto ``path`` only if the block succeeds.

    Args:
        path: Destination file; its folder is created if needed.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        **open_kwargs: Passed to ``open`` (e.g. ``newline=""``).

    Yields:
        The open temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
