"""The CRM side of IMAP sync: checkpoints, read state (C10), deletions (C11), mailbox status (M5).

Role: every database write the poller makes besides capture itself, each function one short
transaction through :class:`crm.store.db.Database`. The poller calls them from its database thread;
nothing here knows about IMAP beyond folder names, UIDVALIDITY and UIDs.

Deletions (C11) are in :mod:`crm.mailboxes.deletions`.

Read state: ``MessageLocation.seen`` is the server's ``\\Seen`` as last synced. A server value
that differs from it is a change made on the server (the activity follows); an activity whose
``completed`` differs from it is a change made in the CRM (the poller pushes it upstream).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, select, update
from sqlalchemy.orm import Session

from crm.store.db import Database
from crm.store.models import (
    Activity,
    Direction,
    FolderState,
    Mailbox,
    MessageLocation,
    utcnow,
)
from crm.vocab import WINDOWS

INCOMING = Direction.INCOMING.value


@dataclass(frozen=True)
class Checkpoint:
    """Where the incremental sync of one folder stands."""

    uidvalidity: int
    last_uid: int
    highest_modseq: int


@dataclass(frozen=True)
class ServerFlags:
    """The flags of one message as the server reported them."""

    uid: int
    seen: bool
    answered: bool = False


def load_checkpoint(db: Database, mailbox_id: int, folder: str) -> Checkpoint | None:
    """The folder's checkpoint, or None before its first sync."""
    with db.session() as s:
        state = s.get(FolderState, (mailbox_id, folder))
        if state is None:
            return None
        return Checkpoint(state.uidvalidity, state.last_uid, state.highest_modseq)


def save_checkpoint(
    db: Database,
    mailbox_id: int,
    folder: str,
    uidvalidity: int,
    last_uid: int | None = None,
    highest_modseq: int | None = None,
) -> None:
    """Advance the checkpoint (called only after the captures it covers are committed).

    A new UIDVALIDITY starts over at 0; ``last_uid`` never moves back within one UIDVALIDITY.
    """
    with db.session() as s:
        state = s.get(FolderState, (mailbox_id, folder))
        if state is None:
            state = FolderState(mailbox_id=mailbox_id, folder=folder, uidvalidity=uidvalidity)
            state.last_uid = state.highest_modseq = 0
            s.add(state)
        elif state.uidvalidity != uidvalidity:
            state.uidvalidity, state.last_uid, state.highest_modseq = uidvalidity, 0, 0
        if last_uid is not None:
            state.last_uid = max(state.last_uid or 0, last_uid)
        if highest_modseq is not None:
            state.highest_modseq = highest_modseq
        state.updated_at = utcnow()


def here(mailbox_id: int, folder: str, uidvalidity: int) -> list[ColumnElement[bool]]:
    return [
        MessageLocation.mailbox_id == mailbox_id,
        MessageLocation.folder == folder,
        MessageLocation.uidvalidity == uidvalidity,
    ]


def known_uids(
    db: Database, mailbox_id: int, folder: str, uidvalidity: int, after: int, limit: int
) -> list[int]:
    """The next ``limit`` recorded UIDs above ``after`` (keyset pages: memory stays flat)."""
    with db.session() as s:
        query = (
            select(MessageLocation.uid)
            .where(*here(mailbox_id, folder, uidvalidity), MessageLocation.uid > after)
            .order_by(MessageLocation.uid)
            .limit(limit)
        )
        return list(s.scalars(query))


def recorded(
    db: Database, mailbox_id: int, folder: str, uidvalidity: int, uids: Sequence[int]
) -> set[int]:
    """Which of ``uids`` are recorded already (captured before a crash: not fetched again)."""
    if not uids:
        return set()
    with db.session() as s:
        query = select(MessageLocation.uid).where(
            *here(mailbox_id, folder, uidvalidity), MessageLocation.uid.in_(list(uids))
        )
        return set(s.scalars(query))


def apply_server_flags(
    db: Database, mailbox_id: int, folder: str, uidvalidity: int, flags: Sequence[ServerFlags]
) -> int:
    """C10 server -> CRM: a changed ``\\Seen`` completes or reopens the activity.

    ``\\Answered`` marks the activity answered (it then survives deletion, C11). Returns how
    many activities changed.
    """
    by_uid = {f.uid: f for f in flags}
    if not by_uid:
        return 0
    changed = 0
    with db.session() as s:
        rows = s.execute(
            select(MessageLocation, Activity)
            .outerjoin(Activity, Activity.id == MessageLocation.activity_id)
            .where(*here(mailbox_id, folder, uidvalidity), MessageLocation.uid.in_(list(by_uid)))
        ).all()
        for loc, activity in rows:
            server = by_uid[loc.uid]
            if activity is not None and server.answered and not activity.answered:
                activity.answered = True
            if server.seen == loc.seen:
                continue
            loc.seen = server.seen
            if activity is not None and activity.direction == INCOMING:
                changed += activity.completed != server.seen
                activity.completed = server.seen
    return changed


