"""The reads the capture path makes for one message, as plain SQL Core statements (its writes
are :mod:`crm.capture.records`'); those taking many values serve a whole batch at once
(:mod:`crm.capture.batch`).

Every function takes the open connection of the capture transaction and runs one indexed query,
without ORM object loading: this is the hot path of every captured message (issue 2's speed
targets), so it stays lean. Rows that rarely change (employees, exclusions, a mailbox's queue)
are cached for a few seconds by :class:`Staff` and :class:`MailboxExtras`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import Connection, bindparam, func, select

from crm.capture.pipeline import EntityRef, MailboxView
from crm.errors import NotFound
from crm.mail.domains import registrable_domain

from .models import (
    EntityType,
)
from .tables import (
    ACTIVITIES,
    COMPANIES,
    CONTACTS,
    EMAILS,
    EXCLUSIONS,
    LEADS,
    MAILBOXES,
    QUEUE,
    USERS,
)

IN_CHUNK = 500  # values in one ``IN (...)`` of the batched reads
# Built once: the capture path runs these for every message.
_box = MAILBOXES.c
_MAILBOX_ROW = (
    select(
        _box.id,
        _box.address,
        _box.kind,
        _box.linked,
        _box.create_leads,
        _box.vcard_contacts,
        _box.since,
        _box.linked_at,
        _box.queue_cursor,
        USERS.c.email,
    )
    .outerjoin(USERS, USERS.c.id == _box.owner_id)
    .where(_box.address == bindparam("address"))
)
_MAILBOX_ROW_LOCKED = _MAILBOX_ROW.with_for_update(of=MAILBOXES)
_KNOWN = (
    select(
        EMAILS.c.address,
        EMAILS.c.entity_type,
        EMAILS.c.entity_id,
        CONTACTS.c.company_id,
        LEADS.c.company_id.label("lead_company"),
    )
    .outerjoin(
        CONTACTS, (EMAILS.c.entity_type == "contact") & (CONTACTS.c.id == EMAILS.c.entity_id)
    )
    .outerjoin(LEADS, (EMAILS.c.entity_type == "lead") & (LEADS.c.id == EMAILS.c.entity_id))
    .where(
        EMAILS.c.address.in_(bindparam("addresses", expanding=True)),
        LEADS.c.status.is_(None) | (LEADS.c.status != "converted"),  # its contact has the mail
    )
)
_EXISTING = select(ACTIVITIES.c.id).where(ACTIVITIES.c.message_key == bindparam("key"))
_COMPANIES = select(COMPANIES.c.domain, COMPANIES.c.id).where(
    COMPANIES.c.domain.in_(bindparam("domains", expanding=True))
)
_EXISTING_MANY = select(ACTIVITIES.c.message_key, ACTIVITIES.c.id).where(
    ACTIVITIES.c.message_key.in_(bindparam("keys", expanding=True))
)
_THREADS = select(ACTIVITIES.c.message_id, ACTIVITIES.c.alt_message_id, ACTIVITIES.c.thread).where(
    ACTIVITIES.c.message_id.in_(bindparam("ids", expanding=True))
    | ACTIVITIES.c.alt_message_id.in_(bindparam("ids", expanding=True))
)


class Staff:
    """Employees' addresses (and so the company's own domains) and global exclusions, re-read
    at most every ``seconds``."""

    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds
        self.loaded_at = -1e9
        self.employees: frozenset[str] = frozenset()
        self.own_domains: frozenset[str] = frozenset()
        self.excluded: frozenset[str] = frozenset()

    def refresh(self, conn: Connection) -> None:
        if time.monotonic() - self.loaded_at < self.seconds:
            return
        users = conn.scalars(select(USERS.c.email))
        boxes = conn.scalars(select(MAILBOXES.c.address))
        self.employees = frozenset(users) | frozenset(boxes)
        domains = {a.rpartition("@")[2] for a in self.employees}
        self.own_domains = frozenset(registrable_domain(d) or d for d in domains)
        rows = conn.scalars(select(EXCLUSIONS.c.entry).where(EXCLUSIONS.c.mailbox_id.is_(None)))
        self.excluded = frozenset(rows)
        self.loaded_at = time.monotonic()

    def invalidate(self) -> None:
        self.loaded_at = -1e9


class MailboxExtras:
    """A mailbox's own exclusions and queue, re-read at most every few seconds."""

    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds
        self._cache: dict[int, tuple[float, frozenset[str], tuple[str, ...]]] = {}

    def get(
        self, conn: Connection, mailbox_id: int, kind: str
    ) -> tuple[frozenset[str], tuple[str, ...]]:
        cached = self._cache.get(mailbox_id)
        if cached and time.monotonic() - cached[0] < self.seconds:
            return cached[1], cached[2]
        own = frozenset(
            conn.scalars(select(EXCLUSIONS.c.entry).where(EXCLUSIONS.c.mailbox_id == mailbox_id))
        )
        queue = (
            tuple(
                conn.scalars(
                    select(USERS.c.email)
                    .join(QUEUE, QUEUE.c.user_id == USERS.c.id)
                    .where(QUEUE.c.mailbox_id == mailbox_id)
                    .order_by(QUEUE.c.position)
                )
            )
            if kind == "company"
            else ()
        )
        self._cache[mailbox_id] = (time.monotonic(), own, queue)
        return own, queue

    def invalidate(self) -> None:
        self._cache.clear()


