"""What every poller piece shares: the config, the database and the thread that talks to it.

Database work (capture, checkpoints, flag sync) is blocking SQLAlchemy code; it runs on one
dedicated thread (:class:`DbThread`) so the event loop keeps serving every other mailbox's
sockets, IDLE and timers meanwhile, and so the poller's writes never contend with each other.
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
    """Runs blocking database calls, one at a time, off the event loop."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailcrm-poller-db")

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def drain(self) -> None:
        """Return once every call queued before this one is done (the thread runs them in order)."""
        await self(_nothing)

    async def close(self) -> None:
        """Let the running call finish, then stop the thread."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)


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
    #: OAuth2 mailboxes (issue 15): address -> (access token, when to refresh it); blocking
    #: (it may ask the provider), so it runs on a thread of its own, never the database thread
    tokens: Callable[[str], tuple[str, dt.datetime]] | None = field(default=None, compare=False)

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
