"""The min-area rule: a predicted mask with fewer foreground pixels is emptied.

The rule every top TGS Salt solution used: small predicted blobs on empty images cost a whole image's
score. Tuned exactly: every distinct predicted area is a candidate, not a grid of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lovaszseg.errors import ConfigError
from lovaszseg.scoring.postprocess.counts import ImageCounts
from lovaszseg.scoring.postprocess.steps import Rule, register


@register
class MinArea(Rule):
    """Empty a mask with fewer than ``value`` foreground pixels (0: never)."""

    name = "min_area"
    option = "--min-area"
    order = 10
    default = 0

    @classmethod
    def check(cls, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ConfigError(f"min-area must be a non-negative number of pixels, got {value!r}")
        return int(value)

    def apply(self, probabilities: np.ndarray, masks: np.ndarray, empty: np.ndarray | None) -> np.ndarray:
        areas = np.count_nonzero(masks, axis=(-2, -1))
        return masks & (areas >= self.value)[..., None, None]

    def describe(self) -> str:
        return f"min-area {self.value} px"

    @classmethod
    def keys(cls, counts: ImageCounts) -> np.ndarray:
        return counts.predicted

    @classmethod
    def cuts(cls, ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Emptying the ``k`` smallest predictions is a min-area (the ``k``-th area + 1) only where the
        ``k``-th and ``k+1``-th areas differ; ``k = 0`` is min-area 0."""
        edge = np.ones((1, ordered.shape[1]), dtype=bool)
        valid = np.vstack([edge, ordered[1:] != ordered[:-1], edge])
        return valid, np.vstack([np.zeros((1, ordered.shape[1]), dtype=ordered.dtype), ordered + 1])
