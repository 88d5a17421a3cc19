"""Reading images, masks and CSV tables with errors that name the file and what is wrong."""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lovaszseg.errors import DataError, OutputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "DatasetError",
    "atomic_write",
    "check_mask_values",
    "check_same_size",
    "check_writable",
    "list_stems",
    "make_folder",
    "read_csv_column",
    "read_csv_rows",
    "read_id_list",
    "read_image",
    "read_image_size",
    "read_lines",
    "read_mask",
    "remove_stale_temporaries",
    "require_dir",
    "require_file",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# 8-bit modes that convert losslessly (or by the usual luma/RGB rules) to "L" or "RGB"; 16-bit and float
# images are refused rather than silently clipped to 255 by PIL's conversion.
_IMAGE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
# Single-channel modes whose pixel values are the labels themselves (palette indices for "P").
_MASK_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16B", "I;16L"})

# check_mask_values compares with each allowed value when there are at most this many.
_FEW_VALUES = 4

# The former name of DataError, kept importable.
DatasetError = DataError

# atomic_write's temporary file beside the destination, and the pattern of its name. The random part
# uses tempfile.mkstemp's characters, which earlier versions used, so mkstemp's leftovers match too.
_TEMP_NAME = ".{name}.{random}.tmp"
_TEMP_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"
_TEMP_RANDOM_LENGTH = 8
_TEMP_PATTERN = re.compile(
    re.escape(_TEMP_NAME)
    .replace(re.escape("{name}"), ".+")
    .replace(re.escape("{random}"), f"[{_TEMP_ALPHABET}]{{{_TEMP_RANDOM_LENGTH}}}")
)


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory.

    Args:
        path: Folder that must exist.
        what: What the folder is for, used in the error message.

    Returns:
        ``path`` unchanged.

    Raises:
        DataError: ``path`` is not a directory.
    """
    if not path.is_dir():
        found = "is a file, not a folder" if path.exists() else "not found"
        raise DataError(f"{what} folder {found}: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file.

    Args:
        path: File that must exist.
        what: What the file is for, used in the error message.

    Returns:
        ``path`` unchanged.

    Raises:
        DataError: ``path`` is not a file.
    """
    if not path.is_file():
        found = "is a folder, not a file" if path.is_dir() else "not found"
        raise DataError(f"{what} {found}: {path}")
    return path


def _open_decoded(path: Path) -> Image.Image:
    """Open and fully decode an image so truncated or corrupt files fail here, not later."""
    require_file(path, "image file")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
    return image


