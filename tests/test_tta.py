"""Test-time augmentation: the registry, each transform's inverse, and equivariant models."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from lovaszseg.errors import ConfigError
from lovaszseg.inference.predict import predict_probabilities
from lovaszseg.inference.tta import NO_TTA, check_tta, tta_names, tta_transforms
from lovaszseg.models import probabilities

TRANSFORMS = [name for name in tta_names() if name != NO_TTA]


class _PixelWise(nn.Module):
    """A 1x1 convolution: equivariant to every spatial permutation of the pixels."""

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


def test_the_registry_holds_hflip_and_vflip_and_none_means_no_transform() -> None:
    assert tta_names()[:1] == (NO_TTA,)
    assert {"hflip", "vflip"} <= set(TRANSFORMS)
    assert tta_transforms(NO_TTA) == ()
    with pytest.raises(ConfigError, match=r"tta must be one of none, hflip, .*got 'rot45'"):
        check_tta("rot45")


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_is_undone_by_its_inverse(name: str) -> None:
    (transform,) = tta_transforms(name)
    batch = torch.randn(2, 3, 5, 7)
    assert not torch.equal(transform.forward(batch), batch)  # it does something ...
    torch.testing.assert_close(transform.inverse(transform.forward(batch)), batch, rtol=0, atol=0)  # ... and undoes it


@pytest.mark.parametrize("classes", [1, 4])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_an_equivariant_model_is_unchanged_by_each_transform(name: str, classes: int) -> None:
    model, images = _PixelWise(classes), torch.randn(3, 3, 6, 10)
    plain = predict_probabilities(model, images)
    torch.testing.assert_close(predict_probabilities(model, images, tta=name), plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "flipped"), [("hflip", lambda p: p.flip(-1)), ("vflip", lambda p: p.flip(-2))])
def test_the_prediction_is_the_mean_with_the_flipped_images_prediction_mapped_back(
    name: str, flipped: Callable[[Tensor], Tensor]
) -> None:
    images = torch.zeros(2, 1, 4, 6)
    plain = probabilities(_Ramp()(images))
    # The model's output does not depend on the pixels, so the flipped images' prediction is ``plain``
    # itself, and mapped back it is ``plain`` flipped.
    expected = (plain + flipped(plain)) / 2
    torch.testing.assert_close(predict_probabilities(_Ramp(), images, tta=name), expected, rtol=0, atol=0)
    assert not torch.allclose(expected, plain)
