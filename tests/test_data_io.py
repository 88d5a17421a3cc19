"""Tests for lovaszseg.data.io: image/mask readers, checks, listings, CSV tables, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lovaszseg.data.io import (
    DatasetError,
    atomic_write,
    check_mask_values,
    check_same_size,
    list_stems,
    read_csv_column,
    read_csv_rows,
    read_image,
    read_mask,
    require_dir,
)

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
    with pytest.raises(DatasetError, match=path.name):
        read_image(path, channels=3) if reader == "image" else read_mask(path)


@pytest.mark.parametrize("reader", ["image", "mask"])
def test_missing_file_raises_file_not_found(tmp_path: Path, reader: str) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        read_image(path, channels=1) if reader == "image" else read_mask(path)


def test_read_image_rejects_16bit_and_bad_channels(tmp_path: Path) -> None:
    path = _save(np.full((4, 4), 40000, dtype=np.uint16), tmp_path / "deep.png")
    with pytest.raises(DatasetError, match="8-bit"):
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
    with pytest.raises(DatasetError, match=r"colour.png has mode 'RGB'"):
        read_mask(path)


def test_check_same_size() -> None:
    check_same_size(np.zeros((5, 6, 3)), np.zeros((5, 6)), Path("i.png"), Path("m.png"))
    with pytest.raises(DatasetError, match=r"i.png is 5x6 .* m.png is 5x7"):
        check_same_size(np.zeros((5, 6, 3)), np.zeros((5, 7)), Path("i.png"), Path("m.png"))


def test_check_mask_values_lists_bad_values() -> None:
    mask = np.array([[0, 1, 2], [255, 7, 7]])
    check_mask_values(mask, {0, 1, 2, 7, 255}, "m.png")
    with pytest.raises(DatasetError, match=r"m.png has values 2, 7; expected only \[0, 1, 255\]"):
        check_mask_values(mask, {0, 1, 255}, "m.png")


def test_list_stems_filters_and_sorts(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "notes.txt", "c.tif"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert list_stems(tmp_path) == {"a": tmp_path / "a.jpg", "b": tmp_path / "b.PNG", "c": tmp_path / "c.tif"}
    assert list(list_stems(tmp_path, (".png",))) == ["b"]


def test_list_stems_errors(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"ambiguous files for id 'x'"):
        list_stems(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        list_stems(tmp_path / "missing")


def test_require_dir_names_what_is_missing(tmp_path: Path) -> None:
    assert require_dir(tmp_path, "root") == tmp_path
    with pytest.raises(FileNotFoundError, match=r"masks folder not found: .*nowhere"):
        require_dir(tmp_path / "nowhere", "masks")


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
    ],
)
def test_read_csv_column_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_csv_column(path, "id", "z")


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
