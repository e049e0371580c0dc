"""What a CRM user looks up: listings with ``--search`` and ``--limit``, and one record with its
activity timeline (``lead show``, ``contact show``, ``company show``).

Listings pick their rows in SQL (a search matches names, addresses and, for activities, subjects,
senders and counterparts, ignoring case), count them, and hand only the page to
:mod:`crm.views`, so a CRM of 100,000 leads prints what was asked for, not everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.orm import Session

from crm.errors import InvalidInput, NotFound
from crm.store.models import Activity, ActivityBinding, Contact, EntityEmail, Lead

from . import views
from .convert import CONVERTED

JSON = dict[str, Any]


@dataclass(frozen=True)
class Page:
    """The rows of a listing and how many matched in all."""

    rows: list[JSON]
    total: int


@dataclass(frozen=True)
class Filter:
    """``--search TEXT`` and ``--limit N`` (None: no limit)."""

    search: str | None = None
    limit: int | None = None


def _pattern(text: str) -> str:
    escaped = text.casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _ids(session: Session, query: Any, model: Any, wanted: Filter) -> tuple[list[int], int]:
    if wanted.limit is not None and wanted.limit < 0:
        raise InvalidInput("--limit must be 0 or more")
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    page = query.order_by(model.id)
    if wanted.limit is not None:
        page = page.limit(wanted.limit)
    return list(session.scalars(page)), total


def _named(model: Any, etype: str, search: str | None) -> Any:
    query = select(model.id)
    if search:
        like = _pattern(search)
        by_email = select(EntityEmail.entity_id).where(
            EntityEmail.entity_type == etype, EntityEmail.address.like(like, escape="\\")
        )
        query = query.where(
            or_(func.lower(model.name).like(like, escape="\\"), model.id.in_(by_email))
        )
    return query


def leads(session: Session, wanted: Filter, converted: bool = False) -> Page:
    """Leads matching ``wanted``; converted ones only with ``converted``."""
    query = _named(Lead, "lead", wanted.search)
    if not converted:
        query = query.where(Lead.status != CONVERTED)
    ids, total = _ids(session, query, Lead, wanted)
    return Page(views.leads_json(session, ids), total)


def contacts(session: Session, wanted: Filter) -> Page:
    """Contacts matching ``wanted``."""
    ids, total = _ids(session, _named(Contact, "contact", wanted.search), Contact, wanted)
    return Page(views.contacts_json(session, ids), total)


def activities(session: Session, wanted: Filter, mailbox: str | None = None) -> Page:
    """Activities matching ``wanted`` (subject, sender, counterparts), optionally of a mailbox."""
    query = select(Activity.id)
    if mailbox is not None:
        query = query.where(Activity.mailbox_id == views.mailbox_id(session, mailbox))
    if wanted.search:
        like = _pattern(wanted.search)
        query = query.where(
            or_(
                func.lower(Activity.subject).like(like, escape="\\"),
                func.lower(Activity.sender).like(like, escape="\\"),
                func.lower(cast(Activity.counterparts, String)).like(like, escape="\\"),
            )
        )
    ids, total = _ids(session, query, Activity, wanted)
    return Page(views.activities_json(session, ids=ids), total)


def _timeline(session: Session, bound: list[tuple[str, int]]) -> list[JSON]:
    """The activities bound to any of ``bound``, oldest first."""
    if not bound:
        return []
    match = or_(
        *((ActivityBinding.entity_type == t) & (ActivityBinding.entity_id == i) for t, i in bound)
    )
    ids = list(session.scalars(select(ActivityBinding.activity_id).where(match).distinct()))
    rows = views.activities_json(session, ids=ids) if ids else []
    return sorted(rows, key=lambda r: (r["date"] or "", r["id"]))


def _one(rows: list[JSON], what: str, record_id: int) -> JSON:
    if not rows:
        raise NotFound(f"no {what} {record_id}")
    return rows[0]


def lead(session: Session, lead_id: int) -> JSON:
    """One lead and its activities."""
    record = _one(views.leads_json(session, [lead_id]), "lead", lead_id)
    record["activities"] = _timeline(session, [("lead", lead_id)])
    return record


def contact(session: Session, contact_id: int) -> JSON:
    """One contact and its activities."""
    record = _one(views.contacts_json(session, [contact_id]), "contact", contact_id)
    record["activities"] = _timeline(session, [("contact", contact_id)])
    return record


def company(session: Session, company_id: int) -> JSON:
    """One company, its contacts and leads, and the activities of all of them."""
    record = _one(views.companies_json(session, [company_id]), "company", company_id)
    people = list(session.scalars(select(Contact.id).where(Contact.company_id == company_id)))
    leads_of = list(session.scalars(select(Lead.id).where(Lead.company_id == company_id)))
    record["contacts"] = views.contacts_json(session, people) if people else []
    record["leads"] = views.leads_json(session, leads_of) if leads_of else []
    bound = [("company", company_id)] + [("contact", i) for i in people]
    record["activities"] = _timeline(session, bound + [("lead", i) for i in leads_of])
    return record
