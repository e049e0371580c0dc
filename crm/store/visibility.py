"""The visibility rule (SPEC V1) in SQL: which leads, contacts, companies and activities a user
whose ``sees`` is ``own`` may see, and which they may change.

Each function returns a boolean SQL condition on the id column of its kind, built from
subqueries (``IN (SELECT ...)``), so a listing filters and pages in one query and a single record
is checked with the same words. ``user_id`` is the viewer's ``users.id``; a viewer who sees
``all`` needs no condition (the face does not call these for them).

The rule, for ``own``:

- activities: those of the user's own (personal) mailboxes, plus company-mailbox activities bound
  to a lead the user is responsible for;
- leads: those the user is responsible for, plus those bound to an activity they see;
- contacts: those they created, plus those bound to an activity they see;
- companies: those bound to an activity they see, plus the companies of the leads and contacts
  they see.

Changes (``own``): the leads they are responsible for, the contacts they created, and the
activities they see (completing one's own mail); no company.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select

from crm.store.models import Activity, ActivityBinding, Company, Contact, Lead, Mailbox
from crm.vocab import EntityType, MailboxKind


def _own_mailboxes(user_id: int) -> Any:
    return select(Mailbox.id).where(
        Mailbox.owner_id == user_id, Mailbox.kind == MailboxKind.PERSONAL.value
    )


def _company_mailboxes() -> Any:
    return select(Mailbox.id).where(Mailbox.kind == MailboxKind.COMPANY.value)


def _responsible_leads(user_id: int) -> Any:
    return select(Lead.id).where(Lead.responsible_id == user_id)


def activity_condition(user_id: int) -> ColumnElement[bool]:
    """Activities an ``own`` user sees."""
    of_their_leads = select(ActivityBinding.activity_id).where(
        ActivityBinding.entity_type == EntityType.LEAD.value,
        ActivityBinding.entity_id.in_(_responsible_leads(user_id)),
    )
    return or_(
        Activity.mailbox_id.in_(_own_mailboxes(user_id)),
        and_(Activity.mailbox_id.in_(_company_mailboxes()), Activity.id.in_(of_their_leads)),
    )


def _bound_to_seen(user_id: int, kind: EntityType) -> Any:
    """The ids of ``kind`` bound to an activity the user sees."""
    seen = select(Activity.id).where(activity_condition(user_id))
    return select(ActivityBinding.entity_id).where(
        ActivityBinding.entity_type == kind.value, ActivityBinding.activity_id.in_(seen)
    )


def lead_condition(user_id: int) -> ColumnElement[bool]:
    """Leads an ``own`` user sees."""
    return or_(
        Lead.responsible_id == user_id, Lead.id.in_(_bound_to_seen(user_id, EntityType.LEAD))
    )


def contact_condition(user_id: int) -> ColumnElement[bool]:
    """Contacts an ``own`` user sees."""
    return or_(
        Contact.created_by_id == user_id,
        Contact.id.in_(_bound_to_seen(user_id, EntityType.CONTACT)),
    )


def company_condition(user_id: int) -> ColumnElement[bool]:
    """Companies an ``own`` user sees."""
    of_leads = select(Lead.company_id).where(Lead.company_id.is_not(None), lead_condition(user_id))
    of_contacts = select(Contact.company_id).where(
        Contact.company_id.is_not(None), contact_condition(user_id)
    )
    return or_(
        Company.id.in_(_bound_to_seen(user_id, EntityType.COMPANY)),
        Company.id.in_(of_leads),
        Company.id.in_(of_contacts),
    )


MODELS: dict[EntityType, Any] = {
    EntityType.LEAD: Lead,
    EntityType.CONTACT: Contact,
    EntityType.COMPANY: Company,
}


def condition(kind: EntityType, user_id: int) -> ColumnElement[bool]:
    """What an ``own`` user sees of ``kind``."""
    if kind is EntityType.LEAD:
        return lead_condition(user_id)
    if kind is EntityType.CONTACT:
        return contact_condition(user_id)
    return company_condition(user_id)


def change_condition(kind: EntityType, user_id: int) -> ColumnElement[bool]:
    """What an ``own`` user may change of ``kind``: their leads, the contacts they made."""
    if kind is EntityType.LEAD:
        return Lead.responsible_id == user_id
    if kind is EntityType.CONTACT:
        return Contact.created_by_id == user_id
    return false()
