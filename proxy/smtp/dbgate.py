"""The relay's door to the CRM database: blocking calls run off the loop, bounded in time.

Every database call of the relay (login lookup, linking, spool writes) goes through
:class:`DbGate`: a thread pool of its own (so a stalled database cannot starve the file fallback
or anything else that uses the default executor; one thread for SQLite, whose writers queue up
anyway), a time limit per call, and a breaker that stays open for a few seconds after a failure
or timeout, during which calls fail at once. The relay then
goes on without the CRM (B1): mail is delivered and its capture copy goes to the file spool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from crm.errors import MailcrmError
from crm.face import StoreError

log = logging.getLogger("proxy.dbgate")  # its name before the move (issue 17)
P = ParamSpec("P")
T = TypeVar("T")
COOLDOWN = 5.0


class DbUnavailable(MailcrmError):
    """The CRM database did not answer in time or failed; the relay goes on without it."""


class DbGate:
    """Runs database functions in a dedicated pool with a timeout and a breaker."""

    def __init__(self, timeout: float, threads: int = 4, cooldown: float = COOLDOWN) -> None:
        self.timeout = timeout
        self.cooldown = cooldown
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mailcrm-relay-db")
        self._open_until = 0.0

    @property
    def available(self) -> bool:
        """False while the breaker is open (a recent call failed or timed out)."""
        return time.monotonic() >= self._open_until

    def trip(self, why: object) -> None:
        if self.available:
            log.warning("CRM database unavailable (%s); relaying without it for now", why)
        self._open_until = time.monotonic() + self.cooldown

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``func(*args)`` in the pool; DbUnavailable on timeout or database errors.

        The time limit covers the wait for a free thread too; a call still waiting when it runs
        out is dropped, one already running finishes on its own and its result is ignored.
        """
        if not self.available:
            raise DbUnavailable("the CRM database is unavailable")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, lambda: func(*args, **kwargs))
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError as exc:
            self.trip("timeout")
            raise DbUnavailable("the CRM database did not answer in time") from exc
        except (StoreError, OSError) as exc:
            self.trip(exc.__class__.__name__)
            raise DbUnavailable(f"CRM database error: {exc}") from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
