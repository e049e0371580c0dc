"""What the CardDAV/CalDAV front end (:mod:`proxy.dav`) reads of the CRM: who signs in, the cards
(leads, contacts, companies) and tasks (activities) a user may see, and the change log that makes
sync tokens and collection tags (``dav_changes``, :mod:`crm.store.changes`).

Plain dataclasses cross the door; the vCard and iCalendar text is the front end's business. The
visibility rule is :mod:`crm.face.visibility`'s (helper "web", issue 16); until it lands here,
only users who are admins (who see everything) may use DAV.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sqlalchemy import func, select

from crm.mail.addresses import try_normalize
from crm.mailboxes.linking import LoginView as LoginView
from crm.mailboxes.linking import lookup_login
from crm.mailboxes.schedule import touch_owner
from crm.store.db import Database
from crm.store.models import DavChange, User

from . import views

CARD_KINDS = ("lead", "contact", "company")
TASK_KINDS = ("activity",)


@dataclass(frozen=True)
class Viewer:
    """Stand-in for :class:`crm.face.visibility.Viewer` until the rule is merged: admins only."""

    user_id: int
    email: str
    admin: bool
    sees_all: bool


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


def _rule() -> ModuleType | None:
    try:
        return importlib.import_module("crm.face.visibility")
    except ImportError:
        return None


def login_view(db: Database, login: str) -> LoginView:
    """Who ``login`` is and which SMTP server checks its password (as for the relay)."""
    with db.session() as session:
        return lookup_login(session, login)


def signed_in(db: Database, email: str) -> Any:
    """The viewer for ``email`` after their password was proven, or None (no CRM access);
    the sign-in counts as the owner being active (T1)."""
    with db.session() as session:
        touch_owner(session, email)
    rule = _rule()
    if rule is not None:
        return rule.viewer_for(db, email)
    with db.session() as session:
        user = session.scalar(select(User).where(User.email == email))
        if user is None or not user.crm_access or not user.admin:
            return None
        return Viewer(user.id, user.email, True, True)


def can_see(db: Database, viewer: Any, kind: str, entity_id: int) -> bool:
    """The visibility rule for one record (``kind`` lead/contact/company/activity)."""
    rule = _rule()
    if rule is None or viewer.sees_all:
        return bool(viewer.sees_all)
    if kind == "activity":
        return bool(rule.can_see_activity(db, viewer, entity_id))
    from crm.vocab import EntityType

    return bool(rule.can_see(db, viewer, EntityType(kind), entity_id))


def can_change(db: Database, viewer: Any, kind: str, entity_id: int) -> bool:
    """Whether ``viewer`` may edit or delete the record (own records; all for ``sees all``)."""
    rule = _rule()
    if rule is None or viewer.sees_all:
        return bool(viewer.sees_all)
    from crm.vocab import EntityType

    return bool(rule.can_change(db, viewer, EntityType(kind), entity_id))


def _visible(db: Database, viewer: Any, kind: str, ids: list[int]) -> list[int]:
    if viewer.sees_all:
        return ids
    return [i for i in ids if can_see(db, viewer, kind, i)]


def _all_ids(db: Database, kind: str) -> list[int]:
    from crm.store.models import Activity, Company, Contact, Lead

    model: Any = {"lead": Lead, "contact": Contact, "company": Company, "activity": Activity}[kind]
    with db.session() as session:
        return list(session.scalars(select(model.id).order_by(model.id)))


def cards(db: Database, viewer: Any, wanted: dict[str, list[int]] | None = None) -> list[Card]:
    """The cards ``viewer`` may see: all of them, or those of ``wanted`` (kind -> ids)."""
    found: list[Card] = []
    for kind in CARD_KINDS:
        ids = wanted.get(kind, []) if wanted is not None else _all_ids(db, kind)
        ids = _visible(db, viewer, kind, ids)
        if ids:
            found.extend(_cards_of(db, kind, ids))
    return found


def _cards_of(db: Database, kind: str, ids: list[int]) -> list[Card]:
    with db.session() as session:
        if kind == "company":
            return [
                Card("company", row["id"], row["name"])
                for row in views.companies_json(session, ids)
            ]
        rows = (views.leads_json if kind == "lead" else views.contacts_json)(session, ids)
    return [
        Card(
            kind,
            row["id"],
            row["name"],
            tuple(row["emails"]),
            tuple(row.get("phones") or ()),
            row.get("company"),
            row.get("title"),
            row.get("status"),
        )
        for row in rows
    ]


def tasks(db: Database, viewer: Any, ids: list[int] | None = None) -> list[Task]:
    """The activities ``viewer`` may see: all, or those of ``ids``."""
    chosen = _visible(db, viewer, "activity", _all_ids(db, "activity") if ids is None else ids)
    if not chosen:
        return []
    with db.session() as session:
        rows = views.activities_json(session, ids=chosen)
    return [
        Task(
            r["id"],
            r["subject"] or "",
            r["direction"],
            r["sender"],
            tuple(r["counterparts"]),
            r["date"],
            bool(r["completed"]),
            r["thread"],
            r["message_id"],
            r["mailbox"],
        )
        for r in rows
    ]


def head(db: Database, kinds: tuple[str, ...]) -> int:
    """The newest change of ``kinds`` (0: none yet): a collection's tag and sync token."""
    with db.session() as session:
        return int(
            session.scalar(select(func.max(DavChange.id)).where(DavChange.entity_type.in_(kinds)))
            or 0
        )


def floor(db: Database) -> int:
    """Tokens below this are too old to answer (the log was pruned below it)."""
    with db.session() as session:
        return max(0, int(session.scalar(select(func.min(DavChange.id))) or 1) - 1)


def changed(
    db: Database, kinds: tuple[str, ...], since: int, limit: int
) -> tuple[list[tuple[str, int]], int, bool]:
    """The records of ``kinds`` changed after change ``since``, at most ``limit`` changes:
    (distinct records in change order, the change they reach, whether more are left)."""
    with db.session() as session:
        rows = list(
            session.execute(
                select(DavChange.id, DavChange.entity_type, DavChange.entity_id)
                .where(DavChange.id > since, DavChange.entity_type.in_(kinds))
                .order_by(DavChange.id)
                .limit(limit + 1)
            )
        )
    more = len(rows) > limit
    rows = rows[:limit]
    seen: dict[tuple[str, int], None] = {}
    for _id, kind, eid in rows:
        seen[(kind, eid)] = None
    return list(seen), (rows[-1][0] if rows else since), more


def normal_address(text: str) -> str | None:
    """An address as the CRM stores it, or None when it is not one."""
    return try_normalize(text)
