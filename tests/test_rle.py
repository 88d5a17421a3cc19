"""Tests for lovaszseg.rle: TGS run-length encoding, CSV reading and validation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lovaszseg.errors import DataError
from lovaszseg.rle import decode, encode, read_rle_csv, validate_rles


def test_tgs_train_csv_matches_mask_pngs(shared_dir: Path) -> None:
    rows = read_rle_csv(shared_dir / "tgs" / "train.csv")
    assert len(rows) == 3000
    non_empty = 0
    for image_id, rle in rows.items():
        png = cv2.imread(str(shared_dir / "tgs" / "train" / "masks" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert png is not None, image_id
        truth = (png > 0).astype(np.uint8)
        decoded = decode(rle, truth.shape)
        assert decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, truth, err_msg=image_id)
        assert encode(truth) == rle, image_id
        non_empty += bool(rle)
    assert 0 < non_empty < 3000  # both kinds were exercised


@pytest.mark.parametrize(
    ("mask", "rle"),
    [
        ([[0, 1], [1, 1]], "2 3"),  # column-major: pixels (1,0), (0,1), (1,1) are 2, 3, 4
        ([[1, 0], [1, 1]], "1 2 4 1"),
        ([[1, 1, 1]], "1 3"),
        ([[0], [1], [0]], "2 1"),
        ([[0, 0], [0, 0]], ""),
        ([[1]], "1 1"),
    ],
)
def test_encode_decode_known(mask: list[list[int]], rle: str) -> None:
    array = np.array(mask, dtype=np.uint8)
    assert encode(array) == rle
    assert encode(array.astype(bool)) == rle
    np.testing.assert_array_equal(decode(rle, array.shape), array)


def _corner(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[row, col] = True
    return mask


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 3), (101, 101)])
@pytest.mark.parametrize("kind", ["random", "sparse", "zeros", "ones", "top_left", "bottom_right", "top_right"])
def test_round_trip(shape: tuple[int, int], kind: str) -> None:
    rng = np.random.default_rng(list(shape))
    masks = {
        "random": rng.random(shape) < 0.5,
        "sparse": rng.random(shape) < 0.05,
        "zeros": np.zeros(shape, dtype=bool),
        "ones": np.ones(shape, dtype=bool),
        "top_left": _corner(shape, 0, 0),
        "bottom_right": _corner(shape, -1, -1),
        "top_right": _corner(shape, 0, -1),
    }
    mask = masks[kind]
    rle = encode(mask)
    np.testing.assert_array_equal(decode(rle, shape), mask.astype(np.uint8))
    if kind == "ones":
        assert rle == f"1 {mask.size}"
    if kind == "bottom_right":
        assert rle == f"{mask.size} 1"
    if kind == "zeros":
        assert rle == ""
    if rle:  # canonical: sorted, non-touching runs of positive length
        runs = np.array(rle.split(), dtype=np.int64).reshape(-1, 2)
        assert (runs[:, 1] > 0).all()
        assert (runs[1:, 0] > runs[:-1].sum(1)).all()


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan")])
def test_decode_empty_values(empty: str | float | None) -> None:
    np.testing.assert_array_equal(decode(empty, (3, 4)), np.zeros((3, 4), dtype=np.uint8))


def test_decode_accepts_touching_runs_and_extra_whitespace() -> None:
    np.testing.assert_array_equal(decode(" 1 1\t2 1\n", (2, 2)), np.array([[1, 0], [1, 0]], dtype=np.uint8))


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of tokens"),
        ("a 1", "'a' is not an integer"),
        ("1.5 2", "'1.5' is not an integer"),
        ("1 2e1", "'2e1' is not an integer"),
        ("１ 2", "is not an integer"),  # full-width digit
        ("0 1", "start .* 0 is not positive"),
        ("-3 1", "start .* -3 is not positive"),
        ("1 0", "run length 0 is not positive"),
        ("2 -1", "run length -1 is not positive"),
        ("5 2 1 1", "unsorted"),
        ("1 3 2 1", "overlapping"),
        ("12 2", "past the image's last pixel 12"),
        ("13 1", "past the image's last pixel 12"),
        ("1 9223372036854775807", "past the image"),
        ("99999999999999999999999 1", "beyond int64"),
    ],
)
def test_decode_rejects_malformed(rle: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(rle, (3, 4))


@pytest.mark.parametrize("rle", [3, b"1 2", 1.5])
def test_decode_rejects_non_strings(rle: object) -> None:
    with pytest.raises(TypeError, match="RLE must be a string"):
        decode(rle, (3, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(0, 3), (3,), (2, 2, 2), (2.0, 3), "ab", (True, 2)])
def test_decode_rejects_bad_shape(shape: object) -> None:
    with pytest.raises(ValueError, match="shape must be two positive integers"):
        decode("1 1", shape)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (np.zeros((2, 2, 1), dtype=np.uint8), ValueError, "2-D"),
        (np.zeros(4, dtype=np.uint8), ValueError, "2-D"),
        (np.array([[0, 2]]), ValueError, "only 0 and 1, found 2"),
        (np.array([[0, -1]]), ValueError, "only 0 and 1, found -1"),
        (np.array([[0.0, 1.0]]), TypeError, "dtype float64"),
    ],
)
def test_encode_rejects_bad_masks(mask: np.ndarray, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        encode(mask)


def test_read_rle_csv(tmp_path: Path) -> None:
    path = tmp_path / "sub.csv"
    path.write_text("id,rle_mask\na,1 2\nb,\nc,3 1\n")
    assert read_rle_csv(path) == {"a": "1 2", "b": "", "c": "3 1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,mask\na,1 2\n", r"lacks column\(s\) \['rle_mask'\]"),
        ("id,rle_mask\na,1 2\na,\n", "line 3: id 'a' is repeated"),
        ("id,rle_mask\na\n", "line 2: expected the columns"),
        ("id,rle_mask\n,1 1\n", "line 2: blank id"),
        ("", "lacks column"),
    ],
)
def test_read_rle_csv_rejects_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"bad\.csv.*{message}"):
        read_rle_csv(path)


def test_read_rle_csv_unreadable_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"RLE CSV not found: .*nope\.csv"):
        read_rle_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"RLE CSV is a folder, not a file: "):
        read_rle_csv(tmp_path)
    (tmp_path / "binary.csv").write_bytes(b"id,rle_mask\n\xff\xfe,1 1\n")
    with pytest.raises(DataError, match=r"cannot read RLE CSV .*binary\.csv: 'utf-8' codec"):
        read_rle_csv(tmp_path / "binary.csv")


def test_validate_rles_accepts_good_rows() -> None:
    validate_rles({"a": "1 2", "b": "", "c": None, "d": float("nan")}, (2, 2), expected_ids=["d", "c", "b", "a"])
    validate_rles({}, (2, 2))


@pytest.mark.parametrize(
    ("rows", "expected", "message"),
    [
        ({"a": "1 2", "b": "0 1"}, None, r"'b': RLE start .* 0 is not positive"),
        ({"a": "4 2", "b": "1 1"}, None, r"'a': RLE run '4 2' goes past"),
        ({"a": "1 1", "b": "x"}, None, r"'b': RLE token 'x'"),
        ({"a": "1 1"}, ["a", "b", "c"], r"2 missing id\(s\), first \['b', 'c'\]"),
        ({"a": "1 1", "z": ""}, ["a"], r"1 unexpected id\(s\), first \['z'\]"),
        ({"a": "1 1"}, ["a", "a"], r"expected_ids repeats id\(s\) \['a'\]"),
    ],
)
def test_validate_rles_rejects(rows: dict[str, str], expected: list[str] | None, message: str) -> None:
    error = ValueError if expected is not None and len(set(expected)) < len(expected) else DataError
    with pytest.raises(error, match=message):
        validate_rles(rows, (2, 2), expected_ids=expected)


def test_validate_rles_lists_first_offenders() -> None:
    rows = {f"id{i}": "0 1" for i in range(8)}
    with pytest.raises(DataError, match=r"'id4'.*\(and 3 more\)") as info:
        validate_rles(rows, (2, 2))
    assert "'id5'" not in str(info.value)
