"""The messages of a mailbox skipped on a fault (SPEC B6, issue 13 item 3): a count per mailbox,
the last reason and when, for the status page, ``mailcrm status`` and ``mailbox show``.

Role: one write, in the transaction of the poller's batch that moves the folder's checkpoint past
the messages (:meth:`crm.capture.path.Capturer.capture_many`'s ``then``), or of the relay's spool
worker that retires the entries (a relayed message whose capture faulted or was given up after
its retries), so a batch done again after a crash is not counted twice, and a count never
outruns the checkpoint. A fault is a
message capture could not handle (unreadable, a value the database refused, an error while
capturing it: :attr:`CaptureResult.fault`); a message the rules leave out (a robot, an excluded
address, outside the import window) is normal mail and not counted here, only in the metrics.

Nothing here may fail or stall capture: a batch without a fault writes nothing; with one, the
mailbox's row is already the batch's (row-locked on PostgreSQL, the write lock on SQLite), the
update runs in a SAVEPOINT, and should it fail the count is lost, logged, and capture goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import SQLAlchemyError

from crm.logs import escape
from crm.mailboxes.sync import save_checkpoint_in
from crm.store.models import Mailbox, utcnow

log = logging.getLogger(__name__)
MAX_REASON = 200  # characters of the last reason kept


class Outcome(Protocol):
    """What of a capture result counts here (:class:`crm.capture.path.CaptureResult`)."""

    @property
    def fault(self) -> bool: ...

    @property
    def reason(self) -> str | None: ...


def reason_text(reason: str | None) -> str:
    """A reason as stored: control characters escaped, at most :data:`MAX_REASON` characters."""
    text = escape(reason or "unknown")
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def record_in(conn: Connection, mailbox_id: int, results: Sequence[Outcome]) -> int:
    """Count the faults among ``results`` for the mailbox in ``conn``'s transaction; how many."""
    faults = [r for r in results if r.fault]
    if not faults:
        return 0
    values = {
        "skipped_faults": Mailbox.skipped_faults + len(faults),
        "last_fault": reason_text(faults[-1].reason),
        "last_fault_at": utcnow(),
    }
    try:
        with conn.begin_nested():
            conn.execute(update(Mailbox).where(Mailbox.id == mailbox_id).values(values))
    except SQLAlchemyError as exc:  # the count is lost, the captures and checkpoint are not
        log.warning("count of %d skipped messages of mailbox %d lost: %s", len(faults),
                    mailbox_id, str(getattr(exc, "orig", exc)).splitlines()[0][:200])  # fmt: skip
        return 0
    return len(faults)


def record_for(conn: Connection, address: str, results: Sequence[Outcome]) -> int:
    """:func:`record_in` for the mailbox of ``address`` (the relay's spool knows addresses): in
    the transaction that retires the spool entries, so an entry is counted once."""
    if not any(r.fault for r in results):
        return 0
    mailbox_id = conn.scalar(select(Mailbox.id).where(Mailbox.address == address))
    return 0 if mailbox_id is None else record_in(conn, mailbox_id, results)


def batch_done(
    mailbox_id: int, folder: str, uidvalidity: int, last_uid: int
) -> Callable[[Connection, Sequence[Outcome]], None]:
    """What the poller's batch does in its last transaction, after its captures
    (:meth:`crm.capture.path.Capturer.capture_many`'s ``then``): count the messages it skipped on
    a fault for the mailbox and advance the folder's checkpoint past them, in one commit."""

    def done(conn: Connection, results: Sequence[Outcome]) -> None:
        record_in(conn, mailbox_id, results)
        save_checkpoint_in(conn, mailbox_id, folder, uidvalidity, last_uid)

    return done
