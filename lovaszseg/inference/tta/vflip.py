"""Vertical flip: for data without a preferred up and down (aerial, microscopy, medical folders)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

from lovaszseg.inference.tta import TtaTransform, register


def _flip_height(batch: Tensor) -> Tensor:
    return batch.flip(-2)


VFLIP = register(TtaTransform("vflip", _flip_height, _flip_height, "average with the upside-down prediction"))
