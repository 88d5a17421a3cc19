"""Run-length encoding of binary masks in the Kaggle TGS Salt convention.

Pixels are numbered from 1 in column-major order (top to bottom, then left to right); a mask is written
as space-separated ``start length`` pairs, and an empty mask as the empty string.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from lovaszseg.errors import DataError

__all__ = ["decode", "encode", "read_rle_csv", "validate_rles"]

_MAX_REPORTED = 5  # offending ids listed in an error message
_INTEGERS = re.compile(r"\s*[+-]?[0-9]+(?:\s+[+-]?[0-9]+)*\s*")


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """Return ``shape`` as a pair of Python ints, or raise if it is not two positive integers."""
    if (
        not isinstance(shape, tuple | list)
        or len(shape) != 2
        or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise ValueError(f"shape must be two positive integers (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _is_empty(rle: str | float | None) -> bool:
    """Whether ``rle`` stands for an empty mask: ``None``, NaN (pandas' empty cell) or blank text."""
    if rle is None:
        return True
    if isinstance(rle, float):
        if math.isnan(rle):
            return True
        raise TypeError(f"RLE must be a string, None or NaN, got the float {rle!r}")
    if not isinstance(rle, str):
        raise TypeError(f"RLE must be a string, None or NaN, got {type(rle).__name__}")
    return not rle.strip()


def _parse_runs(rle: str | float | None, num_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string.

    Args:
        rle: ``start length`` pairs, or an empty value.
        num_pixels: Number of pixels of the image the runs must fit in.

    Returns:
        0-based run starts and run lengths (int64), sorted and non-overlapping.

    Raises:
        ValueError: On a non-integer token, an odd number of tokens, a non-positive start or length,
            unsorted or overlapping runs, or a run past the last pixel.
    """
    if _is_empty(rle):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if not _INTEGERS.fullmatch(rle):  # type: ignore[arg-type]  # not empty, so a str
        bad = next(tok for tok in rle.split() if not _INTEGERS.fullmatch(tok))  # type: ignore[union-attr]
        raise ValueError(f"RLE token {bad!r} is not an integer")
    tokens = rle.split()  # type: ignore[union-attr]
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of tokens ({len(tokens)}); expected 'start length' pairs")
    try:
        values = np.array(tokens, dtype=np.int64).reshape(-1, 2)
    except OverflowError:
        raise ValueError(f"RLE has a token beyond int64 range; the image has only {num_pixels} pixels") from None
    starts, lengths = values[:, 0], values[:, 1]
    for name, column in (("start (1-indexed)", starts), ("run length", lengths)):
        if (column < 1).any():
            raise ValueError(f"RLE {name} {column[column < 1][0]} is not positive")
    # Bounding both first keeps start + length far from int64 overflow.
    past = (starts > num_pixels) | (lengths > num_pixels)
    past[~past] = starts[~past] + lengths[~past] - 1 > num_pixels
    if past.any():
        i = int(np.flatnonzero(past)[0])
        raise ValueError(f"RLE run '{starts[i]} {lengths[i]}' goes past the image's last pixel {num_pixels}")
    ends = starts + lengths  # 1-based, exclusive
    clash = starts[1:] < ends[:-1]
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        problem = "unsorted" if starts[i + 1] < starts[i] else "overlapping"
        raise ValueError(
            f"RLE runs are {problem}: '{starts[i]} {lengths[i]}' is followed by '{starts[i + 1]} {lengths[i + 1]}'"
        )
    return starts - 1, lengths


def encode(mask: np.ndarray) -> str:
    """Run-length encode a binary mask.

    Args:
        mask: Boolean or 0/1 integer mask.

    Returns:
        Space-separated 1-indexed ``start length`` pairs in column-major order; ``""`` for an empty mask.

    Raises:
        TypeError: If ``mask`` is not a boolean or integer array.
        ValueError: If ``mask`` is not 2-D or holds values other than 0 and 1.

    Shape:
        mask: ``[H, W]``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer):
            raise TypeError(f"mask must be boolean or integer 0/1, got dtype {mask.dtype}")
        odd = (mask != 0) & (mask != 1)
        if odd.any():
            raise ValueError(f"mask must hold only 0 and 1, found {mask[odd][0]}")
    flat = np.zeros(mask.size + 2, dtype=np.int8)
    flat[1:-1] = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat))  # alternate 0-based run starts and exclusive ends
    runs = edges.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    runs[:, 0] += 1
    return " ".join(map(str, runs.ravel().tolist()))


