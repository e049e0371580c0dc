"""The spool worker: captures delivered spool entries through :class:`crm.capture.path.Capturer`.

:class:`SpoolWorker` first moves the relay's spool files into the table, then claims entries a
batch at a time and captures them, the small ones of a batch together (``capture_many``: one
transaction per few messages, not one each); a batch that fails is captured again entry by entry,
so every entry gets its own verdict. On PostgreSQL the batch is claimed with ``SELECT ... FOR UPDATE
SKIP LOCKED`` and the rows stay locked until they are marked, so several workers and nodes never
take the same entry and a crashed worker's entries are simply taken again; the capture dedups by
Message-ID, so a repeat creates nothing new. On SQLite one worker is expected (one node).

An entry whose mailbox does not exist yet (mail sent while the CRM was away, before the login
that links the mailbox) is retried with growing delays for about a day; an entry the pipeline
fails on is retried a few times and then marked failed. Nothing is deleted but the bulk of a
captured message, and entries never delivered (after a day).

In ``mailcrm serve`` the worker runs in a child process at a lower CPU priority (see
:func:`child_init`), so capture work never competes with the relay for the event loop or the
GIL: a flood of mail is relayed at full speed and captured right behind it. The child ends when
its parent does, even by ``kill -9`` (an orphan would idle forever, holding a database connection).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from crm import logs, metrics
from crm.capture.path import Capturer, CaptureResult, Incoming
from crm.config import Config
from crm.errors import MailcrmError, NotFound
from crm.mailboxes import faults
from crm.store.db import Database
from crm.store.models import SpoolEntry, utcnow
from crm.vocab import Direction

from .files import FileSpool
from .queue import ROUND, UNDELIVERED_MAX_AGE, Envelope, enqueue_many, spool_dir

log = logging.getLogger("crm.spoolworker")  # its name before the move (issue 17)
MAX_ATTEMPTS = 5
MISSING_MAILBOX_ATTEMPTS = 24  # about a day of retries with the delays below
RETRY_BASE, RETRY_MAX = 30.0, 3600.0
CLAIM_PG, CLAIM_SQLITE = 25, 50  # PostgreSQL: small enough that a backlog spreads over nodes
RECOVER_EVERY = 10.0  # s between looks for journal segments a crashed relay left
CAPTURE_NICE = 19
IMPORT_FILES, IMPORT_BYTES = 64, 32 * 1024 * 1024  # files moved into the table at once
COLUMNS = (  # the raw message is read when its turn comes, a large one alone (memory)
    SpoolEntry.id,
    SpoolEntry.mailbox_address,
    SpoolEntry.direction,
    SpoolEntry.envelope_from,
    SpoolEntry.envelope_to,
    SpoolEntry.attempts,
    func.length(SpoolEntry.raw).label("size"),
)
TOGETHER_BYTES = 256 * 1024  # entries up to this size are read and captured a batch at a time
TOGETHER_COUNT = 50  # of them, at most this many go to one capture_many call


@dataclass
class Outcome:
    """What capturing one entry did, and the values its row gets."""

    result: CaptureResult
    values: dict[str, Any]


class SpoolWorker:
    """Moves fallback files into the table and captures delivered entries."""

    def __init__(self, db: Database, files: FileSpool, capturer: Capturer | None = None) -> None:
        self.db = db
        self.files = files
        self.capturer = capturer or Capturer(db)
        self.postgres = db.engine.dialect.name == "postgresql"
        self._later: dict[int, float] = {}  # entry id -> when to try again (monotonic)
        self._recovered = float("-inf")  # when crashed segments were last looked for

    def import_files(self) -> int:
        """Each waiting file becomes a delivered table entry (then the file goes).

        Journal segments a crashed relay left are published first (looked for every
        :data:`RECOVER_EVERY` seconds: one is a minute old before it counts as left). Files are
        moved a batch at a time, one transaction per batch; a crash between the commit and the
        unlinks imports those files again, and their capture dedups.
        """
        count = 0
        now = time.monotonic()
        if now - self._recovered >= RECOVER_EVERY:  # orphans are a minute old anyway
            self._recovered = now
            self.files.recover()
        while batch := self._read_files():
            count += enqueue_many(self.db, [(raw, env) for _, got in batch for env, raw in got])
            for path, _ in batch:
                path.unlink()
        return count

    def _read_files(self) -> list[tuple[Path, list[tuple[Envelope, bytes]]]]:
        batch: list[tuple[Path, list[tuple[Envelope, bytes]]]] = []
        size = 0
        for path in self.files.paths(IMPORT_FILES):
            try:
                entries = self.files.read(path)
            except (OSError, ValueError, TypeError, KeyError, MailcrmError) as exc:
                log.error("spool file %s unreadable, moved aside: %s", path, exc)
                path.rename(path.with_suffix(".bad"))
                continue
            batch.append((path, entries))
            size += sum(len(raw) for _, raw in entries)
            if size >= IMPORT_BYTES:
                break
        return batch

    def _query(self, limit: int) -> Any:
        now = time.monotonic()
        self._later = {i: t for i, t in self._later.items() if t > now}
        query = (
            select(*COLUMNS)
            .where(SpoolEntry.delivered.is_(True), SpoolEntry.state == "pending")
            .order_by(SpoolEntry.id)
            .limit(limit)
        )
        if self._later:
            query = query.where(SpoolEntry.id.not_in(list(self._later)))
        if self.postgres:
            query = query.with_for_update(skip_locked=True)
        return query

    def capture_batch(self, limit: int | None = None) -> list[CaptureResult]:
        """Claim and capture up to ``limit`` entries; their results (empty: nothing waiting)."""
        limit = limit or (CLAIM_PG if self.postgres else CLAIM_SQLITE)
        with self.db.session() as session:
            rows = session.execute(self._query(limit)).all()
            if self.postgres:  # the rows stay locked until they are marked
                outcomes = self._capture_rows(rows)
                self._mark(session, rows, outcomes)
                return [o.result for o in outcomes]
        outcomes = self._capture_rows(rows)
        with self.db.session() as session:
            self._mark(session, rows, outcomes)
        return [o.result for o in outcomes]

    def _capture_rows(self, rows: Sequence[Row[Any]]) -> list[Outcome]:
        """Small entries together (one transaction per batch), large ones and any batch that
        fails one at a time, so each entry gets its own retry or verdict."""
        outcomes: dict[int, Outcome] = {}
        small = [row for row in rows if row.size <= TOGETHER_BYTES]
        for start in range(0, len(small), TOGETHER_COUNT):
            outcomes.update(self._together(small[start : start + TOGETHER_COUNT]))
        return [outcomes.get(row.id) or self._capture(row) for row in rows]

    def _together(self, rows: Sequence[Row[Any]]) -> dict[int, Outcome]:
        """The rows' outcomes from one ``capture_many``; none when the batch raised."""
        if len(rows) < 2:
            return {}
        raws = self._raws([row.id for row in rows])
        items = [
            Incoming(
                raws.get(row.id, b""),
                row.mailbox_address,
                Direction(row.direction),
                _source(row),
                envelope_from=row.envelope_from,
                envelope_to=tuple(row.envelope_to),
            )
            for row in rows
        ]
        try:
            results = self.capturer.capture_many(items)
        except SQLAlchemyError:
            raise
        except Exception as exc:  # e.g. a mailbox not linked yet: each on its own, below
            log.info("spool: a batch of %d captured one by one: %s", len(rows), exc)
            return {}
        return {row.id: self._done(row, result) for row, result in zip(rows, results, strict=True)}

    def capture_next(self) -> CaptureResult | None:
        """Capture the oldest waiting entry; None when there is none."""
        results = self.capture_batch(1)
        return results[0] if results else None

    @staticmethod
    def _mark(session: Any, rows: Sequence[Row[Any]], outcomes: list[Outcome]) -> None:
        """One UPDATE statement per kind of outcome, run for all its rows (executemany)."""
        kinds: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row, outcome in zip(rows, outcomes, strict=True):
            kinds.setdefault(tuple(sorted(outcome.values)), []).append(
                {"id": row.id, **outcome.values}
            )
        for params in kinds.values():
            session.execute(update(SpoolEntry), params)  # bulk UPDATE by primary key
        faulted: dict[str, list[CaptureResult]] = {}
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome.result.fault:
                faulted.setdefault(row.mailbox_address, []).append(outcome.result)
        for address, results in faulted.items():  # SPEC B6: counted as the entries retire
            faults.record_for(session.connection(), address, results)

    def _raws(self, ids: list[int]) -> dict[int, bytes]:
        with self.db.session() as session:
            found = session.execute(
                select(SpoolEntry.id, SpoolEntry.raw).where(SpoolEntry.id.in_(ids))
            ).all()
        return {entry_id: raw or b"" for entry_id, raw in found}

    def _raw(self, entry_id: int) -> bytes:
        with self.db.session() as session:
            raw = session.scalar(select(SpoolEntry.raw).where(SpoolEntry.id == entry_id))
        return raw or b""

    def _capture(self, row: Row[Any]) -> Outcome:
        source = _source(row)
        try:
            result = self.capturer.capture(
                self._raw(row.id),
                row.mailbox_address,
                Direction(row.direction),
                source=source,
                envelope_from=row.envelope_from,
                envelope_to=row.envelope_to,
            )
        except SQLAlchemyError:
            raise
        except NotFound as exc:  # not linked yet (e.g. sent while the CRM was away): wait
            return self._retry(row, str(exc), MISSING_MAILBOX_ATTEMPTS, "skipped")
        except MailcrmError as exc:
            result = CaptureResult(source, "skipped", str(exc))
        except Exception as exc:
            log.exception("capture of spool entry %s failed", row.id)
            return self._retry(row, f"{exc.__class__.__name__}: {exc}", MAX_ATTEMPTS, "failed")
        return self._done(row, result)

    @staticmethod
    def _done(row: Row[Any], result: CaptureResult) -> Outcome:
        state = "done" if result.action != "skipped" else "skipped"
        values = {
            "attempts": row.attempts + 1,
            "state": state,
            "last_error": result.reason,
            "raw": b"",
        }
        return Outcome(result, values)

    def _retry(self, row: Row[Any], why: str, limit: int, final: str) -> Outcome:
        attempts = row.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_error": why}
        given_up = attempts >= limit
        if given_up:
            values["state"] = final
            log.warning("spool entry %s given up (%s): %s", row.id, final, why)
        else:
            delay = min(RETRY_BASE * 2 ** (attempts - 1), RETRY_MAX)
            self._later[row.id] = time.monotonic() + delay
        fault = given_up and final == "failed"  # an error to the end (not: no mailbox to wait for)
        return Outcome(CaptureResult(_source(row), "skipped", why, fault=fault), values)

    def purge(self) -> None:
        """Forget entries never delivered, and hidden spool files never published (a day old)."""
        if count := self.files.purge_hidden(UNDELIVERED_MAX_AGE.total_seconds()):
            log.info("spool: %d unpublished spool files of undelivered mail removed", count)
        cutoff = utcnow() - UNDELIVERED_MAX_AGE
        with self.db.session() as session:
            session.execute(
                delete(SpoolEntry).where(
                    SpoolEntry.delivered.is_(False), SpoolEntry.created_at < cutoff
                )
            )

    def run_once(self, batch: int = ROUND) -> int:
        """Import files, then capture up to about ``batch`` entries; how much was done."""
        done = self.import_files()
        while done < batch:
            results = self.capture_batch()
            if not results:
                break
            done += len(results)
        return done


