"""The capture path shared by ``mailcrm capture``, the SMTP relay and the IMAP poller.

``Capturer.capture`` parses the headers, gathers the context the rules need with a few indexed
queries, asks the pure pipeline (:mod:`crm.capture.pipeline`) for a decision and applies it in one
transaction. ``Capturer.capture_many`` does the same for a batch (the poller's fetched chunk) in
one transaction, so a batch costs one commit, with its reads and most of its writes made once for
all its messages (:mod:`crm.capture.batch`); should a message fail, the batch is done again with
a SAVEPOINT per message, and that message rolls back alone. A message that cannot be captured is
skipped with a logged reason; nothing here raises for bad mail: any error while capturing one
message (a parser's RecursionError, a bug) rolls that message back and skips it (``capture
error``), logged with its source (for the poller: folder and UID) and Message-ID, so the rest of
a batch and every later message go on. An error of the database or the system (SQLAlchemy,
OSError) or a missing mailbox rolls the whole message (or batch) back and propagates. The vCards
of a message are read within the per-message limits of ``[capture]`` (:mod:`crm.vcardmail`).

A capture that raced with another writer (the relay's spool, another node: both saw the message
as new, the other committed first) fails on a unique key; it is rolled back and tried once more,
when it sees the other writer's rows (a duplicate, or a known sender) and records its location.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace

from sqlalchemy import Connection
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError

from crm import metrics
from crm.config import CaptureConfig
from crm.errors import MailcrmError, MessageParseError, NotFound
from crm.mail.addresses import try_normalize
from crm.mail.message import ParsedMessage, parse_message
from crm.mail.vcardmail import MessageCards, message_vcards
from crm.mail.vcards import VCardContact
from crm.store.db import Database
from crm.store.lookups import (
    MailboxExtras,
    Staff,
    contact_names,
    known_entities,
    mailbox_view,
    threads,
)
from crm.store.lookups import existing_activity as _existing_activity
from crm.store.models import utcnow
from crm.vocab import Direction

from .batch import Batch
from .items import CaptureResult as CaptureResult
from .items import Incoming as Incoming
from .items import Location as Location
from .pipeline import Context, MailboxView, decide
from .records import (
    apply_decision,
    location_row,
    record_location,
    remember_alias,
)

log = logging.getLogger("crm.capture")  # its name before the move (issue 17)
CACHE_SECONDS = 5.0
SQLITE_BATCH = 16  # SQLite has one writer: a batch holds the lock that long, keep it short
_NOT_THE_MESSAGE = (SQLAlchemyError, OSError, MailcrmError)  # the database's, the system's, ours


_Run = Callable[[ParsedMessage, Incoming], CaptureResult]
#: Runs in a batch's last transaction, with the results of the whole batch (see capture_many).
Then = Callable[[Connection, list[CaptureResult]], None]
_Views = dict[str, tuple[int, MailboxView]]


DEADLOCK_TRIES = 3
CROSSED = {"40P01", "40001"}  # PostgreSQL's deadlock_detected, serialization_failure


def _crossed(exc: OperationalError) -> bool:
    """The database chose this transaction as the victim of a deadlock (try again)."""
    return getattr(exc.orig, "sqlstate", None) in CROSSED


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", exc)).splitlines()[0][:200]


class _Redo(Exception):
    """A batch run straight through met a race or a refused value: run it again, saved."""


@contextlib.contextmanager
def _redone(what: str) -> Iterator[None]:
    """A straight run's race, refused value or error of a message (which may have written
    half) becomes :class:`_Redo`; the database's and the system's errors propagate."""
    try:
        yield
    except (IntegrityError, DataError) as exc:
        raise _Redo(f"{what}: {type(exc).__name__}") from exc
    except _NOT_THE_MESSAGE:
        raise
    except Exception as exc:
        raise _Redo(f"{what}: {type(exc).__name__}") from exc


class Capturer:
    """Applies the capture rules to raw messages for one database."""

    def __init__(self, db: Database, limits: CaptureConfig | None = None) -> None:
        self.db = db
        self.limits = limits or CaptureConfig()
        self.staff = Staff(CACHE_SECONDS)
        self.extras = MailboxExtras(CACHE_SECONDS)

    @metrics.counted
    def capture(
        self,
        raw: bytes,
        mailbox: str,
        direction: Direction,
        *,
        source: str = "",
        seen: bool = False,
        envelope_from: str | None = None,
        envelope_to: Iterable[str] = (),
        location: Location | None = None,
        history: bool = False,
    ) -> CaptureResult:
        """Capture one message seen in ``mailbox`` in a transaction of its own; never raises
        for bad mail. ``history``: the message is part of an import of old mail (C12)."""
        item = Incoming(
            raw, mailbox, direction, source, seen, envelope_from, tuple(envelope_to), location,
            history,
        )  # fmt: skip
        return self._attempts(item, self._own_transaction)

    def prepare(self, items: Sequence[Incoming]) -> list[Incoming]:
        """``items`` parsed ahead, on any thread (no database): :meth:`capture_many` then runs
        only its queries, so its transaction holds the database for less time, while the caller
        parses the next batch meanwhile. A message that does not parse is left to the capture,
        which skips it as before."""
        return [self._parsed(item) for item in items]

    @staticmethod
    def _parsed(item: Incoming) -> Incoming:
        if item.parsed is not None:
            return item
        try:
            return replace(item, parsed=parse_message(item.raw, item.envelope_from))
        except Exception:  # the capture parses it again and says why it skips it
            return item

    def capture_many(
        self, items: Sequence[Incoming], then: Then | None = None
    ) -> list[CaptureResult]:
        """Capture ``items`` in order in one transaction, as if each had one of its own.

        The batch is first run straight through. Should a message race or be refused, the batch
        is rolled back and run again with a SAVEPOINT per message, so that message rolls back
        alone (a race is tried once more, a refused value or any error of the message skipped).
        An error of the database or the system rolls the whole batch back and propagates. The
        results are counted in the metrics once the batch is committed. On SQLite, whose one
        write lock a transaction holds from its start, the batch is cut into transactions of
        :data:`SQLITE_BATCH` messages so other writers (the spool worker, lease renewals, the
        CLI) wait milliseconds, not seconds. ``then`` runs in the last transaction, after its
        captures, with the results of the whole batch (the poller's checkpoint and its count of
        faults: they move in the same commit as the captures do).
        """
        size = SQLITE_BATCH if self.db.engine.dialect.name == "sqlite" else len(items) or 1
        results: list[CaptureResult] = []

        def after(conn: Connection, mine: list[CaptureResult]) -> None:
            if then is not None:
                then(conn, [*results, *mine])  # the earlier slices' results and this one's

        for start in range(0, len(items), size):
            last = start + size >= len(items)
            results += self._slice(items[start : start + size], after if last else None)
        return results

    def _slice(self, items: Sequence[Incoming], then: Then | None = None) -> list[CaptureResult]:
        for attempt in range(1, DEADLOCK_TRIES + 1):
            try:
                results = self._slice_once(items, then)
                break
            except OperationalError as exc:  # another writer's locks crossed ours: again
                if not _crossed(exc) or attempt == DEADLOCK_TRIES:
                    raise
                log.info("capture of a batch of %d again: %s", len(items), _first_line(exc))
        for result in results:
            _count(result)
        return results

    def _slice_once(self, items: Sequence[Incoming], then: Then | None) -> list[CaptureResult]:
        try:
            return self._batch(items, saved=False, then=then)
        except _Redo as redo:
            log.info("capture of a batch of %d again, a savepoint each: %s", len(items), redo)
            return self._batch(items, saved=True, then=then)

    def _lock_mailboxes(self, conn: Connection, items: Sequence[Incoming]) -> _Views:
        """The batch's mailboxes read (row-locked on PostgreSQL) in one order, their addresses':
        two writers locking the same two mailboxes in other orders would deadlock."""
        views: _Views = {}
        for name in sorted({i.mailbox for i in items}, key=lambda a: a.strip().lower()):
            try:
                views[name] = mailbox_view(conn, name, self.extras)
            except NotFound:
                continue  # its message says so in its turn
        return views

    def _batch(
        self,
        items: Sequence[Incoming],
        saved: bool,
        then: Then | None = None,
    ) -> list[CaptureResult]:
        """One transaction; on SQLite the write lock is taken first (``BEGIN IMMEDIATE``: no
        other writer slips in between the batch's reads and writes)."""
        with self.db.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite would only begin at a write

            views = self._lock_mailboxes(conn, items)  # the rows are ours until the commit
            batch = None if saved else Batch(conn)
            if batch is not None:
                with _redone("the batch's reads"):
                    batch.gather(
                        [i.parsed for i in items if i.parsed is not None],
                        _addresses(e for i in items for e in i.envelope_to),
                    )

            def straight(msg: ParsedMessage, item: Incoming) -> CaptureResult:
                with _redone(item.source or msg.key):
                    return self._capture_parsed(conn, msg, item, views, batch)

            def savepoint(msg: ParsedMessage, item: Incoming) -> CaptureResult:
                with conn.begin_nested():
                    return self._capture_parsed(conn, msg, item)

            results = [self._attempts(item, savepoint if saved else straight) for item in items]
            if batch is not None:
                with _redone("the batch's writes"):
                    batch.flush()
            if then is not None:
                then(conn, results)
            return results

    def _own_transaction(self, msg: ParsedMessage, item: Incoming) -> CaptureResult:
        with self.db.engine.begin() as conn:
            return self._capture_parsed(conn, msg, item)

    def _attempts(self, item: Incoming, run: _Run) -> CaptureResult:
        """Parse, then ``run`` the capture; a race is tried once more, a refused value skipped."""
        try:
            msg = (
                item.parsed
                if item.parsed is not None
                else parse_message(item.raw, item.envelope_from)
            )
        except MessageParseError as exc:
            log.info("capture skipped %s: %s", item.source or "message", exc)
            return CaptureResult(item.source, "skipped", str(exc), fault=True)
        for attempt in (1, 2):
            try:
                return run(msg, item)
            except IntegrityError:
                log.info("capture of %s raced with another writer (try %d)", msg.key, attempt)
            except DataError as exc:  # a value the database refuses: this message only, skipped
                reason = f"cannot store: {str(exc.orig).splitlines()[0][:200]}"
                log.warning("capture of %s skipped: %s", item.source or msg.key, reason)
                return _fault(item, reason, msg.key)
            except (*_NOT_THE_MESSAGE, _Redo):
                raise
            except Exception as exc:  # this message only: rolled back (run's transaction), skipped
                reason = f"capture error: {type(exc).__name__}"
                trace = log.isEnabledFor(logging.DEBUG)  # the traceback only when asked for
                log.error(
                    "capture of %s (Message-ID %s) skipped: %s: %s", item.source or "a message",
                    msg.message_id, reason, str(exc)[:200], exc_info=trace,
                )  # fmt: skip
                return _fault(item, reason, msg.key)
        return CaptureResult(item.source, "duplicate", "already captured", message_key=msg.key)

    def _capture_parsed(
        self,
        conn: Connection,
        msg: ParsedMessage,
        item: Incoming,
        views: _Views | None = None,
        batch: Batch | None = None,
    ) -> CaptureResult:
        """Capture in ``conn``; ``views``: mailbox rows already read in this transaction;
        ``batch``: its reads and writes made for the whole batch."""
        found = views.get(item.mailbox) if views is not None else None
        box_id, view = found or mailbox_view(conn, item.mailbox, self.extras)
        self.staff.refresh(conn)
        cards = message_vcards(msg, self.limits) if view.vcard_contacts else MessageCards()
        decision = decide(msg, self._context(conn, msg, view, item, cards.contacts, batch))
        result = CaptureResult(item.source, decision.action, decision.reason, message_key=msg.key)
        result.vcards_skipped = cards.skipped
        where = item.location
        if decision.action == "captured":
            folder = where.folder if where else None
            if batch is not None:
                result.activities, result.created = batch.capture(msg, box_id, decision, folder)
            else:
                activity_id, result.created = apply_decision(conn, msg, box_id, decision, folder)
                result.activities = [activity_id]
            if decision.queue_cursor is not None:
                view = replace(view, queue_cursor=decision.queue_cursor)
        elif decision.action == "duplicate" and batch is not None:
            result.activities = batch.existing(msg.key)
            batch.alias(msg)
        elif decision.action == "duplicate":
            result.activities = _existing_activity(conn, msg.key)
            remember_alias(conn, msg)
        if where is not None:
            row = location_row(
                box_id, msg.key, where.folder, where.uidvalidity, where.uid, item.seen
            )  # fmt: skip
            if batch is not None:
                batch.locate(row, result.activities)
            else:
                record_location(conn, row, result.activities)
        if decision.action == "skipped":
            log.info("capture skipped %s: %s", item.source or msg.key, decision.reason)
        if views is not None:
            views[item.mailbox] = (box_id, view)
        return result

    def _context(
        self,
        conn: Connection,
        msg: ParsedMessage,
        view: MailboxView,
        item: Incoming,
        cards: tuple[VCardContact, ...],
        batch: Batch | None,
    ) -> Context:
        envelope_to = _addresses(item.envelope_to)
        wanted = {p.address for p in msg.recipients} | set(envelope_to)
        if msg.sender:
            wanted.add(msg.sender.address)
        wanted.update(_addresses(e for c in cards for e in c.emails))
        refs = msg.in_reply_to + msg.references
        return Context(
            mailbox=view,
            direction=item.direction,
            now=utcnow(),
            seen=item.seen,
            employees=self.staff.employees,
            excluded=self.staff.excluded,
            known=batch.known(wanted) if batch else known_entities(conn, wanted),
            known_contact_names=contact_names(conn, [c.name for c in cards if not c.emails]),
            duplicate=bool(batch.existing(msg.key) if batch else _existing_activity(conn, msg.key)),
            threads=batch.threads(refs) if batch else threads(conn, refs),
            envelope_to=envelope_to,
            vcards=cards,
            history=item.history,
            own_domains=self.staff.own_domains,
        )


def _fault(item: Incoming, reason: str, key: str) -> CaptureResult:
    return CaptureResult(item.source, "skipped", reason, message_key=key, fault=True)


def _count(result: CaptureResult) -> None:
    if result.action == "captured":
        metrics.captured()
    elif result.action == "duplicate":
        metrics.duplicate()
    else:
        metrics.skipped(result.reason)


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    """Envelope or vCard addresses in their stored form; what is not an address is dropped."""
    found = (try_normalize(v.strip().strip("<>")) for v in values)
    return tuple(dict.fromkeys(a for a in found if a))
