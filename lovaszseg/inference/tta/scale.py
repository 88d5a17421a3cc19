"""Multi-scale: the images resized by each factor (``scale=0.75,1.25``), the predictions resized back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lovaszseg.inference.tta import Size, TtaTransform, TtaView, register

if TYPE_CHECKING:
    from torch import Tensor

# Scaled sizes are rounded to a multiple of this: what an smp encoder of depth 5 takes.
SIZE_MULTIPLE = 32


def scaled_size(size: Size, factor: float) -> Size:
    """``size`` times ``factor``, each side rounded to the nearest multiple of :data:`SIZE_MULTIPLE` (at least one)."""
    return tuple(max(SIZE_MULTIPLE, round(side * factor / SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in size)  # type: ignore[return-value]


def _resize(batch: Tensor, size: Size) -> Tensor:
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    from torch.nn import functional as F  # imported here: see the package

    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False)


def rescaling(factor: float) -> TtaView:
    """The view resizing images by ``factor`` (bilinear), and its prediction back to the images' size."""
    return TtaView(
        f"scale={factor:g}",
        lambda batch: _resize(batch, scaled_size(tuple(batch.shape[-2:]), factor)),
        _resize,
        lambda size: scaled_size(size, factor),
    )


SCALE = register(
    TtaTransform(
        "scale",
        lambda factors: tuple(rescaling(factor) for factor in factors),
        "the images and each rescaling, e.g. scale=0.75,1.25 (sizes rounded to multiples of 32)",
        takes_values=True,
    )
)