def decode(rle: str | float | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string into a binary mask.

    Args:
        rle: Space-separated 1-indexed ``start length`` pairs (column-major); ``""``, ``None`` or NaN for
            an empty mask.
        shape: ``(height, width)`` of the mask.

    Returns:
        uint8 mask of 0 and 1.

    Raises:
        ValueError: If ``shape`` is not two positive ints or ``rle`` is malformed (see :func:`validate_rles`).
        TypeError: If ``rle`` is neither a string, ``None`` nor NaN.

    Shape:
        Output: ``shape``.
    """
    height, width = _check_shape(shape)
    num_pixels = height * width
    starts, lengths = _parse_runs(rle, num_pixels)
    # +1 at each run start and -1 at each end; bincount sums where a run starts where the previous ends.
    steps = np.bincount(starts, minlength=num_pixels + 1) - np.bincount(starts + lengths, minlength=num_pixels + 1)
    flat = np.cumsum(steps[:num_pixels]).astype(np.uint8)
    return np.ascontiguousarray(flat.reshape((height, width), order="F"))


def read_rle_csv(path: str | Path) -> dict[str, str]:
    """Read an ``id,rle_mask`` CSV (TGS ``train.csv``, a sample submission or a submission) without pandas.

    Args:
        path: CSV file with a header holding the columns ``id`` and ``rle_mask``.

    Returns:
        ``{id: rle}`` in file order; empty cells become ``""``.

    Raises:
        DataError: If ``path`` is not a UTF-8 CSV file, a column is missing, a row is short, or an id is
            repeated or blank; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"RLE CSV {'is a folder, not a file' if path.is_dir() else 'not found'}: {path}")
    rows: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "rle_mask"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path}: header {reader.fieldnames} lacks column(s) {sorted(missing)}")
            for row in reader:
                image_id, rle = row["id"], row["rle_mask"]
                if image_id is None or rle is None:
                    raise DataError(f"{path}, line {reader.line_num}: expected the columns id and rle_mask")
                if not image_id.strip():
                    raise DataError(f"{path}, line {reader.line_num}: blank id")
                if image_id in rows:
                    raise DataError(f"{path}, line {reader.line_num}: id {image_id!r} is repeated")
                rows[image_id] = rle
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read RLE CSV {path}: {error}") from error
    return rows


def validate_rles(
    rows: Mapping[str, str | float | None],
    shape: tuple[int, int],
    expected_ids: Iterable[str] | None = None,
) -> None:
    """Check a set of RLE masks, e.g. a submission, before writing or scoring it.

    Every RLE must be well formed: integer tokens in pairs, positive starts and lengths, runs sorted and
    non-overlapping and inside a ``shape`` image. With ``expected_ids`` the ids must be exactly those
    (each once).

    Args:
        rows: ``{id: rle}``; empty values (``""``, ``None``, NaN) are empty masks.
        shape: ``(height, width)`` of every mask.
        expected_ids: The ids that must be present, no more and no fewer; ``None`` to skip this check.

    Raises:
        DataError: Listing the first offending ids and why (a ``ValueError``).
        ValueError: ``shape`` is not two positive integers, or ``expected_ids`` repeats an id.
    """
    height, width = _check_shape(shape)
    problems: list[str] = []
    for image_id, rle in rows.items():
        try:
            _parse_runs(rle, height * width)
        except (ValueError, TypeError) as error:
            problems.append(f"{image_id!r}: {error}")
    if expected_ids is not None:
        expected = list(expected_ids)
        repeated = sorted(i for i, n in Counter(expected).items() if n > 1)
        if repeated:
            raise ValueError(f"expected_ids repeats id(s) {repeated[:_MAX_REPORTED]}")
        wanted = set(expected)
        missing = [i for i in expected if i not in rows]
        extra = [i for i in rows if i not in wanted]
        if missing:
            problems.append(f"{len(missing)} missing id(s), first {missing[:_MAX_REPORTED]}")
        if extra:
            problems.append(f"{len(extra)} unexpected id(s), first {extra[:_MAX_REPORTED]}")
    if problems:
        shown = "; ".join(problems[:_MAX_REPORTED])
        more = f" (and {len(problems) - _MAX_REPORTED} more)" if len(problems) > _MAX_REPORTED else ""
        raise DataError(f"invalid RLE rows: {shown}{more}")
