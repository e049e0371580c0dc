"""DATA, the moment of truth (B1): forward upstream, make the capture copy durable, answer.

The message streams to the upstream; once the upstream accepted it, its capture copy is made
durable, and only then does the client get the upstream's own 250. Where the copy goes first
depends on the database (:func:`crm.spool.files_first`):

- PostgreSQL: the database spool, as a *delivered* entry any node can capture. Copies from
  concurrent connections are written together, one transaction per batch (group commit).
- SQLite: the local file spool (write, fsync, rename, like an MTA's queue). SQLite has one write
  lock for the whole file and the capture worker holds it while it captures; a relay waiting for
  it would answer its clients late, and SQLite's commits are not fsync'd (``synchronous=NORMAL``)
  where the file spool's are. When no other copy is being written, the copy is written and
  fsync'd under a hidden name while the upstream is still taking the message, and its 250 only
  has it renamed into the spool (renames of concurrent copies share one directory fsync); under
  load, copies are group-committed after the 250, several to a file. The spool worker moves the
  files into the table.

Whatever the first choice does, delivery goes on: a copy it cannot take (database error, time
limit, breaker open; disk error) goes to the other one before the 250, and is captured when the
CRM is back. A refused or failed delivery leaves nothing to capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from crm import spool
from crm.db import Database
from crm.filespool import FileSpool
from crm.spool import Envelope

from .databuf import MessageBuffer
from .dbgate import DbGate, DbUnavailable
from .upstream import Reply, UpstreamSession, UpstreamUnavailable

log = logging.getLogger(__name__)
UNREACHABLE = Reply(451, "4.4.1 Upstream server unreachable or too slow, try again later")
BIG_AT_ONCE = 2  # spilled (large) messages whose capture copy is in memory at the same time
T = TypeVar("T")
R = TypeVar("R")
Copy = tuple[bytes, Envelope]


class GroupCommit(Generic[T, R]):
    """Group commit: items queued while a batch is committed go together in the next batch.

    ``commit`` makes a batch durable (a database transaction, spool files, renames and one
    directory fsync) in one call, off the event loop, and returns one result per item, or raises
    :class:`DbUnavailable` / :class:`OSError`: then no item of the batch was taken.
    """

    def __init__(self, commit: Callable[[list[T]], Awaitable[Sequence[R]]], where: str,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.commit = commit
        self.where = where
        self.ready = ready
        self._queue: list[tuple[T, asyncio.Future[R | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Nothing being committed nor waiting."""
        return not self._queue and (self._writer is None or self._writer.done())

    async def write(self, item: T) -> R | None:
        """The item's result once it is durable; None when this store did not take it."""
        if not self.ready():
            return None
        done: asyncio.Future[R | None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            results: Sequence[R | None]
            try:
                results = await self.commit([item for item, _ in batch])
            except (DbUnavailable, OSError) as exc:
                log.warning("%d capture copies not in the %s: %s", len(batch), self.where, exc)
                results = [None] * len(batch)
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)


class Deliverer:
    """Forwards one message through an upstream session and keeps its capture copy."""

    def __init__(self, db: Database, gate: DbGate, files: FileSpool, *, files_first: bool = False,
                 kick: Callable[[], None] = spool.kick) -> None:
        self.files = files
        self.files_first = files_first
        self.kick = kick
        where = f"file spool {files.directory}"
        self.to_db: GroupCommit[Copy, bool] = GroupCommit(
            lambda items: _all_taken(gate.run(spool.enqueue_many, db, items), items),
            "database spool", lambda: gate.available,
        )
        self.to_files: GroupCommit[Copy, bool] = GroupCommit(
            lambda items: _all_taken(asyncio.to_thread(files.put_many, items), items), where
        )
        self.hidden: GroupCommit[Copy, Path] = GroupCommit(
            lambda items: asyncio.to_thread(files.write_each_hidden, items), where
        )
        self.publish: GroupCommit[Path, Path] = GroupCommit(
            lambda paths: asyncio.to_thread(files.publish, paths), where
        )
        self._big = asyncio.Semaphore(BIG_AT_ONCE)
        self._tasks: set[asyncio.Task[None]] = set()

    async def deliver(
        self,
        upstream: UpstreamSession,
        started: Awaitable[Reply],
        buffer: MessageBuffer,
        env: Envelope | None,
    ) -> Reply:
        """The reply for the client's DATA; ``env`` None when nothing is to be captured.

        ``started`` is the upstream's answer to DATA, asked while the client was sending.
        """
        early: asyncio.Task[Path | None] | None = None
        try:
            start = await started
            if start.code != 354:
                return start
            if env is not None and self.files_first and not buffer.spilled and self.hidden.idle:
                early = asyncio.create_task(self._write_early(buffer.raw(), env))
            reply = await upstream.send_body(buffer.chunks())
            if reply.ok and env is not None:
                guard = self._big if buffer.spilled else contextlib.nullcontext()
                async with guard:
                    handed, early = early, None
                    await self._keep(buffer, env, handed)
            return reply
        except UpstreamUnavailable as exc:
            log.warning("upstream %s failed during DATA: %s", upstream.endpoint, exc)
            return UNREACHABLE
        finally:
            if early is not None:  # refused, failed or cancelled: the copy is not wanted
                self._later(self._drop(early))

    async def _write_early(self, raw: bytes, env: Envelope) -> Path | None:
        """The copy, written and fsync'd under a hidden name; None (logged) if the disk refused."""
        return await self.hidden.write((raw, env))

    async def _drop(self, early: asyncio.Task[Path | None]) -> None:
        hidden = await early
        if hidden is not None:
            await self._discard(hidden)

    async def _discard(self, hidden: Path) -> None:
        try:
            await asyncio.to_thread(self.files.discard, hidden)
        except OSError as exc:  # left for the worker's daily purge
            log.warning("unwanted spool copy %s not removed: %s", hidden, exc)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep(self, buffer: MessageBuffer, env: Envelope,
                    early: asyncio.Task[Path | None] | None) -> None:
        """Make the capture copy durable in the spool: published early copy, else first store,
        else the other one."""
        if early is not None:
            hidden = await early
            if hidden is not None:
                if await self.publish.write(hidden) is not None:
                    self.kick()
                    return
                self._later(self._discard(hidden))
        raw = await asyncio.to_thread(buffer.raw) if buffer.spilled else buffer.raw()
        stores = [self.to_db, self.to_files]
        first = stores[self.files_first]
        for store in (first, stores[not self.files_first]):
            if await store.write((raw, env)) is not None:
                if store is not first:
                    log.info("capture copy kept in the %s instead", store.where)
                self.kick()
                return
        log.critical("capture copy of a delivered message LOST (mailbox %s, to %s)",
                     env.mailbox, ", ".join(env.envelope_to))


async def _all_taken(commit: Awaitable[object], items: Sequence[Copy]) -> list[bool]:
    await commit
    return [True] * len(items)
