"""What the DAV front end writes into the CRM: a client's new card becomes a contact, an edited
card updates its contact, lead or company, a deleted card deletes a record the user may change,
and a to-do's status completes or reopens its activity (C10: the poller marks the mail read).

Each write is one transaction after every check passed: a refused write changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select

from crm.errors import InvalidInput, NotFound, PermissionDenied
from crm.mail.addresses import try_normalize
from crm.store.db import Database
from crm.store.models import Activity, ActivityBinding, Company, Contact, EntityEmail, Lead
from crm.vocab import EntityType, utcnow

from .visibility import Viewer, require_activity, require_change

MODELS: dict[str, Any] = {"lead": Lead, "contact": Contact, "company": Company}


def _addresses(emails: Sequence[str]) -> list[str]:
    found: list[str] = []
    for text in emails:
        address = try_normalize(text)
        if address is None:
            raise InvalidInput(f"not a mail address: {text[:100]!r}")
        if address not in found:
            found.append(address)
    return found


def _company_id(session: Any, name: str | None) -> int | None:
    if not name:
        return None
    found = session.scalar(select(Company.id).where(func.lower(Company.name) == name.lower()))
    if found is not None:
        return int(found)
    company = Company(name=name)
    session.add(company)
    session.flush()
    return company.id


def _set_emails(session: Any, kind: str, eid: int, addresses: list[str]) -> None:
    session.execute(
        delete(EntityEmail).where(EntityEmail.entity_type == kind, EntityEmail.entity_id == eid)
    )
    for i, address in enumerate(addresses):
        session.add(EntityEmail(address=address, entity_type=kind, entity_id=eid, position=i))


def _require_change(session: Any, viewer: Viewer, kind: str, eid: int) -> None:
    """PermissionDenied unless ``viewer`` may change the record (unseen ones too: 403)."""
    try:
        require_change(session, viewer, EntityType(kind), eid)
    except NotFound as exc:
        raise PermissionDenied(f"{kind} {eid} is not yours to change") from exc


def create_contact(
    db: Database,
    viewer: Viewer,
    name: str,
    emails: Sequence[str],
    phones: Sequence[str],
    org: str | None,
    title: str | None,
) -> int:
    """A new contact from a client's card; its id."""
    addresses = _addresses(emails)
    with db.session() as session:
        contact = Contact(
            name=name, phones=list(phones), title=title, company_id=_company_id(session, org)
        )
        contact.created_by_id = viewer.user_id  # the user's own contact (SPEC V1)
        session.add(contact)
        session.flush()
        _set_emails(session, "contact", contact.id, addresses)
        return contact.id


def update_card(
    db: Database,
    viewer: Viewer,
    kind: str,
    eid: int,
    name: str,
    emails: Sequence[str],
    phones: Sequence[str],
    org: str | None,
    title: str | None,
) -> None:
    """An edited card: name, addresses, telephones, organisation (and a contact's title)."""
    addresses = _addresses(emails)
    with db.session() as session:
        _require_change(session, viewer, kind, eid)
        record = session.get(MODELS[kind], eid)
        if record is None:
            raise NotFound(f"no {kind} {eid}")
        record.name = name
        if kind == "company":
            return
        record.phones = list(phones)
        record.company_id = _company_id(session, org)
        if kind == "contact":
            record.title = title
        else:
            record.changed_by_person, record.updated_at = True, utcnow()
        _set_emails(session, kind, eid, addresses)


def delete_card(db: Database, viewer: Viewer, kind: str, eid: int) -> None:
    """Delete a lead or contact the user may change and no activity is bound to."""
    if kind == "company":
        raise PermissionDenied(f"company {eid}: companies are not deleted from an address book")
    with db.session() as session:
        _require_change(session, viewer, kind, eid)
        bound = session.scalar(
            select(func.count())
            .select_from(ActivityBinding)
            .where(ActivityBinding.entity_type == kind, ActivityBinding.entity_id == eid)
        )
        if bound:
            raise PermissionDenied(f"{kind} {eid} has {bound} activities; the CRM keeps it")
        record = session.get(MODELS[kind], eid)
        if record is None:
            raise NotFound(f"no {kind} {eid}")
        _set_emails(session, kind, eid, [])
        session.delete(record)


def set_task(db: Database, viewer: Viewer, activity_id: int, completed: bool) -> None:
    """Complete or reopen an activity the user sees (C10)."""
    with db.session() as session:
        try:
            require_activity(session, viewer, activity_id)
        except NotFound as exc:
            raise PermissionDenied(f"activity {activity_id} is not yours") from exc
        activity = session.get(Activity, activity_id)
        if activity is None:
            raise NotFound(f"no activity {activity_id}")
        if activity.completed != completed:
            activity.completed = completed
