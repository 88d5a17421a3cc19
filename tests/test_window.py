"""Sliding-window inference: where windows go, how they are merged, and what it equals."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from lovaszseg.config import Config, load_config
from lovaszseg.errors import ConfigError
from lovaszseg.inference.ensemble import Ensemble
from lovaszseg.inference.predict import predict_folder, predict_outputs, predict_probabilities
from lovaszseg.inference.window import WindowOverride, window_starts, window_weights
from lovaszseg.windowing import SlidingWindow, parse_size


class _PixelWise(nn.Module):
    """Two 1x1 convolutions: fully convolutional with no spatial context, so any crop sees what the whole does."""

    def __init__(self, classes: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, classes, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class _CropMean(nn.Module):
    """One logit per crop, the mean of its pixels (everywhere in the crop); records the batches it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self.batches.append(images.shape[0])
        means = images[:, :1].mean(dim=(-2, -1), keepdim=True)
        return means.expand(-1, 1, *images.shape[-2:]), means.flatten()


@pytest.mark.parametrize(
    ("value", "size"), [("512x384", (512, 384)), ("512", (512, 512)), (256, (256, 256)), ([64, 32], (64, 32))]
)
def test_a_size_is_hxw_or_one_side(value: object, size: tuple[int, int]) -> None:
    assert parse_size(value, "--window") == size


@pytest.mark.parametrize("value", ["0", "ax3", "3x4x5", "", [1, 2, 3], 1.5, True, "-4"])
def test_a_bad_size_is_an_error_naming_the_option_and_value(value: object) -> None:
    with pytest.raises(ConfigError, match=r"--window must be HxW \(e.g. 512x512\) or one side"):
        parse_size(value, "--window")


@pytest.mark.parametrize(
    ("length", "window", "stride", "starts"),
    [(10, 4, 4, [0, 4, 6]), (8, 4, 4, [0, 4]), (3, 4, 2, [0]), (10, 4, 3, [0, 3, 6]), (4, 4, 1, [0])],
)
def test_windows_start_every_stride_and_the_last_ends_at_the_border(
    length: int, window: int, stride: int, starts: list[int]
) -> None:
    assert window_starts(length, window, stride) == starts


