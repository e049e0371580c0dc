"""What the CardDAV/CalDAV front end (:mod:`proxy.dav`) reads of the CRM: who signs in, the cards
(leads, contacts, companies) and tasks (activities) a user may see, and the change log that makes
sync tokens and collection tags (``dav_changes``, :mod:`crm.store.changes`; a token's position in
it, :mod:`crm.store.positions`), kept to a retention (:mod:`crm.store.pruning`).

Plain dataclasses cross the door; the vCard and iCalendar text is the front end's business. What a
user sees is the visibility rule's (SPEC V1, :mod:`crm.face.visibility`), applied in SQL: one
query per kind lists a user's cards, whatever the number of records they cannot see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from crm.mail.addresses import try_normalize
from crm.mailboxes.linking import LoginView as LoginView
from crm.mailboxes.linking import lookup_login
from crm.mailboxes.schedule import touch_owner
from crm.store import positions, pruning
from crm.store.db import Database
from crm.store.models import Activity, Company, Contact, DavChange, EntityEmail, Lead, Mailbox
from crm.store.positions import Position as Position
from crm.vocab import EntityType

from .views import iso
from .visibility import Viewer, viewer_for, where_activity_seen, where_seen

CARD_KINDS = ("lead", "contact", "company")
TASK_KINDS = ("activity",)
MODELS: dict[str, Any] = {"lead": Lead, "contact": Contact, "company": Company}
CHUNK = 500  # ids per IN list when a client names the records it wants


@dataclass(frozen=True)
class Card:
    """One address-book entry: a lead, contact or company."""

    kind: str
    id: int
    name: str
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    org: str | None = None
    title: str | None = None
    status: str | None = None  # leads only


@dataclass(frozen=True)
class Task:
    """One activity as a to-do."""

    id: int
    subject: str
    direction: str
    sender: str | None
    counterparts: tuple[str, ...]
    date: str | None
    completed: bool
    thread: str
    message_id: str | None
    mailbox: str | None
    completed_at: str | None = None
    sequence: int = 0  # times completed or reopened


def login_view(db: Database, login: str) -> LoginView:
    """Who ``login`` is and which SMTP server checks its password (as for the relay)."""
    with db.session() as session:
        return lookup_login(session, login)


def signed_in(db: Database, email: str) -> Viewer | None:
    """The viewer for ``email`` after their password was proven, or None (no CRM access);
    the sign-in counts as the owner being active (T1)."""
    with db.session() as session:
        touch_owner(session, email)
    return viewer_for(db, email)


def _chunks(ids: list[int] | None) -> Iterator[list[int] | None]:
    if ids is None:
        yield None
        return
    unique = sorted(set(ids))
    for start in range(0, len(unique), CHUNK):
        yield unique[start : start + CHUNK]


def _limited(query: Any, cond: ColumnElement[bool] | None, column: Any, ids: Any) -> Any:
    if cond is not None:
        query = query.where(cond)
    return query if ids is None else query.where(column.in_(ids))


def _emails(session: Session, kind: str, ids: Any) -> dict[int, list[str]]:
    query = select(EntityEmail.entity_id, EntityEmail.address).where(
        EntityEmail.entity_type == kind, EntityEmail.entity_id.in_(ids)
    )
    found: dict[int, list[str]] = {}
    for eid, address in session.execute(
        query.order_by(EntityEmail.entity_id, EntityEmail.position)
    ):
        found.setdefault(eid, []).append(address)
    return found


def _cards_of(session: Session, viewer: Viewer, kind: str, ids: list[int] | None) -> list[Card]:
    model, cond = MODELS[kind], where_seen(viewer, EntityType(kind))
    if kind == "company":
        query = _limited(select(Company.id, Company.name), cond, Company.id, ids)
        return [
            Card("company", cid, name) for cid, name in session.execute(query.order_by(Company.id))
        ]
    query = _limited(
        select(model, Company.name).outerjoin(Company, Company.id == model.company_id),
        cond,
        model.id,
        ids,
    )
    rows = list(session.execute(query.order_by(model.id)))
    emails = _emails(session, kind, _limited(select(model.id), cond, model.id, ids))
    return [
        Card(
            kind,
            record.id,
            record.name,
            tuple(emails.get(record.id, ())),
            tuple(record.phones or ()),
            org,
            getattr(record, "title", None),
            getattr(record, "status", None),
        )
        for record, org in rows
    ]


def cards(db: Database, viewer: Viewer, wanted: dict[str, list[int]] | None = None) -> list[Card]:
    """The cards ``viewer`` may see: all of them, or those of ``wanted`` (kind -> ids)."""
    found: list[Card] = []
    with db.session() as session:
        for kind in CARD_KINDS:
            if wanted is not None and not wanted.get(kind):
                continue
            for ids in _chunks(None if wanted is None else wanted[kind]):
                found.extend(_cards_of(session, viewer, kind, ids))
    return found


def _task(activity: Activity, mailbox: str | None) -> Task:
    return Task(
        activity.id,
        activity.subject or "",
        activity.direction,
        activity.sender,
        tuple(activity.counterparts or ()),
        iso(activity.sent_at),
        bool(activity.completed),
        activity.thread,
        activity.message_id,
        mailbox,
        iso(activity.completed_at) if activity.completed else None,
        activity.status_changes or 0,
    )


def tasks(db: Database, viewer: Viewer, ids: list[int] | None = None) -> list[Task]:
    """The activities ``viewer`` may see: all, or those of ``ids``."""
    found: list[Task] = []
    cond = where_activity_seen(viewer)
    with db.session() as session:
        for chunk in _chunks(ids):
            query = select(Activity, Mailbox.address).outerjoin(
                Mailbox, Mailbox.id == Activity.mailbox_id
            )
            query = _limited(query, cond, Activity.id, chunk)
            found.extend(_task(a, box) for a, box in session.execute(query.order_by(Activity.id)))
    return found


def head(db: Database, kinds: tuple[str, ...]) -> int:
    """The newest change of ``kinds`` (0: none yet): a collection's tag and sync token."""
    with db.session() as session:
        return positions.newest(session, kinds)


