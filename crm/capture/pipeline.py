"""The capture rules as a pure pipeline: a parsed message and its context in, a decision out.

No sockets, no session, no await: everything a rule needs is in :class:`Context`, gathered
beforehand by :mod:`crm.capture.path`, which also applies the :class:`Decision` in one transaction.
The pipeline is a list of steps (like GNU Mailman's); each step reads the message, the context
and the work so far, and either adds to the work or ends with a final decision (skip, duplicate).

Rules (SPEC IDs): C1/C2 new leads, C3 bindings, C4 no leads when off, C5 employees, C6
exclusions, C7 vCards, C8 at least one binding, C9 dedup, C12 import window, B3 threads,
B4 robots, B5 companies, M4 round-robin.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from crm.mail.addresses import domain_of, is_excluded, try_normalize
from crm.mail.domains import CompanyGuess, company_for_domain
from crm.mail.message import ParsedMessage, Party
from crm.mail.vcards import VCardContact
from crm.vocab import WINDOWS, Direction, EntityType


@dataclass(frozen=True)
class EntityRef:
    """A CRM entity an address belongs to; ``company_id`` for a contact's or lead's company."""

    type: EntityType
    id: int
    company_id: int | None = None


@dataclass(frozen=True)
class MailboxView:
    """The settings of the mailbox a message was seen in (M3, M4)."""

    address: str
    kind: str = "personal"
    linked: bool = True
    owner: str | None = None
    create_leads: bool = True
    vcard_contacts: bool = True
    since: str = "all"
    linked_at: dt.datetime | None = None
    excluded: frozenset[str] = frozenset()
    queue: tuple[str, ...] = ()
    queue_cursor: int = 0


@dataclass(frozen=True)
class Context:
    """Everything the rules may know besides the message itself."""

    mailbox: MailboxView
    direction: Direction
    now: dt.datetime
    seen: bool = False
    employees: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()
    known: Mapping[str, tuple[EntityRef, ...]] = field(default_factory=dict)
    known_contact_names: frozenset[str] = frozenset()
    duplicate: bool = False
    threads: Mapping[str, str] = field(default_factory=dict)
    envelope_to: tuple[str, ...] = ()
    vcards: tuple[VCardContact, ...] = ()
    history: bool = False
    own_domains: frozenset[str] = frozenset()  # registrable domains of employees and mailboxes


@dataclass(frozen=True)
class NewLead:
    """A lead to create for an unknown correspondent (C1, C2)."""

    address: str
    name: str
    company: CompanyGuess | None
    responsible: str | None


@dataclass(frozen=True)
class NewContact:
    """A contact to create from a vCard (C7); its addresses are all normalised."""

    card: VCardContact
    addresses: tuple[str, ...]
    company: CompanyGuess | None


@dataclass(frozen=True)
class Decision:
    """What one message becomes. ``action`` is captured, skipped or duplicate."""

    action: str
    reason: str | None = None
    direction: Direction = Direction.INCOMING
    counterparts: tuple[str, ...] = ()
    bind: tuple[EntityRef, ...] = ()
    new_leads: tuple[NewLead, ...] = ()
    new_contacts: tuple[NewContact, ...] = ()
    bind_new_contacts: tuple[int, ...] = ()
    thread: str = ""
    answers: tuple[str, ...] = ()
    completed: bool = False
    queue_cursor: int | None = None


@dataclass
class Work:
    """The decision being built while the steps run."""

    participants: list[Party] = field(default_factory=list)
    counterparts: list[Party] = field(default_factory=list)
    bind: list[EntityRef] = field(default_factory=list)
    unknown: list[Party] = field(default_factory=list)
    new_contacts: list[NewContact] = field(default_factory=list)
    bind_new_contacts: list[int] = field(default_factory=list)
    new_leads: list[NewLead] = field(default_factory=list)
    queue_cursor: int | None = None


Step = Callable[[ParsedMessage, Context, Work], Decision | None]


def skip(reason: str) -> Decision:
    """A final decision that creates nothing."""
    return Decision(action="skipped", reason=reason)


def check_linked(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """M3, T3: a mailbox whose link to the CRM is off captures nothing."""
    return None if ctx.mailbox.linked else skip("mailbox is not linked to the CRM")


def check_duplicate(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """C9: a message already captured (by key) is captured once."""
    return Decision(action="duplicate", reason="already captured") if ctx.duplicate else None


def check_window(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """C12: history found at linking (``ctx.history``) only when dated inside the mailbox's
    import window, counted back from linking. Live mail (relayed, or arriving after linking) is
    always captured, whatever its Date header says (a wrong clock, an old draft sent now)."""
    span = WINDOWS.get(ctx.mailbox.since)
    if not ctx.history or span is None or msg.date is None:
        return None
    start = (ctx.mailbox.linked_at or ctx.now) - span
    if msg.date < start:
        return skip(f"before the import window ({ctx.mailbox.since}): {msg.date:%Y-%m-%d}")
    return None


def collect_participants(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """Incoming: the sender. Outgoing: every envelope and header recipient (To, Cc, Bcc)."""
    if ctx.direction is Direction.INCOMING:
        if msg.sender is None:
            return skip("no sender address")
        work.participants = [msg.sender]
        return None
    names = {p.address: p.name for p in msg.recipients}
    ordered = [p.address for p in msg.recipients]
    ordered += [a for a in ctx.envelope_to if a not in names]
    work.participants = [Party(a, names.get(a, "")) for a in dict.fromkeys(ordered)]
    if not work.participants:
        return skip("no recipient address")
    return None


def check_exclusions(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """C6: mail from or to an excluded address or domain creates nothing."""
    entries = ctx.excluded | ctx.mailbox.excluded
    everyone = list(work.participants) + list(msg.recipients)
    if msg.sender:
        everyone.append(msg.sender)
    for party in everyone:
        if is_excluded(party.address, entries):
            return skip(f"excluded address: {party.address}")
    return None


def drop_employees(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """C5: employees' addresses (and the mailbox's own) are never captured."""
    staff = ctx.employees | {ctx.mailbox.address}
    work.counterparts = [p for p in work.participants if p.address not in staff]
    if not work.counterparts:
        return skip("only employees")
    return None


def contacts_from_vcards(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """C7: attached vCards become contacts, unless a contact has that address or name."""
    if not ctx.mailbox.vcard_contacts:
        return None
    taken = set(ctx.known_contact_names)
    claimed: set[str] = set()
    never = ctx.employees | {ctx.mailbox.address}
    entries = ctx.excluded | ctx.mailbox.excluded
    for card in ctx.vcards:
        valid = [a for a in map(try_normalize, card.emails) if a]
        if any(a in never or is_excluded(a, entries) for a in valid):
            continue  # an employee's own card (C5) or an excluded person's (C6)
        addresses = tuple(a for a in dict.fromkeys(valid) if a not in claimed)
        if valid and not addresses:
            continue
        if any(_is_contact(ctx, a) for a in addresses) or (
            not addresses and card.name.casefold() in taken
        ):
            continue
        claimed.update(addresses)
        taken.add(card.name.casefold())
        guess = next((g for a in addresses if (g := _company_of(a, ctx))), None)
        if any(_own(a, ctx) for a in addresses):
            guess = None  # a colleague's card: the company itself is no CRM company
        elif card.organization:
            domain = guess.domain if guess else ""
            guess = CompanyGuess(name=card.organization, domain=domain)
        work.new_contacts.append(NewContact(card, addresses, guess))
    return None


def _is_contact(ctx: Context, address: str) -> bool:
    return any(ref.type is EntityType.CONTACT for ref in ctx.known.get(address, ()))


def _company_of(address: str, ctx: Context) -> CompanyGuess | None:
    """B5, and the company's own domains never become a CRM company (a lead there is fine)."""
    guess = company_for_domain(domain_of(address))
    return None if guess is None or guess.domain in ctx.own_domains else guess


