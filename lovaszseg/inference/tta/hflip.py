"""Horizontal flip: the one TTA transform that is physically valid on seismic (TGS) images."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

from lovaszseg.inference.tta import TtaTransform, register


def _flip_width(batch: Tensor) -> Tensor:
    return batch.flip(-1)


HFLIP = register(TtaTransform("hflip", _flip_width, _flip_width, "average with the left-right mirrored prediction"))
