"""Ctrl-C and SIGTERM during training: the first asks the loop to stop cleanly, a second stops at once."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType

__all__ = ["StopRequest", "exit_code"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's exit status for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


class StopRequest:
    """While active, SIGINT/SIGTERM set :attr:`signum` (the loop checks it between steps, saves and
    stops); a second signal raises ``KeyboardInterrupt`` at once, for a user who will not wait."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        self.signum = signum

    def __enter__(self) -> StopRequest:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    @property
    def requested(self) -> bool:
        return self.signum is not None
