"""The visibility rule (SPEC V1) in SQL: which leads, contacts, companies and activities a user
whose ``sees`` is ``own`` may see, and which they may change.

Each function returns a boolean SQL condition on a row of its kind, built from correlated
``EXISTS`` probes of indexes (activity_bindings by entity and by activity, leads and contacts by
company), so a listing walks its rows in order and stops at the page's end, and a single record is
checked with the same words; nothing builds the set of everything a user sees. ``user_id`` is
the viewer's ``users.id``; a viewer who sees ``all`` needs no condition (the face does not call
these for them).

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

from sqlalchemy import ColumnElement, and_, exists, false, or_, select
from sqlalchemy.orm import aliased

from crm.store.models import Activity, ActivityBinding, Company, Contact, Lead, Mailbox
from crm.vocab import EntityType, MailboxKind


def _own_mailboxes(user_id: int) -> Any:
    return select(Mailbox.id).where(
        Mailbox.owner_id == user_id, Mailbox.kind == MailboxKind.PERSONAL.value
    )


def _company_mailboxes() -> Any:
    return select(Mailbox.id).where(Mailbox.kind == MailboxKind.COMPANY.value)


def activity_condition(user_id: int, activity: Any = Activity) -> ColumnElement[bool]:
    """Activities an ``own`` user sees (``activity``: the table or an alias of it)."""
    binding, lead = aliased(ActivityBinding), aliased(Lead)
    of_their_leads = exists().where(
        binding.activity_id == activity.id,
        binding.entity_type == EntityType.LEAD.value,
        lead.id == binding.entity_id,
        lead.responsible_id == user_id,
    )
    return or_(
        activity.mailbox_id.in_(_own_mailboxes(user_id)),
        and_(activity.mailbox_id.in_(_company_mailboxes()), of_their_leads),
    )


def _bound_to_seen(user_id: int, kind: EntityType, entity_id: Any) -> ColumnElement[bool]:
    """Whether the ``kind`` record ``entity_id`` (a column) is bound to an activity the user
    sees: a probe of the bindings index per record, not a set of every seen activity."""
    binding, activity = aliased(ActivityBinding), aliased(Activity)
    return exists().where(
        binding.entity_type == kind.value,
        binding.entity_id == entity_id,
        activity.id == binding.activity_id,
        activity_condition(user_id, activity),
    )


def lead_condition(user_id: int, lead: Any = Lead) -> ColumnElement[bool]:
    """Leads an ``own`` user sees."""
    return or_(lead.responsible_id == user_id, _bound_to_seen(user_id, EntityType.LEAD, lead.id))


def contact_condition(user_id: int, contact: Any = Contact) -> ColumnElement[bool]:
    """Contacts an ``own`` user sees."""
    return or_(
        contact.created_by_id == user_id,
        _bound_to_seen(user_id, EntityType.CONTACT, contact.id),
    )


def company_condition(user_id: int, company: Any = Company) -> ColumnElement[bool]:
    """Companies an ``own`` user sees."""
    lead, contact = aliased(Lead), aliased(Contact)
    return or_(
        _bound_to_seen(user_id, EntityType.COMPANY, company.id),
        exists().where(lead.company_id == company.id, lead_condition(user_id, lead)),
        exists().where(contact.company_id == company.id, contact_condition(user_id, contact)),
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
