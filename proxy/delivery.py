"""DATA, the moment of truth (B1): forward upstream, make the capture copy durable, answer.

The message streams to the upstream; once the upstream accepted it, its capture copy goes into
the database spool as a *delivered* entry, and only then does the client get the upstream's own
250. Copies from concurrent connections are written together, one transaction per batch (group
commit), so the database sees a few commits a second instead of one per message. Whatever the
database does, delivery goes on: a copy it cannot take in time (error, time limit, breaker open)
is written to the local file spool before the 250 instead, and captured when the database is
back. A refused or failed delivery leaves nothing to capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from crm import spool
from crm.db import Database
from crm.spool import Envelope, FileSpool

from .databuf import MessageBuffer
from .dbgate import DbGate, DbUnavailable
from .upstream import Reply, UpstreamSession, UpstreamUnavailable

log = logging.getLogger(__name__)
UNREACHABLE = Reply(451, "4.4.1 Upstream server unreachable or too slow, try again later")
BIG_AT_ONCE = 2  # spilled (large) messages whose capture copy is in memory at the same time
Pending = tuple[bytes, Envelope, "asyncio.Future[bool]"]


class SpoolWriter:
    """Group commit: copies queued while a batch is written go together in the next batch."""

    def __init__(self, db: Database, gate: DbGate) -> None:
        self.db = db
        self.gate = gate
        self._queue: list[Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, raw: bytes, env: Envelope) -> bool:
        """True once the copy is committed; False when the database did not take it."""
        if not self.gate.available:
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((raw, env, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self.gate.run(spool.enqueue_many, self.db, [(r, e) for r, e, _ in batch])
                ok = True
            except DbUnavailable as exc:
                log.warning("%d capture copies not in the database spool: %s", len(batch), exc)
                ok = False
            for _, _, done in batch:
                if not done.done():
                    done.set_result(ok)


class Deliverer:
    """Forwards one message through an upstream session and keeps its capture copy."""

    def __init__(self, db: Database, gate: DbGate, files: FileSpool,
                 kick: Callable[[], None] = spool.kick) -> None:
        self.files = files
        self.kick = kick
        self.writer = SpoolWriter(db, gate)
        self._big = asyncio.Semaphore(BIG_AT_ONCE)

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
            reply = await upstream.send_body(buffer.chunks())
        except UpstreamUnavailable as exc:
            log.warning("upstream %s failed during DATA: %s", upstream.endpoint, exc)
            return UNREACHABLE
        if reply.ok and env is not None:
            guard = self._big if buffer.spilled else contextlib.nullcontext()
            async with guard:
                await self._keep(buffer, env)
        return reply

    async def _keep(self, buffer: MessageBuffer, env: Envelope) -> None:
        raw = await asyncio.to_thread(buffer.raw) if buffer.spilled else buffer.raw()
        if await self.writer.write(raw, env):
            self.kick()
            return
        try:
            path = await asyncio.to_thread(self.files.put, raw, env)
        except OSError:
            log.critical("capture copy of a delivered message LOST (mailbox %s, to %s)",
                         env.mailbox, ", ".join(env.envelope_to), exc_info=True)
            return
        log.info("capture copy kept in the file spool: %s", path)
        self.kick()
