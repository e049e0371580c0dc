"""The JSON shapes of docs/CLI.md (and the status page): one function per entity, plus the
listings."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.config import PollerConfig
from crm.errors import NotFound
from crm.mail.addresses import normalize_address
from crm.mailboxes.presets import PRESETS
from crm.mailboxes.schedule import schedule_json
from crm.store.models import (
    Activity,
    Company,
    Contact,
    EntityEmail,
    Exclusion,
    Lead,
    Mailbox,
    MailboxKind,
    User,
)
from crm.vocab import INTERVAL_NAMES

JSON = dict[str, Any]


def iso(when: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC, or None."""
    return when.astimezone(dt.UTC).isoformat(timespec="seconds") if when else None


def user_json(user: User) -> JSON:
    """user: email, name, admin, crm_access, sees."""
    return {
        "email": user.email,
        "name": user.name,
        "admin": user.admin,
        "crm_access": user.crm_access,
        "sees": user.sees,
    }


def mailbox_status(box: Mailbox) -> tuple[str, str]:
    """M5: green when linked and its last check worked, else red with the reason."""
    if not box.linked:
        return "red", "link to CRM is off"
    if box.last_error:
        return "red", box.last_error
    if box.last_ok_at is None and box.secret is None:
        return "red", f"no password stored (mailbox set {box.address} --password-stdin)"
    if box.last_ok_at is None:
        return "red", "not checked yet"
    return "green", "last check worked"


def mailbox_json(box: Mailbox) -> JSON:
    """mailbox: address, kind, owner, linked, status, status_reason, last_check, faults,
    settings."""
    status, reason = mailbox_status(box)
    company = box.kind == MailboxKind.COMPANY
    return {
        "address": box.address,
        "kind": box.kind,
        "owner": box.owner.email if box.owner else None,
        "linked": box.linked,
        "status": status,
        "status_reason": reason,
        "last_check": iso(box.last_check_at),
        "last_ok": iso(box.last_ok_at),
        "last_error": box.last_error,
        "faults": {  # messages the poller skipped on a fault, not by a rule (SPEC B6)
            "skipped": box.skipped_faults or 0,
            "last_reason": box.last_fault,
            "last_at": iso(box.last_fault_at),
        },
        "connection": {
            "preset": box.preset,
            "imap_host": box.imap_host,
            "imap_port": box.imap_port,
            "imap_tls": box.imap_tls,
            "smtp_host": box.smtp_host,
            "smtp_port": box.smtp_port,
            "smtp_tls": box.smtp_tls,
            "login": box.login,
            "has_password": box.secret is not None,
        },
        "settings": {
            "auth": box.auth,
            "oauth_provider": box.oauth_provider,
            "since": box.since,
            "create_leads": box.create_leads,
            "vcard_contacts": box.vcard_contacts,
            "folders": list(box.folders) or ["INBOX", "\\Sent"],
            "interval": INTERVAL_NAMES.get(box.interval_s or 0, "10m") if company else None,
            "queue": [m.user.email for m in box.queue] if company else None,
        },
    }


def _pairs(session: Session, query: Any) -> dict[Any, Any]:
    """A two-column query as a dict."""
    return {key: value for key, value in session.execute(query)}


def _emails(session: Session, etype: str, ids: list[int] | None = None) -> dict[int, list[str]]:
    query = select(EntityEmail.entity_id, EntityEmail.address).where(
        EntityEmail.entity_type == etype
    )
    if ids is not None:
        query = query.where(EntityEmail.entity_id.in_(ids))
    rows = session.execute(query.order_by(EntityEmail.entity_id, EntityEmail.position))
    found: dict[int, list[str]] = {}
    for eid, address in rows:
        found.setdefault(eid, []).append(address)
    return found


def _names(session: Session, model: Any, ids: Any = None) -> dict[int, str]:
    """id -> name of ``model``; only of ``ids`` (a subquery or list) when given."""
    query = select(model.id, model.name)
    return _pairs(session, query if ids is None else query.where(model.id.in_(ids)))


def _only(query: Any, model: Any, ids: list[int] | None) -> Any:
    """``query`` ordered by id, restricted to ``ids`` when given."""
    query = query.order_by(model.id)
    return query if ids is None else query.where(model.id.in_(ids))


