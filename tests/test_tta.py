"""Test-time augmentation: settings, each view's inverse, the merges, equivariant models, dataset validity."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from lovaszseg.data.spec import DatasetSpec
from lovaszseg.errors import ConfigError, LovaszsegWarning
from lovaszseg.inference.predict import predict_outputs, predict_probabilities
from lovaszseg.inference.tta import (
    NO_TTA,
    check_tta,
    invalid_transforms,
    merge_probabilities,
    tta_names,
    tta_plan,
    warn_if_invalid,
)
from lovaszseg.inference.tta.scale import scaled_size
from lovaszseg.models import probabilities

# Settings whose views permute pixels: a pixel-wise model sees each exactly.
PERMUTING = ["hflip", "vflip", "rot90", "d4", "hflip+vflip", "vflip+rot90:gmean", "d4:gmean"]
# Settings that resize: a pixel-wise model is unchanged on images constant over their pixels.
RESIZING = ["scale=0.5,2", "hflip+scale=0.75,1.25", "rot90+scale=1.5:gmean"]


class _PixelWise(nn.Module):
    """A 1x1 convolution: equivariant to every spatial permutation and every resizing of a constant image."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.conv(images)


class _Ramp(nn.Module):
    """Logits that grow with the column (left to right) and, less, with the row: nothing is symmetric."""

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
        columns = torch.arange(width, dtype=torch.float32).view(1, -1)
        return (columns + 0.1 * rows).expand(images.shape[0], 1, height, width) - width / 2


