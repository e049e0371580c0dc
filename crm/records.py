"""Writes a capture decision into the CRM: companies, leads, contacts, the activity, bindings.

Runs inside the caller's transaction; the caller commits or rolls back the whole message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .domains import CompanyGuess
from .message import ParsedMessage
from .models import (
    Activity,
    ActivityBinding,
    Company,
    Contact,
    EntityEmail,
    EntityType,
    Lead,
    Mailbox,
    User,
    utcnow,
)
from .pipeline import Decision, EntityRef, NewContact, NewLead


@dataclass
class CreatedRecords:
    """Ids of what one capture created."""

    leads: list[int] = field(default_factory=list)
    contacts: list[int] = field(default_factory=list)
    companies: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, list[int]]:
        """``{"leads": [...], "contacts": [...], "companies": [...]}``."""
        return {"leads": self.leads, "contacts": self.contacts, "companies": self.companies}


def company_for(
    session: Session, guess: CompanyGuess | None, created: CreatedRecords
) -> int | None:
    """The id of the company a guess names, created when new (by domain, else by name)."""
    if guess is None:
        return None
    if guess.domain:
        found = session.scalar(select(Company.id).where(Company.domain == guess.domain))
    else:
        found = session.scalar(
            select(Company.id).where(func.lower(Company.name) == guess.name.casefold()).limit(1)
        )
    if found is not None:
        return found
    company = Company(name=guess.name, domain=guess.domain or None)
    session.add(company)
    session.flush()
    created.companies.append(company.id)
    return company.id


def add_emails(session: Session, etype: EntityType, eid: int, addresses: tuple[str, ...]) -> None:
    """Register the addresses of an entity in the address index."""
    for position, address in enumerate(addresses):
        session.add(
            EntityEmail(address=address, entity_type=etype.value, entity_id=eid, position=position)
        )


def _user_id(session: Session, email: str | None) -> int | None:
    if email is None:
        return None
    return session.scalar(select(User.id).where(User.email == email))


def _create_lead(
    session: Session, new: NewLead, box: Mailbox, created: CreatedRecords
) -> EntityRef:
    lead = Lead(
        name=new.name[:200],
        company_id=company_for(session, new.company, created),
        responsible_id=_user_id(session, new.responsible),
        mailbox_id=box.id,
    )
    session.add(lead)
    session.flush()
    add_emails(session, EntityType.LEAD, lead.id, (new.address,))
    created.leads.append(lead.id)
    return EntityRef(EntityType.LEAD, lead.id, lead.company_id)


def _create_contact(session: Session, new: NewContact, created: CreatedRecords) -> EntityRef:
    contact = Contact(
        name=new.card.name[:200],
        phones=list(new.card.phones),
        title=new.card.title,
        company_id=company_for(session, new.company, created),
    )
    session.add(contact)
    session.flush()
    add_emails(session, EntityType.CONTACT, contact.id, new.addresses)
    created.contacts.append(contact.id)
    return EntityRef(EntityType.CONTACT, contact.id, contact.company_id)


def apply_decision(
    session: Session, msg: ParsedMessage, box: Mailbox, decision: Decision, location: object
) -> tuple[Activity, CreatedRecords]:
    """Create everything a ``captured`` decision asks for; returns the activity."""
    created = CreatedRecords()
    contacts = [_create_contact(session, c, created) for c in decision.new_contacts]
    refs = list(decision.bind)
    for index in decision.bind_new_contacts:
        contact = contacts[index]
        refs.append(contact)
        if contact.company_id is not None:
            refs.append(EntityRef(EntityType.COMPANY, contact.company_id))
    refs += [_create_lead(session, lead, box, created) for lead in decision.new_leads]
    activity = Activity(
        message_key=msg.key,
        message_id=msg.message_id,
        alt_message_id=msg.header_id,
        thread=decision.thread[:998],
        direction=decision.direction.value,
        subject=msg.subject,
        sender=msg.sender.address if msg.sender else None,
        counterparts=list(decision.counterparts),
        mailbox_id=box.id,
        folder=getattr(location, "folder", None),
        sent_at=msg.date or utcnow(),
        completed=decision.completed,
    )
    seen: set[tuple[str, int]] = set()
    for ref in refs:
        if (ref.type.value, ref.id) not in seen:
            seen.add((ref.type.value, ref.id))
            activity.bindings.append(ActivityBinding(entity_type=ref.type.value, entity_id=ref.id))
    session.add(activity)
    if decision.queue_cursor is not None:
        box.queue_cursor = decision.queue_cursor
    if decision.answers:
        session.execute(
            update(Activity)
            .where(
                Activity.message_id.in_(decision.answers)
                | Activity.alt_message_id.in_(decision.answers),
                Activity.direction == "incoming",
            )
            .values(answered=True)
        )
    session.flush()
    return activity, created
