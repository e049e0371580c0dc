"""The durable capture spool (B1, C2, C9): relayed mail waits here until the CRM has captured it.

Once the upstream accepted a message, the relay makes it durable with its whole envelope before
it answers the client's DATA: in the ``spool`` table as *delivered* (PostgreSQL), or in the local
:class:`crm.filespool.FileSpool` (SQLite, and on PostgreSQL whenever the database cannot take the
entry in time; see :func:`files_first`). Only delivered entries are ever captured.
:func:`run_spool_worker` (the ``spool`` component of ``mailcrm serve``) has the
:mod:`crm.spoolworker` move the files into the table and capture every delivered entry exactly
once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError

from .config import Config, data_dir
from .db import Database
from .errors import ConfigError
from .models import Direction, SpoolEntry, utcnow

log = logging.getLogger(__name__)
UNDELIVERED_MAX_AGE = dt.timedelta(days=1)
PURGE_EVERY = 3600.0
CHILD_DEATHS = 3  # consecutive deaths of the capture process before capturing in-process
ROUND = 50  # entries a worker round captures at most; a full round means more are waiting
GATHER = 0.25  # s between rounds once caught up: mail sent meanwhile is captured as one batch
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


def files_first(config: Config, db: Database) -> bool:
    """Whether the relay writes capture copies to the file spool first (``relay.spool_first``).

    ``auto`` (the default): files on SQLite, whose single write lock the capture worker holds
    while it captures, the database on PostgreSQL, where any node can capture the entry.
    """
    choice = config.relay.spool_first
    if choice not in ("auto", "files", "database"):
        raise ConfigError(f"relay.spool_first must be auto, files or database, not {choice!r}")
    if choice == "auto":
        return db.engine.dialect.name == "sqlite"
    return choice == "files"


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
        from .capture import Capturer
        from .filespool import FileSpool
        from .spoolworker import SpoolWorker

        capturer = Capturer(db, config.capture)
        self.worker = SpoolWorker(db, FileSpool(spool_dir(config)), capturer)

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
    ``relay.spool_poll_interval`` seconds otherwise, backing off while the database fails. A
    round that caught up is followed by a short pause (:data:`GATHER`): under a stream of mail
    the next round takes what came meanwhile as one batch, not one round per message.
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
            elif done < ROUND:  # caught up: let a batch gather instead of a round per message
                await _sleep(stop, asyncio.Event(), min(GATHER, delay))
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