def read_image_size(path: Path) -> tuple[int, int]:
    """Height and width of an image from its header, without decoding the pixels.

    Args:
        path: Image or mask file.

    Returns:
        ``(height, width)``; EXIF orientation is not applied, as in ``read_image``.

    Raises:
        DataError: the file does not exist or is not an image.
    """
    require_file(path, "image file")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read the size of image {path}: {exc}") from exc
    return height, width


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
        DataError: the file does not exist, cannot be decoded or is not an 8-bit image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    image = _open_decoded(path)
    if image.mode not in _IMAGE_MODES:
        raise DataError(f"image {path} has mode {image.mode!r}; expected an 8-bit grayscale or colour image")
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
        DataError: the file does not exist, cannot be decoded or has several channels (e.g. an RGB colour
            mask).
    """
    image = _open_decoded(path)
    if image.mode not in _MASK_MODES:
        raise DataError(
            f"mask {path} has mode {image.mode!r}; expected a single-channel mask "
            "(palette, 8-bit or 16-bit grayscale), not colours"
        )
    mask = np.asarray(image)
    return mask.astype(np.uint8) if mask.dtype == np.bool_ else mask


def _height_width(array_or_size: np.ndarray | tuple[int, int]) -> tuple[int, int]:
    height, width = array_or_size if isinstance(array_or_size, tuple) else array_or_size.shape[:2]
    return int(height), int(width)


def check_same_size(
    image: np.ndarray | tuple[int, int],
    mask: np.ndarray | tuple[int, int],
    image_path: Path,
    mask_path: Path | str,
) -> None:
    """Raise unless image and mask have the same height and width.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` array, or its ``(height, width)`` (e.g. from ``read_image_size``).
        mask: ``[H, W]`` array, or its ``(height, width)``.
        image_path: Image file, for the message.
        mask_path: Mask file (or its source, e.g. a CSV row), for the message.

    Raises:
        DataError: the sizes differ.
    """
    (image_h, image_w), (mask_h, mask_w) = _height_width(image), _height_width(mask)
    if (image_h, image_w) != (mask_h, mask_w):
        raise DataError(
            f"image {image_path} is {image_h}x{image_w} (HxW) but its mask {mask_path} is {mask_h}x{mask_w}"
        )


def _outside(mask: np.ndarray, allowed: set[int]) -> np.ndarray:
    """Boolean map of the pixels whose value is not allowed."""
    if len(allowed) > _FEW_VALUES:
        return ~np.isin(mask, np.fromiter(allowed, dtype=np.int64))
    outside = np.ones(mask.shape, dtype=bool)  # binary masks: a few comparisons beat a lookup table
    for value in allowed:
        outside &= mask != value
    return outside


def check_mask_values(mask: np.ndarray, allowed: Iterable[int], path: Path | str) -> None:
    """Raise unless every mask value is in ``allowed``.

    Args:
        mask: Integer mask.
        allowed: Permitted values (class ids and the ignore value).
        path: Mask file, for the message.

    Raises:
        DataError: some values are not allowed; the message lists them.
    """
    allowed_set = {int(v) for v in allowed}
    if mask.dtype in (np.uint8, np.bool_) and len(allowed_set) > _FEW_VALUES:
        # Counting into 256 bins beats sorting; wider types would need 65536 bins or more.
        bad = [int(v) for v in np.flatnonzero(np.bincount(mask.ravel())) if int(v) not in allowed_set]
    else:
        bad = np.unique(mask[_outside(mask, allowed_set)]).tolist()
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise DataError(f"mask {path} has values {shown}; expected only {sorted(allowed_set)}")


def list_stems(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """Map file stem to file for the image files directly in ``folder``.

    Args:
        folder: Directory to list (must exist).
        extensions: Accepted suffixes, lower case with the dot; matching ignores case.

    Returns:
        ``{stem: path}`` sorted by stem.

    Raises:
        DataError: ``folder`` is not a directory, or two files share a stem (e.g. ``a.png`` and ``a.jpg``).
    """
    require_dir(folder, "image")
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        if path.stem in found:
            raise DataError(f"ambiguous files for id {path.stem!r} in {folder}: {found[path.stem].name}, {path.name}")
        found[path.stem] = path
    return dict(sorted(found.items()))


def read_lines(path: Path, what: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file (e.g. a split file), stripped.

    Args:
        path: Text file.
        what: What the file is for, used in the error message.

    Returns:
        Stripped lines, blank ones left out.

    Raises:
        DataError: the file does not exist or is not UTF-8 text.
    """
    require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 text: {exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_id_list(path: Path, available: Mapping[str, Path], folder: Path) -> list[str]:
    """The ids a ``.txt`` split file lists (one per line), each of which must have an image.

    Args:
        path: The split file.
        available: ``{id: image path}`` of the dataset's images.
        folder: Where those images are, for the error message.

    Returns:
        The ids in file order.

    Raises:
        DataError: the file is missing, empty, lists an id twice, or lists ids without an image.
    """
    ids = read_lines(path, "split file")
    if not ids:
        raise DataError(f"split file {path} lists no ids")
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"split file {path} lists some ids more than once: {', '.join(repeated[:5])}")
    if unknown := [i for i in ids if i not in available]:
        raise DataError(f"split file {path} lists ids with no image in {folder}: {', '.join(unknown[:5])}")
    return ids


def read_csv_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Read a CSV file with a header that must contain ``columns``.

    Args:
        path: CSV file.
        columns: Required column names.

    Returns:
        One dict per data row (all columns of the file, values as strings).

    Raises:
        DataError: the file does not exist, is not UTF-8 CSV text with those columns, or a row is short.
    """
    require_file(path, "CSV file")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(f"CSV {path} lacks column(s) {missing}; its header is {header}")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV {path}: {exc}") from exc
    for line, row in enumerate(rows, start=2):
        if any(row[c] is None for c in columns):
            raise DataError(f"CSV {path} line {line} has fewer fields than the header")
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
        DataError: the file does not exist, a column is missing or a key repeats.
    """
    table: dict[str, str] = {}
    for row in read_csv_rows(path, (key, value)):
        if row[key] in table:
            raise DataError(f"CSV {path} has {key} {row[key]!r} more than once")
        table[row[key]] = row[value]
    return table


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create a new temporary file beside ``path``, open for writing, with the mode the umask gives."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        random_part = "".join(secrets.choice(_TEMP_ALPHABET) for _ in range(_TEMP_RANDOM_LENGTH))
        temporary = path.with_name(_TEMP_NAME.format(name=path.name, random=random_part))
        try:
            # 0o666 less the umask, as a plain open() gives (mkstemp would give 0o600).
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue


class _TemporaryFile(io.FileIO):
    """The raw file under ``atomic_write``'s handle: its own write and close failures name the destination.

    Every byte the handle writes, including what its buffers flush at ``flush`` and ``close``, goes
    through this ``write``; so a full disk becomes an ``OutputError`` for ``destination``, while an
    ``OSError`` from the caller's other files in the ``with`` block stays what it is.
    """

    def __init__(self, fd: int, destination: Path) -> None:
        super().__init__(fd, "wb", closefd=True)
        self.destination = destination

    def write(self, data: bytes) -> int | None:  # type: ignore[override]  # bytes-like, as FileIO takes
        try:
            return super().write(data)
        except OSError as error:
            raise _output_error(self.destination, error) from error

    def close(self) -> None:
        try:
            super().close()
        except OSError as error:  # e.g. a network file system that reports a full disk only here
            raise _output_error(self.destination, error) from error


def _open_temporary(fd: int, destination: Path, mode: str, open_kwargs: dict[str, Any]) -> IO:
    """The buffered (and, for ``"w"``, text) handle over ``fd``, as ``open`` would stack it; closes ``fd``
    when the handle cannot be made."""
    raw = _TemporaryFile(fd, destination)
    try:
        if mode == "wb" and not open_kwargs:
            return io.BufferedWriter(raw)
        if mode == "w":
            return io.TextIOWrapper(io.BufferedWriter(raw), **open_kwargs)
        raise ValueError(f"atomic_write takes mode 'w' (with text options) or 'wb', got {mode!r} with {open_kwargs}")
    except BaseException:
        raw.close()
        raise


@contextmanager
def atomic_write(path: Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it onto ``path`` only if the block succeeds.

    A new file gets the mode a plain ``open`` gives (``0o666`` less the umask); a replaced file keeps
    its mode. Whatever goes wrong, the previous file at ``path`` is kept and the temporary file removed;
    only a process killed inside the block leaves it behind (see ``remove_stale_temporaries``).

    The system errors of this function's own operations become ``OutputError``: creating the folder and
    the temporary file, the handle's writes (also those its buffers flush at ``flush`` or when the block
    ends), and the rename. Any other exception from the block, an ``OSError`` from reading or writing
    another file included, passes through unchanged: it is not the destination's fault. Bytes written
    to ``handle.fileno()`` directly bypass the handle and are not converted.

    Args:
        path: Destination file; its folder is created if needed.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        **open_kwargs: Text options of ``open`` (``encoding``, ``errors``, ``newline``; e.g. ``newline=""``).

    Yields:
        The open temporary file.

    Raises:
        OutputError: the folder or temporary file cannot be created, written (e.g. a full disk) or renamed
            onto ``path``; the message names ``path`` and the system's reason.
        ValueError: an unknown ``mode``, or text options with ``"wb"``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = _create_temporary(path)
    except OSError as error:
        raise _output_error(path, error, _folder_reason(path.parent)) from error
    try:
        handle = _open_temporary(fd, path, mode, open_kwargs)
        try:
            yield handle
        except BaseException:
            with suppress(OutputError):  # the temporary is dropped: bytes its buffers cannot flush do not matter
                handle.close()
            raise
        handle.close()
        _move_into_place(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _move_into_place(temporary: Path, path: Path) -> None:
    """Rename ``temporary`` onto ``path``, giving it the mode of the file it replaces."""
    try:
        if path.exists():  # a replaced file keeps its mode; a new one has the umask's
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        os.replace(temporary, path)
    except OSError as error:
        raise _output_error(path, error) from error


def _output_error(path: Path, error: OSError, reason: str | None = None) -> OutputError:
    """One line naming the file that cannot be written and why (``reason``, else the system's)."""
    return OutputError(f"cannot write {path}: {reason or error.strerror or error}")


def _folder_reason(folder: Path) -> str | None:
    """Why ``folder`` cannot be made or take new files, where the system's reason would mislead: a file in
    the way (it says "File exists") or a kernel file system ("No such file or directory"); None otherwise
    (a reason such as "Read-only file system" or "Permission denied" says it well)."""
    ancestor = _nearest_existing(folder)
    if not ancestor.is_dir():
        return f"{ancestor} is not a folder"
    if _is_pseudo_filesystem(ancestor):
        return f"{ancestor} is on a kernel file system that takes no new files"
    return None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def make_folder(path: Path, what: str) -> Path:
    """Create ``path`` (and its parents) if needed, or say in one line why it cannot be.

    Args:
        path: Folder to create.
        what: What it is, for the message (e.g. ``run folder``).

    Returns:
        ``path``.

    Raises:
        OutputError: a file is in the way, the path lies on a kernel file system (/proc, /sys), or the
            system refuses (no permission, a read-only file system); the message names ``path`` and why.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {what} {path}: {_folder_reason(path) or error.strerror or error}") from error
    return path


def check_writable(path: Path, what: str, *, folder: bool = False) -> None:
    """Refuse a destination that cannot be written before any expensive work is done for it.

    The nearest existing ancestor must be a folder this process may write into (``path`` itself when it
    is an existing folder to fill); nothing is created.

    Args:
        path: The file (or, with ``folder``, the folder) to be written.
        what: What it is, for the message (e.g. ``--out``).
        folder: ``path`` is a folder that files will be written into.

    Raises:
        OutputError: the path's parent is a file, lies on a kernel file system (/proc, /sys), or cannot be
            written, with the reason.
    """
    target = path if folder else path.parent
    reason = _folder_reason(target)
    if reason is None and not os.access(ancestor := _nearest_existing(target), os.W_OK | os.X_OK):
        reason = f"no permission to write in {ancestor}"
    if reason is not None:
        raise OutputError(f"cannot write {what} {path}: {reason}")


def _is_pseudo_filesystem(folder: Path) -> bool:
    """Whether ``folder`` lies on a kernel file system (/proc, /sys) where folders cannot be made."""
    return folder.resolve().parts[1:2] in (("proc",), ("sys",))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files ``atomic_write`` leaves when its process is killed mid-write.

    Only regular files directly in ``folder`` whose names match ``.{name}.{8 random characters}.tmp``
    are removed. Call it only while no other process writes in ``folder`` (e.g. while holding the
    run folder), since a live writer's temporary file looks the same.

    Args:
        folder: Folder to clean; a missing folder has nothing to clean.

    Returns:
        The removed files, sorted.
    """
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if _TEMP_PATTERN.fullmatch(path.name) and not path.is_symlink() and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
