"""The sliding window's settings, defined once (plain Python: the config and the CLI import it).

A window predicts images larger than the network in overlapping crops of ``size``, ``stride`` apart,
merged by weight (``uniform`` or ``gaussian``), ``crops_per_batch`` at a time.
:mod:`lovaszseg.inference.window` predicts with these settings (torch lives there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lovaszseg.errors import ConfigError

__all__ = ["CROPS_PER_BATCH", "WEIGHTINGS", "SlidingWindow", "Weighting", "parse_size"]

Weighting = Literal["uniform", "gaussian"]
# How a window's pixels are weighted; the first is the default.
WEIGHTINGS: tuple[Weighting, ...] = ("uniform", "gaussian")
# Crops per forward pass unless a config says otherwise.
CROPS_PER_BATCH = 8
_SEPARATOR = "x"


def parse_size(value: object, option: str) -> tuple[int, int]:
    """``"512x384"``, ``"512"``, ``512`` or ``[512, 384]`` as ``(height, width)`` of positive integers.

    Raises:
        ConfigError: anything else; the message names ``option`` and the value.
    """
    if isinstance(value, str):
        parts: list[object] = value.lower().split(_SEPARATOR)
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = [value]
    try:
        sides = [int(part) for part in parts if not isinstance(part, bool | float)] if len(parts) in (1, 2) else []
    except (TypeError, ValueError):
        sides = []
    if len(sides) != len(parts) or not sides or any(side < 1 for side in sides):
        raise ConfigError(f"{option} must be HxW (e.g. 512x512) or one side (512) of positive integers, got {value!r}")
    return (sides[0], sides[-1])


@dataclass(frozen=True)
class SlidingWindow:
    """How large images are predicted: crops of ``size`` every ``stride`` pixels, merged by weight
    (:func:`lovaszseg.inference.window.predict_windows` predicts with it).

    Attributes:
        size: The window's ``(height, width)``; sides of the image shorter than it are taken whole.
        stride: Pixels between window starts, ``(height, width)``; at most the window's (no gaps). Equal
            to ``size``: windows tile the image (the last one shifted back to the border).
        weighting: ``uniform`` or ``gaussian`` (see :mod:`lovaszseg.inference.window`).
        crops_per_batch: Most crops per forward pass.

    Raises:
        ConfigError: a stride larger than the window, an unknown weighting or a batch below 1.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    weighting: Weighting = WEIGHTINGS[0]
    crops_per_batch: int = CROPS_PER_BATCH

    def __post_init__(self) -> None:
        if any(step > side for step, side in zip(self.stride, self.size, strict=True)):
            raise ConfigError(
                f"stride {self.stride[0]}x{self.stride[1]} is larger than the window {self.size[0]}x{self.size[1]}: "
                "pixels between windows would not be predicted"
            )
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"window weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.crops_per_batch < 1:
            raise ConfigError(f"crops per batch must be at least 1, got {self.crops_per_batch}")

    def describe(self) -> str:
        """E.g. ``512x512 windows every 384x384 (gaussian)``."""
        return f"{self.size[0]}x{self.size[1]} windows every {self.stride[0]}x{self.stride[1]} ({self.weighting})"

    def crop_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The crops' ``(height, width)`` for images of ``size``: the window, or a shorter side whole."""
        return (min(self.size[0], size[0]), min(self.size[1], size[1]))
