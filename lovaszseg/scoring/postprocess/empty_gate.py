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
from lovaszseg.scoring.postprocess.counts import ImageCounts
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

    def describe(self) -> str:
        return f"empty-gate {self.value:.3f}"

    @classmethod
    def keys(cls, counts: ImageCounts) -> np.ndarray | None:
        if counts.empty is None:
            return None
        return np.broadcast_to(counts.empty.astype(np.float64)[:, None], counts.predicted.shape)

    @classmethod
    def cuts(cls, ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The gates: 0 (no gate) and the midpoints between consecutive distinct probabilities, and
        between the highest and 1 (where it is below 1)."""
        columns = ordered.shape[1]
        valid = np.vstack([np.ones((1, columns), dtype=bool), ordered[:-1] != ordered[1:], ordered[-1:] < 1.0])
        above = np.vstack([ordered[1:], np.ones((1, columns))])
        return valid, np.vstack([np.zeros((1, columns)), (ordered + above) / 2])