class Pruned(Exception):
    """The change log no longer reaches back to a client's token (pruned below it, SPEC B8)."""


def prune_changes(db: Database, days: int) -> pruning.Pruned:
    """Delete the changes older than ``days`` days now (``mailcrm db prune-dav-changes``)."""
    return pruning.prune(db, days, pause=pruning.PAUSE)


def position(db: Database, kinds: tuple[str, ...]) -> Position:
    """Where the changes of ``kinds`` stand now: a collection's sync token."""
    with db.session() as session:
        return positions.current(session, kinds)


def changed(
    db: Database, kinds: tuple[str, ...], since: Position, limit: int
) -> tuple[list[tuple[str, int]], Position, bool]:
    """The records of ``kinds`` changed after ``since``, at most ``limit`` changes: (distinct
    records in change order, the position they reach, whether more are left).

    Raises :class:`Pruned` when changes after ``since`` may be gone; checked after the read, so
    a prune running meanwhile cannot leave a hole unnoticed (it deletes the oldest first)."""
    with db.session() as session:
        positions.one_snapshot(session)  # the position reached is of the read's snapshot
        now = positions.current(session, kinds)
        rows = list(
            session.execute(
                select(DavChange.id, DavChange.entity_type, DavChange.entity_id)
                .where(positions.after(since), DavChange.entity_type.in_(kinds))
                .order_by(DavChange.id)
                .limit(limit + 1)
            )
        )
        if since.change < pruning.floor(session, kinds):
            raise Pruned(since.change)
    more = len(rows) > limit
    rows = rows[:limit]
    seen: dict[tuple[str, int], None] = {}
    for _id, kind, eid in rows:
        seen[(kind, eid)] = None
    reached = max([since.change, *(row[0] for row in rows)])
    return list(seen), dataclasses.replace(now, change=reached), more


def normal_address(text: str) -> str | None:
    """An address as the CRM stores it, or None when it is not one."""
    return try_normalize(text)