def _mismatch() -> list[ColumnElement[bool]]:
    return [Activity.direction == INCOMING, Activity.completed != MessageLocation.seen]


def pending_pushes(
    db: Database, mailbox_id: int, folder: str, uidvalidity: int, limit: int
) -> list[tuple[int, bool]]:
    """C10 CRM -> server: ``(uid, seen)`` for activities completed or reopened in the CRM."""
    with db.session() as s:
        rows = s.execute(
            select(MessageLocation.uid, Activity.completed)
            .join(Activity, Activity.id == MessageLocation.activity_id)
            .where(*here(mailbox_id, folder, uidvalidity), *_mismatch())
            .order_by(MessageLocation.uid)
            .limit(limit)
        )
        return [(uid, bool(done)) for uid, done in rows]


def confirm_pushes(
    db: Database, mailbox_id: int, folder: str, uidvalidity: int, uids: Iterable[int], seen: bool
) -> None:
    """The server now has ``\\Seen`` = ``seen`` on ``uids``."""
    wanted = list(uids)
    if not wanted:
        return
    with db.session() as s:
        s.execute(
            update(MessageLocation)
            .where(*here(mailbox_id, folder, uidvalidity), MessageLocation.uid.in_(wanted))
            .values(seen=seen)
        )


def folders_with_pushes(db: Database) -> dict[int, set[str]]:
    """Per mailbox, the folders holding activities whose state waits to go upstream."""
    found: dict[int, set[str]] = {}
    with db.session() as s:
        rows = s.execute(
            select(MessageLocation.mailbox_id, MessageLocation.folder)
            .join(Activity, Activity.id == MessageLocation.activity_id)
            .join(
                FolderState,
                and_(
                    FolderState.mailbox_id == MessageLocation.mailbox_id,
                    FolderState.folder == MessageLocation.folder,
                    FolderState.uidvalidity == MessageLocation.uidvalidity,
                ),
            )
            .where(*_mismatch())
            .distinct()
        )
        for mailbox_id, folder in rows:
            found.setdefault(mailbox_id, set()).add(folder)
    return found


def remap(
    db: Database,
    mailbox_id: int,
    folder: str,
    uidvalidity: int,
    found: Sequence[tuple[int, str]],
) -> set[int]:
    """UIDVALIDITY changed: move old locations to the new UIDs by message key (Message-ID).

    ``found`` is ``(new uid, message key)``; returns the UIDs that were re-mapped.
    """
    done: set[int] = set()
    with db.session() as s:
        taken = set(
            s.scalars(
                select(MessageLocation.uid).where(
                    *here(mailbox_id, folder, uidvalidity),
                    MessageLocation.uid.in_([uid for uid, _ in found]),
                )
            )
        )
        for uid, key in found:
            if uid in taken:
                done.add(uid)
                continue
            old = s.scalar(
                select(MessageLocation)
                .where(
                    MessageLocation.mailbox_id == mailbox_id,
                    MessageLocation.folder == folder,
                    MessageLocation.uidvalidity != uidvalidity,
                    MessageLocation.message_key == key,
                )
                .limit(1)
            )
            if old is not None:
                old.uidvalidity, old.uid = uidvalidity, uid
                done.add(uid)
    return done


def set_window(db: Database, mailbox_id: int, since: str) -> bool:
    """Store ``since`` as the mailbox's import window (M3, C12); True when it widened.

    Widening forgets, in the same transaction, the locations of messages that were captured as
    nothing (skipped, perhaps only for being before the old window), so that an import from the
    first UID looks at them again; captured and duplicate messages keep their locations.
    """
    with db.session() as s:
        box = s.get(Mailbox, mailbox_id)
        return False if box is None else widen(s, box, since)


def widen(session: Session, box: Mailbox, since: str) -> bool:
    """:func:`set_window` in the caller's session (``mailbox set --since``); True when wider."""
    old, box.since = box.since, since
    wider = _days(since) > _days(old)
    if wider and box.id is not None:
        session.execute(
            delete(MessageLocation).where(
                MessageLocation.mailbox_id == box.id, MessageLocation.activity_id.is_(None)
            )
        )
    return wider


def passed_over(session: Session, mailbox_id: int) -> bool:
    """True when the poller or an import has checkpoints for the mailbox (has passed its mail)."""
    query = select(FolderState.folder).where(FolderState.mailbox_id == mailbox_id).limit(1)
    return session.scalar(query) is not None


def _days(since: str) -> float:
    span = WINDOWS.get(since)
    return float("inf") if span is None else span.total_seconds() / 86400


def record_status(db: Database, mailbox_id: int, error: str | None) -> None:
    """M5: the outcome of a check; ``error`` None means it worked."""
    now = utcnow()
    with db.session() as s:
        box = s.get(Mailbox, mailbox_id)
        if box is None:
            return
        box.last_check_at = now
        if error is None:
            box.last_ok_at, box.last_error = now, None
        else:
            box.last_error = error[:1000]