def mailbox_view(conn: Connection, address: str, extras: MailboxExtras) -> tuple[int, MailboxView]:
    """The settings of a mailbox (M3, M4) read fresh, its exclusions and queue from ``extras``;
    row-locked on PostgreSQL so the round-robin cursor is exact across nodes."""
    query = _MAILBOX_ROW_LOCKED if conn.dialect.name == "postgresql" else _MAILBOX_ROW
    row = conn.execute(query, {"address": address.strip().lower()}).one_or_none()
    if row is None:
        raise NotFound(f"no mailbox {address}: add it with `mailcrm mailbox add`")
    own, queue = extras.get(conn, row.id, row.kind)
    view = MailboxView(
        address=row.address,
        kind=row.kind,
        linked=row.linked,
        owner=row.email,
        create_leads=row.create_leads,
        vcard_contacts=row.vcard_contacts,
        since=row.since,
        linked_at=row.linked_at,
        excluded=own,
        queue=queue,
        queue_cursor=row.queue_cursor or 0,
    )
    return row.id, view


def known_entities(conn: Connection, addresses: Iterable[str]) -> dict[str, tuple[EntityRef, ...]]:
    """Every CRM entity each address belongs to (with a contact's or lead's company)."""
    wanted = sorted(set(addresses))
    if not wanted:
        return {}
    rows = conn.execute(_KNOWN, {"addresses": wanted})
    found: dict[str, list[EntityRef]] = {}
    for address, etype, eid, contact_company, lead_company in rows:
        company = contact_company if etype == "contact" else lead_company
        found.setdefault(address, []).append(EntityRef(EntityType(etype), eid, company))
    return {a: tuple(refs) for a, refs in found.items()}


def contact_names(conn: Connection, names: list[str]) -> frozenset[str]:
    """Which of these names (case-folded) contacts have already."""
    if not names:
        return frozenset()
    folded = [n.casefold() for n in names]
    lowered = func.lower(CONTACTS.c.name)
    return frozenset(conn.scalars(select(lowered).where(lowered.in_(folded))))


def existing_activity(conn: Connection, key: str) -> list[int]:
    """The activity already made from this message key (C9), if any."""
    return list(conn.scalars(_EXISTING, {"key": key}))


def existing_activities(conn: Connection, keys: Iterable[str]) -> dict[str, list[int]]:
    """:func:`existing_activity` of many message keys at once (those found)."""
    found: dict[str, list[int]] = {}
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), IN_CHUNK):
        for key, activity_id in conn.execute(
            _EXISTING_MANY, {"keys": wanted[start : start + IN_CHUNK]}
        ):
            found.setdefault(key, []).append(activity_id)
    return found


def companies_by_domain(conn: Connection, domains: list[str]) -> dict[str, int]:
    """The companies of these domains (B5), those found."""
    return {
        domain: company_id for domain, company_id in conn.execute(_COMPANIES, {"domains": domains})
    }


def threads(conn: Connection, ids: tuple[str, ...]) -> dict[str, str]:
    """B3: the thread of every referenced message already in the CRM (by either of its ids)."""
    if not ids:
        return {}
    wanted = set(ids)
    rows = conn.execute(_THREADS, {"ids": sorted(wanted)})
    found: dict[str, str] = {}
    for mid, alt, thread in rows:
        found.update({i: thread for i in (mid, alt) if i in wanted})
    return found
