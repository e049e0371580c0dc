"""Writes a capture decision into the CRM: companies, leads, contacts, the activity, bindings;
and what the capture path notes besides (a message's alias id, where the poller found it).

Runs inside the caller's transaction (SQL Core inserts: this is the hot path of every captured
message); the caller commits or rolls back the whole message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Executable, Table, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from crm.mail.domains import CompanyGuess
from crm.mail.message import ParsedMessage
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


def company_for(
    conn: Connection, guess: CompanyGuess | None, created: CreatedRecords
) -> int | None:
    """The id of the company a guess names, created when new (by domain, else by name)."""
    if guess is None:
        return None
    if guess.domain:
        found = conn.scalar(_COMPANY_BY_DOMAIN, {"domain": guess.domain})
    else:
        by_name = func.lower(COMPANIES.c.name) == guess.name.casefold()
        found = conn.scalar(select(COMPANIES.c.id).where(by_name).limit(1))
    if found is not None:
        return int(found)
    company_id = _insert(conn, COMPANIES, name=guess.name[:200], domain=guess.domain or None)
    created.companies.append(company_id)
    return company_id


def add_emails(
    conn: Connection | Session, etype: EntityType, eid: int, addresses: tuple[str, ...]
) -> None:
    """Register the addresses of an entity in the address index."""
    if addresses:
        conn.execute(
            _EMAIL,
            [
                {"address": a, "entity_type": etype.value, "entity_id": eid, "position": i}
                for i, a in enumerate(addresses)
            ],
        )


def _user_id(conn: Connection, email: str | None) -> int | None:
    if email is None:
        return None
    found = conn.scalar(_USER_BY_EMAIL, {"email": email})
    return None if found is None else int(found)


def _create_lead(
    conn: Connection, new: NewLead, mailbox_id: int, created: CreatedRecords
) -> EntityRef:
    company_id = company_for(conn, new.company, created)
    lead_id = _insert(
        conn,
        LEADS,
        name=new.name[:200],
        company_id=company_id,
        responsible_id=_user_id(conn, new.responsible),
        mailbox_id=mailbox_id,
    )
    add_emails(conn, EntityType.LEAD, lead_id, (new.address,))
    created.leads.append(lead_id)
    return EntityRef(EntityType.LEAD, lead_id, company_id)


def _create_contact(conn: Connection, new: NewContact, created: CreatedRecords) -> EntityRef:
    company_id = company_for(conn, new.company, created)
    contact_id = _insert(
        conn,
        CONTACTS,
        name=new.card.name[:200],
        phones=list(new.card.phones),
        title=new.card.title[:200] if new.card.title else None,
        company_id=company_id,
    )
    add_emails(conn, EntityType.CONTACT, contact_id, new.addresses)
    created.contacts.append(contact_id)
    return EntityRef(EntityType.CONTACT, contact_id, company_id)


def _bindings(
    decision: Decision, contacts: list[EntityRef], leads: list[EntityRef]
) -> list[tuple[str, int]]:
    refs = list(decision.bind)
    for index in decision.bind_new_contacts:
        contact = contacts[index]
        refs.append(contact)
        if contact.company_id is not None:
            refs.append(EntityRef(EntityType.COMPANY, contact.company_id))
    refs += leads
    return list(dict.fromkeys((ref.type.value, ref.id) for ref in refs))


def apply_decision(
    conn: Connection,
    msg: ParsedMessage,
    mailbox_id: int,
    decision: Decision,
    folder: str | None = None,
) -> tuple[int, CreatedRecords]:
    """Create everything a ``captured`` decision asks for; returns the activity's id."""
    created = CreatedRecords()
    contacts = [_create_contact(conn, c, created) for c in decision.new_contacts]
    leads = [_create_lead(conn, lead, mailbox_id, created) for lead in decision.new_leads]
    activity_id = _insert(
        conn,
        ACTIVITIES,
        message_key=msg.key,
        message_id=msg.message_id,
        alt_message_id=msg.header_id,
        thread=decision.thread[:998],
        direction=decision.direction.value,
        subject=msg.subject,
        sender=msg.sender.address if msg.sender else None,
        counterparts=list(decision.counterparts),
        mailbox_id=mailbox_id,
        folder=folder,
        sent_at=msg.date or utcnow(),
        completed=decision.completed,
    )
    conn.execute(
        _BIND,
        [
            {"activity_id": activity_id, "entity_type": etype, "entity_id": eid}
            for etype, eid in _bindings(decision, contacts, leads)
        ],
    )
    if decision.queue_cursor is not None:
        conn.execute(_CURSOR, {"box": mailbox_id, "cursor": decision.queue_cursor})
    if decision.answers:
        conn.execute(_ANSWERED, {"ids": list(decision.answers)})
    return activity_id, created


def remember_alias(conn: Connection, msg: ParsedMessage) -> None:
    """A rewritten copy (Exchange, Gmail Sent) of a captured message: keep its id for B3."""
    if msg.header_id:
        conn.execute(_ALIAS, {"key": msg.key, "alias": msg.header_id})


def record_location(
    conn: Connection,
    mailbox_id: int,
    key: str,
    folder: str,
    uidvalidity: int,
    uid: int,
    seen: bool,
    activities: list[int],
) -> None:
    """Where the poller found the message, for read-state and deletion sync (C10, C11); a
    location already recorded is left as it is."""
    statement = _LOCATE.get(conn.dialect.name)
    if statement is None:
        statement = _LOCATE[conn.dialect.name] = _insert_once(conn.dialect.name)
    conn.execute(
        statement,
        {
            "mailbox_id": mailbox_id,
            "folder": folder,
            "uidvalidity": uidvalidity,
            "uid": uid,
            "message_key": key,
            "activity_id": activities[0] if activities else None,
            "seen": seen,
        },
    )


def _insert_once(dialect: str) -> Executable:
    """``INSERT ... ON CONFLICT DO NOTHING`` into the locations, in the dialect's words."""
    if dialect == "postgresql":
        return postgresql.insert(LOCATIONS).on_conflict_do_nothing()
    return sqlite.insert(LOCATIONS).on_conflict_do_nothing()
