"""A wall-clock stack sampler for a running node (py-spy is not installed here), used by
``bench/idlescale.py --sample``.

:func:`install` (before ``cli.main()``) arms two signals: SIGUSR1 starts a daemon thread that
records, every ``interval`` seconds, the Python stack of every other thread; SIGUSR2 stops it and
writes to ``path`` the samples per thread group (the event loop, the database threads, the parse
thread), each function's share of that group's samples (counted once per sample, so a share is
inclusive), and the collapsed stacks (``flamegraph.pl`` input) below. A thread blocked in C with the
GIL released (a socket read, ``cursor.execute`` waiting for PostgreSQL) shows the Python line that
called it: the shares are of wall time, not CPU.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

TOP = 25


class Sampler:
    """Samples every thread's stack between SIGUSR1 and SIGUSR2."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path, self.interval = path, interval
        self.stacks: Counter[tuple[str, tuple[str, ...]]] = Counter()
        self.running = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, *_: object) -> None:
        if self.thread is None:
            self.running.set()
            self.thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
            self.thread.start()

    def stop(self, *_: object) -> None:
        if self.thread is not None:
            self.running.clear()
            self.thread.join(5)
            self.thread = None
            self.path.write_text(self.report())

    def _loop(self) -> None:
        me = threading.get_ident()
        while self.running.is_set():
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    self.stacks[(_group(names.get(ident, "?")), _stack(frame))] += 1
            time.sleep(self.interval)

    def report(self) -> str:
        """Per group: samples, each function's inclusive share; then the collapsed stacks."""
        lines: list[str] = []
        for group in sorted({g for g, _ in self.stacks}):
            mine = {s: n for (g, s), n in self.stacks.items() if g == group}
            total = sum(mine.values())
            inclusive: Counter[str] = Counter()
            for stack, n in mine.items():
                for name in set(stack):
                    inclusive[name] += n
            lines.append(f"== {group}: {total} samples ({total * self.interval:.1f} s of wall)")
            for name, n in inclusive.most_common(TOP):
                lines.append(f"  {100 * n / total:5.1f} %  {name}")
        lines.append("== collapsed stacks")
        for (group, stack), n in self.stacks.most_common():
            lines.append(f"{group};{';'.join(stack)} {n}")
        return "\n".join(lines) + "\n"


def _group(name: str) -> str:
    return re.sub(r"_\d+$", "", re.sub(r"\d+(_\d+)?$", "", name)) or name


def _stack(frame: FrameType | None) -> tuple[str, ...]:
    names: list[str] = []
    while frame is not None:
        code = frame.f_code
        names.append(f"{Path(code.co_filename).name}:{code.co_name}")
        frame = frame.f_back
    return tuple(reversed(names))


def install(path: str, interval: float = 0.005) -> Sampler:
    """Arm SIGUSR1 (start) and SIGUSR2 (stop and write ``path``) in this process."""
    sampler = Sampler(Path(path), interval)
    signal.signal(signal.SIGUSR1, sampler.start)
    signal.signal(signal.SIGUSR2, sampler.stop)
    return sampler