@pytest.mark.parametrize("classes", [1, 4])
def test_windows_that_tile_the_image_equal_whole_image_inference(classes: int) -> None:
    model, images = _PixelWise(classes), torch.randn(2, 3, 64, 96)
    tiles = SlidingWindow((32, 32), (32, 32))
    whole = predict_probabilities(model, images)
    torch.testing.assert_close(predict_probabilities(model, images, window=tiles), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
@pytest.mark.parametrize(("size", "stride"), [((32, 32), (16, 16)), ((32, 64), (24, 40)), ((64, 64), (64, 64))])
def test_overlapping_windows_leave_a_model_without_spatial_context_unchanged(
    size: tuple[int, int], stride: tuple[int, int], weighting: str
) -> None:
    # The merged value is a weighted mean of equal values: one only when the weights sum to one everywhere.
    model, images = _PixelWise(3), torch.randn(1, 3, 70, 100)
    window = SlidingWindow(size, stride, weighting)  # type: ignore[arg-type]
    whole = predict_probabilities(model, images)
    torch.testing.assert_close(predict_probabilities(model, images, window=window), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
def test_each_pixel_is_the_weighted_mean_of_the_windows_covering_it(weighting: str) -> None:
    images = torch.arange(10 * 14, dtype=torch.float32).view(1, 1, 10, 14) / 140
    window = SlidingWindow((6, 8), (4, 3), weighting, crops_per_batch=4)  # type: ignore[arg-type]
    model = _CropMean()
    merged = predict_outputs(model, images, window=window)
    # Every window by hand: its probability (the sigmoid of its mean) where it covers, with its weights.
    weights = window_weights((6, 8), weighting)  # type: ignore[arg-type]
    numerator, denominator = torch.zeros(10, 14), torch.zeros(10, 14)
    corners = list(itertools.product(window_starts(10, 6, 4), window_starts(14, 8, 3)))
    for top, left in corners:
        value = torch.sigmoid(images[0, 0, top : top + 6, left : left + 8].mean())
        numerator[top : top + 6, left : left + 8] += value * weights
        denominator[top : top + 6, left : left + 8] += weights
    torch.testing.assert_close(merged.masks[0, 0], numerator / denominator)
    # The head: the largest window's probability; the crops went 4 at a time.
    best = max(torch.sigmoid(images[0, 0, top : top + 6, left : left + 8].mean()) for top, left in corners)
    assert merged.empty is not None
    torch.testing.assert_close(merged.empty, best.view(1))
    assert len(corners) == 6 and model.batches == [4, 2]


def test_the_gaussian_window_weighs_the_centre_most_and_never_zero() -> None:
    weights = window_weights((33, 33), "gaussian")
    assert weights[16, 16] == weights.max() == 1 and weights.min() > 0
    assert weights[16, 0] < weights[16, 8] < weights[16, 16]
    assert torch.equal(window_weights((4, 6), "uniform"), torch.ones(4, 6))


@pytest.mark.parametrize("tta", ["hflip", "d4:gmean"])
def test_windows_take_the_tta_inside_each_crop(tta: str) -> None:
    model, images = _PixelWise(2), torch.randn(2, 3, 64, 64)
    window = SlidingWindow((32, 32), (16, 16), "gaussian")
    whole = predict_probabilities(model, images)
    torch.testing.assert_close(predict_probabilities(model, images, tta, window=window), whole, rtol=0, atol=1e-5)


def test_an_ensemble_is_predicted_window_by_window() -> None:
    members = [_PixelWise(1, seed=0), _PixelWise(1, seed=1)]
    ensemble, images = Ensemble(members, [1.0, 3.0]).eval(), torch.randn(1, 3, 64, 96)
    window = SlidingWindow((32, 32), (16, 32))
    expected = (torch.sigmoid(members[0](images)) + 3 * torch.sigmoid(members[1](images))) / 4
    torch.testing.assert_close(predict_probabilities(ensemble, images, window=window), expected, rtol=0, atol=1e-5)


def test_predict_folder_goes_window_by_window_and_names_a_window_the_model_cannot_take(tmp_path: Path) -> None:
    from lovaszseg.data.transforms import folder_transforms

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    model, transform = _PixelWise(1).eval(), folder_transforms(train=False)
    whole = next(predict_folder(model, tmp_path, transform, in_channels=3))[2]
    window = SlidingWindow((32, 32), (16, 16), "gaussian")
    windowed = next(predict_folder(model, tmp_path, transform, in_channels=3, window=window))[2]
    np.testing.assert_allclose(windowed, whole, atol=1e-5)

    strided = _PixelWise(1).eval()
    strided.encoder = nn.Identity()  # as an smp encoder that downsamples 32 times says it
    strided.encoder.output_stride = 32
    with pytest.raises(ConfigError, match=r"48x48 windows every 48x48 \(uniform\) of image .*a.png .* is 48x48"):
        next(predict_folder(strided, tmp_path, transform, in_channels=3, window=SlidingWindow((48, 48), (48, 48))))


GAUSSIAN_64 = SlidingWindow((64, 64), (32, 32), "gaussian")


@pytest.mark.parametrize(
    ("override", "base", "expected"),
    [
        (WindowOverride(), None, None),
        (WindowOverride(), GAUSSIAN_64, GAUSSIAN_64),
        (WindowOverride((96, 96)), GAUSSIAN_64, SlidingWindow((96, 96), (96, 96), "gaussian")),
        (WindowOverride(stride=(16, 16)), SlidingWindow((64, 64), (32, 32)), SlidingWindow((64, 64), (16, 16))),
        (WindowOverride(whole=True), SlidingWindow((64, 64), (32, 32)), None),
        (WindowOverride((32, 64), (16, 32), "gaussian"), None, SlidingWindow((32, 64), (16, 32), "gaussian")),
    ],
)
def test_an_override_changes_the_configs_window(
    override: WindowOverride, base: SlidingWindow | None, expected: SlidingWindow | None
) -> None:
    assert override.apply(base) == expected


@pytest.mark.parametrize(
    ("window", "stride", "weighting", "message"),
    [
        ("none", "16", None, "--window none predicts whole images: it takes no --stride"),
        ("64", None, "box", "--window-weighting must be one of uniform, gaussian, got 'box'"),
        ("64x", None, None, "--window must be HxW"),
        (None, "16", None, "--stride and --window-weighting need a window"),
        ("32", "64", None, "stride 64x64 is larger than the window 32x32"),
    ],
)
def test_bad_window_options_are_errors_that_name_them(
    window: str | None, stride: str | None, weighting: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        WindowOverride.parse(window, stride, weighting).apply(None)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], None),
        (["inference.window=512x384"], SlidingWindow((512, 384), (512, 384))),
        (
            ["inference.window=256", "inference.stride=128", "inference.window_weighting=gaussian"],
            SlidingWindow((256, 256), (128, 128), "gaussian"),
        ),
    ],
)
def test_the_config_section_gives_the_window(overrides: list[str], expected: SlidingWindow | None) -> None:
    config = load_config(Config().model_dump(), overrides)
    assert config.inference.sliding_window() == expected
    assert Config.from_yaml(config.to_yaml(), "config.yaml").inference == config.inference


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["inference.window=abc"], "inference.window: .*inference.window must be HxW"),
        (["inference.stride=16"], "inference.stride needs inference.window"),
        (["inference.window=32", "inference.stride=64"], "stride 64x64 is larger than the window 32x32"),
        (["inference.window_weighting=box"], "inference.window_weighting"),
    ],
)
def test_a_bad_inference_section_is_an_error_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Config().model_dump(), overrides)
