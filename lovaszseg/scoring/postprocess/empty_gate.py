"""The empty gate: an image whose empty-image head (``model.empty_head``) gives it a probability of
foreground below the gate is predicted empty, whatever its mask says.

It needs the head's probabilities: recorded with the counts (:attr:`ImageCounts.empty`) for tuning,
given to :meth:`apply` for predictions. Without them it is tuned off (0) and a gate above 0 is refused.
Tuned exactly, as the min-area rule: every cut between two distinct head probabilities is a candidate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lovaszseg.errors import ConfigError
from lovaszseg.scoring.postprocess.counts import ImageCounts, cut_values
from lovaszseg.scoring.postprocess.steps import Rule, register


@register
class EmptyGate(Rule):
    """Empty the mask of an image whose head probability of foreground is below ``value`` (0: never)."""

    name = "empty_gate"
    option = "--empty-gate"
    order = 20
    default = 0.0

    @classmethod
    def check(cls, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"empty-gate must be a probability in [0, 1], got {value!r}")
        return float(value)

    def apply(self, probabilities: np.ndarray, masks: np.ndarray, empty: np.ndarray | None) -> np.ndarray:
        if not self.value:
            return masks
        if empty is None:
            raise ConfigError(
                f"--empty-gate {self.value:g} needs the probabilities of an empty-image head (model.empty_head); "
                "this model has none: use --empty-gate 0"
            )
        return masks & (empty >= self.value)[..., None, None]

    def empties(self, counts: ImageCounts) -> np.ndarray:
        return self.empties_per_column(counts, [self] * counts.predicted.shape[1])

    def describe(self) -> str:
        return f"empty-gate {self.value:.3f}"

    @classmethod
    def empties_per_column(cls, counts: ImageCounts, rules: list[Rule]) -> np.ndarray:
        gates = np.asarray([rule.value for rule in rules])[None, :]
        if counts.empty is None:
            return np.zeros(counts.predicted.shape, dtype=bool)
        return counts.empty[:, None] < gates

    @classmethod
    def tune(cls, counts: ImageCounts, metric: str) -> list[Rule]:
        """For every threshold, the gate that empties the best number of images of lowest head probability.

        The candidates are 0 (no gate) and the midpoints between consecutive distinct probabilities (and
        between the highest and 1); the first maximum (the lowest gate) wins ties.
        """
        columns = counts.predicted.shape[1]
        if counts.empty is None:
            return [cls(cls.default)] * columns
        heads = counts.empty.astype(np.float64)
        values = cut_values(counts, metric, np.broadcast_to(heads[:, None], counts.predicted.shape))
        ordered = np.sort(heads, kind="stable")
        gates = np.concatenate([[0.0], (ordered + np.append(ordered[1:], 1.0)) / 2])
        valid = np.concatenate([[True], ordered[:-1] != ordered[1:], [ordered[-1] < 1.0]])
        best = np.where(valid[:, None], values, -np.inf).argmax(0)
        return [cls(float(gates[k])) for k in best]
