"""The threshold: a pixel is foreground when its probability is above it."""

from __future__ import annotations

from typing import Any

import numpy as np

from lovaszseg.errors import ConfigError
from lovaszseg.scoring.postprocess.steps import Step, register
from lovaszseg.thresholds import DEFAULT_THRESHOLD


@register
class Threshold(Step):
    """Foreground where the probability is above ``value``, a probability in [0, 1]."""

    name = "threshold"
    option = "--threshold"
    order = 0
    default = DEFAULT_THRESHOLD

    @classmethod
    def check(cls, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"threshold must be a probability in [0, 1], got {value!r}")
        return float(value)

    def apply(self, probabilities: np.ndarray, masks: np.ndarray, empty: np.ndarray | None) -> np.ndarray:
        return probabilities > self.value

    def describe(self) -> str:
        return f"threshold {self.value:.2f}"
