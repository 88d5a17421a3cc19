"""Kaggle TGS Salt submissions: ``id,rle_mask`` rows, validated before the file is written."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

import numpy as np

from lovaszseg.data.io import atomic_write, make_folder
from lovaszseg.errors import ConfigError, DataError, OutputError
from lovaszseg.rle import encode, validate_rles

__all__ = ["write_submission"]


def write_submission(
    masks: Iterable[tuple[str, np.ndarray]],
    path: Path,
    *,
    shape: tuple[int, int],
    expected_ids: Iterable[str] | None = None,
) -> Path:
    """Write a Kaggle submission CSV (``id,rle_mask``), validated before anything is written.

    Masks are run-length encoded and checked as they come and spooled to a temporary file beside
    ``path`` (not in the system's temporary folder, which may be small or full), so memory holds only
    the ids, whatever the number of images and the length of their rows; the file is written
    (atomically, in ``expected_ids`` order when given) only once every row and id is checked.

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
        OutputError: ``path`` or the spool beside it cannot be written (e.g. a full disk); the message
            names ``path`` and the reason, and the previous file there is kept.
    """
    if path.is_dir():
        raise ConfigError(f"submission path {path} is a folder; name the CSV file to write")
    expected = list(expected_ids) if expected_ids is not None else None
    with _spool_beside(path) as spool:
        rows = _spool_rows(masks, spool, shape, path)
        try:
            validate_rles(dict.fromkeys(rows, ""), shape, expected)  # the ids; every row was checked as it came
        except ValueError as error:
            raise DataError(f"submission not written: {error}") from error
        with atomic_write(path, "w", newline="") as handle:
            csv.writer(handle).writerow(["id", "rle_mask"])
            for sample_id in expected if expected is not None else rows:
                handle.write(_spooled_row(spool, rows[sample_id], path))
    return path


def _spool_error(path: Path, error: OSError) -> OutputError:
    """One line naming the submission that cannot be written because its spool cannot be, and why."""
    return OutputError(f"cannot write {path}: {error.strerror or error}")


@contextmanager
def _spool_beside(path: Path) -> Iterator[IO[str]]:
    """A nameless temporary file in ``path``'s folder, which the system deletes when it is closed
    (whatever happens, even when the process is killed). Folders created for it are removed again
    when no submission is written.

    Raises:
        OutputError: the folder or the file cannot be created.
    """
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    make_folder(path.parent, "submission folder")
    try:
        spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="", dir=path.parent)  # noqa: SIM115 (closed below)
    except OSError as error:
        raise _spool_error(path, error) from error
    try:
        yield spool
    except BaseException:
        for folder in created:  # deepest first; a folder something else wrote into stays
            with suppress(OSError):
                folder.rmdir()
        raise
    finally:
        with suppress(OSError):  # rows its buffer could not flush (a full disk) are dropped with it
            spool.close()


def _spooled_row(spool: IO[str], offset: int, path: Path) -> str:
    """The spooled CSV row at ``offset`` (seeking flushes what the spool still buffers)."""
    try:
        spool.seek(offset)
        return spool.readline()
    except OSError as error:
        raise _spool_error(path, error) from error


def _spool_rows(
    masks: Iterable[tuple[str, np.ndarray]], spool: IO[str], shape: tuple[int, int], path: Path
) -> dict[str, int]:
    """Encode, check and append each mask's CSV row to ``spool``; return each id's row offset.

    Raises:
        OutputError: the spool cannot be written (an error of ``masks`` passes through unchanged).
    """
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
        try:
            offsets[sample_id] = spool.tell()  # telling flushes the buffered rows: a full disk shows here
            writer.writerow((sample_id, rle))
        except OSError as error:
            raise _spool_error(path, error) from error
    return offsets
