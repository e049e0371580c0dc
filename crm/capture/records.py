"""Writes a capture decision into the CRM: companies, leads, contacts, the activity, bindings;
and what the capture path notes besides (a message's alias id, where the poller found it).

Runs inside the caller's transaction (SQL Core inserts: this is the hot path of every captured
message, so it logs its DAV changes itself, :func:`crm.store.changes.log_rows`); the caller
commits or rolls back the whole message. A batch (:mod:`crm.capture.batch`)
builds the same rows with :func:`create_entities`, :func:`activity_row` and :func:`binding_rows`
and writes the activities, bindings and addresses of all its messages together (:class:`Deferred`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Executable, Table, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from crm.mail.domains import CompanyGuess
from crm.mail.message import ParsedMessage
from crm.store.changes import log_rows
from crm.store.models import (
    EntityType,
    utcnow,
)
from crm.store.tables import (
    ACTIVITIES,
    BINDINGS,
    COMPANIES,
    CONTACTS,
    EMAILS,
    LEADS,
    LOCATIONS,
    MAILBOXES,
    USERS,
)

from .pipeline import Decision, EntityRef, NewContact, NewLead

_ALIAS = (
    update(ACTIVITIES)
    .where(ACTIVITIES.c.message_key == bindparam("key"), ACTIVITIES.c.alt_message_id.is_(None))
    .values(alt_message_id=bindparam("alias"))
)
_LOCATE: dict[str, Executable] = {}


@dataclass
class CreatedRecords:
    """Ids of what one capture created."""

    leads: list[int] = field(default_factory=list)
    contacts: list[int] = field(default_factory=list)
    companies: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, list[int]]:
        """``{"leads": [...], "contacts": [...], "companies": [...]}``."""
        return {"leads": self.leads, "contacts": self.contacts, "companies": self.companies}


_INSERTS: dict[str, Any] = {}


def _insert(conn: Connection, table: Table, **values: Any) -> int:
    """Insert one row and return its id; the statement is built once per table."""
    statement = _INSERTS.get(table.name)
    if statement is None:
        statement = _INSERTS[table.name] = insert(table).returning(table.c.id)
    new_id: int = conn.execute(statement, values).scalar_one()
    return new_id


_COMPANY_BY_DOMAIN = select(COMPANIES.c.id).where(COMPANIES.c.domain == bindparam("domain"))
_USER_BY_EMAIL = select(USERS.c.id).where(USERS.c.email == bindparam("email"))
_BIND = insert(BINDINGS)
_EMAIL = insert(EMAILS)
_CURSOR = (
    update(MAILBOXES)
    .where(MAILBOXES.c.id == bindparam("box"))
    .values(queue_cursor=bindparam("cursor"))
)
_ANSWERED = (
    update(ACTIVITIES)
    .where(
        ACTIVITIES.c.message_id.in_(bindparam("ids", expanding=True))
        | ACTIVITIES.c.alt_message_id.in_(bindparam("ids", expanding=True)),
        ACTIVITIES.c.direction == "incoming",
    )
    .values(answered=True)
)


@dataclass
class Deferred:
    """A batch's addresses of new leads and contacts, written at its end; the companies (by
    domain) and users (by address) it has read or made in its transaction, asked only once
    (``domains``: the domains already asked for, found or not)."""

    emails: list[dict[str, Any]] = field(default_factory=list)
    companies: dict[str, int] = field(default_factory=dict)
    domains: set[str] = field(default_factory=set)
    users: dict[str, int | None] = field(default_factory=dict)


def company_for(
    conn: Connection,
    guess: CompanyGuess | None,
    created: CreatedRecords,
    deferred: Deferred | None = None,
) -> int | None:
    """The id of the company a guess names, created when new (by domain, else by name)."""
    if guess is None:
        return None
    if guess.domain and deferred is not None and guess.domain in deferred.companies:
        return deferred.companies[guess.domain]
    if guess.domain and deferred is not None and guess.domain in deferred.domains:
        found = None  # asked for this batch: there is none
    elif guess.domain:
        found = conn.scalar(_COMPANY_BY_DOMAIN, {"domain": guess.domain})
    else:
        by_name = func.lower(COMPANIES.c.name) == guess.name.casefold()
        found = conn.scalar(select(COMPANIES.c.id).where(by_name).limit(1))
    if found is not None:
        company_id = int(found)
    else:
        company_id = _insert(conn, COMPANIES, name=guess.name[:200], domain=guess.domain or None)
        created.companies.append(company_id)
    if guess.domain and deferred is not None:
        deferred.companies[guess.domain] = company_id
    return company_id


def add_emails(
    conn: Connection | Session,
    etype: EntityType,
    eid: int,
    addresses: tuple[str, ...],
    deferred: Deferred | None = None,
) -> None:
    """Register the addresses of an entity in the address index (with ``deferred``: at the
    batch's end)."""
    rows = [
        {"address": a, "entity_type": etype.value, "entity_id": eid, "position": i}
        for i, a in enumerate(addresses)
    ]
    if deferred is not None:
        deferred.emails += rows
    elif rows:
        conn.execute(_EMAIL, rows)


def _user_id(conn: Connection, email: str | None, deferred: Deferred | None) -> int | None:
    if email is None:
        return None
    if deferred is not None and email in deferred.users:
        return deferred.users[email]
    found = conn.scalar(_USER_BY_EMAIL, {"email": email})
    user_id = None if found is None else int(found)
    if deferred is not None:
        deferred.users[email] = user_id
    return user_id


def _create_lead(
    conn: Connection,
    new: NewLead,
    mailbox_id: int,
    created: CreatedRecords,
    deferred: Deferred | None,
) -> EntityRef:
    company_id = company_for(conn, new.company, created, deferred)
    lead_id = _insert(
        conn,
        LEADS,
        name=new.name[:200],
        company_id=company_id,
        responsible_id=_user_id(conn, new.responsible, deferred),
        mailbox_id=mailbox_id,
    )
    add_emails(conn, EntityType.LEAD, lead_id, (new.address,), deferred)
    created.leads.append(lead_id)
    return EntityRef(EntityType.LEAD, lead_id, company_id)


def _create_contact(
    conn: Connection, new: NewContact, created: CreatedRecords, deferred: Deferred | None
) -> EntityRef:
    company_id = company_for(conn, new.company, created, deferred)
    contact_id = _insert(
        conn,
        CONTACTS,
        name=new.card.name[:200],
        phones=list(new.card.phones),
        title=new.card.title[:200] if new.card.title else None,
        company_id=company_id,
    )
    add_emails(conn, EntityType.CONTACT, contact_id, new.addresses, deferred)
    created.contacts.append(contact_id)
    return EntityRef(EntityType.CONTACT, contact_id, company_id)


@dataclass
class Entities:
    """The contacts and leads one decision created, for its bindings."""

    contacts: list[EntityRef]
    leads: list[EntityRef]
    created: CreatedRecords


def create_entities(
    conn: Connection, decision: Decision, mailbox_id: int, deferred: Deferred | None = None
) -> Entities:
    """The contacts and leads a ``captured`` decision asks for, written now (a later message
    may name them); their addresses now, or into ``deferred``."""
    created = CreatedRecords()
    contacts = [_create_contact(conn, c, created, deferred) for c in decision.new_contacts]
    leads = [_create_lead(conn, n, mailbox_id, created, deferred) for n in decision.new_leads]
    return Entities(contacts, leads, created)


def entities_touched(made: Entities) -> set[tuple[str, int | None]]:
    """What the DAV change log must note of the entities a capture made: each, its company."""
    touched: set[tuple[str, int | None]] = {("company", c) for c in made.created.companies}
    for ref in made.contacts + made.leads:
        touched |= {(ref.type.value, ref.id), ("company", ref.company_id)}
    return touched


def activity_touched(activity_id: int, bindings: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """What the DAV change log must note of a new activity: it, and every record bound to it
    (a binding may show that record to one more reader)."""
    return {("activity", activity_id)} | {(b["entity_type"], b["entity_id"]) for b in bindings}


def binding_rows(activity_id: int, decision: Decision, made: Entities) -> list[dict[str, Any]]:
    """The bindings of a captured message's activity."""
    refs = list(decision.bind)
    for index in decision.bind_new_contacts:
        contact = made.contacts[index]
        refs.append(contact)
        if contact.company_id is not None:
            refs.append(EntityRef(EntityType.COMPANY, contact.company_id))
    refs += made.leads
    unique = dict.fromkeys((ref.type.value, ref.id) for ref in refs)
    return [
        {"activity_id": activity_id, "entity_type": etype, "entity_id": eid}
        for etype, eid in unique
    ]


def activity_row(
    msg: ParsedMessage, mailbox_id: int, decision: Decision, folder: str | None
) -> dict[str, Any]:
    """The activity of a captured message, as the values of its row."""
    return {
        "message_key": msg.key,
        "message_id": msg.message_id,
        "alt_message_id": msg.header_id,
        "thread": decision.thread[:998],
        "direction": decision.direction.value,
        "subject": msg.subject,
        "sender": msg.sender.address if msg.sender else None,
        "counterparts": list(decision.counterparts),
        "mailbox_id": mailbox_id,
        "folder": folder,
        "sent_at": msg.date or utcnow(),
        "completed": decision.completed,
        "answered": False,
    }


def apply_decision(
    conn: Connection,
    msg: ParsedMessage,
    mailbox_id: int,
    decision: Decision,
    folder: str | None = None,
) -> tuple[int, CreatedRecords]:
    """Create everything a ``captured`` decision asks for; returns the activity's id."""
    made = create_entities(conn, decision, mailbox_id)
    activity_id = _insert(conn, ACTIVITIES, **activity_row(msg, mailbox_id, decision, folder))
    bindings = binding_rows(activity_id, decision, made)
    conn.execute(_BIND, bindings)
    log_rows(conn, entities_touched(made) | activity_touched(activity_id, bindings))
    if decision.queue_cursor is not None:
        set_cursor(conn, mailbox_id, decision.queue_cursor)
    if decision.answers:
        mark_answered(conn, decision.answers)
    return activity_id, made.created


def set_cursor(conn: Connection, mailbox_id: int, cursor: int) -> None:
    """M4: the mailbox's round-robin cursor."""
    conn.execute(_CURSOR, {"box": mailbox_id, "cursor": cursor})


def mark_answered(conn: Connection, ids: tuple[str, ...]) -> None:
    """The incoming activities a reply answers (by either of their ids)."""
    conn.execute(_ANSWERED, {"ids": list(ids)})


def remember_alias(conn: Connection, msg: ParsedMessage) -> None:
    """A rewritten copy (Exchange, Gmail Sent) of a captured message: keep its id for B3."""
    if msg.header_id:
        conn.execute(_ALIAS, {"key": msg.key, "alias": msg.header_id})


def location_row(
    mailbox_id: int, key: str, folder: str, uidvalidity: int, uid: int, seen: bool
) -> dict[str, Any]:
    """A location's row but its activity."""
    return {
        "mailbox_id": mailbox_id,
        "folder": folder,
        "uidvalidity": uidvalidity,
        "uid": uid,
        "message_key": key,
        "seen": seen,
    }


def record_location(conn: Connection, row: dict[str, Any], activities: list[int]) -> None:
    """Where the poller found the message (:func:`location_row`), for read-state and deletion
    sync (C10, C11); a location already recorded is left as it is."""
    activity_id = activities[0] if activities else None
    conn.execute(location_insert(conn.dialect.name), {**row, "activity_id": activity_id})


def location_insert(dialect: str) -> Executable:
    """``INSERT ... ON CONFLICT DO NOTHING`` into the locations, in the dialect's words."""
    statement = _LOCATE.get(dialect)
    if statement is None:
        table = (
            postgresql.insert(LOCATIONS) if dialect == "postgresql" else sqlite.insert(LOCATIONS)
        )
        statement = _LOCATE[dialect] = table.on_conflict_do_nothing()
    return statement
