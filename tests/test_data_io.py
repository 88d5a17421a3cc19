"""Tests for lovaszseg.data.io: image/mask readers, checks, listings, CSV tables, atomic writes."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from PIL import Image

from lovaszseg.data.io import (
    DatasetError,
    atomic_write,
    check_mask_values,
    check_same_size,
    check_writable,
    list_stems,
    make_folder,
    read_csv_column,
    read_csv_rows,
    read_image,
    read_image_size,
    read_lines,
    read_mask,
    remove_stale_temporaries,
    require_dir,
    require_file,
)
from lovaszseg.errors import DataError, OutputError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 9, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (12, 9), dtype=np.uint8)


def _save(array: np.ndarray, path: Path, **kwargs: object) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.mark.parametrize("channels", [1, 3])
def test_read_image_png_roundtrip(tmp_path: Path, channels: int) -> None:
    array = GRAY if channels == 1 else RGB
    out = read_image(_save(array, tmp_path / "a.png"), channels=channels)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def test_read_image_equal_rgb_channels_give_the_channel(tmp_path: Path) -> None:
    path = _save(np.repeat(GRAY[..., None], 3, axis=2), tmp_path / "tgs_like.png")
    np.testing.assert_array_equal(read_image(path, channels=1), GRAY)


def test_read_image_gray_file_as_rgb_repeats_channel(tmp_path: Path) -> None:
    out = read_image(_save(GRAY, tmp_path / "g.png"), channels=3)
    assert out.shape == (12, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], GRAY)


def test_read_image_jpeg(tmp_path: Path) -> None:
    flat = np.full((16, 16, 3), (200, 100, 50), dtype=np.uint8)
    out = read_image(_save(flat, tmp_path / "a.jpg", quality=95), channels=3)
    assert np.abs(out.astype(int) - flat).max() <= 3


def _truncated(tmp_path: Path, suffix: str) -> Path:
    good = _save(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), tmp_path / f"full{suffix}")
    data = good.read_bytes()
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    return bad


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpg", "text_as_png", "empty_png"])
@pytest.mark.parametrize("reader", ["image", "mask"])
def test_corrupt_files_raise_dataset_error_naming_the_file(tmp_path: Path, kind: str, reader: str) -> None:
    if kind == "truncated_png":
        path = _truncated(tmp_path, ".png")
    elif kind == "truncated_jpg":
        path = _truncated(tmp_path, ".jpg")
    else:
        path = tmp_path / "bad.png"
        path.write_text("not an image" if kind == "text_as_png" else "")
    with pytest.raises(DataError, match=path.name):
        read_image(path, channels=3) if reader == "image" else read_mask(path)


def test_dataset_error_is_the_typed_data_error() -> None:
    assert DatasetError is DataError and issubclass(DataError, ValueError)


@pytest.mark.parametrize("reader", ["image", "mask", "size"])
def test_missing_file_raises_data_error(tmp_path: Path, reader: str) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(DataError, match=r"image file not found: .*nope\.png"):
        if reader == "image":
            read_image(path, channels=1)
        elif reader == "mask":
            read_mask(path)
        else:
            read_image_size(path)


def test_read_image_size_reads_the_header_only(tmp_path: Path) -> None:
    path = _save(RGB, tmp_path / "a.png")
    assert read_image_size(path) == (12, 9)
    path.write_bytes(path.read_bytes()[:60])  # the header survives: no decoding, no error
    assert read_image_size(path) == (12, 9)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match=r"cannot read the size of image .*text\.png"):
        read_image_size(tmp_path / "text.png")


def test_read_image_rejects_16bit_and_bad_channels(tmp_path: Path) -> None:
    path = _save(np.full((4, 4), 40000, dtype=np.uint16), tmp_path / "deep.png")
    with pytest.raises(DataError, match="8-bit"):
        read_image(path, channels=1)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        read_image(path, channels=2)


def test_read_mask_palette_gives_indices_not_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 15], [255, 20, 0]], dtype=np.uint8)
    image = Image.fromarray(indices)
    image.putpalette(bytes(range(256)) * 3)  # colours unrelated to the indices
    image.save(tmp_path / "p.png")
    out = read_mask(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(out, indices)


@pytest.mark.parametrize(
    ("array", "expected_dtype"),
    [
        (np.array([[0, 7], [255, 3]], dtype=np.uint8), np.uint8),
        (np.array([[0, 65535], [65535, 0]], dtype=np.uint16), np.uint16),
    ],
)
def test_read_mask_grayscale_values(tmp_path: Path, array: np.ndarray, expected_dtype: type) -> None:
    out = read_mask(_save(array, tmp_path / "m.png"))
    assert out.dtype == expected_dtype
    np.testing.assert_array_equal(out, array)


def test_read_mask_one_bit_gives_zero_one(tmp_path: Path) -> None:
    bits = np.array([[True, False], [False, True]])
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    out = read_mask(tmp_path / "b.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, bits.astype(np.uint8))


def test_read_mask_rejects_colour_masks(tmp_path: Path) -> None:
    path = _save(RGB, tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour.png has mode 'RGB'"):
        read_mask(path)


def test_check_same_size() -> None:
    check_same_size(np.zeros((5, 6, 3)), np.zeros((5, 6)), Path("i.png"), Path("m.png"))
    check_same_size((5, 6), np.zeros((5, 6)), Path("i.png"), Path("m.png"))  # a size from read_image_size
    with pytest.raises(DataError, match=r"i.png is 5x6 .* m.png is 5x7"):
        check_same_size(np.zeros((5, 6, 3)), np.zeros((5, 7)), Path("i.png"), Path("m.png"))
    with pytest.raises(DataError, match=r"i.png is 5x6 \(HxW\) but its mask m.png is 6x5"):
        check_same_size((5, 6), (6, 5), Path("i.png"), Path("m.png"))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize(
    ("allowed", "message"),
    [
        ({0, 1, 255}, r"m.png has values 2, 7; expected only \[0, 1, 255\]"),  # a few values: compared
        (set(range(2)) | {255, 300, 400, 500}, r"m.png has values 2, 7; expected only \[0, 1, 255, 300"),  # many
    ],
)
def test_check_mask_values_lists_bad_values(dtype: type, allowed: set[int], message: str) -> None:
    mask = np.array([[0, 1, 2], [255, 7, 7]], dtype=dtype)
    check_mask_values(mask, allowed | {2, 7}, "m.png")
    with pytest.raises(DataError, match=message):
        check_mask_values(mask, allowed, "m.png")


def test_check_mask_values_shortens_long_lists() -> None:
    with pytest.raises(DataError, match=r"m.png has values 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, \.\.\.; expected"):
        check_mask_values(np.arange(20, dtype=np.uint16), {0, 1}, "m.png")


def test_list_stems_filters_and_sorts(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "notes.txt", "c.tif"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert list_stems(tmp_path) == {"a": tmp_path / "a.jpg", "b": tmp_path / "b.PNG", "c": tmp_path / "c.tif"}
    assert list(list_stems(tmp_path, (".png",))) == ["b"]


def test_list_stems_errors(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"ambiguous files for id 'x'"):
        list_stems(tmp_path)
    with pytest.raises(DataError, match="missing"):
        list_stems(tmp_path / "missing")


def test_require_dir_and_file_name_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("")
    assert require_dir(tmp_path, "root") == tmp_path
    assert require_file(tmp_path / "f.txt", "list") == tmp_path / "f.txt"
    with pytest.raises(DataError, match=r"masks folder not found: .*nowhere"):
        require_dir(tmp_path / "nowhere", "masks")
    with pytest.raises(DataError, match=r"masks folder is a file, not a folder: .*f\.txt"):
        require_dir(tmp_path / "f.txt", "masks")
    with pytest.raises(DataError, match=r"list not found: .*nowhere\.txt"):
        require_file(tmp_path / "nowhere.txt", "list")
    with pytest.raises(DataError, match=r"list is a folder, not a file: "):
        require_file(tmp_path, "list")


def test_read_lines(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text(" a \n\n b\n")
    assert read_lines(path, "split file") == ["a", "b"]
    path.write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(DataError, match=r"split file .*ids\.txt is not UTF-8 text"):
        read_lines(path, "split file")
    with pytest.raises(DataError, match=r"split file not found: .*none\.txt"):
        read_lines(tmp_path / "none.txt", "split file")


def test_read_csv_column_and_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,z,extra\na,1,x\nb,22,y\n")
    assert read_csv_column(path, "id", "z") == {"a": "1", "b": "22"}
    assert read_csv_rows(path, ("id",))[1] == {"id": "b", "z": "22", "extra": "y"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,depth\na,1\n", r"lacks column\(s\) \['z'\]"),
        ("id,z\na,1\na,2\n", "has id 'a' more than once"),
        ("id,z\na\n", "line 2 has fewer fields"),
        (b"id,z\n\xff\xfe,1\n", r"cannot read CSV .*bad\.csv: 'utf-8' codec"),
        ("id,z\na," + "9" * 200_000 + "\n", r"cannot read CSV .*bad\.csv: field larger than field limit"),
    ],
    ids=["missing_column", "repeated_key", "short_row", "not_utf8", "huge_field"],
)
def test_read_csv_column_errors(tmp_path: Path, text: str | bytes, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=message):
        read_csv_column(path, "id", "z")
    with pytest.raises(DataError, match=r"CSV file not found: .*missing\.csv"):
        read_csv_column(tmp_path / "missing.csv", "id", "z")


def test_atomic_write_replaces_only_on_success(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.txt"
    with atomic_write(path) as handle:
        handle.write("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write("second")
        raise RuntimeError("boom")
    assert path.read_text() == "first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def _write(handle: IO, mode: str, size: int, flush: bool) -> None:
    handle.write("x" * size if mode == "w" else b"x" * size)
    if flush:
        handle.flush()


@pytest.mark.usefixtures("full_disk")
@pytest.mark.parametrize("mode", ["w", "wb"])
@pytest.mark.parametrize(
    ("size", "flush"),
    [(10, False), (10, True), (100_000, False)],
    ids=["buffered_until_the_block_ends", "flushed_in_the_block", "larger_than_the_buffer"],
)
def test_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(
    tmp_path: Path, mode: str, size: int, flush: bool
) -> None:
    path = tmp_path / "out.csv"
    path.write_bytes(b"old\n")
    full = pytest.raises(OutputError, match=rf"^cannot write {re.escape(str(path))}: No space left on device$")
    with full, atomic_write(path, mode) as handle:
        _write(handle, mode, size, flush)
    assert path.read_bytes() == b"old\n"
    assert sorted(tmp_path.iterdir()) == [path]  # no temporary left


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (lambda tmp: Path("/proc/lovaszseg-test/out.csv"), "/proc is on a kernel file system that takes no new files"),
        (lambda tmp: Path("/proc/lovaszseg-test.csv"), "/proc is on a kernel file system that takes no new files"),
        (lambda tmp: tmp / "file" / "sub" / "out.csv", "{tmp}/file is not a folder"),
        (lambda tmp: tmp / "file" / "out.csv", "{tmp}/file is not a folder"),
        (lambda tmp: tmp / "folder", "Is a directory"),  # the rename onto a folder fails
    ],
    ids=["folder_under_proc", "file_in_proc", "file_above_the_folder", "file_as_the_folder", "folder_as_the_file"],
)
def test_atomic_write_where_nothing_can_be_written_names_the_file_and_why(
    tmp_path: Path, where: Callable[[Path], Path], reason: str
) -> None:
    (tmp_path / "file").write_text("kept")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inside").write_text("kept")
    path = where(tmp_path)
    message = rf"^cannot write {re.escape(str(path))}: {re.escape(reason.format(tmp=tmp_path))}$"
    with pytest.raises(OutputError, match=message), atomic_write(path) as handle:
        handle.write("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert (tmp_path / "file").read_text() == "kept" and (tmp_path / "folder" / "inside").read_text() == "kept"


def _read_another_file(tmp_path: Path) -> None:
    (tmp_path / "missing.txt").read_text()


def _raise(error: BaseException) -> Callable[[Path], None]:
    def block(tmp_path: Path) -> None:
        raise error

    return block


@pytest.mark.parametrize("disk", ["room", "full_disk"])
@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (_raise(ValueError("the caller's value")), ValueError),
        (_read_another_file, FileNotFoundError),
        (_raise(OSError(errno.ENOSPC, "No space left on device")), OSError),  # another file's full disk
        (_raise(KeyboardInterrupt()), KeyboardInterrupt),
    ],
    ids=["value_error", "reading_another_file", "another_files_os_error", "keyboard_interrupt"],
)
def test_atomic_write_passes_the_callers_own_errors_through_unchanged(
    tmp_path: Path, request: pytest.FixtureRequest, disk: str, block: Callable[[Path], None], expected: type
) -> None:
    if disk == "full_disk":  # the unflushed bytes of the dropped temporary must not replace the caller's error
        request.getfixturevalue("full_disk")
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(expected) as caught, atomic_write(path) as handle:
        handle.write("new")
        block(tmp_path)
    assert type(caught.value) is expected and not isinstance(caught.value, OutputError)
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(("mode", "options"), [("a", {}), ("r+", {}), ("wb", {"newline": ""})])
def test_atomic_write_refuses_other_modes_and_leaves_nothing(tmp_path: Path, mode: str, options: dict) -> None:
    with pytest.raises(ValueError, match="atomic_write takes mode 'w'"), atomic_write(tmp_path / "x", mode, **options):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "text", "expected"),
    [({}, "a\nb", b"a\nb"), ({"newline": "\r\n"}, "a\nb", b"a\r\nb"), ({"encoding": "latin-1"}, "é", b"\xe9")],
)
def test_atomic_write_text_options_act_as_in_open(tmp_path: Path, options: dict, text: str, expected: bytes) -> None:
    with atomic_write(tmp_path / "t.txt", **options) as handle:
        handle.write(text)
    assert (tmp_path / "t.txt").read_bytes() == expected


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: Path("/proc/lovaszseg-test/run"), "/proc is on a kernel file system that takes no new files"),
        (lambda tmp: tmp / "file" / "run", "{tmp}/file is not a folder"),
        (lambda tmp: tmp / "file", "{tmp}/file is not a folder"),
    ],
    ids=["under_proc", "under_a_file", "a_file"],
)
@pytest.mark.parametrize("check", ["make_folder", "check_writable"])
def test_a_folder_that_cannot_be_made_is_refused_with_the_reason(
    tmp_path: Path, make: Callable[[Path], Path], reason: str, check: str
) -> None:
    (tmp_path / "file").write_text("kept")
    folder, why = make(tmp_path), re.escape(reason.format(tmp=tmp_path))
    if check == "make_folder":
        with pytest.raises(OutputError, match=rf"^cannot create run folder {re.escape(str(folder))}: {why}$"):
            make_folder(folder, "run folder")
    else:
        with pytest.raises(OutputError, match=rf"^cannot write --out {re.escape(str(folder))}: {why}$"):
            check_writable(folder, "--out", folder=True)
    assert (tmp_path / "file").read_text() == "kept"


def test_make_folder_creates_the_parents_and_accepts_an_existing_folder(tmp_path: Path) -> None:
    assert make_folder(tmp_path / "a" / "b", "run folder") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert make_folder(tmp_path / "a" / "b", "run folder") == tmp_path / "a" / "b"


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """``os.umask``, with the process umask restored after the test."""
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_new_file_gets_the_umask_mode(
    tmp_path: Path, umask: Callable[[int], int], mask: int, expected: int
) -> None:
    umask(mask)
    for mode in ("w", "wb"):
        path = tmp_path / f"new-{mode}"
        with atomic_write(path, mode) as handle:
            handle.write("x" if mode == "w" else b"x")
        assert _mode(path) == expected, oct(_mode(path))


@pytest.mark.parametrize(("existing", "mask"), [(0o644, 0o077), (0o600, 0o022), (0o640, 0o002)])
def test_atomic_write_keeps_the_mode_of_a_replaced_file(
    tmp_path: Path, umask: Callable[[int], int], existing: int, mask: int
) -> None:
    umask(mask)
    path = tmp_path / "out.txt"
    path.write_text("old")
    path.chmod(existing)
    with atomic_write(path) as handle:
        handle.write("new")
    assert path.read_text() == "new" and _mode(path) == existing, oct(_mode(path))


def test_atomic_write_temporary_sits_beside_the_file_and_matches_the_cleanup_pattern(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    with atomic_write(path) as handle:
        (temporary,) = [p for p in tmp_path.iterdir() if p != path]
        assert temporary.name.startswith(".out.csv.") and temporary.name.endswith(".tmp")
        handle.write("x")
    assert sorted(tmp_path.iterdir()) == [path]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to kill a writer mid-write")
def test_remove_stale_temporaries_after_a_writer_is_killed(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("kept")
    pid = os.fork()
    if pid == 0:  # the child dies inside the block, as if killed: no cleanup runs
        with atomic_write(tmp_path / "out.txt") as handle:
            handle.write("half")
            handle.flush()
            os._exit(0)
    os.waitpid(pid, 0)
    (left,) = [p for p in tmp_path.iterdir() if p.name != "out.txt"]
    assert remove_stale_temporaries(tmp_path) == [left]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"] and (tmp_path / "out.txt").read_text() == "kept"


def test_remove_stale_temporaries_removes_only_matching_files(tmp_path: Path) -> None:
    stale = [tmp_path / name for name in (".best.pt.k3x_9q0a.tmp", ".summary.csv.abcdefgh.tmp", ".a.b.c.12345678.tmp")]
    kept = [
        "best.pt",
        ".best.pt.ABCDEFGH.tmp",  # capitals: never drawn
        ".best.pt.abcdefg.tmp",  # 7 characters
        ".best.pt.abcdefghi.tmp",  # 9 characters
        "best.pt.abcdefgh.tmp",  # no leading dot
        ".best.pt.abcdefgh.tmp.bak",
        "..abcdefgh.tmp",  # no name
        ".notes.tmp",
    ]
    for path in stale:
        path.write_text("partial")
    for name in kept:
        (tmp_path / name).write_text("mine")
    (tmp_path / ".sub.abcdefgh.tmp").mkdir()  # a folder, not a file
    (tmp_path / ".sub.abcdefgh.tmp" / ".x.abcdefgh.tmp").write_text("not directly in the folder")
    (tmp_path / ".link.abcdefgh.tmp").symlink_to(tmp_path / "best.pt")
    assert remove_stale_temporaries(tmp_path) == sorted(stale)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {*kept, ".sub.abcdefgh.tmp", ".link.abcdefgh.tmp"}
    assert (tmp_path / ".sub.abcdefgh.tmp" / ".x.abcdefgh.tmp").is_file()
    assert remove_stale_temporaries(tmp_path) == [] and remove_stale_temporaries(tmp_path / "none") == []