def leads_json(session: Session, ids: list[int] | None = None) -> list[JSON]:
    """lead: id, name, emails, company, responsible, mailbox (plus status, changed); every lead,
    or those of ``ids``."""
    emails = _emails(session, "lead", ids)
    wanted = None if ids is None else select(Lead.company_id).where(Lead.id.in_(ids))
    companies = _names(session, Company, wanted)
    users = _pairs(session, select(User.id, User.email))
    boxes = _pairs(session, select(Mailbox.id, Mailbox.address))
    return [
        {
            "id": lead.id,
            "name": lead.name,
            "emails": emails.get(lead.id, []),
            "phones": list(lead.phones or []),
            "company": companies.get(lead.company_id) if lead.company_id else None,
            "responsible": users.get(lead.responsible_id) if lead.responsible_id else None,
            "mailbox": boxes.get(lead.mailbox_id) if lead.mailbox_id else None,
            "status": lead.status,
            "changed": lead.changed_by_person,
            "created_at": iso(lead.created_at),
        }
        for lead in session.scalars(_only(select(Lead), Lead, ids))
    ]


def contacts_json(session: Session, ids: list[int] | None = None) -> list[JSON]:
    """contact: id, name, emails, phones, company; every contact, or those of ``ids``."""
    emails = _emails(session, "contact", ids)
    wanted = None if ids is None else select(Contact.company_id).where(Contact.id.in_(ids))
    companies = _names(session, Company, wanted)
    return [
        {
            "id": c.id,
            "name": c.name,
            "emails": emails.get(c.id, []),
            "phones": list(c.phones),
            "company": companies.get(c.company_id) if c.company_id else None,
            "title": c.title,
        }
        for c in session.scalars(_only(select(Contact), Contact, ids))
    ]


def companies_json(session: Session, ids: list[int] | None = None) -> list[JSON]:
    """company: id, name, domain."""
    return [
        {"id": c.id, "name": c.name, "domain": c.domain}
        for c in session.scalars(_only(select(Company), Company, ids))
    ]


def activity_json(activity: Activity, mailbox: str | None) -> JSON:
    """activity: id, direction, subject, message_id, mailbox, completed, thread, bindings."""
    return {
        "id": activity.id,
        "direction": activity.direction,
        "subject": activity.subject,
        "message_id": activity.message_id,
        "mailbox": mailbox,
        "completed": activity.completed,
        "thread": activity.thread,
        "bindings": [{"type": b.entity_type, "id": b.entity_id} for b in activity.bindings],
        "sender": activity.sender,
        "counterparts": list(activity.counterparts),
        "date": iso(activity.sent_at),
        "answered": activity.answered,
    }


def activities_json(
    session: Session, mailbox: str | None = None, ids: list[int] | None = None
) -> list[JSON]:
    """Every activity, oldest first, optionally of one mailbox or only those of ``ids``."""
    boxes = _pairs(session, select(Mailbox.id, Mailbox.address))
    query = _only(select(Activity), Activity, ids)
    if mailbox is not None:
        query = query.where(Activity.mailbox_id == mailbox_id(session, mailbox))
    return [
        activity_json(a, boxes.get(a.mailbox_id) if a.mailbox_id else None)
        for a in session.scalars(query)
    ]


def mailbox_id(session: Session, address: str) -> int:
    """The id of the mailbox ``address`` (NotFound otherwise)."""
    found = session.scalar(select(Mailbox.id).where(Mailbox.address == normalize_address(address)))
    if found is None:
        raise NotFound(f"no mailbox {address}")
    return int(found)


def exclusions_json(session: Session) -> list[JSON]:
    """exclusion: entry, mailbox (null for the global list)."""
    boxes = _pairs(session, select(Mailbox.id, Mailbox.address))
    return [
        {"entry": e.entry, "mailbox": boxes.get(e.mailbox_id) if e.mailbox_id else None}
        for e in session.scalars(select(Exclusion).order_by(Exclusion.id))
    ]


def users_json(session: Session) -> list[JSON]:
    """Every user, by address (``user list``)."""
    return [user_json(u) for u in session.scalars(select(User).order_by(User.email))]


def scheduled_json(box: Mailbox, config: PollerConfig) -> JSON:
    """A mailbox with its schedule (T1-T3), as ``mailbox list`` and ``mailbox show`` print it."""
    data = mailbox_json(box)
    data["schedule"] = schedule_json(box, config)
    return data


def mailboxes_json(session: Session, config: PollerConfig) -> list[JSON]:
    """Every mailbox with its schedule, by address (``mailbox list``)."""
    boxes = session.scalars(select(Mailbox).order_by(Mailbox.address))
    return [scheduled_json(box, config) for box in boxes]


def presets_json() -> list[JSON]:
    """The connection presets of common mail services (``mailbox presets``)."""
    return [vars(p) for p in PRESETS.values()]
