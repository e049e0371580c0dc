"""What every poller piece shares: the config, the database and the thread that talks to it.

Database work (capture, checkpoints, flag sync) is blocking SQLAlchemy code; it runs on dedicated
threads (:class:`DbThread`) so the event loop keeps serving every other mailbox's sockets, IDLE and
timers meanwhile: one on SQLite, whose single writer gains nothing from more; several on
PostgreSQL, each mailbox on one of them, so a burst across many mailboxes is captured in parallel.
Fetched messages are parsed beforehand on a thread of their own (:attr:`PollerContext.parse`), so a
database thread runs only queries, and parses the next batch while the previous one is captured.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from crm.config import Config, PollerConfig
from crm.errors import SecretError, UpstreamAuthError
from crm.face import Database, oauth
from crm.face.poller import Capturer, SecretBox, load_key

P = ParamSpec("P")
T = TypeVar("T")


class DbThread:
    """Runs blocking database calls off the event loop, one at a time on each of its threads.

    One thread by default. With several (PostgreSQL, ``[poller] db_threads``), each mailbox's
    calls go to one of them, :meth:`lane`, so they stay in order (an activity committed before
    its checkpoint moves) while other mailboxes capture on the other threads at the same time.
    """

    def __init__(
        self, threads: int = 1, pools: list[ThreadPoolExecutor] | None = None, name: str = "db"
    ) -> None:
        self._pools = pools or [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mailcrm-poller-{name}{n}")
            for n in range(max(1, threads))
        ]

    def lane(self, key: int) -> DbThread:
        """The thread for calls about ``key`` (a mailbox id): one key, one thread, in order."""
        return DbThread(pools=[self._pools[key % len(self._pools)]])

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pools[0], functools.partial(fn, *args, **kwargs))

    async def drain(self) -> None:
        """Return once every call queued before this one is done (each thread runs in order)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, _nothing) for pool in self._pools))

    async def close(self) -> None:
        """Let the running calls finish, then stop the threads (a lane's close stops its
        thread for every lane on it: only the owner of the whole set closes)."""
        loop = asyncio.get_running_loop()
        for pool in self._pools:
            await loop.run_in_executor(None, pool.shutdown)


def _nothing() -> None:
    """The call :meth:`DbThread.drain` queues behind the others."""


@dataclass
class PollerContext:
    """The shared pieces of one running poller."""

    config: PollerConfig
    db: Database
    run: DbThread
    capturer: Capturer
    #: Called on the loop as an import goes: ``("found", n)`` when a UID SEARCH found ``n`` new
    #: messages, ``("done", n)`` when ``n`` more were stored (captured, duplicate or skipped).
    #: ``mailcrm mailbox import`` draws its progress bar from it.
    progress: Callable[[str, int], None] | None = field(default=None, compare=False)
    #: Where fetched messages are parsed before capture (no database); None: on :attr:`run`.
    parse: DbThread | None = field(default=None, compare=False)
    #: OAuth2 mailboxes (issue 15): address -> (access token, when to refresh it); blocking
    #: (it may ask the provider), so it runs on a thread of its own, never the database thread
    tokens: Callable[[str], tuple[str, dt.datetime]] | None = field(default=None, compare=False)

    async def parsing(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` on the parse thread (on the database thread without one)."""
        return await (self.parse or self.run)(fn, *args, **kwargs)

    async def token(self, address: str) -> tuple[str, dt.datetime]:
        """A valid access token for an OAuth2 mailbox (refreshed at 80 % of its lifetime)."""
        if self.tokens is None:
            raise UpstreamAuthError("OAuth2 mailbox, but no secret key to open its tokens")
        return await asyncio.to_thread(self.tokens, address)

    def report(self, event: str, count: int) -> None:
        """Tell :attr:`progress`, if anyone listens."""
        if self.progress is not None and count:
            self.progress(event, count)


def token_source(db: Database, config: Config) -> Callable[[str], tuple[str, dt.datetime]] | None:
    """How OAuth2 mailboxes get their access tokens (None when the key cannot be loaded)."""
    try:
        secrets = SecretBox(load_key(config, create=False))
    except SecretError:
        return None
    return functools.partial(oauth.access_token, db, secrets)
