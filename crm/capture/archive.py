"""Capture of a batch of stored messages (``mailcrm capture``: files, Maildirs, mbox archives).

Each message goes through the one capture path (:class:`crm.capture.Capturer`), as old mail
found at linking would (``history``: the mailbox's import window, C12, applies) unless the
caller takes all of it. The decisions do not depend on the order of the batch, nor on having
imported the same batch before: a robot's mail (B4) makes no lead, but is bound to a lead or
contact the CRM knows (C3); when that lead comes from a later message of the same batch, the
robot's mail is decided again at the end, so a second run of the same archive finds nothing new.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from crm.errors import MailcrmError
from crm.vocab import Direction

from .path import Capturer, CaptureResult

log = logging.getLogger("mailcrm.capture")
WINDOW_REASON = "before the import window"


@dataclass(frozen=True)
class Batch:
    """Where a batch goes and how it is judged."""

    mailbox: str
    direction: Direction
    seen: bool = False
    window: bool = True  # the mailbox's import window applies (False: ``--since all``)


def capture_batch(
    capturer: Capturer, batch: Batch, sources: Iterable[tuple[str, bytes | Exception, bool]]
) -> list[CaptureResult]:
    """One result per source, in order; a robot's mail skipped as unknown is tried again once
    the rest of the batch is in."""
    results: list[CaptureResult] = []
    again: dict[int, tuple[str, bytes, bool]] = {}
    for source, raw, flag in sources:
        result = capture_one(capturer, batch, source, raw, flag)
        if isinstance(raw, bytes) and (result.reason or "").startswith("robot:"):
            again[len(results)] = (source, raw, flag)
        results.append(result)
    for index, (source, raw, flag) in again.items():
        results[index] = capture_one(capturer, batch, source, raw, flag)
    return results


def capture_one(
    capturer: Capturer, batch: Batch, source: str, raw: bytes | Exception, seen: bool
) -> CaptureResult:
    """One message; a bad one is a skipped result with its reason, never an exception."""
    if isinstance(raw, Exception):
        return CaptureResult(source, "skipped", f"cannot read: {raw}")
    try:
        return capturer.capture(
            raw, batch.mailbox, batch.direction, source=source, seen=batch.seen or seen,
            history=batch.window,
        )  # fmt: skip
    except MailcrmError as exc:
        return CaptureResult(source, "skipped", str(exc))
    except Exception as exc:  # one bad message never stops the batch; the cause is logged
        log.exception("capture of %s failed", source)
        return CaptureResult(source, "skipped", f"error: {type(exc).__name__}: {exc}"[:300])


def summary(results: list[CaptureResult], mailbox: str) -> str:
    """``3 captured, 0 duplicate, 5 skipped`` and, when some were older than the import window,
    how many and how to take them too."""
    counts = {a: sum(r.action == a for r in results) for a in ("captured", "duplicate", "skipped")}
    line = ", ".join(f"{n} {a}" for a, n in counts.items())
    old = sum((r.reason or "").startswith(WINDOW_REASON) for r in results)
    if old:
        line += (
            f" ({old} of them before the import window of {mailbox}; "
            "add --since all to capture them too)"
        )
    return line
