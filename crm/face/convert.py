"""A lead becomes a contact (``mailcrm lead convert``), as in every CRM.

The contact gets the lead's name and addresses and its company (the one its business domain
gave, or one named by the user, found by name or created); the activities bound to the lead are
bound to the contact (and its company) instead. The lead stays for history with the status
``converted``: its addresses no longer match incoming mail (:mod:`crm.lookups` skips converted
leads), so new mail goes to the contact. When a contact already has one of the lead's
addresses, the lead is converted into that contact.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from crm.errors import InvalidInput, NotFound
from crm.store.models import ActivityBinding, Company, Contact, EntityEmail, Lead
from crm.vocab import EntityType, utcnow

from .visibility import Viewer, require_change

CONVERTED = "converted"


@dataclass(frozen=True)
class Conversion:
    """What converting one lead did."""

    lead: int
    contact: int
    company: int | None
    new_contact: bool
    activities: int


def convert_lead(
    session: Session, lead_id: int, company: str | None = None, *, viewer: Viewer | None = None
) -> Conversion:
    """Convert lead ``lead_id`` into a contact; ``company``: the contact's company by name.

    ``viewer`` (None: the admin CLI) must be allowed to change the lead (V1). A new contact is
    made by the viewer, or, from the CLI, by the lead's responsible: they keep seeing it."""
    require_change(session, viewer, EntityType.LEAD, lead_id)
    lead = session.get(Lead, lead_id)
    if lead is None:
        raise NotFound(f"no lead {lead_id}")
    if lead.status == CONVERTED:
        raise InvalidInput(f"lead {lead_id} is converted already")
    addresses = list(
        session.scalars(
            select(EntityEmail.address)
            .where(EntityEmail.entity_type == "lead", EntityEmail.entity_id == lead.id)
            .order_by(EntityEmail.position)
        )
    )
    company_id = _company(session, company) if company else lead.company_id
    maker = viewer.user_id if viewer is not None else lead.responsible_id
    contact, new = _contact_for(session, lead, addresses, company_id, maker)
    moved = _move_activities(session, lead.id, contact.id, contact.company_id)
    lead.status, lead.changed_by_person, lead.updated_at = CONVERTED, True, utcnow()
    session.flush()
    return Conversion(lead.id, contact.id, contact.company_id, new, moved)


def _company(session: Session, name: str) -> int:
    name = name.strip()
    if not name:
        raise InvalidInput("--company needs a name")
    found = session.scalar(
        select(Company.id).where(func.lower(Company.name) == name.casefold()).limit(1)
    )
    if found is not None:
        return int(found)
    company = Company(name=name[:200])
    session.add(company)
    session.flush()
    return company.id


def _contact_for(
    session: Session, lead: Lead, addresses: list[str], company_id: int | None, maker: int | None
) -> tuple[Contact, bool]:
    existing = session.scalar(
        select(Contact)
        .join(EntityEmail, (EntityEmail.entity_id == Contact.id))
        .where(EntityEmail.entity_type == "contact", EntityEmail.address.in_(addresses))
        .limit(1)
    ) if addresses else None  # fmt: skip
    if existing is not None:
        if company_id is not None:
            existing.company_id = company_id
        return existing, False
    contact = Contact(name=lead.name, phones=[], company_id=company_id, created_by_id=maker)
    session.add(contact)
    session.flush()
    session.add_all(
        EntityEmail(address=a, entity_type="contact", entity_id=contact.id, position=i)
        for i, a in enumerate(addresses)
    )
    return contact, True


def _move_activities(
    session: Session, lead_id: int, contact_id: int, company_id: int | None
) -> int:
    activity_ids = list(
        session.scalars(
            select(ActivityBinding.activity_id).where(
                ActivityBinding.entity_type == "lead", ActivityBinding.entity_id == lead_id
            )
        )
    )
    session.execute(
        delete(ActivityBinding).where(
            ActivityBinding.entity_type == "lead", ActivityBinding.entity_id == lead_id
        )
    )
    targets = [(EntityType.CONTACT.value, contact_id)]
    if company_id is not None:
        targets.append((EntityType.COMPANY.value, company_id))
    for etype, eid in targets:
        have = set(
            session.scalars(
                select(ActivityBinding.activity_id).where(
                    ActivityBinding.entity_type == etype,
                    ActivityBinding.entity_id == eid,
                    ActivityBinding.activity_id.in_(activity_ids),
                )
            )
        ) if activity_ids else set()  # fmt: skip
        session.add_all(
            ActivityBinding(activity_id=a, entity_type=etype, entity_id=eid)
            for a in activity_ids
            if a not in have
        )
    return len(activity_ids)
