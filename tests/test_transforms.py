"""Tests for lovaszseg.data.transforms: presets (padding, fills, normalisation, strictness) and crop_to_original."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from lovaszseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TGS_MEAN,
    TGS_STD,
    crop_to_original,
    folder_transforms,
    tgs_transforms,
    voc_transforms,
)
from lovaszseg.errors import ConfigError

RNG = np.random.default_rng(0)
TGS_IMAGE = RNG.integers(0, 256, (101, 101), dtype=np.uint8)
TGS_MASK = (RNG.random((101, 101)) > 0.6).astype(np.uint8)


@pytest.mark.parametrize(
    ("height", "width", "target", "top", "left"),
    [(101, 101, 128, 13, 13), (101, 101, 256, 77, 77), (202, 202, 256, 27, 27), (5, 6, 9, 2, 1)],
)
def test_albumentations_centre_pad_offsets(height: int, width: int, target: int, top: int, left: int) -> None:
    """PadIfNeeded(position="center") puts (target - size) // 2 before and the rest after (101->128: 13/14)."""
    array = RNG.integers(0, 200, (height, width), dtype=np.uint8)
    pad = A.PadIfNeeded(target, target, position="center", border_mode=cv2.BORDER_CONSTANT, fill=255, strict=True)
    padded = pad(image=array)["image"]
    assert padded.shape == (target, target)
    np.testing.assert_array_equal(padded[top : top + height, left : left + width], array)
    assert (padded == 255).sum() == target * target - height * width
    np.testing.assert_array_equal(crop_to_original(torch.from_numpy(padded), (height, width)).numpy(), array)


@pytest.mark.parametrize("pad_size", [128, 256])
def test_tgs_preset_pads_with_reflection_and_crops_back_exactly(pad_size: int) -> None:
    out = tgs_transforms(train=False, pad_size=pad_size)(image=TGS_IMAGE, mask=TGS_MASK)
    image, mask = out["image"], out["mask"]
    assert image.shape == (1, pad_size, pad_size) and image.dtype == torch.float32
    assert mask.shape == (pad_size, pad_size)
    top = (pad_size - 101) // 2
    # BORDER_REFLECT_101: the row above the content mirrors content row 1 (not row 0)
    np.testing.assert_array_equal(mask[top - 1, top : top + 101].numpy(), TGS_MASK[1])
    np.testing.assert_array_equal(crop_to_original(mask, (101, 101)).numpy(), TGS_MASK)
    expected = (TGS_IMAGE / 255.0 - TGS_MEAN[0]) / TGS_STD[0]
    torch.testing.assert_close(crop_to_original(image, (101, 101))[0], torch.from_numpy(expected).float())


def test_tgs_preset_with_resize_round_trips_masks_and_probabilities() -> None:
    out = tgs_transforms(train=False, pad_size=256, resize=202)(image=TGS_IMAGE, mask=TGS_MASK)
    assert out["mask"].shape == (256, 256)
    # nearest 101 -> 202 doubles each pixel and nearest 202 -> 101 takes every second one: exact
    back = crop_to_original(out["mask"], (101, 101), resized=(202, 202))
    assert back.dtype == out["mask"].dtype
    np.testing.assert_array_equal(back.numpy(), TGS_MASK)
    probabilities = torch.full((2, 1, 256, 256), 0.25)
    probabilities[..., 27:229, 27:229] = 0.75  # the resized content window
    restored = crop_to_original(probabilities, (101, 101), resized=(202, 202))
    assert restored.shape == (2, 1, 101, 101)
    torch.testing.assert_close(restored, torch.full((2, 1, 101, 101), 0.75))


def test_tgs_train_preset_flips_image_and_mask_together() -> None:
    out = tgs_transforms(train=True, hflip=1.0, shift=0.0)(image=TGS_IMAGE, mask=TGS_MASK)
    np.testing.assert_array_equal(crop_to_original(out["mask"], (101, 101)).numpy(), TGS_MASK[:, ::-1])
    expected = (TGS_IMAGE[:, ::-1] / 255.0 - TGS_MEAN[0]) / TGS_STD[0]
    torch.testing.assert_close(crop_to_original(out["image"], (101, 101))[0], torch.from_numpy(expected).float())


def test_tgs_train_preset_with_shift_and_brightness_keeps_binary_mask() -> None:
    transform = tgs_transforms(train=True, shift=0.1, brightness=0.2)
    for _ in range(5):
        out = transform(image=TGS_IMAGE, mask=TGS_MASK)
        assert set(out["mask"].unique().tolist()) <= {0, 1}
        assert out["image"].shape == (1, 128, 128)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pad_size": 100}, "pad_size 100 is smaller than the image size 101"),
        ({"pad_size": 200, "resize": 202}, "smaller than the image size 202"),
        ({"resize": 0}, "resize must be a positive integer, got 0"),
        ({"pad_size": 128.0}, "pad_size must be a positive integer, got 128.0"),
        ({"shift": 0.6}, r"shift must be a number in \[0, 0.5\), got 0.6"),
        ({"shift": 0.5}, r"shift must be a number in \[0, 0.5\), got 0.5"),
        ({"shift": "0.1"}, r"shift must be a number in \[0, 0.5\), got '0.1'"),
        ({"brightness": -0.1}, r"brightness must be a number in \[0, 1\], got -0.1"),
        ({"hflip": 1.5}, r"hflip must be a number in \[0, 1\], got 1.5"),
        ({"hflip": float("nan")}, r"hflip must be a number in \[0, 1\], got nan"),
        ({"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}, r"mean must be 1 number\(s\), got \(0.5, 0.5, 0.5\)"),
        ({"mean": "0.5"}, r"mean must be 1 number\(s\), got '0.5'"),
        ({"std": ["x"]}, r"std must be 1 number\(s\), got \['x'\]"),
        ({"std": (0.0,)}, r"std must be positive, got \(0.0,\)"),
    ],
)
def test_tgs_preset_rejects_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tgs_transforms(train=True, **kwargs)


