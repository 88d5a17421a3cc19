"""Ctrl-C and SIGTERM during training: the first asks the loop to stop cleanly, a second stops at once."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

__all__ = ["StopRequest", "exit_code"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's exit status for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


class StopRequest:
    """While active, SIGINT/SIGTERM set :attr:`signum` (the loop checks it between steps, saves and
    stops); a second signal raises ``KeyboardInterrupt`` at once, for a user who will not wait, except
    inside :meth:`deferred`, which raises it on leaving."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._deferring = False
        self._forced: int | None = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        elif self._deferring:
            self._forced = signum
        else:
            self._force(signum)

    @staticmethod
    def _force(signum: int) -> None:
        raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a second signal until the block ends: for work that an exception raised at any bytecode
        breaks beyond the traceback (the first import of matplotlib's C extension aborts the interpreter)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        forced, self._forced = self._forced, None
        if forced is not None:
            self._force(forced)

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
