"""The durable capture spool (B1, C2, C9): relayed mail waits here until the CRM has captured it.

Once the upstream accepted a message, the relay writes it with its whole envelope into the
``spool`` table as *delivered* before it answers the client's DATA; only delivered entries are
ever captured. When the database cannot take the entry, the relay keeps it in the local
:class:`FileSpool` (one fsync'd file per message under the data directory) instead, and delivery
goes on. :func:`run_spool_worker` (the ``spool`` component of ``mailcrm serve``) has the
:mod:`crm.spoolworker` move such files into the table when the database is back and capture every
delivered entry exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import multiprocessing
import os
import uuid
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError

from .config import Config, data_dir
from .db import Database
from .errors import MailcrmError
from .models import Direction, SpoolEntry, utcnow

log = logging.getLogger(__name__)
MAGIC = b"MAILCRM-SPOOL 1 "
UNDELIVERED_MAX_AGE = dt.timedelta(days=1)
PURGE_EVERY = 3600.0
CHILD_DEATHS = 3  # consecutive deaths of the capture process before capturing in-process
_wakeups: set[asyncio.Event] = set()


@dataclass
class Envelope:
    """Where a spooled message is captured and who it went to."""

    mailbox: str
    envelope_from: str | None
    envelope_to: list[str] = field(default_factory=list)
    direction: str = Direction.OUTGOING.value


def spool_dir(config: Config) -> Path:
    """The file spool: ``relay.spool_dir`` or ``<data dir>/spool``."""
    return Path(config.relay.spool_dir) if config.relay.spool_dir else data_dir() / "spool"


def kick() -> None:
    """Wake this process's spool workers now (the relay calls it after a delivery)."""
    for event in list(_wakeups):
        event.set()


# --- the table ------------------------------------------------------------------------------


def enqueue(db: Database, raw: bytes, env: Envelope, delivered: bool = True) -> int:
    """Store one message with its envelope; its id."""
    with db.session() as session:
        entry = SpoolEntry(
            raw=raw,
            mailbox_address=env.mailbox,
            direction=env.direction,
            envelope_from=env.envelope_from,
            envelope_to=list(env.envelope_to),
            delivered=delivered,
            state="pending",
        )
        session.add(entry)
        session.flush()
        return entry.id


def enqueue_many(db: Database, items: Iterable[tuple[bytes, Envelope]]) -> int:
    """Store delivered messages in one transaction (the relay's group commit); how many."""
    rows = [
        {
            "raw": raw,
            "mailbox_address": env.mailbox,
            "direction": env.direction,
            "envelope_from": env.envelope_from,
            "envelope_to": list(env.envelope_to),
            "delivered": True,
            "state": "pending",
            "attempts": 0,
            "created_at": utcnow(),
        }
        for raw, env in items
    ]
    if rows:
        with db.session() as session:
            session.execute(insert(SpoolEntry), rows)
    return len(rows)


# --- the local fallback ---------------------------------------------------------------------


class FileSpool:
    """Messages the database could not take: ``<dir>/<time>-<uuid>.msg``, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, raw: bytes, env: Envelope) -> Path:
        """Write, fsync and rename into place; the file survives a crash once this returns."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{utcnow():%Y%m%d%H%M%S%f}-{uuid.uuid4().hex}.msg"
        tmp = self.directory / f".{name}.tmp"
        meta = json.dumps(asdict(env), ensure_ascii=True).encode("ascii")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, MAGIC + meta + b"\n")
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.directory / name
        tmp.rename(final)
        self._sync_dir()
        return final

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def paths(self) -> list[Path]:
        """Waiting files, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("[0-9]*.msg"))

    @staticmethod
    def read(path: Path) -> tuple[Envelope, bytes]:
        data = path.read_bytes()
        header, _, raw = data.partition(b"\n")
        if not header.startswith(MAGIC):
            raise MailcrmError(f"{path} is not a mailcrm spool file")
        meta: dict[str, Any] = json.loads(header[len(MAGIC) :])
        return Envelope(**meta), raw


# --- the worker component ---------------------------------------------------------------------


async def _sleep(stop: asyncio.Event, wake: asyncio.Event, delay: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class _ChildRunner:
    """Runs worker rounds in one child process (spawned on first use, again if it dies)."""

    DIED = "the capture worker process died"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pool: ProcessPoolExecutor | None = None

    async def run(self, purge: bool) -> tuple[int, str | None]:
        from .spoolworker import child_init, child_run

        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"),
                initializer=child_init, initargs=(self.config,),
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, child_run, purge)
        except BrokenProcessPool:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
            return 0, self.DIED

    async def close(self) -> None:
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown, True, cancel_futures=True)


class _ThreadRunner:
    """Runs worker rounds in a thread of this process (``in_process=True``)."""

    def __init__(self, config: Config, db: Database) -> None:
        from .spoolworker import SpoolWorker

        self.worker = SpoolWorker(db, FileSpool(spool_dir(config)))

    async def run(self, purge: bool) -> tuple[int, str | None]:
        try:
            if purge:
                await asyncio.to_thread(self.worker.purge)
            return await asyncio.to_thread(self.worker.run_once), None
        except (SQLAlchemyError, OSError) as exc:
            return 0, f"{exc.__class__.__name__}: {exc}"

    async def close(self) -> None:
        return None


async def run_spool_worker(
    config: Config, db: Database, stop: asyncio.Event, *, in_process: bool = False
) -> None:
    """Component of ``mailcrm serve``: capture spooled mail until ``stop`` is set.

    The capture runs in a child process at a lower CPU priority (``in_process`` runs it in a
    thread here instead); this coroutine only paces it: at once after :func:`kick`, every
    ``relay.spool_poll_interval`` seconds otherwise, backing off while the database fails.
    """
    runner: _ChildRunner | _ThreadRunner
    runner = _ThreadRunner(config, db) if in_process else _ChildRunner(config)
    poll = max(config.relay.spool_poll_interval, 0.05)
    wake = asyncio.Event()
    _wakeups.add(wake)
    delay, purged, deaths = poll, -PURGE_EVERY, 0
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            wake.clear()
            purge = loop.time() - purged >= PURGE_EVERY
            done, error = await runner.run(purge)
            if error is None:
                delay, purged, deaths = poll, loop.time() if purge else purged, 0
            else:
                log.warning("spool worker: %s; retrying in %.1f s", error, delay)
                delay = min(delay * 2, poll * 10)
                deaths += error == _ChildRunner.DIED
                if deaths >= CHILD_DEATHS:  # cannot run a child here: capture in a thread
                    log.error("spool worker: the capture process keeps dying; capturing in "
                              "this process instead")
                    await runner.close()
                    runner, deaths = _ThreadRunner(config, db), 0
            if not done:
                await _sleep(stop, wake, delay)
    finally:
        _wakeups.discard(wake)
        await runner.close()


def pending(db: Database) -> list[dict[str, Any]]:
    """Entries not captured yet (for status pages and tests)."""
    with db.session() as session:
        rows: Iterable[SpoolEntry] = session.scalars(
            select(SpoolEntry).where(SpoolEntry.state == "pending").order_by(SpoolEntry.id)
        )
        return [
            {"id": e.id, "mailbox": e.mailbox_address, "delivered": e.delivered,
             "envelope_to": e.envelope_to, "attempts": e.attempts}
            for e in rows
        ]
