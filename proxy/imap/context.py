"""What every poller piece shares: the config, the database and the thread that talks to it.

Database work (capture, checkpoints, flag sync) is blocking SQLAlchemy code; it runs on one
dedicated thread (:class:`DbThread`) so the event loop keeps serving every other mailbox's
sockets, IDLE and timers meanwhile, and so the poller's writes never contend with each other.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from crm.config import PollerConfig
from crm.face import Database
from crm.face.poller import Capturer

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

    def report(self, event: str, count: int) -> None:
        """Tell :attr:`progress`, if anyone listens."""
        if self.progress is not None and count:
            self.progress(event, count)
