"""What ``mailcrm mailbox import`` shows while it runs: a progress bar, or plain lines.

:class:`ImportView` keeps the numbers. The total starts as the count made before the import
(:meth:`ImportView.plan`) and follows the importer's ``found`` reports where they say more (mail
that arrived meanwhile); a finished folder counts what was actually stored, so the bar ends full
even when messages were expunged meanwhile. ``done`` reports advance it.

:class:`BarView` draws a rich progress bar on stderr (a terminal): folder, count, rate and time
left. :class:`LineView` prints a plain line at every tenth of the way (pipes, logs, tests).
Both keep stdout free for the summary or ``--json``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class ImportView:
    """The progress of one import; subclasses draw it."""

    def __init__(self) -> None:
        self.counted: dict[str, int] = {}
        self.found: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.finished: set[str] = set()
        self.folder = ""

    @property
    def total(self) -> int:
        """Messages to import in all: counted, or found when more, or stored once finished."""
        names = set(self.counted) | set(self.found) | set(self.done)
        return sum(self._total(name) for name in names)

    def _total(self, name: str) -> int:
        done = self.done.get(name, 0)
        if name in self.finished:
            return done
        return max(self.counted.get(name, 0), self.found.get(name, 0), done)

    @property
    def completed(self) -> int:
        """Messages stored so far (captured, duplicate or skipped)."""
        return sum(self.done.values())

    def plan(self, counts: dict[str, int]) -> None:
        """The count made before the import, per folder."""
        self.counted = dict(counts)
        self.draw()

    def begin(self, folder: str) -> None:
        """The import of ``folder`` starts."""
        self.folder = folder
        self.draw()

    def event(self, kind: str, count: int) -> None:
        """The poller's progress hook: ``("found", n)`` or ``("done", n)``."""
        book = self.found if kind == "found" else self.done if kind == "done" else None
        if book is not None:
            book[self.folder] = book.get(self.folder, 0) + count
            self.draw()

    def end(self, folder: str) -> None:
        """``folder`` is done."""
        self.finished.add(folder)
        self.draw()

    def note(self, text: str) -> None:
        """A line for the operator (e.g. waiting for a lease)."""

    def draw(self) -> None:
        """Show the current numbers."""

    def close(self) -> None:
        """The import ended (finished, interrupted or failed)."""


class _Rate(ProgressColumn):
    """Messages per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} msg/s", style="progress.data.speed")


class BarView(ImportView):
    """A live progress bar on the terminal's stderr."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),  # folder names are the server's
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task(f"{address}: counting", total=None)
        self.progress.start()

    def draw(self) -> None:
        label = f"{self.address} {self.folder}".strip() if self.counted else self.address
        self.progress.update(
            self.task, total=self.total or None, completed=self.completed, description=label
        )

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.folder = ""
        self.draw()
        self.progress.stop()


class LineView(ImportView):
    """Plain lines: the count, then one line at every tenth of the way."""

    def __init__(self, address: str, stream: TextIO | None = None) -> None:
        super().__init__()
        self.address = address
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.shown = -1

    def plan(self, counts: dict[str, int]) -> None:
        super().plan(counts)
        self.started = time.monotonic()
        parts = ", ".join(f"{name} {n}" for name, n in counts.items())
        self.note(f"{self.address}: {sum(counts.values())} messages to import ({parts})")

    def draw(self) -> None:
        total = self.total
        if not total or not self.counted:
            return
        step = self.completed * 10 // total
        if step > self.shown and self.completed:
            self.shown = step
            self.note(f"{self.address}: {self.completed}/{total} {self._pace(total)}")

    def _pace(self, total: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.completed / elapsed
        left = (total - self.completed) / rate if rate else 0.0
        return f"({rate:,.0f} msg/s, {_duration(left)} left)"

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def make_view(address: str, live: bool | None = None) -> ImportView:
    """A bar when stderr is a terminal, plain lines otherwise."""
    if live is None:
        live = sys.stderr.isatty()
    return BarView(address) if live else LineView(address)
