"""DATA, the moment of truth (B1): forward upstream, make the capture copy durable, answer.

The message streams to the upstream; once the upstream accepted it, its capture copy is made
durable, and only then does the client get the upstream's own 250. Where the copy goes first
depends on the database (:func:`crm.spool.files_first`):

- PostgreSQL: the database spool, as a *delivered* entry any node can capture. Copies from
  concurrent connections are written together, one transaction per batch (group commit).
- SQLite: the local spool journal (:mod:`crm.spool.journal`): copies are appended to a segment file,
  the copies of concurrent connections together, one ``fdatasync`` for the lot (group commit).
  SQLite has one write lock for the whole file and the capture worker holds it while it captures;
  a relay waiting for it would answer its clients late, and SQLite's commits are not fsync'd
  (``synchronous=NORMAL``) where the journal's are. A segment is published to the spool worker a
  fraction of a second later, and the worker moves its copies into the table.

Whatever the first choice does, delivery goes on: a copy it cannot take (database error, time
limit, breaker open; disk error) goes to the other one before the 250, and is captured when the
CRM is back. A refused or failed delivery leaves nothing to capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from crm.face import Database
from crm.face import relay as spool
from crm.face.relay import Envelope, Journal, metrics

from .databuf import MessageBuffer
from .dbgate import DbGate, DbUnavailable
from .upstream import UpstreamSession, UpstreamUnavailable
from .values import Reply

log = logging.getLogger("proxy.delivery")  # its name before the move (issue 17)
UNREACHABLE = Reply(451, "4.4.1 Upstream server unreachable or too slow, try again later")
BIG_AT_ONCE = 2  # spilled (large) messages whose capture copy is in memory at the same time
T = TypeVar("T")
R = TypeVar("R")
Copy = tuple[bytes, Envelope]


class GroupCommit(Generic[T, R]):
    """Group commit: items queued while a batch is committed go together in the next batch.

    ``commit`` makes a batch durable (a database transaction, a journal append and its fdatasync)
    in one call, off the event loop, and returns one result per item, or raises
    :class:`DbUnavailable` / :class:`OSError`: then no item of the batch was taken.
    """

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[Sequence[R]]],
        where: str,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.commit = commit
        self.where = where
        self.ready = ready
        self._queue: list[tuple[T, asyncio.Future[R | None]]] = []
        self._writer: asyncio.Task[None] | None = None

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
            except Exception:  # never leave a waiting delivery without an answer
                log.exception("%d capture copies not in the %s", len(batch), self.where)
                results = [None] * len(batch)
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)


class Deliverer:
    """Forwards one message through an upstream session and keeps its capture copy."""

    def __init__(
        self,
        db: Database,
        gate: DbGate,
        journal: Journal,
        *,
        files_first: bool = False,
        kick: Callable[[], None] = lambda: None,
    ) -> None:
        self.journal = journal
        self.files_first = files_first
        self.kick = kick
        self.to_db: GroupCommit[Copy, bool] = GroupCommit(
            lambda items: _all_taken(gate.run(spool.enqueue_many, db, items), items),
            "database spool",
            lambda: gate.available,
        )
        self.to_files: GroupCommit[Copy, bool] = GroupCommit(
            self._append, f"spool journal in {journal.directory}"
        )
        self._big = asyncio.Semaphore(BIG_AT_ONCE)
        self._publisher: asyncio.Task[None] | None = None

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
        try:
            start = await started
            if start.code != 354:
                return start
            reply = await upstream.send_message(buffer)
            if reply.ok:
                metrics.relayed()
            if reply.ok and env is not None:
                await self._keep_guarded(buffer, env)
            return reply
        except UpstreamUnavailable as exc:
            log.warning("upstream %s failed during DATA: %s", upstream.endpoint, exc)
            return UNREACHABLE

    async def _keep_guarded(self, buffer: MessageBuffer, env: Envelope) -> None:
        """After the upstream accepted: the capture copy, whatever happens to it, and then the
        upstream's reply for the client (the message is delivered: a 4xx would only make the
        client send it again)."""
        guard = self._big if buffer.spilled else contextlib.nullcontext()
        try:
            async with guard:
                await self._keep(buffer, env)
        except Exception:
            log.critical(
                "capture copy of a delivered message LOST (mailbox %s, to %s)",
                env.mailbox,
                ", ".join(env.envelope_to),
                exc_info=True,
            )

    async def _keep(self, buffer: MessageBuffer, env: Envelope) -> None:
        """Make the capture copy durable: in the first store, else in the other one."""
        raw = await asyncio.to_thread(buffer.raw) if buffer.spilled else buffer.raw()
        stores = [self.to_db, self.to_files]
        first = stores[self.files_first]
        for store in (first, stores[not self.files_first]):
            if await store.write((raw, env)) is not None:
                if store is not first:
                    log.info("capture copy kept in the %s instead", store.where)
                if store is self.to_db:
                    self.kick()
                return
        log.critical(
            "capture copy of a delivered message LOST (mailbox %s, to %s)",
            env.mailbox,
            ", ".join(env.envelope_to),
        )

    async def _append(self, items: list[Copy]) -> list[bool]:
        """One journal append (one fdatasync) for a batch; its segment is published soon."""
        if await asyncio.to_thread(self.journal.append, items):
            self.kick()
        if self.journal.waiting and (self._publisher is None or self._publisher.done()):
            self._publisher = asyncio.create_task(self._publish_when_due())
        return [True] * len(items)

    async def _publish_when_due(self) -> None:
        """While copies wait in an active segment: publish it once it is old enough."""
        age = self.journal.segment_age
        while self.journal.waiting:
            await asyncio.sleep(age)
            try:
                if await asyncio.to_thread(self.journal.publish, age):
                    self.kick()
            except OSError as exc:  # the segment is left to the worker's recovery
                log.warning("spool segment not published: %s", exc)

    def close(self) -> None:
        """At shutdown: publish what the journal holds (blocking; after the last delivery)."""
        if self._publisher is not None:
            self._publisher.cancel()
        try:
            if self.journal.publish():
                self.kick()
        except OSError as exc:
            log.warning("spool segment not published at shutdown: %s", exc)


async def _all_taken(commit: Awaitable[object], items: Sequence[Copy]) -> list[bool]:
    await commit
    return [True] * len(items)