def _own(address: str, ctx: Context) -> bool:
    domain = domain_of(address)
    return any(domain == d or domain.endswith("." + d) for d in ctx.own_domains)


def bind_known(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """C3: known addresses bind the activity to their entities (and a contact's company)."""
    for party in work.counterparts:
        refs = ctx.known.get(party.address, ())
        new_index = next(
            (i for i, c in enumerate(work.new_contacts) if party.address in c.addresses), None
        )
        if new_index is not None:
            work.bind_new_contacts.append(new_index)
        if not refs and new_index is None:
            work.unknown.append(party)
        for ref in refs:
            _add(work.bind, ref)
            if ref.type is EntityType.CONTACT and ref.company_id is not None:
                _add(work.bind, EntityRef(EntityType.COMPANY, ref.company_id))
    return None


def _add(refs: list[EntityRef], ref: EntityRef) -> None:
    plain = EntityRef(ref.type, ref.id)
    if all((r.type, r.id) != (plain.type, plain.id) for r in refs):
        refs.append(plain)


def create_leads(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """C1, C2, C4, B4, B5, M4: a lead per unknown counterpart when allowed."""
    if not ctx.mailbox.create_leads or msg.robot or not work.unknown:
        return None
    cursor = ctx.mailbox.queue_cursor
    for party in work.unknown:
        responsible = ctx.mailbox.owner
        if ctx.mailbox.kind == "company" and ctx.mailbox.queue:
            responsible = ctx.mailbox.queue[cursor % len(ctx.mailbox.queue)]
            cursor += 1
            work.queue_cursor = cursor % len(ctx.mailbox.queue)
        name = party.name or party.address
        company = _company_of(party.address, ctx)
        work.new_leads.append(NewLead(party.address, name, company, responsible))
    return None


def require_binding(msg: ParsedMessage, ctx: Context, work: Work) -> Decision | None:
    """C8: an activity is always bound to at least one entity; otherwise nothing is made."""
    if work.bind or work.new_leads or work.bind_new_contacts:
        return None
    if msg.robot:
        return skip(f"robot: {msg.robot}")
    if not ctx.mailbox.create_leads:
        return skip("unknown address and lead creation is off")
    return skip("no counterpart to bind")


PIPELINE: Sequence[Step] = (
    check_linked,
    check_duplicate,
    check_window,
    collect_participants,
    check_exclusions,
    drop_employees,
    contacts_from_vcards,
    bind_known,
    create_leads,
    require_binding,
)


def thread_of(msg: ParsedMessage, ctx: Context) -> str:
    """B3: the thread of the nearest known message this one answers, else its own root."""
    for ref in msg.in_reply_to + tuple(reversed(msg.references)):
        if ref in ctx.threads:
            return ctx.threads[ref]
    if msg.references:
        return msg.references[0]
    if msg.in_reply_to:
        return msg.in_reply_to[0]
    return msg.message_id or msg.key


def decide(msg: ParsedMessage, ctx: Context, steps: Sequence[Step] = PIPELINE) -> Decision:
    """Run the steps; the first final decision wins, else the message is captured."""
    work = Work()
    for step in steps:
        final = step(msg, ctx, work)
        if final is not None:
            return final
    outgoing = ctx.direction is Direction.OUTGOING
    return Decision(
        action="captured",
        direction=ctx.direction,
        counterparts=tuple(p.address for p in work.counterparts),
        bind=tuple(work.bind),
        new_leads=tuple(work.new_leads),
        new_contacts=tuple(work.new_contacts),
        bind_new_contacts=tuple(dict.fromkeys(work.bind_new_contacts)),
        thread=thread_of(msg, ctx),
        answers=msg.in_reply_to if outgoing else (),
        completed=outgoing or ctx.seen,
        queue_cursor=work.queue_cursor,
    )