def test_presets_are_strict_about_input_keys() -> None:
    with pytest.raises(ValueError, match="Key masc is not in available keys"):
        tgs_transforms(train=False)(image=TGS_IMAGE, masc=TGS_MASK)


def test_image_only_call_works() -> None:
    out = tgs_transforms(train=False)(image=TGS_IMAGE)
    assert set(out) == {"image"} and out["image"].shape == (1, 128, 128)


def _voc_pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    image = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = RNG.integers(0, 21, (height, width), dtype=np.uint8)
    mask[0] = 255
    return image, mask


@pytest.mark.parametrize("image_fill", ["mean", "zero"])
def test_voc_train_padding_fills_mask_with_255(image_fill: str) -> None:
    image, mask = _voc_pair(40, 30)
    transform = voc_transforms(train=True, crop_size=64, scale_range=(1.0, 1.0), image_fill=image_fill)
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (3, 64, 64) and out["mask"].shape == (64, 64)
    padding = out["mask"] == 255
    assert int(padding.sum()) == 64 * 64 - 40 * 30 + 30  # padding plus the void first row
    assert sorted(np.bincount(out["mask"][~padding].numpy(), minlength=21)) == sorted(
        np.bincount(mask[mask != 255], minlength=21)
    )
    corner = out["image"][:, 0, 0]  # (40x30 centred in 64x64: the corner is padding)
    if image_fill == "mean":  # the mean colour normalises to ~0
        torch.testing.assert_close(corner, torch.zeros(3), atol=0.01, rtol=0)
    else:
        expected = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
        torch.testing.assert_close(corner, expected)


def test_voc_train_scales_and_crops_to_crop_size() -> None:
    image, mask = _voc_pair(100, 80)
    transform = voc_transforms(train=True, crop_size=48)
    for _ in range(5):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (3, 48, 48)
        assert set(out["mask"].unique().tolist()) <= set(range(21)) | {255}


def test_voc_eval_pad_to_multiple_of_32_and_back() -> None:
    image, mask = _voc_pair(70, 45)
    out = voc_transforms(train=False)(image=image, mask=mask)
    assert out["image"].shape == (3, 96, 64)
    assert int((out["mask"] == 255).sum()) == 96 * 64 - 70 * 45 + 45
    np.testing.assert_array_equal(crop_to_original(out["mask"], (70, 45)).numpy(), mask)


def test_voc_eval_resize() -> None:
    image, mask = _voc_pair(70, 45)
    out = voc_transforms(train=False, eval_mode="resize", eval_size=64)(image=image, mask=mask)
    assert out["image"].shape == (3, 64, 64)
    assert set(out["mask"].unique().tolist()) <= set(mask.flatten().tolist())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eval_mode": "crop"}, "eval_mode must be 'pad' or 'resize', got 'crop'"),
        ({"image_fill": "grey"}, "image_fill must be 'mean' or 'zero', got 'grey'"),
        ({"size_divisor": 0}, "size_divisor must be a positive integer, got 0"),
        ({"mean": (0.5,), "std": (0.5,)}, r"mean must be 3 number\(s\), got \(0.5,\)"),
    ],
)
def test_voc_preset_rejects_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        voc_transforms(train=False, **kwargs)


@pytest.mark.parametrize(
    ("scale_range", "message"),
    [
        ((2.0, 0.5), r"scale_range must be \(low, high\) with 0 < low <= high, got \(2.0, 0.5\)"),
        ((0.0, 1.0), r"with 0 < low <= high, got \(0.0, 1.0\)"),
        ((0.5,), r"scale_range must be 2 number\(s\), got \(0.5,\)"),
        ("0.5,2", r"scale_range must be 2 number\(s\), got '0.5,2'"),
    ],
)
def test_voc_train_rejects_bad_scale_range(scale_range: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        voc_transforms(train=True, scale_range=scale_range)


@pytest.mark.parametrize(("ignore_index", "corner"), [(None, 1), (255, 255)])
def test_folder_padding_reflects_or_fills_ignore(ignore_index: int | None, corner: int) -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[:2, :2] = 1
    mask[0, 0] = 0
    out = folder_transforms(train=False, in_channels=1, ignore_index=ignore_index)(
        image=np.zeros((20, 30), np.uint8), mask=mask
    )
    assert out["image"].shape == (1, 32, 32)
    # 20x30 centred in 32x32: 6 rows and 1 column before; reflect-101 mirrors pixel (1, 1) to (5, 0)
    assert int(out["mask"][5, 0]) == corner
    np.testing.assert_array_equal(crop_to_original(out["mask"], (20, 30)).numpy(), mask)


def test_folder_resize_and_channels() -> None:
    out = folder_transforms(train=True, in_channels=3, size=40)(
        image=np.zeros((20, 30, 3), np.uint8), mask=np.zeros((20, 30), np.uint8)
    )
    assert out["image"].shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="in_channels must be 1 or 3, got 2"):
        folder_transforms(train=False, in_channels=2)


def test_crop_to_original_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        crop_to_original(torch.zeros(5), (3, 3))
    with pytest.raises(ValueError, match="smaller than the 101x101 window"):
        crop_to_original(torch.zeros(1, 100, 128), (101, 101))
