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
from crm.store.models import Activity, ActivityBinding, Company, Contact, EntityEmail, Lead
from crm.vocab import EntityType

from . import views
from .convert import CONVERTED
from .visibility import Viewer, can_see_in, where_activity_seen, where_seen

JSON = dict[str, Any]


@dataclass(frozen=True)
class Page:
    """The rows of a listing and how many matched in all."""

    rows: list[JSON]
    total: int
    capped: bool = False  # more than ``total`` matched: counting stopped there ("1,000+")


@dataclass(frozen=True)
class Filter:
    """``--search TEXT`` and ``--limit N`` (None: no limit); ``offset``: rows skipped (paging)."""

    search: str | None = None
    limit: int | None = None
    offset: int = 0
    #: count at most this many rows past the page (None: count them all, as the CLI does); the
    #: web caps its counts so a page of a large CRM does not walk the whole table
    cap: int | None = None


def _pattern(text: str) -> str:
    escaped = text.casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def count(session: Session, query: Any, wanted: Filter) -> tuple[int, bool]:
    """How many rows ``query`` selects, and whether counting stopped at ``wanted``'s cap."""
    if wanted.cap is None:
        return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0), False
    upto = max(wanted.cap, wanted.offset + (wanted.limit or 0))
    counted = select(func.count()).select_from(query.limit(upto + 1).subquery())
    found = int(session.scalar(counted) or 0)
    return min(found, upto), found > upto


def _ids(session: Session, query: Any, model: Any, wanted: Filter) -> tuple[list[int], int, bool]:
    if wanted.limit is not None and wanted.limit < 0:
        raise InvalidInput("--limit must be 0 or more")
    total, capped = count(session, query, wanted)
    page = query.order_by(model.id)
    if wanted.limit is not None:
        page = page.limit(wanted.limit)
    if wanted.offset > 0:
        page = page.offset(wanted.offset)
    return list(session.scalars(page)), total, capped


def _named(model: Any, etype: str, search: str | None, viewer: Viewer | None = None) -> Any:
    query = select(model.id)
    seen = where_seen(viewer, EntityType(etype))
    if seen is not None:
        query = query.where(seen)
    if search:
        like = _pattern(search)
        by_email = select(EntityEmail.entity_id).where(
            EntityEmail.entity_type == etype, EntityEmail.address.like(like, escape="\\")
        )
        query = query.where(
            or_(func.lower(model.name).like(like, escape="\\"), model.id.in_(by_email))
        )
    return query


def leads(
    session: Session,
    wanted: Filter,
    converted: bool = False,
    *,
    viewer: Viewer | None = None,
    status: str | None = None,
    responsible: int | None = None,
) -> Page:
    """Leads matching ``wanted``; converted ones only with ``converted`` (or ``status``); those
    ``viewer`` sees; of one ``status``; of one ``responsible`` user id (0: nobody's)."""
    query = _named(Lead, "lead", wanted.search, viewer)
    if status:
        query = query.where(Lead.status == status)
    elif not converted:
        query = query.where(Lead.status != CONVERTED)
    if responsible is not None:
        query = query.where(
            Lead.responsible_id.is_(None)
            if responsible == 0
            else Lead.responsible_id == responsible
        )
    ids, total, capped = _ids(session, query, Lead, wanted)
    return Page(views.leads_json(session, ids), total, capped)


def contacts(session: Session, wanted: Filter, *, viewer: Viewer | None = None) -> Page:
    """Contacts matching ``wanted`` that ``viewer`` sees."""
    query = _named(Contact, "contact", wanted.search, viewer)
    ids, total, capped = _ids(session, query, Contact, wanted)
    return Page(views.contacts_json(session, ids), total, capped)


def companies(session: Session, wanted: Filter, *, viewer: Viewer | None = None) -> Page:
    """Companies matching ``wanted`` (name or domain) that ``viewer`` sees."""
    query = select(Company.id)
    seen = where_seen(viewer, EntityType.COMPANY)
    if seen is not None:
        query = query.where(seen)
    if wanted.search:
        like = _pattern(wanted.search)
        query = query.where(
            or_(
                func.lower(Company.name).like(like, escape="\\"),
                func.lower(Company.domain).like(like, escape="\\"),
            )
        )
    ids, total, capped = _ids(session, query, Company, wanted)
    return Page(views.companies_json(session, ids), total, capped)


