"""Progress of a loop (an epoch, an evaluation, a prediction) wherever output goes: a live bar or plain lines."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["PROGRESS_SECONDS", "LoopProgress", "shows_bar"]

# Seconds between plain progress lines where no live bar can be drawn (a log file, nohup, CI, a scheduler):
# often enough to see a run is alive, rare enough to keep a log short (the default of output.progress_seconds).
PROGRESS_SECONDS = 30.0


def shows_bar(console: Console) -> bool:
    """Whether ``console`` can show a live progress bar rather than plain lines.

    A terminal that redraws can; so can a Jupyter/Kaggle/Colab notebook, where rich renders its live
    display into an ipywidgets ``Output`` (without ipywidgets rich would show nothing there).
    """
    if console.is_jupyter:
        return importlib.util.find_spec("ipywidgets") is not None
    return console.is_interactive


class LoopProgress:
    """Progress of a loop of steps (a training epoch, an evaluation, a prediction) wherever output goes.

    A live rich bar (steps, images/s, loss, elapsed time, ETA) where it can be redrawn (see
    :func:`shows_bar`); elsewhere (a log file, ``nohup``, CI, a scheduler) a plain line such as
    ``1-bce 2/10  step 40/120  35.2 img/s  loss 0.3141  ETA 0:00:09`` at most every ``interval``
    seconds, so that a log shows a long loop is alive without filling up. Times come from the console's
    clock (``Console(get_time=...)``).

    Use it as a context manager and call :meth:`advance` after each step, or pass ``advance`` as a
    callback (``evaluate(..., progress=progress.advance)``).

    Args:
        console: Where the bar or lines go.
        description: What the loop is, e.g. ``1-bce 2/10`` or ``eval val``.
        total: Steps of the loop.
        unit: What a step is, for the plain lines (``step``, ``image``).
        enabled: False shows nothing (e.g. on every DDP rank but the first).
        interval: Seconds between plain lines.
    """

    def __init__(
        self,
        console: Console,
        description: str,
        total: int,
        *,
        unit: str = "step",
        enabled: bool = True,
        interval: float = PROGRESS_SECONDS,
    ) -> None:
        self.console, self.description, self.total = console, description, total
        self.unit, self.interval = unit, interval
        self.steps, self.images = 0, 0
        self.loss: float | None = None
        self.started = self.last_line = console.get_time()
        self.lines = enabled and not shows_bar(console)
        self.bar: Progress | None = None
        if enabled and not self.lines:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,  # the caller prints the loop's result line
            )
            self.task = self.bar.add_task(description, total=total, stats="")
            self.bar.start()

    def advance(self, images: int, loss: float | None = None) -> None:
        """Count one finished step.

        Args:
            images: Images the step processed.
            loss: The loss to show (e.g. the epoch's running mean), if the loop has one.
        """
        self.steps, self.images = self.steps + 1, self.images + images
        self.loss = loss if loss is not None else self.loss
        now = self.console.get_time()
        if self.bar is not None:
            self.bar.update(self.task, completed=self.steps, stats=self._stats(now - self.started))
        elif self.lines and now - self.last_line >= self.interval:
            self.last_line = now
            self.console.print(self._line(now - self.started), soft_wrap=True, markup=False, highlight=False)

    def _stats(self, elapsed: float) -> str:
        speed = f"{self.images / max(elapsed, 1e-9):.1f} img/s"
        return speed if self.loss is None else f"{speed}  loss {self.loss:.4f}"

    def _line(self, elapsed: float) -> str:
        eta = elapsed / self.steps * max(self.total - self.steps, 0)
        where = f"{self.unit} {self.steps}/{self.total}"
        return f"{self.description}  {where}  {self._stats(elapsed)}  ETA {timedelta(seconds=round(eta))}"

    def close(self) -> None:
        """Remove the bar (plain lines need no ending: the caller prints the loop's result)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> LoopProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
