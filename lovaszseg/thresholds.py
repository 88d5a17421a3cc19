"""The probability thresholds of binary predictions, defined once (kept free of torch for a fast CLI)."""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_THRESHOLD", "THRESHOLD_GRID"]

# A binary pixel is foreground when its probability is > this, wherever no threshold is given.
DEFAULT_THRESHOLD = 0.5
# The thresholds every threshold search tries: 0.05, 0.06, ..., 0.95 (DEFAULT_THRESHOLD among them).
THRESHOLD_GRID: np.ndarray = np.arange(5, 96) / 100
THRESHOLD_GRID.setflags(write=False)
