"""The probability thresholds of binary predictions, defined once (plain Python: the CLI imports it)."""

from __future__ import annotations

__all__ = ["DEFAULT_THRESHOLD", "THRESHOLD_GRID"]

# A binary pixel is foreground when its probability is > this, wherever no threshold is given.
DEFAULT_THRESHOLD = 0.5
# The thresholds every threshold search tries: 0.05, 0.06, ..., 0.95 (DEFAULT_THRESHOLD among them).
THRESHOLD_GRID: tuple[float, ...] = tuple(step / 100 for step in range(5, 96))
