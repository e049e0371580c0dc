"""The capture rules through the pure pipeline: golden ``.eml`` files, ``parse_message``, a
hand-made :class:`Context` and ``decide``; no database, no I/O besides reading the files.

Every rule ID of docs/SPEC.md that the pipeline decides has positive and negative cases here (C1-C9,
C12, B3-B5, M4); ``tests/test_capture_cli.py`` runs the same golden files through the CLI on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from crm.capture.pipeline import (
    Context,
    Decision,
    EntityRef,
    MailboxView,
    NewLead,
    decide,
)
from crm.errors import InvalidExclusion, MessageParseError
from crm.mail.addresses import parse_exclusion
from crm.mail.domains import CompanyGuess
from crm.mail.message import ParsedMessage, parse_full, parse_message
from crm.mail.vcards import VCardContact, may_contain_vcard, parse_vcards, vcard_parts
from crm.store.models import Direction, EntityType

GOLDEN = Path(__file__).parent / "golden"
NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
LINKED_AT = dt.datetime(2024, 3, 10, 12, 0, tzinfo=dt.UTC)
ANNA, BOB, ALICE = "anna@example.com", "bob@example.com", "alice@example.com"
EMPLOYEES = frozenset(
    {ANNA, BOB, ALICE, "sales@example.com", "support@example.com", "quiet@example.com"}
)
SALES = MailboxView(address="sales@example.com", kind="company", queue=(ANNA, BOB))
BOBS = MailboxView(address=BOB, kind="personal", owner=BOB)
MARIA = "maria.garcia@globex.com"
GLOBEX = CompanyGuess(name="Globex", domain="globex.com")

LEAD_MARIA = EntityRef(EntityType.LEAD, 1, company_id=10)
CONTACT_JOHN = EntityRef(EntityType.CONTACT, 2, company_id=11)
COMPANY_GLOBEX = EntityRef(EntityType.COMPANY, 10)


def golden(name: str) -> bytes:
    """The bytes of one golden file."""
    return (GOLDEN / name).read_bytes()


def load(name: str, envelope_sender: str | None = None) -> ParsedMessage:
    """A golden file through ``parse_message``."""
    return parse_message(golden(name), envelope_sender)


def cards_of(msg: ParsedMessage) -> tuple[VCardContact, ...]:
    """The vCards of a message, found the way the capture path finds them."""
    if not may_contain_vcard(msg.headers):
        return ()
    found: list[VCardContact] = []
    for part in vcard_parts(parse_full(msg.raw)):
        found.extend(parse_vcards(part).contacts)
    return tuple(found)


def run(
    name: str,
    direction: Direction = Direction.INCOMING,
    mailbox: MailboxView = SALES,
    envelope_sender: str | None = None,
    **context: Any,
) -> Decision:
    """Decide one golden file in a context (defaults: company mailbox sales@, incoming)."""
    msg = load(name, envelope_sender)
    options: dict[str, Any] = {"employees": EMPLOYEES, "vcards": cards_of(msg)}
    options.update(context)
    return decide(msg, Context(mailbox=mailbox, direction=direction, now=NOW, **options))


def lead_addresses(decision: Decision) -> list[str]:
    """The addresses of the leads a decision creates, in order."""
    return [lead.address for lead in decision.new_leads]


def refs(*items: EntityRef) -> tuple[EntityRef, ...]:
    """Entity references as a decision binds them (without company ids)."""
    return tuple(EntityRef(r.type, r.id) for r in items)


OUT = Direction.OUTGOING


# --- C1 ---------------------------------------------------------------------------------------


def test_c1_unknown_sender_becomes_a_lead_bound_to_an_incoming_activity() -> None:
    decision = run("C1_unknown_sender.eml")
    assert decision.action == "captured"
    assert decision.direction is Direction.INCOMING
    assert decision.new_leads == (NewLead(MARIA, "María García", GLOBEX, ANNA),)
    assert decision.counterparts == (MARIA,)
    assert decision.bind == ()
    assert decision.completed is False


def test_c1_sender_without_display_name_gets_the_address_as_name() -> None:
    decision = run("C1_unknown_sender_no_name.eml")
    assert decision.new_leads == (
        NewLead("tom@initech.com", "tom@initech.com", CompanyGuess("Initech", "initech.com"), ANNA),
    )


def test_c1_incoming_recipients_are_not_counterparts() -> None:
    """Incoming: only the sender becomes a lead, not the other people in To/Cc."""
    decision = run("C6_excluded_in_cc.eml")
    assert lead_addresses(decision) == ["miles@cyberdyne.com"]
    assert decision.counterparts == ("miles@cyberdyne.com",)


def test_c1_seen_incoming_mail_gives_a_completed_activity() -> None:
    assert run("C1_unknown_sender.eml", seen=True).completed is True


# --- C2 ---------------------------------------------------------------------------------------


def test_c2_outgoing_to_cc_and_bcc_recipients_all_become_leads() -> None:
    decision = run("C2_outgoing_to_cc_bcc.eml", OUT, BOBS)
    assert decision.action == "captured"
    assert decision.direction is Direction.OUTGOING
    assert decision.new_leads == (
        NewLead(
            "peter@neverland-ltd.com",
            "Peter Pan",
            CompanyGuess("Neverland Ltd", "neverland-ltd.com"),
            BOB,
        ),
        NewLead(
            "wendy@neverland-ltd.com",
            "Darling, Wendy",
            CompanyGuess("Neverland Ltd", "neverland-ltd.com"),
            BOB,
        ),
        NewLead(
            "hook@jollyroger.com", "James Hook", CompanyGuess("Jollyroger", "jollyroger.com"), BOB
        ),
    )
    assert BOB not in decision.counterparts
    assert decision.completed is True, "outgoing mail needs no follow-up"


def test_c2_envelope_recipients_count_too_without_duplicates() -> None:
    decision = run(
        "C2_outgoing_to_cc_bcc.eml",
        OUT,
        BOBS,
        envelope_to=("peter@neverland-ltd.com", "smee@jollyroger.com"),
    )
    assert lead_addresses(decision) == [
        "peter@neverland-ltd.com",
        "wendy@neverland-ltd.com",
        "hook@jollyroger.com",
        "smee@jollyroger.com",
    ]
    assert decision.new_leads[-1].name == "smee@jollyroger.com"


def test_c2_envelope_only_recipient() -> None:
    with_envelope = run(
        "C2_outgoing_envelope_only.eml", OUT, BOBS, envelope_to=("smee@jollyroger.com",)
    )
    assert lead_addresses(with_envelope) == ["smee@jollyroger.com"]
    without = run("C2_outgoing_envelope_only.eml", OUT, BOBS)
    assert (without.action, without.reason) == ("skipped", "no recipient address")


# --- C3 ---------------------------------------------------------------------------------------


def test_c3_known_lead_binds_and_creates_no_lead() -> None:
    decision = run("C3_known_lead.eml", known={MARIA: (LEAD_MARIA,)})
    assert decision.action == "captured"
    assert decision.bind == refs(LEAD_MARIA)
    assert decision.new_leads == ()


def test_c3_known_contact_binds_the_contact_and_its_company() -> None:
    decision = run("C3_known_contact.eml", known={"john.smith@umbrella-corp.com": (CONTACT_JOHN,)})
    assert decision.bind == refs(CONTACT_JOHN, EntityRef(EntityType.COMPANY, 11))
    assert decision.new_leads == ()


def test_c3_company_address_binds_the_company() -> None:
    decision = run("C3_company_address.eml", known={"info@globex.com": (COMPANY_GLOBEX,)})
    assert decision.bind == refs(COMPANY_GLOBEX)
    assert decision.new_leads == ()


def test_c3_address_of_several_entities_binds_them_all_once() -> None:
    contact = EntityRef(EntityType.CONTACT, 5, company_id=10)
    decision = run("C3_known_lead.eml", known={MARIA: (LEAD_MARIA, contact, COMPANY_GLOBEX)})
    assert decision.bind == refs(LEAD_MARIA, contact, COMPANY_GLOBEX)


def test_c3_outgoing_to_known_and_unknown_binds_one_and_creates_the_other() -> None:
    decision = run("C3_outgoing_known_and_new.eml", OUT, BOBS, known={MARIA: (LEAD_MARIA,)})
    assert decision.bind == refs(LEAD_MARIA)
    assert decision.new_leads == (NewLead("hank.scorpio@globex.com", "Hank Scorpio", GLOBEX, BOB),)


# --- C4 ---------------------------------------------------------------------------------------

QUIET = MailboxView(address="quiet@example.com", kind="company", create_leads=False)


def test_c4_lead_creation_off_unknown_sender_creates_nothing() -> None:
    decision = run("C4_unknown_lead_creation_off.eml", mailbox=QUIET)
    assert (decision.action, decision.reason) == (
        "skipped",
        "unknown address and lead creation is off",
    )
    assert decision.new_leads == ()


def test_c4_lead_creation_off_known_sender_is_captured() -> None:
    decision = run("C4_known_lead_creation_off.eml", mailbox=QUIET, known={MARIA: (LEAD_MARIA,)})
    assert decision.action == "captured"
    assert decision.bind == refs(LEAD_MARIA)


def test_c4_lead_creation_off_outgoing_binds_only_the_known() -> None:
    decision = run(
        "C3_outgoing_known_and_new.eml",
        OUT,
        dataclasses.replace(BOBS, create_leads=False),
        known={MARIA: (LEAD_MARIA,)},
    )
    assert decision.action == "captured"
    assert decision.bind == refs(LEAD_MARIA)
    assert decision.new_leads == ()


# --- C5 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "direction", "mailbox"),
    [
        ("C5_from_employee.eml", Direction.INCOMING, SALES),
        ("C5_among_employees_outgoing.eml", OUT, BOBS),
        ("C5_from_mailbox_address.eml", Direction.INCOMING, SALES),
    ],
)
def test_c5_mail_only_among_employees_creates_nothing(
    name: str, direction: Direction, mailbox: MailboxView
) -> None:
    decision = run(name, direction, mailbox)
    assert (decision.action, decision.reason) == ("skipped", "only employees")


def test_c5_employees_and_mailboxes_are_never_counterparts() -> None:
    decision = run("C5_employee_and_external_outgoing.eml", OUT, BOBS)
    assert decision.counterparts == ("bruce@wayne-enterprises.com",)
    assert lead_addresses(decision) == ["bruce@wayne-enterprises.com"]


def test_c5_the_mailbox_own_address_is_never_captured() -> None:
    """Even when the caller did not list it among the employees."""
    own = MailboxView(address="support@example.com", kind="company")
    decision = run("C5_from_mailbox_address.eml", mailbox=own, employees=frozenset())
    assert (decision.action, decision.reason) == ("skipped", "only employees")


# --- C6 ---------------------------------------------------------------------------------------


def entries(*texts: str) -> frozenset[str]:
    """Exclusion entries in their stored form."""
    return frozenset(parse_exclusion(t) for t in texts)


@pytest.mark.parametrize(
    ("name", "entry", "direction", "excluded"),
    [
        ("C6_excluded_address.eml", "Spam@SpamCorp.com", Direction.INCOMING, "spam@spamcorp.com"),
        (
            "C6_excluded_address_other_case.eml",
            "spam@spamcorp.com",
            Direction.INCOMING,
            "spam@spamcorp.com",
        ),
        ("C6_excluded_at_domain.eml", "@LAWFIRM.com", Direction.INCOMING, "saul@lawfirm.com"),
        (
            "C6_excluded_bare_domain_subdomain.eml",
            "bank.com",
            Direction.INCOMING,
            "clerk@mail.bank.com",
        ),
        ("C6_excluded_in_cc.eml", "lawfirm.com", Direction.INCOMING, "saul@lawfirm.com"),
        ("C6_outgoing_excluded_recipient.eml", "saul@lawfirm.com", OUT, "saul@lawfirm.com"),
    ],
)
def test_c6_excluded_address_or_domain_creates_nothing(
    name: str, entry: str, direction: Direction, excluded: str
) -> None:
    mailbox = BOBS if direction is OUT else SALES
    decision = run(name, direction, mailbox, excluded=entries(entry))
    assert (decision.action, decision.reason) == ("skipped", f"excluded address: {excluded}")
    assert decision.new_leads == ()


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("C6_same_domain_other_address.eml", "spam@spamcorp.com"),
        ("C6_lookalike_domain.eml", "bank.com"),
        ("C6_lookalike_domain.eml", "@mail.notbank.com"),
    ],
)
def test_c6_entries_match_only_what_they_name(name: str, entry: str) -> None:
    decision = run(name, excluded=entries(entry))
    assert decision.action == "captured"
    assert len(decision.new_leads) == 1


def test_c6_per_mailbox_list_applies_to_that_mailbox_only() -> None:
    sales = dataclasses.replace(SALES, excluded=entries("@rival.com"))
    support = MailboxView(address="support@example.com", kind="company")
    assert run("C6_per_mailbox.eml", mailbox=sales).reason == "excluded address: ceo@rival.com"
    assert lead_addresses(run("C6_per_mailbox.eml", mailbox=support)) == ["ceo@rival.com"]


def test_c6_global_list_applies_to_every_mailbox() -> None:
    support = MailboxView(address="support@example.com", kind="company")
    for mailbox in (SALES, support):
        decision = run("C6_per_mailbox.eml", mailbox=mailbox, excluded=entries("rival.com"))
        assert decision.action == "skipped"


@pytest.mark.parametrize("entry", ["*@spamcorp.com", "*.spamcorp.com", "spam?@spamcorp.com", "%"])
def test_c6_wildcards_are_refused_with_the_accepted_forms(entry: str) -> None:
    with pytest.raises(InvalidExclusion) as refused:
        parse_exclusion(entry)
    message = str(refused.value)
    assert "wildcard" in message
    assert "a@x.com" in message and "@x.com" in message and "x.com" in message


# --- C7 ---------------------------------------------------------------------------------------


def test_c7_vcard_21_quoted_printable_becomes_the_sender_contact() -> None:
    decision = run("C7_vcard_21.eml")
    assert decision.action == "captured"
    [new] = decision.new_contacts
    assert new.card.name == "Jörg Müller"
    assert new.addresses == ("joerg.mueller@stark-industries.com",)
    assert new.card.phones == ("+49 30 1234567",)
    assert new.card.title == "Chief Engineer"
    assert new.company == CompanyGuess("Stark Industries", "stark-industries.com")
    assert decision.new_leads == (), "the sender is the new contact, not a lead"
    assert decision.bind_new_contacts == (0,)


def test_c7_vcard_30_of_a_colleague_is_a_contact_and_the_sender_stays_the_lead() -> None:
    decision = run("C7_vcard_30.eml", known={MARIA: (LEAD_MARIA,)})
    [new] = decision.new_contacts
    assert (new.card.name, new.addresses) == ("Pedro Álvarez", ("pedro.alvarez@globex.com",))
    assert new.card.phones == ("+34 91 555 0100",)
    assert new.company == CompanyGuess("Globex Corporation", "globex.com")
    assert decision.bind == refs(LEAD_MARIA)
    assert decision.bind_new_contacts == ()


def test_c7_vcard_40_in_an_octet_stream_vcf_attachment() -> None:
    decision = run("C7_vcard_40.eml")
    [new] = decision.new_contacts
    assert (new.card.name, new.addresses) == ("John Smith", ("john.smith@umbrella-corp.com",))
    assert new.card.phones == ("+1-555-0100",)
    assert new.company == CompanyGuess("Umbrella Corporation", "umbrella-corp.com")
    assert decision.new_leads == ()


def test_c7_several_cards_in_one_file_without_duplicates() -> None:
    decision = run("C7_vcard_several.eml")
    assert [(c.card.name, c.addresses) for c in decision.new_contacts] == [
        ("Ann Lee", ("ann.lee@tyrell.com",)),
        ("Bo Chan", ("bo.chan@tyrell.com",)),
    ]
    assert lead_addresses(decision) == ["rick@tyrell.com"]


def test_c7_cards_of_known_contacts_create_nothing_new() -> None:
    known = {
        "ann.lee@tyrell.com": (EntityRef(EntityType.CONTACT, 7),),
        "bo.chan@tyrell.com": (EntityRef(EntityType.CONTACT, 8),),
    }
    decision = run("C7_vcard_again.eml", known=known)
    assert decision.new_contacts == ()


def test_c7_option_off_creates_no_contacts() -> None:
    mailbox = MailboxView(address="novcard@example.com", kind="company", vcard_contacts=False)
    decision = run("C7_vcard_option_off.eml", mailbox=mailbox)
    assert decision.new_contacts == ()
    assert lead_addresses(decision) == ["norman@oscorp.com"]


def test_c5_c7_an_employee_card_creates_no_contact() -> None:
    decision = run("C7_vcard_employee_card.eml", OUT, BOBS)
    assert decision.action == "captured"
    assert lead_addresses(decision) == ["tony@stark-industries.com"]
    assert decision.new_contacts == ()


# --- C8 ---------------------------------------------------------------------------------------


def test_c8_nothing_to_bind_means_no_activity() -> None:
    decision = run("C8_robot_unknown_sender.eml")
    assert (decision.action, decision.reason) == ("skipped", "robot: auto-submitted")


@pytest.mark.parametrize(
    "name", sorted(p.name for p in GOLDEN.glob("*.eml") if not p.name.startswith("BAD_not"))
)
@pytest.mark.parametrize("direction", [Direction.INCOMING, OUT])
def test_c8_every_captured_decision_binds_at_least_one_entity(
    name: str, direction: Direction
) -> None:
    decision = run(name, direction)
    if decision.action == "captured":
        assert decision.bind or decision.new_leads or decision.bind_new_contacts
    else:
        assert decision.reason


# --- C9 ---------------------------------------------------------------------------------------


def test_c9_a_captured_message_is_a_duplicate() -> None:
    decision = run("C9_message_id.eml", duplicate=True)
    assert decision.action == "duplicate"
    assert decision.new_leads == ()


@pytest.mark.parametrize(
    ("first", "second", "message_id"),
    [
        ("C9_exchange_relay_copy.eml", "C9_exchange_sent_copy.eml", "c9-orig-1@example.com"),
        ("C9_google_relay_copy.eml", "C9_google_sent_copy.eml", "c9-orig-2@example.com"),
    ],
)
def test_c9_original_message_id_headers_identify_the_relay_copy(
    first: str, second: str, message_id: str
) -> None:
    relay, sent = load(first), load(second)
    assert relay.key == sent.key
    assert relay.message_id == sent.message_id == message_id


def test_c9_content_hash_without_message_id() -> None:
    plain, copy, other = (
        load("C9_no_message_id.eml"),
        load("C9_no_message_id_copy.eml"),
        load("C9_no_message_id_other.eml"),
    )
    assert plain.message_id is None
    assert plain.key == copy.key, "added trace headers and CRLF line ends are the same message"
    assert plain.key != other.key
    assert plain.key != load("C1_unknown_sender.eml").key


def test_c9_message_id_key() -> None:
    assert load("C9_message_id.eml").key == load("C9_message_id.eml").key
    assert load("C9_message_id.eml").message_id == "c9-1@weyland-yutani.com"


# --- C12 --------------------------------------------------------------------------------------


def window(since: str, linked_at: dt.datetime | None = LINKED_AT) -> MailboxView:
    return dataclasses.replace(SALES, since=since, linked_at=linked_at)


def test_c12_three_days_counted_back_from_linking() -> None:
    inside = run("C12_inside_window.eml", mailbox=window("3d"), history=True)
    before = run("C12_before_window.eml", mailbox=window("3d"), history=True)
    assert inside.action == "captured", "linked 3 months before `now`: the window is from linking"
    assert before.action == "skipped"
    assert before.reason is not None and "import window" in before.reason
    assert "2024-03-01" in before.reason


def test_c12_all_time_takes_everything() -> None:
    for name in ("C12_inside_window.eml", "C12_before_window.eml"):
        assert run(name, mailbox=window("all"), history=True).action == "captured"


def test_c12_the_window_moves_with_the_linking_time() -> None:
    """Mail after linking is always in; mail long before linking is out."""
    linked_earlier = window("3d", LINKED_AT - dt.timedelta(days=30))
    assert run("C12_before_window.eml", mailbox=linked_earlier, history=True).action == "captured"
    linked_later = window("3d", LINKED_AT + dt.timedelta(days=10))
    assert run("C12_inside_window.eml", mailbox=linked_later, history=True).action == "skipped"


def test_c12_without_a_linking_time_the_window_ends_now() -> None:
    unlinked = window("3d", None)
    assert run("C12_inside_window.eml", mailbox=unlinked, history=True).action == "skipped"


def test_c12_live_mail_is_never_judged_by_its_date() -> None:
    """The window is for the history found at linking; relayed or later mail is always in."""
    assert run("C12_before_window.eml", mailbox=window("3d")).action == "captured"


def test_c12_undated_mail_is_not_dropped_by_the_window() -> None:
    assert run("BAD_header_only.eml", mailbox=window("3d"), history=True).action == "captured"


# --- B3 ---------------------------------------------------------------------------------------


def test_b3_outgoing_reply_joins_the_thread_and_answers_the_original() -> None:
    decision = run(
        "B3_thread_reply_outgoing.eml",
        OUT,
        BOBS,
        threads={"b3-1@globex.com": "b3-1@globex.com"},
        known={MARIA: (LEAD_MARIA,)},
    )
    assert decision.thread == "b3-1@globex.com"
    assert decision.answers == ("b3-1@globex.com",)


def test_b3_incoming_reply_joins_the_thread_of_the_nearest_known_message() -> None:
    decision = run(
        "B3_thread_reply_incoming.eml",
        mailbox=BOBS,
        threads={"b3-2@example.com": "thread-of-b3-2"},
        known={MARIA: (LEAD_MARIA,)},
    )
    assert decision.thread == "thread-of-b3-2"
    assert decision.answers == (), "an incoming reply answers nothing of ours"


def test_b3_reply_before_its_original_shares_the_original_thread() -> None:
    reply = run("B3_early_reply.eml")
    original = run("B3_late_original.eml")
    assert reply.thread == original.thread == "b3-4@black-mesa.com"


def test_b3_unrelated_mail_starts_its_own_thread() -> None:
    assert run("C1_unknown_sender.eml").thread != run("B5_free_mail.eml").thread


# --- B4 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("B4_auto_submitted.eml", "auto-submitted"),
        ("B4_bounce_dsn.eml", "delivery report"),
        ("B4_mailing_list.eml", "mailing list"),
        ("B4_precedence_bulk.eml", "precedence"),
        ("B4_noreply_sender.eml", "no-reply sender"),
        ("B4_null_sender.eml", "null sender"),
    ],
)
def test_b4_robots_create_no_lead(name: str, reason: str) -> None:
    decision = run(name)
    assert (decision.action, decision.reason) == ("skipped", f"robot: {reason}")
    assert decision.new_leads == ()


def test_b4_null_envelope_sender() -> None:
    decision = run("C1_unknown_sender.eml", envelope_sender="<>")
    assert (decision.action, decision.reason) == ("skipped", "robot: null sender")


def test_b4_envelope_sender_wins_over_a_stale_return_path() -> None:
    decision = run("B4_null_sender.eml", envelope_sender="robot@megastore.com")
    assert lead_addresses(decision) == ["robot@megastore.com"]


def test_b4_robot_mail_from_a_known_lead_is_still_bound() -> None:
    decision = run("B4_auto_reply_known_lead.eml", known={MARIA: (LEAD_MARIA,)})
    assert decision.action == "captured"
    assert decision.bind == refs(LEAD_MARIA)
    assert decision.new_leads == ()


def test_b4_outlook_mail_of_a_person_is_not_a_robot() -> None:
    assert lead_addresses(run("B4_person_outlook.eml")) == ["walter@graymatter-tech.com"]


# --- B5 ---------------------------------------------------------------------------------------


def test_b5_free_mail_gives_no_company() -> None:
    [lead] = run("B5_free_mail.eml").new_leads
    assert (lead.address, lead.name, lead.company) == ("tom.baker@gmail.com", "Tom Baker", None)


@pytest.mark.parametrize("name", ["B5_business_co_uk.eml", "B5_business_subdomain.eml"])
def test_b5_business_domain_gives_a_company_named_from_the_registrable_domain(name: str) -> None:
    [lead] = run(name).new_leads
    assert lead.company == CompanyGuess(name="Acme", domain="acme.co.uk")


# --- M4 ---------------------------------------------------------------------------------------


def test_m4_round_robin_over_the_queue() -> None:
    first = run("M4_new_lead_1.eml", mailbox=dataclasses.replace(SALES, queue_cursor=0))
    second = run("M4_new_lead_2.eml", mailbox=dataclasses.replace(SALES, queue_cursor=1))
    assert (first.new_leads[0].responsible, first.queue_cursor) == (ANNA, 1)
    assert (second.new_leads[0].responsible, second.queue_cursor) == (BOB, 0)


def test_m4_several_new_leads_in_one_message_take_consecutive_places() -> None:
    three = dataclasses.replace(SALES, queue=(ANNA, BOB, ALICE), queue_cursor=2)
    decision = run("M4_outgoing_two_new.eml", OUT, three)
    assert [lead.responsible for lead in decision.new_leads] == [ALICE, ANNA]
    assert decision.queue_cursor == 1


def test_m4_the_cursor_moves_only_for_new_leads() -> None:
    known = run("C3_known_lead.eml", known={MARIA: (LEAD_MARIA,)})
    robot = run("B4_mailing_list.eml")
    assert known.queue_cursor is None and robot.queue_cursor is None


def test_m4_personal_mailbox_leads_belong_to_the_owner_and_queueless_ones_to_nobody() -> None:
    assert run("M4_new_lead_1.eml", mailbox=BOBS).new_leads[0].responsible == BOB
    bare = MailboxView(address="support@example.com", kind="company")
    assert run("M4_new_lead_1.eml", mailbox=bare).new_leads[0].responsible is None


# --- M3 / T3 ----------------------------------------------------------------------------------


def test_unlinked_mailbox_captures_nothing() -> None:
    decision = run("C1_unknown_sender.eml", mailbox=dataclasses.replace(SALES, linked=False))
    assert (decision.action, decision.reason) == ("skipped", "mailbox is not linked to the CRM")


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_headers_end_at_the_first_empty_line(newline: bytes) -> None:
    """Header-like lines of the body stay body, whatever the line ends; the body still keys a
    message without Message-ID."""
    head = [b"From: Ann <ann@client.example>", b"To: bob@ourco.example", b"Subject: Quote"]
    body = [b"Message-ID: <not-a-header@client.example>", b"From: eve@elsewhere.example", b""]
    msg = parse_message(newline.join([*head, b"", *body]))
    assert msg.message_id is None and msg.subject == "Quote"
    assert msg.sender is not None and msg.sender.address == "ann@client.example"
    other = parse_message(newline.join([*head, b"", b"Another body", b""]))
    assert msg.key != other.key


def test_a_message_that_starts_with_an_empty_line_has_no_headers() -> None:
    with pytest.raises(MessageParseError):
        parse_message(b"\r\nFrom: ann@client.example\r\n\r\nbody\r\n")