class _WithHead(nn.Module):
    """A pixel-wise mask and an empty-image logit that depends on the view (the top-left pixel)."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return images[:, :1], images[:, 0, :1, 0]


def test_the_registry_holds_the_flips_turns_d4_and_scale() -> None:
    assert tta_names()[0] == NO_TTA
    assert set(tta_names()[1:]) == {"hflip", "vflip", "rot90", "d4", "scale"}
    assert tta_plan(NO_TTA).views == () and tta_plan(NO_TTA).merge == "mean"


@pytest.mark.parametrize(
    ("tta", "views", "merge"),
    [
        ("hflip", 2, "mean"),
        ("rot90", 4, "mean"),
        ("d4", 8, "mean"),
        ("hflip+vflip", 4, "mean"),
        ("scale=0.75,1.25", 3, "mean"),
        ("hflip+scale=0.75,1.25:gmean", 6, "gmean"),
        ("none:gmean", 1, "gmean"),
    ],
)
def test_a_setting_is_every_combination_of_one_view_per_transform(tta: str, views: int, merge: str) -> None:
    plan = tta_plan(tta)
    assert (len(plan.views) + 1, plan.merge) == (views, merge)  # + the images themselves
    assert len({view.name for view in plan.views}) == len(plan.views)


def test_d4_is_the_eight_distinct_symmetries_of_the_square() -> None:
    image = torch.randn(1, 1, 5, 5)
    seen = [image] + [view.forward(image) for view in tta_plan("d4").views]
    for i, a in enumerate(seen):
        assert all(not torch.equal(a, b) for b in seen[i + 1 :])
    for symmetry in (image.flip(-2), image.transpose(-1, -2), image.flip(-1).transpose(-1, -2)):
        assert any(torch.equal(symmetry, view) for view in seen)


@pytest.mark.parametrize(
    ("tta", "message"),
    [
        ("rot45", r"tta must be 'none' or transforms joined by '\+' from .*got 'rot45'"),
        ("hflip+hflip", "names hflip twice"),
        ("d4+vflip", "d4 already holds vflip"),
        ("scale", "scale takes values, e.g. scale=0.75,1.25"),
        ("hflip=2", "hflip takes no values"),
        ("scale=0,1", "expected positive numbers separated by commas"),
        ("scale=a", "expected positive numbers separated by commas"),
        ("hflip:max", "tta merge must be one of mean, gmean, got 'max'"),
    ],
)
def test_a_bad_setting_is_an_error_that_names_it(tta: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_tta(tta)


@pytest.mark.parametrize("tta", ["hflip", "vflip", "rot90", "d4", "hflip+vflip"])
def test_each_permuting_view_is_undone_exactly_by_its_inverse(tta: str) -> None:
    batch = torch.randn(2, 3, 5, 7)  # not square: the odd quarter turns swap height and width
    for view in tta_plan(tta).views:
        seen = view.forward(batch)
        assert not torch.equal(seen, batch)  # it does something ...
        assert tuple(seen.shape[-2:]) == view.size((5, 7))
        torch.testing.assert_close(view.inverse(seen, (5, 7)), batch, rtol=0, atol=0)  # ... and undoes it


@pytest.mark.parametrize(
    ("size", "factor", "scaled"),
    [((128, 128), 0.75, (96, 96)), ((128, 128), 1.25, (160, 160)), ((64, 96), 0.1, (32, 32))],
)
def test_a_scale_view_resizes_to_multiples_of_32_and_back(size: tuple[int, int], factor: float, scaled: tuple) -> None:
    assert scaled_size(size, factor) == scaled
    (view,) = tta_plan(f"scale={factor}").views
    constant = torch.full((2, 3, *size), 0.3)
    seen = view.forward(constant)
    assert tuple(seen.shape[-2:]) == scaled
    torch.testing.assert_close(view.inverse(seen, size), constant, rtol=0, atol=1e-7)


@pytest.mark.parametrize("classes", [1, 4])
@pytest.mark.parametrize("tta", PERMUTING)
def test_an_equivariant_model_is_unchanged_by_each_permuting_setting(tta: str, classes: int) -> None:
    model, images = _PixelWise(classes), torch.randn(3, 3, 6, 10)
    plain = predict_probabilities(model, images)
    torch.testing.assert_close(predict_probabilities(model, images, tta=tta), plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("classes", [1, 4])
@pytest.mark.parametrize("tta", RESIZING)
def test_an_equivariant_model_is_unchanged_by_each_resizing_setting(tta: str, classes: int) -> None:
    model = _PixelWise(classes)
    images = torch.randn(3, 3, 1, 1).expand(3, 3, 64, 96).contiguous()  # each image one colour
    plain = predict_probabilities(model, images)
    torch.testing.assert_close(predict_probabilities(model, images, tta=tta), plain, rtol=0, atol=1e-6)


def test_the_prediction_is_the_mean_of_every_views_prediction_mapped_back() -> None:
    images = torch.zeros(2, 1, 4, 6)
    plain = probabilities(_Ramp()(images))
    # The model's output does not depend on the pixels, so each view's prediction is ``plain`` itself,
    # and mapped back it is ``plain`` flipped as the view flips.
    expected = (plain + plain.flip(-1) + plain.flip(-2) + plain.flip(-1, -2)) / 4
    torch.testing.assert_close(predict_probabilities(_Ramp(), images, tta="hflip+vflip"), expected, rtol=0, atol=1e-7)
    assert not torch.allclose(expected, plain)


def test_gmean_is_the_renormalised_geometric_mean_of_the_probabilities() -> None:
    # One sigmoid channel: the classes are p and 1 - p; sqrt(0.9 * 0.5) / (that + sqrt(0.1 * 0.5)) = 3/4.
    binary = merge_probabilities([torch.tensor([0.9]), torch.tensor([0.5])], "gmean", class_dim=None)
    torch.testing.assert_close(binary, torch.tensor([0.75]))
    # Two classes: sqrt(0.5 * 0.8) : sqrt(0.5 * 0.2) = 2 : 1.
    first, second = torch.tensor([[0.5], [0.5]]), torch.tensor([[0.8], [0.2]])
    merged = merge_probabilities([first, second], "gmean", class_dim=0)
    torch.testing.assert_close(merged, torch.tensor([[2 / 3], [1 / 3]]))
    torch.testing.assert_close(merge_probabilities([first, second], "mean"), torch.tensor([[0.65], [0.35]]))


def test_the_empty_heads_probability_is_merged_over_the_views_as_the_masks_are() -> None:
    images = torch.zeros(1, 1, 2, 2)
    images[0, 0, 0, 0] = math.log(9)  # head logit log 9 (p = 0.9) on the images, 0 (p = 0.5) mirrored
    for merge, expected in (("mean", 0.7), ("gmean", 0.75)):
        outputs = predict_outputs(_WithHead(), images, f"hflip:{merge}")
        assert outputs.empty is not None
        torch.testing.assert_close(outputs.empty, torch.tensor([expected]))


def _spec(valid: tuple[str, ...] | None) -> DatasetSpec:
    return DatasetSpec(
        name="seismic",
        task="binary",
        in_channels=1,
        num_classes=1,
        ignore_index=None,
        original_size=None,
        resize=None,
        sample_keys=("image", "mask"),
        valid_tta=valid,
    )


@pytest.mark.parametrize(
    ("tta", "valid", "invalid"),
    [
        ("hflip", ("hflip",), ()),
        ("vflip", ("hflip",), ("vflip",)),
        ("hflip+scale=0.75,1.25", ("hflip",), ("scale",)),
        ("d4", ("hflip", "scale"), ("d4",)),
        ("d4+scale=2", None, ()),
        (NO_TTA, (), ()),
    ],
)
def test_a_dataset_says_which_transforms_are_valid_and_the_others_warn(
    tta: str, valid: tuple[str, ...] | None, invalid: tuple[str, ...]
) -> None:
    spec = _spec(valid)
    assert invalid_transforms(tta, spec.valid_tta) == invalid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_invalid(tta, spec.valid_tta, spec.name)
    assert [str(w.message) for w in caught if w.category is LovaszsegWarning] == (
        [f"tta {tta!r}: {', '.join(invalid)} is not a symmetry of seismic images (valid there: hflip); used as asked"]
        if invalid and valid == ("hflip",)
        else [f"tta {tta!r}: d4 is not a symmetry of seismic images (valid there: hflip, scale); used as asked"]
        if invalid
        else []
    )


def test_tgs_allows_only_the_mirror_and_voc_the_mirror_and_scales() -> None:
    from lovaszseg.data.tgs import TGSSalt
    from lovaszseg.data.voc import VOCSegmentation

    assert TGSSalt.describe({"resize": None}).valid_tta == ("hflip",)
    assert VOCSegmentation.describe({"binary": False}).valid_tta == ("hflip", "scale")
