"""Reconnect delays: jittered exponential backoff that honours the server's throttling hints.

A failing mailbox waits ``base * 2**n`` (capped), jittered to between half and all of it so that
many mailboxes of one broken server do not reconnect in step. A server that says how long to
wait (``[UNAVAILABLE]``, ``[INUSE]``, ``[LIMIT]``, "try again in 5 minutes") is waited for at
least that long.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

_CODES = {"UNAVAILABLE": 60.0, "INUSE": 60.0, "LIMIT": 120.0, "OVERQUOTA": 300.0}
_CODE = re.compile(r"\[(UNAVAILABLE|INUSE|LIMIT|OVERQUOTA)\b", re.IGNORECASE)
_AFTER = re.compile(
    r"(?:try again|retry|wait)\D{0,20}?(\d+)\s*"
    r"(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)\b",
    re.IGNORECASE,
)
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}


def throttle_hint(text: str) -> float | None:
    """Seconds the server asked us to stay away, if it said so."""
    wait: float | None = None
    if match := _AFTER.search(text):
        wait = int(match.group(1)) * _UNIT[match.group(2)[0].lower()]
    if match := _CODE.search(text):
        wait = max(wait or 0.0, _CODES[match.group(1).upper()])
    return wait


class Backoff:
    """Delays for consecutive failures; :meth:`reset` after a success."""

    def __init__(self, base: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rand = rand

    def next(self, hint: float | None = None, floor: float = 0.0) -> float:
        """The delay before the next attempt."""
        self.failures += 1
        full = min(self.cap, self.base * float(2 ** min(self.failures - 1, 30)))
        delay = full * (0.5 + self._rand() / 2)
        return max(delay, floor, min(hint or 0.0, 24 * 3600.0))

    def reset(self) -> None:
        """The last attempt worked."""
        self.failures = 0
