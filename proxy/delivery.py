"""DATA, the moment of truth (B1): spool the capture copy, forward upstream, answer the client.

The capture copy goes into the database spool *while* the message streams to the upstream, and is
marked delivered once the upstream accepted it; only then does the client get the upstream's own
250. Whatever the database does, delivery goes on: a copy the database cannot take (error, time
limit, breaker open) is written to the local file spool before the 250 instead, and captured when
the database is back. A refused or failed delivery leaves nothing to capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from crm import spool
from crm.db import Database
from crm.spool import Envelope, FileSpool

from .databuf import MessageBuffer
from .dbgate import DbGate, DbUnavailable
from .upstream import Reply, UpstreamSession, UpstreamUnavailable

log = logging.getLogger(__name__)
UNREACHABLE = Reply(451, "4.4.1 Upstream server unreachable or too slow, try again later")
BIG_AT_ONCE = 2  # spilled (large) messages whose capture copy is built at the same time


class Deliverer:
    """Forwards one message through an upstream session and spools its capture copy."""

    def __init__(self, db: Database, gate: DbGate, files: FileSpool,
                 kick: Callable[[], None] = spool.kick) -> None:
        self.db = db
        self.gate = gate
        self.files = files
        self.kick = kick
        self._big = asyncio.Semaphore(BIG_AT_ONCE)
        self._tasks: set[asyncio.Task[None]] = set()

    async def deliver(
        self, upstream: UpstreamSession, buffer: MessageBuffer, env: Envelope | None
    ) -> Reply:
        """The reply for the client's DATA; ``env`` None when nothing is to be captured."""
        entry = asyncio.create_task(self._enqueue(buffer, env)) if env is not None else None
        try:
            reply = await upstream.data(buffer.chunks())
        except UpstreamUnavailable as exc:
            log.warning("upstream %s failed during DATA: %s", upstream.endpoint, exc)
            reply = UNREACHABLE
        except BaseException:
            if entry is not None:
                entry.cancel()
            raise
        entry_id = await entry if entry is not None else None
        if not reply.ok:
            if entry_id is not None:
                self._forget(entry_id)
            return reply
        if env is not None:
            await self._settle(entry_id, buffer, env)
        return reply

    async def _raw(self, buffer: MessageBuffer) -> bytes:
        if buffer.spilled:
            return await asyncio.to_thread(buffer.raw)
        return buffer.raw()

    async def _enqueue(self, buffer: MessageBuffer, env: Envelope) -> int | None:
        if not self.gate.available:
            return None
        guard = self._big if buffer.spilled else contextlib.nullcontext()
        async with guard:
            raw = await self._raw(buffer)
            try:
                return await self.gate.run(spool.enqueue, self.db, raw, env)
            except DbUnavailable as exc:
                log.warning("capture copy not in the database spool: %s", exc)
                return None

    async def _settle(self, entry_id: int | None, buffer: MessageBuffer, env: Envelope) -> None:
        if entry_id is not None:
            try:
                await self.gate.run(spool.mark_delivered, self.db, entry_id)
                self.kick()
                return
            except DbUnavailable as exc:
                log.warning("spool entry %s not marked delivered: %s", entry_id, exc)
        try:
            raw = await self._raw(buffer)
            path = await asyncio.to_thread(self.files.put, raw, env)
        except OSError:
            log.critical("capture copy of a delivered message LOST (mailbox %s, to %s)",
                         env.mailbox, ", ".join(env.envelope_to), exc_info=True)
            return
        log.info("capture copy kept in the file spool: %s", path)
        self.kick()

    def _forget(self, entry_id: int) -> None:
        async def forget() -> None:
            with contextlib.suppress(DbUnavailable):
                await self.gate.run(spool.discard, self.db, entry_id)

        task = asyncio.get_running_loop().create_task(forget())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
