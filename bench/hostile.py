"""Hostile MIME figures: the corpus of ``tests/security/hostile.py`` through ``Capturer.capture``.

Run from the repository root::

    .venv/bin/python bench/hostile.py [--mutants 40] [--top 10]

Every message of the seeded corpus (deep nesting to 5,000 levels, huge headers and encoded words,
broken encodings, vCard floods, NULs, 8-bit headers, endless boundaries, 10,000 parts, ...) is
captured into a fresh SQLite CRM, one after the other in this process. For each it measures the
wall time and the RSS growth: the peak RSS (VmHWM of /proc/self/status) is reset to the current
RSS before the message (``5`` written to /proc/self/clear_refs) and read after it, so the growth
is that message's own; where /proc cannot be reset it falls back to ``ru_maxrss`` deltas (which
only show growth past the earlier peak). A message whose capture raises counts as a crash.

It prints the counts (messages fuzzed, crashes, captured/duplicate/skipped, skip reasons), the
maximum time and RSS growth per message, and the slowest and hungriest messages. It never
judges the figures: no assertion, exit status 0 (1 only when a message crashed).
"""

from __future__ import annotations

import argparse
import collections
import gc
import re
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402

from crm.capture.path import Capturer  # noqa: E402
from crm.face import admin  # noqa: E402
from crm.store.db import Database  # noqa: E402
from crm.store.secrets import SecretBox  # noqa: E402
from crm.vocab import Direction  # noqa: E402
from tests.security.hostile import TO, corpus  # noqa: E402

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Figure:
    """What capturing one message cost."""

    name: str
    size: int
    seconds: float
    rss_growth_kb: int
    outcome: str


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    return int(match[1]) if match else 0


def _can_reset_peak() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") > 0


class Peak:
    """The RSS growth of one measured step: VmHWM after minus VmRSS before, or ru_maxrss."""

    def __init__(self) -> None:
        self.proc = _can_reset_peak()

    def start(self) -> int:
        gc.collect()
        if self.proc:
            CLEAR_REFS.write_text("5")
            return _status_kb("VmRSS")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def growth(self, start: int) -> int:
        if self.proc:
            return max(0, _status_kb("VmHWM") - start)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start)


def measure(capturer: Capturer, name: str, raw: bytes, peak: Peak) -> Figure:
    mark = peak.start()
    started = time.perf_counter()
    try:
        result = capturer.capture(raw, TO, Direction.INCOMING, source=name)
        outcome = result.action if result.action != "skipped" else f"skipped: {result.reason}"
    except Exception as exc:  # a crash: what the bench counts
        outcome = f"CRASH {type(exc).__name__}: {str(exc)[:80]}"
    seconds = time.perf_counter() - started
    return Figure(name, len(raw), seconds, peak.growth(mark), outcome)


def crm(directory: Path) -> Capturer:
    db = Database(f"sqlite:///{directory / 'hostile.db'}")
    with db.session() as session:
        settings = admin.MailboxSettings(since="all")
        admin.add_mailbox(session, SecretBox(Fernet.generate_key()), TO, None, settings)
    return Capturer(db)


def report(figures: list[Figure], top: int, method: str) -> None:
    crashes = [f for f in figures if f.outcome.startswith("CRASH")]
    actions = collections.Counter(f.outcome.split(":")[0] for f in figures)
    reasons = collections.Counter(f.outcome[9:] for f in figures if f.outcome.startswith("skip"))
    slowest = max(figures, key=lambda f: f.seconds)
    hungriest = max(figures, key=lambda f: f.rss_growth_kb)
    print(f"messages fuzzed:          {len(figures)} ({sum(f.size for f in figures) >> 20} MB)")
    print(f"crashes:                  {len(crashes)}")
    print(f"outcomes:                 {dict(actions)}")
    print(f"skip reasons:             {dict(reasons)}")
    print(f"max time per message:     {slowest.seconds:.3f} s ({slowest.name})")
    print(f"max RSS growth / message: {hungriest.rss_growth_kb / 1024:.1f} MB ({hungriest.name}, "
          f"{method})")  # fmt: skip
    print(f"total capture time:       {sum(f.seconds for f in figures):.1f} s")
    print(f"\n{'message':30} {'size':>9} {'time s':>8} {'RSS+ MB':>8}  outcome")
    ranked = sorted(figures, key=lambda f: (f.seconds, f.rss_growth_kb), reverse=True)
    for f in ranked[:top]:
        print(f"{f.name:30} {f.size:9d} {f.seconds:8.3f} {f.rss_growth_kb / 1024:8.1f}  "
              f"{f.outcome[:60]}")  # fmt: skip
    for f in crashes:
        print(f"CRASHED: {f.name}: {f.outcome}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutants", type=int, default=40, help="seeded random mutants")
    parser.add_argument("--top", type=int, default=10, help="costliest messages listed")
    args = parser.parse_args()
    cases = corpus(mutants=args.mutants)
    peak = Peak()
    with tempfile.TemporaryDirectory() as tmp:
        capturer = crm(Path(tmp))
        measure(capturer, "warm-up", cases[0].raw, peak)  # imports, caches, first queries
        capturer = crm(Path(tempfile.mkdtemp(dir=tmp)))
        figures = [measure(capturer, case.name, case.raw, peak) for case in cases]
        capturer.db.dispose()
    method = "VmHWM reset per message" if peak.proc else "ru_maxrss deltas"
    report(figures, args.top, method)
    return 1 if any(f.outcome.startswith("CRASH") for f in figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
