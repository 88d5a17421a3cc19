"""The min-area rule: a predicted mask with fewer foreground pixels is emptied.

The rule every top TGS Salt solution used: small predicted blobs on empty images cost a whole image's
score. Tuned exactly: every distinct predicted area is a candidate, not a grid of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lovaszseg.errors import ConfigError
from lovaszseg.scoring.postprocess.counts import ImageCounts, cut_values
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

    def empties(self, counts: ImageCounts) -> np.ndarray:
        return counts.predicted < self.value

    def describe(self) -> str:
        return f"min-area {self.value} px"

    @classmethod
    def empties_per_column(cls, counts: ImageCounts, rules: list[Rule]) -> np.ndarray:
        return counts.predicted < np.asarray([rule.value for rule in rules])[None, :]

    @classmethod
    def tune(cls, counts: ImageCounts, metric: str) -> list[Rule]:
        """For every threshold, the min-area that empties the best number of smallest predictions.

        Images are sorted by predicted area; emptying the ``k`` smallest is a min-area rule only where the
        ``k``-th and ``k+1``-th areas differ, so only those cuts (and ``k = 0``) are candidates; the first
        maximum (the smallest min-area) wins ties.
        """
        values = cut_values(counts, metric, counts.predicted)
        area = np.sort(counts.predicted, axis=0, kind="stable")
        valid = np.vstack([np.ones((1, area.shape[1]), bool), area[1:] != area[:-1], np.ones((1, area.shape[1]), bool)])
        best = np.where(valid, values, -np.inf).argmax(0)
        columns = np.arange(area.shape[1])
        min_area = np.where(best > 0, area[np.maximum(best - 1, 0), columns] + 1, 0)
        return [cls(int(value)) for value in min_area]