def activities(
    session: Session, wanted: Filter, mailbox: str | None = None, *, viewer: Viewer | None = None
) -> Page:
    """Activities matching ``wanted`` (subject, sender, counterparts), optionally of a mailbox,
    that ``viewer`` sees."""
    query = select(Activity.id)
    seen = where_activity_seen(viewer)
    if seen is not None:
        query = query.where(seen)
    if mailbox is not None:
        query = query.where(Activity.mailbox_id == views.mailbox_id(session, mailbox))
    ids, total, capped = _ids(session, activity_search(query, wanted.search), Activity, wanted)
    return Page(views.activities_json(session, ids=ids), total, capped)


def activity_search(query: Any, search: str | None) -> Any:
    """``query`` on activities narrowed to ``search`` (subject, sender, counterparts)."""
    if not search:
        return query
    like = _pattern(search)
    return query.where(
        or_(
            func.lower(Activity.subject).like(like, escape="\\"),
            func.lower(Activity.sender).like(like, escape="\\"),
            func.lower(cast(Activity.counterparts, String)).like(like, escape="\\"),
        )
    )


def _timeline(
    session: Session, bound: list[tuple[str, int]], viewer: Viewer | None = None
) -> list[JSON]:
    """The activities bound to any of ``bound`` that ``viewer`` sees, oldest first."""
    if not bound:
        return []
    match = or_(
        *((ActivityBinding.entity_type == t) & (ActivityBinding.entity_id == i) for t, i in bound)
    )
    query = select(ActivityBinding.activity_id).where(match).distinct()
    seen = where_activity_seen(viewer)
    if seen is not None:
        query = query.join(Activity, Activity.id == ActivityBinding.activity_id).where(seen)
    ids = list(session.scalars(query))
    rows = views.activities_json(session, ids=ids) if ids else []
    return sorted(rows, key=lambda r: (r["date"] or "", r["id"]))


def _one(rows: list[JSON], what: str, record_id: int) -> JSON:
    if not rows:
        raise NotFound(f"no {what} {record_id}")
    return rows[0]


def _visible(session: Session, viewer: Viewer | None, kind: EntityType, record_id: int) -> None:
    """NotFound for a record the viewer may not see (as for one that does not exist)."""
    if viewer is not None and not can_see_in(session, viewer, kind, record_id):
        raise NotFound(f"no {kind.value} {record_id}")


def lead(session: Session, lead_id: int, *, viewer: Viewer | None = None) -> JSON:
    """One lead and the activities of it that ``viewer`` sees."""
    _visible(session, viewer, EntityType.LEAD, lead_id)
    record = _one(views.leads_json(session, [lead_id]), "lead", lead_id)
    record["activities"] = _timeline(session, [("lead", lead_id)], viewer)
    return record


def contact(session: Session, contact_id: int, *, viewer: Viewer | None = None) -> JSON:
    """One contact and the activities of it that ``viewer`` sees."""
    _visible(session, viewer, EntityType.CONTACT, contact_id)
    record = _one(views.contacts_json(session, [contact_id]), "contact", contact_id)
    record["activities"] = _timeline(session, [("contact", contact_id)], viewer)
    return record


def _of_company(
    session: Session, model: Any, kind: EntityType, company_id: int, viewer: Viewer | None
) -> list[int]:
    query = select(model.id).where(model.company_id == company_id)
    seen = where_seen(viewer, kind)
    return list(session.scalars(query if seen is None else query.where(seen)))


def company(session: Session, company_id: int, *, viewer: Viewer | None = None) -> JSON:
    """One company, its contacts and leads, and the activities of all of them (what ``viewer``
    sees of them)."""
    _visible(session, viewer, EntityType.COMPANY, company_id)
    record = _one(views.companies_json(session, [company_id]), "company", company_id)
    people = _of_company(session, Contact, EntityType.CONTACT, company_id, viewer)
    leads_of = _of_company(session, Lead, EntityType.LEAD, company_id, viewer)
    record["contacts"] = views.contacts_json(session, people) if people else []
    record["leads"] = views.leads_json(session, leads_of) if leads_of else []
    bound = [("company", company_id)] + [("contact", i) for i in people]
    record["activities"] = _timeline(session, bound + [("lead", i) for i in leads_of], viewer)
    return record