def _source(row: Row[Any]) -> str:
    """How a relayed message is named in capture's results and log lines (``capture skipped
    relay:alice@ourco.example/spool:17: only employees``)."""
    return f"relay:{row.mailbox_address}/spool:{row.id}"


# --- the child process ------------------------------------------------------------------------

_child: SpoolWorker | None = None


def _exit_with_parent() -> None:
    """Wait for the parent's end (its sentinel pipe closes, even on SIGKILL), then end too.

    An open capture transaction is simply rolled back: its entry stays pending, unlocked, and
    another worker captures it (a repeat creates nothing new).
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(0)


def background() -> None:
    """Make this process a background job: capture work yields the CPU to relaying.

    A nicer priority only ranks a process against the others of its scheduling group; Linux
    shares the CPU between groups first (per session with autogroups, per service cgroup under
    systemd), so the worker also leaves its parent's session and gives its own group the same
    nice value. Each step is best effort: a refused one leaves the default.
    """
    with contextlib.suppress(OSError):
        os.nice(CAPTURE_NICE)
    with contextlib.suppress(OSError):
        os.setsid()  # only then is the autogroup this process's own, not the relay's too
        Path("/proc/self/autogroup").write_text(f"{CAPTURE_NICE}\n", encoding="ascii")


def child_init(config: Config, log_level: int = logging.WARNING) -> None:
    """Initializer of the worker process: the parent's log format and level (a spawned process
    starts with none: its capture lines, such as the skips at INFO, would be lost), nicer CPU
    priority, own engine, Ctrl-C is the parent's; it ends with its parent."""
    global _child
    logs.configure(config.log_format, log_level)
    threading.Thread(target=_exit_with_parent, name="mailcrm-parent-watch", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    background()
    db = Database(config.database_url, migrate=False)
    _child = SpoolWorker(db, FileSpool(spool_dir(config)), Capturer(db, config.capture))


def child_run(purge: bool) -> tuple[int, str | None, metrics.Counts]:
    """One round in the worker process: (entries done, error text, what its counters moved by:
    the parent adds that to the ones it serves); never raises across."""
    assert _child is not None
    try:
        if purge:
            _child.purge()
        return _child.run_once(), None, metrics.take_counts()
    except (SQLAlchemyError, OSError) as exc:
        return 0, f"{exc.__class__.__name__}: {exc}", metrics.take_counts()
