"""The durable capture spool (B1, C2, C9): relayed mail waits here until the CRM has captured it.

The relay writes each message with its whole envelope into the ``spool`` table before it answers
the client's DATA, and marks it *delivered* once the upstream accepted it; only delivered entries
are ever captured. When the database cannot take the entry, the relay keeps it in the local
:class:`FileSpool` (one fsync'd file per message under the data directory) instead, and delivery
goes on. :func:`run_spool_worker` moves such files into the table when the database is back and
runs every delivered entry through :class:`crm.capture.Capturer`.

Exactly once: on PostgreSQL each worker claims an entry with ``SELECT ... FOR UPDATE SKIP LOCKED``
and holds that lock until the entry is marked done, so several workers and nodes never take the
same one, and a crashed worker's entry is simply taken again; the capture itself dedups by
Message-ID (the relay adds one when missing), so a repeat after a crash creates nothing new. On
SQLite one worker is expected (one node).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from .capture import Capturer, CaptureResult
from .config import Config, data_dir
from .db import Database
from .errors import MailcrmError, NotFound
from .models import Direction, SpoolEntry, utcnow

log = logging.getLogger(__name__)
MAGIC = b"MAILCRM-SPOOL 1 "
MAX_ATTEMPTS = 5
MISSING_MAILBOX_ATTEMPTS = 24  # about a day of retries with the delays below
RETRY_BASE, RETRY_MAX = 30.0, 3600.0
UNDELIVERED_MAX_AGE = dt.timedelta(days=1)
PURGE_EVERY = 3600.0
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


def enqueue(db: Database, raw: bytes, env: Envelope, delivered: bool = False) -> int:
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


def mark_delivered(db: Database, entry_id: int) -> None:
    """The upstream accepted the message: from now on it will be captured."""
    with db.session() as session:
        session.execute(update(SpoolEntry).where(SpoolEntry.id == entry_id).values(delivered=True))


def discard(db: Database, entry_id: int) -> None:
    """The upstream refused the message: it is not the CRM's business."""
    with db.session() as session:
        session.execute(delete(SpoolEntry).where(SpoolEntry.id == entry_id))


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


# --- the worker -----------------------------------------------------------------------------


class SpoolWorker:
    """Moves fallback files into the table and captures delivered entries, one at a time."""

    def __init__(self, db: Database, files: FileSpool, capturer: Capturer | None = None) -> None:
        self.db = db
        self.files = files
        self.capturer = capturer or Capturer(db)
        self.postgres = db.engine.dialect.name == "postgresql"
        self._later: dict[int, float] = {}  # entry id -> when to try again (monotonic)

    def import_files(self) -> int:
        """Each waiting file becomes a delivered table entry (then the file goes)."""
        count = 0
        for path in self.files.paths():
            try:
                env, raw = self.files.read(path)
            except (OSError, ValueError, TypeError, MailcrmError) as exc:
                log.error("spool file %s unreadable, moved aside: %s", path, exc)
                path.rename(path.with_suffix(".bad"))
                continue
            enqueue(self.db, raw, env, delivered=True)
            path.unlink()
            count += 1
        return count

    def capture_next(self) -> CaptureResult | None:
        """Capture the oldest delivered entry nobody else holds; None when there is none."""
        now = time.monotonic()
        self._later = {i: t for i, t in self._later.items() if t > now}
        with self.db.session() as session:
            query = (
                select(SpoolEntry)
                .where(SpoolEntry.delivered.is_(True), SpoolEntry.state == "pending")
                .order_by(SpoolEntry.id)
                .limit(1)
            )
            if self._later:
                query = query.where(SpoolEntry.id.not_in(list(self._later)))
            if self.postgres:
                query = query.with_for_update(skip_locked=True)
            entry = session.scalars(query).first()
            if entry is None:
                return None
            if self.postgres:  # keep the row locked until it is marked
                return self._apply(entry)
            session.expunge(entry)
        result = self._apply(entry)
        with self.db.session() as session:
            session.merge(entry)
        return result

    def _apply(self, entry: SpoolEntry) -> CaptureResult:
        source = f"spool:{entry.id}"
        try:
            result = self.capturer.capture(
                entry.raw,
                entry.mailbox_address,
                Direction(entry.direction),
                source=source,
                envelope_from=entry.envelope_from,
                envelope_to=entry.envelope_to,
            )
        except SQLAlchemyError:
            raise
        except NotFound as exc:  # not linked yet (e.g. sent while the CRM was away): wait
            return self._retry(entry, str(exc), MISSING_MAILBOX_ATTEMPTS, "skipped")
        except MailcrmError as exc:
            result = CaptureResult(source, "skipped", str(exc))
        except Exception as exc:
            log.exception("capture of spool entry %s failed", entry.id)
            return self._retry(entry, f"{exc.__class__.__name__}: {exc}", MAX_ATTEMPTS, "failed")
        entry.attempts += 1
        entry.state = "done" if result.action != "skipped" else "skipped"
        entry.last_error = result.reason
        entry.raw = b""
        return result

    def _retry(self, entry: SpoolEntry, why: str, limit: int, final: str) -> CaptureResult:
        entry.attempts += 1
        entry.last_error = why
        if entry.attempts >= limit:
            entry.state = final
            log.warning("spool entry %s given up (%s): %s", entry.id, final, why)
        else:
            delay = min(RETRY_BASE * 2 ** (entry.attempts - 1), RETRY_MAX)
            self._later[entry.id] = time.monotonic() + delay
        return CaptureResult(f"spool:{entry.id}", "skipped", why)

    def purge(self) -> None:
        """Forget entries that were never delivered (the client got an error, or vanished)."""
        cutoff = utcnow() - UNDELIVERED_MAX_AGE
        with self.db.session() as session:
            session.execute(
                delete(SpoolEntry).where(
                    SpoolEntry.delivered.is_(False), SpoolEntry.created_at < cutoff
                )
            )

    def run_once(self, batch: int = 50) -> int:
        """Import files, then capture up to ``batch`` entries; how much was done."""
        done = self.import_files()
        for _ in range(batch):
            if self.capture_next() is None:
                break
            done += 1
        return done


async def _sleep(stop: asyncio.Event, wake: asyncio.Event, delay: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_spool_worker(config: Config, db: Database, stop: asyncio.Event) -> None:
    """Component of ``mailcrm serve``: capture spooled mail until ``stop`` is set."""
    worker = SpoolWorker(db, FileSpool(spool_dir(config)))
    poll = max(config.relay.spool_poll_interval, 0.05)
    wake = asyncio.Event()
    _wakeups.add(wake)
    delay, purged = poll, 0.0
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            wake.clear()
            try:
                if loop.time() - purged > PURGE_EVERY:
                    await asyncio.to_thread(worker.purge)
                    purged = loop.time()
                done = await asyncio.to_thread(worker.run_once)
                delay = poll
            except (SQLAlchemyError, OSError) as exc:
                log.warning("spool worker: %s; retrying in %.1f s", exc.__class__.__name__, delay)
                done, delay = 0, min(delay * 2, poll * 10)
            if not done:
                await _sleep(stop, wake, delay)
    finally:
        _wakeups.discard(wake)


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
