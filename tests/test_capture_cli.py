"""The capture rules end to end through ``mailcrm capture`` and the CLI's JSON, on SQLite and on
PostgreSQL: the golden ``.eml`` files of ``tests/golden`` fed to a small company's CRM.

One CRM per database (module scope, "the world") receives most golden files in a fixed order;
the tests then read what a user sees in ``leads/contacts/companies/activities list --json``.
Rules that need a fresh CRM (M4 across restarts, C12, U2, U3, C10, C11) have their own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, select, text, update

from crm.capture.path import Capturer, Location
from crm.capture.records import add_emails
from crm.face import admin, views
from crm.store.db import Database
from crm.store.models import Company, Direction, EntityType, Mailbox
from crm.store.secrets import SecretBox
from tests.conftest import PG_ADMIN_URL, Cli

GOLDEN = Path(__file__).parent / "golden"
ANNA, BOB, ALICE, CAROL = (
    "anna@example.com",
    "bob@example.com",
    "alice@example.com",
    "carol@example.com",
)
SALES, SUPPORT, QUIET, NOVCARD, QUEUE, WINDOW = (
    "sales@example.com",
    "support@example.com",
    "quiet@example.com",
    "novcard@example.com",
    "queue@example.com",
    "window@example.com",
)
LINKED_AT = dt.datetime(2024, 3, 10, 12, 0, tzinfo=dt.UTC)
MARIA = "maria.garcia@globex.com"
JSON = dict[str, Any]


def path(name: str) -> str:
    """The path of a golden file, as the CLI gets it."""
    return str(GOLDEN / name)


def one(rows: list[JSON], **match: Any) -> JSON:
    """The only row whose fields have these values."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def lead_of(leads: list[JSON], address: str) -> JSON:
    """The only lead with this address."""
    found = [lead for lead in leads if address in lead["emails"]]
    assert len(found) == 1, (address, found)
    return found[0]


def bindings(activity: JSON) -> set[tuple[str, int]]:
    """An activity's bindings as a set of (type, id)."""
    return {(b["type"], b["id"]) for b in activity["bindings"]}


# --- the world: one CRM per database ----------------------------------------------------------


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def world_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh database for the module: a SQLite file or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('world') / 'crm.db'}"
        return
    schema = "w_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    try:
        yield f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@dataclass
class World:
    """What the CLI showed after the golden files went through it."""

    cli: Cli
    results: dict[str, list[JSON]] = field(default_factory=dict)
    leads: list[JSON] = field(default_factory=list)
    contacts: list[JSON] = field(default_factory=list)
    companies: list[JSON] = field(default_factory=list)
    activities: list[JSON] = field(default_factory=list)

    def capture(self, mailbox: str, direction: str, *names: str, folder: str | None = None) -> None:
        """Capture golden files in one ``mailcrm capture`` run; keep each file's result."""
        extra = ["--folder", folder] if folder else []
        out = self.cli.json(
            "capture", *map(path, names), "--mailbox", mailbox, "--direction", direction, *extra
        )
        assert [Path(r["source"]).name for r in out] == list(names)
        for result in out:
            self.results.setdefault(Path(result["source"]).name, []).append(result)

    def result(self, name: str, index: int = 0) -> JSON:
        """The capture result of a golden file (the index-th time it was captured)."""
        return self.results[name][index]

    def activity(self, name: str) -> JSON:
        """The activity a golden file was captured as."""
        [activity_id] = self.result(name)["activities"]
        return one(self.activities, id=activity_id)

    def company(self, company_id: int) -> JSON:
        return one(self.companies, id=company_id)


def add_company_address(url: str, domain: str, address: str) -> None:
    """Give the company of ``domain`` an address of its own (no CLI command does that yet)."""
    database = Database(url)
    try:
        with database.session() as session:
            company_id = session.scalar(select(Company.id).where(Company.domain == domain))
            assert company_id is not None
            add_emails(session, EntityType.COMPANY, company_id, (address,))
    finally:
        database.dispose()


def set_linked_at(db_url: str, address: str, when: dt.datetime) -> None:
    """Pretend the mailbox was linked at ``when`` (the golden files have fixed dates)."""
    database = Database(db_url)
    try:
        with database.session() as session:
            session.execute(
                update(Mailbox).where(Mailbox.address == address).values(linked_at=when)
            )
    finally:
        database.dispose()


def setup_company(url: str, secret_key: str) -> None:
    """The employees, mailboxes and exclusions of the world, in one transaction.

    The CLI commands that make them are exercised in test_cli_contract.py and below; the world
    is set up through crm.admin to keep the suite fast.
    """
    settings = admin.MailboxSettings
    database = Database(url)
    try:
        with database.session() as s:
            for email, name, is_admin in (
                (BOB, "Bob Sales", False),
                (ANNA, "Anna Queue", False),
                (ALICE, "Alice Admin", True),
                (CAROL, "Carol Queue", False),
            ):
                admin.add_user(s, email, name, is_admin)
            box = SecretBox(secret_key.encode())
            personal = settings(
                since="all", password="bobs-secret-pw", imap_host="imap.example.com"
            )
            admin.add_mailbox(s, box, BOB, BOB, personal)
            admin.add_mailbox(s, box, SALES, None, settings(since="all", queue=[ANNA, BOB]))
            admin.add_mailbox(s, box, SUPPORT, None, settings(since="all"))
            admin.add_mailbox(s, box, QUIET, None, settings(since="all", create_leads=False))
            admin.add_mailbox(s, box, NOVCARD, None, settings(since="all", vcard_contacts=False))
            admin.add_mailbox(s, box, QUEUE, None, settings(since="all", queue=[ANNA, BOB, CAROL]))
            admin.add_mailbox(s, box, WINDOW, None, settings(since="3d"))
            for entry in ("Spam@SpamCorp.com", "@lawfirm.com", "bank.com"):
                admin.add_exclusion(s, entry)
            admin.add_exclusion(s, "@rival.com", SALES)
    finally:
        database.dispose()
    set_linked_at(url, WINDOW, LINKED_AT)


@pytest.fixture(scope="module")
def world(world_url: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    """A small company's CRM after the golden files went through ``mailcrm capture``."""
    cli = Cli(world_url, tmp_path_factory.mktemp("home"))
    w = World(cli)
    setup_company(world_url, cli.env["MAILCRM_SECRET_KEY"])

    w.capture(
        SALES, "in",
        "C1_unknown_sender.eml", "C1_unknown_sender_no_name.eml",
        "C7_vcard_40.eml", "C7_vcard_21.eml", "C7_vcard_several.eml", "C7_vcard_again.eml",
        "C7_vcard_30.eml", "C3_known_lead.eml", "C3_known_contact.eml",
    )  # fmt: skip
    add_company_address(world_url, "globex.com", "info@globex.com")
    w.capture(SALES, "in", "C3_company_address.eml")
    w.capture(
        BOB, "out",
        "C2_outgoing_to_cc_bcc.eml", "C2_outgoing_envelope_only.eml",
        "C3_outgoing_known_and_new.eml", "C5_among_employees_outgoing.eml",
        "C5_employee_and_external_outgoing.eml", "C6_outgoing_excluded_recipient.eml",
    )  # fmt: skip
    w.capture(QUIET, "in", "C4_unknown_lead_creation_off.eml", "C4_known_lead_creation_off.eml")
    w.capture(
        SALES, "in",
        "C5_from_employee.eml", "C5_from_mailbox_address.eml",
        "C6_excluded_address.eml", "C6_excluded_address_other_case.eml",
        "C6_same_domain_other_address.eml", "C6_excluded_at_domain.eml",
        "C6_excluded_bare_domain_subdomain.eml", "C6_lookalike_domain.eml",
        "C6_excluded_in_cc.eml", "C6_per_mailbox.eml", "C8_robot_unknown_sender.eml",
        "B4_auto_submitted.eml", "B4_bounce_dsn.eml", "B4_mailing_list.eml",
        "B4_precedence_bulk.eml", "B4_noreply_sender.eml", "B4_null_sender.eml",
        "B4_auto_reply_known_lead.eml", "B4_person_outlook.eml",
        "B5_free_mail.eml", "B5_business_co_uk.eml", "B5_business_subdomain.eml",
    )  # fmt: skip
    w.capture(SUPPORT, "in", "C6_per_mailbox.eml")
    w.capture(NOVCARD, "in", "C7_vcard_option_off.eml")
    # C9: one message in two mailboxes and two folders; relay copy and Sent copy
    w.capture(SALES, "in", "C9_message_id.eml", folder="INBOX")
    w.capture(SUPPORT, "in", "C9_message_id.eml", folder="INBOX")
    w.capture(SALES, "in", "C9_message_id.eml", folder="Archive")
    w.capture(BOB, "out", "C9_exchange_relay_copy.eml", "C9_google_relay_copy.eml")
    w.capture(BOB, "out", "C9_exchange_sent_copy.eml", "C9_google_sent_copy.eml", folder="Sent")
    w.capture(BOB, "in", "B3_reply_to_rewritten_id.eml")
    w.capture(
        SALES, "in",
        "C9_no_message_id.eml", "C9_no_message_id_copy.eml", "C9_no_message_id_other.eml",
    )  # fmt: skip
    # B3: a conversation in bob's mailbox; a reply captured before its original
    w.capture(BOB, "in", "B3_thread_original.eml")
    w.capture(BOB, "out", "B3_thread_reply_outgoing.eml")
    w.capture(BOB, "in", "B3_thread_reply_incoming.eml")
    w.capture(SALES, "in", "B3_early_reply.eml")
    w.capture(SALES, "in", "B3_late_original.eml")

    # M4: the queue@ mailbox's cursor across capture runs and a new Capturer on a new engine
    w.capture(QUEUE, "in", "M4_new_lead_1.eml")
    w.capture(QUEUE, "in", "M4_new_lead_2.eml", "M4_known_sender.eml")
    w.capture(QUEUE, "out", "M4_outgoing_two_new.eml")
    database = Database(world_url)
    try:
        restarted = Capturer(database).capture(
            (GOLDEN / "M4_new_lead_3.eml").read_bytes(), QUEUE, Direction.INCOMING
        )
    finally:
        database.dispose()
    w.results["M4_new_lead_3.eml"] = [restarted.as_json()]
    cli.ok("mailbox", "set", QUEUE, "--queue", f"{CAROL},{BOB}")
    w.capture(QUEUE, "in", "M4_after_queue_change.eml")
    # C12: window@ was linked on 2024-03-10 with the 3 day window, then set to all time
    w.capture(WINDOW, "in", "C12_inside_window.eml", "C12_before_window.eml")
    cli.ok("mailbox", "set", WINDOW, "--since", "all")
    w.capture(WINDOW, "in", "C12_before_window.eml")

    w.capture(BOB, "out", "C7_vcard_employee_card.eml")

    w.leads = cli.json("leads", "list")
    w.contacts = cli.json("contacts", "list")
    w.companies = cli.json("companies", "list")
    w.activities = cli.json("activities", "list")
    return w


# --- C1 ---------------------------------------------------------------------------------------


def test_c1_unknown_sender_becomes_a_lead_with_an_incoming_activity(world: World) -> None:
    result = world.result("C1_unknown_sender.eml")
    assert result["action"] == "captured"
    [lead_id] = result["created"]["leads"]
    lead = one(world.leads, id=lead_id)
    assert lead["name"] == "María García"
    assert lead["emails"] == [MARIA]
    assert lead["company"] == "Globex"
    assert lead["mailbox"] == SALES
    activity = world.activity("C1_unknown_sender.eml")
    assert activity["direction"] == "incoming"
    assert activity["subject"] == "Pricing for 200 units"
    assert activity["message_id"] == "c1-1@globex.com"
    assert activity["mailbox"] == SALES
    assert activity["completed"] is False
    assert bindings(activity) == {("lead", lead_id)}


def test_c1_sender_without_a_name(world: World) -> None:
    lead = lead_of(world.leads, "tom@initech.com")
    assert (lead["name"], lead["company"]) == ("tom@initech.com", "Initech")


# --- C2 ---------------------------------------------------------------------------------------


def test_c2_outgoing_to_cc_and_bcc_recipients_become_leads(world: World) -> None:
    result = world.result("C2_outgoing_to_cc_bcc.eml")
    assert result["action"] == "captured"
    people = {
        "peter@neverland-ltd.com": ("Peter Pan", "Neverland Ltd"),
        "wendy@neverland-ltd.com": ("Darling, Wendy", "Neverland Ltd"),
        "hook@jollyroger.com": ("James Hook", "Jollyroger"),
    }
    leads = {a: lead_of(world.leads, a) for a in people}
    for address, (name, company) in people.items():
        assert (leads[address]["name"], leads[address]["company"]) == (name, company)
        assert leads[address]["responsible"] == BOB, "a personal mailbox's leads are its owner's"
        assert leads[address]["mailbox"] == BOB
    assert sorted(result["created"]["leads"]) == sorted(lead["id"] for lead in leads.values())
    assert len(result["created"]["companies"]) == 2, "one Neverland Ltd for Peter and Wendy"
    activity = world.activity("C2_outgoing_to_cc_bcc.eml")
    assert activity["direction"] == "outgoing"
    assert activity["completed"] is True
    assert bindings(activity) == {("lead", lead["id"]) for lead in leads.values()}
    assert not [lead for lead in world.leads if BOB in lead["emails"]]


def test_c2_outgoing_without_recipients_is_skipped(world: World) -> None:
    result = world.result("C2_outgoing_envelope_only.eml")
    assert (result["action"], result["reason"]) == ("skipped", "no recipient address")


# --- C3 ---------------------------------------------------------------------------------------


def test_c3_mail_from_a_known_lead_binds_to_it(world: World) -> None:
    result = world.result("C3_known_lead.eml")
    assert result["created"] == {"leads": [], "contacts": [], "companies": []}
    maria = lead_of(world.leads, MARIA)
    assert bindings(world.activity("C3_known_lead.eml")) == {("lead", maria["id"])}


def test_c3_mail_from_a_contact_binds_the_contact_and_its_company(world: World) -> None:
    john = one(world.contacts, name="John Smith")
    company = one(world.companies, name="Umbrella Corporation")
    activity = world.activity("C3_known_contact.eml")
    assert bindings(activity) == {("contact", john["id"]), ("company", company["id"])}
    assert world.result("C3_known_contact.eml")["created"]["leads"] == []


def test_c3_mail_from_a_company_address_binds_the_company(world: World) -> None:
    globex = one(world.companies, domain="globex.com")
    assert bindings(world.activity("C3_company_address.eml")) == {("company", globex["id"])}
    assert not [lead for lead in world.leads if "info@globex.com" in lead["emails"]]


def test_c3_outgoing_to_known_and_new(world: World) -> None:
    maria, hank = lead_of(world.leads, MARIA), lead_of(world.leads, "hank.scorpio@globex.com")
    activity = world.activity("C3_outgoing_known_and_new.eml")
    assert bindings(activity) == {("lead", maria["id"]), ("lead", hank["id"])}
    assert hank["company"] == "Globex"
    assert len([c for c in world.companies if c["domain"] == "globex.com"]) == 1


# --- C4 ---------------------------------------------------------------------------------------


def test_c4_lead_creation_off(world: World) -> None:
    unknown = world.result("C4_unknown_lead_creation_off.eml")
    assert (unknown["action"], unknown["reason"]) == (
        "skipped",
        "unknown address and lead creation is off",
    )
    assert not [lead for lead in world.leads if "carl@hooli.com" in lead["emails"]]
    known = world.activity("C4_known_lead_creation_off.eml")
    assert known["mailbox"] == QUIET
    assert bindings(known) == {("lead", lead_of(world.leads, MARIA)["id"])}


# --- C5 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["C5_from_employee.eml", "C5_from_mailbox_address.eml", "C5_among_employees_outgoing.eml"],
)
def test_c5_mail_among_employees_creates_nothing(world: World, name: str) -> None:
    result = world.result(name)
    assert (result["action"], result["reason"], result["activities"]) == (
        "skipped",
        "only employees",
        [],
    )


def test_c5_employees_never_become_leads(world: World) -> None:
    staff = {BOB, ANNA, ALICE, CAROL, SALES, SUPPORT, QUIET, NOVCARD, QUEUE, WINDOW}
    assert not [lead for lead in world.leads if staff & set(lead["emails"])]
    activity = world.activity("C5_employee_and_external_outgoing.eml")
    bruce = lead_of(world.leads, "bruce@wayne-enterprises.com")
    assert bindings(activity) == {("lead", bruce["id"])}


# --- C6 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("C6_excluded_address.eml", "spam@spamcorp.com"),
        ("C6_excluded_address_other_case.eml", "spam@spamcorp.com"),
        ("C6_excluded_at_domain.eml", "saul@lawfirm.com"),
        ("C6_excluded_bare_domain_subdomain.eml", "clerk@mail.bank.com"),
        ("C6_excluded_in_cc.eml", "saul@lawfirm.com"),
        ("C6_outgoing_excluded_recipient.eml", "saul@lawfirm.com"),
        ("C6_per_mailbox.eml", "ceo@rival.com"),
    ],
)
def test_c6_excluded_mail_creates_nothing(world: World, name: str, address: str) -> None:
    result = world.result(name)
    assert (result["action"], result["reason"]) == ("skipped", f"excluded address: {address}")
    assert result["created"] == {"leads": [], "contacts": [], "companies": []}


def test_c6_no_lead_for_excluded_addresses(world: World) -> None:
    addresses = {a for lead in world.leads for a in lead["emails"]}
    for excluded in ("spam@spamcorp.com", "saul@lawfirm.com", "clerk@mail.bank.com"):
        assert excluded not in addresses
    assert "miles@cyberdyne.com" not in addresses, "his only mails were to an excluded address"


def test_c6_entries_match_only_what_they_name(world: World) -> None:
    assert lead_of(world.leads, "honest@spamcorp.com")["company"] == "Spamcorp"
    assert lead_of(world.leads, "info@notbank.com")["company"] == "Notbank"


def test_c6_per_mailbox_exclusion(world: World) -> None:
    in_support = world.result("C6_per_mailbox.eml", 1)
    assert in_support["action"] == "captured"
    assert lead_of(world.leads, "ceo@rival.com")["mailbox"] == SUPPORT


def test_c6_exclusion_list_is_stored_normalised(world: World) -> None:
    rows = world.cli.json("exclude", "list")
    assert {(r["entry"], r["mailbox"]) for r in rows} == {
        ("spam@spamcorp.com", None),
        ("@lawfirm.com", None),
        ("@bank.com", None),
        ("@rival.com", SALES),
    }


# --- C7 ---------------------------------------------------------------------------------------


def test_c7_vcards_become_contacts(world: World) -> None:
    expected = {
        "John Smith": (["john.smith@umbrella-corp.com"], ["+1-555-0100"], "Umbrella Corporation"),
        "Jörg Müller": (
            ["joerg.mueller@stark-industries.com"],
            ["+49 30 1234567"],
            "Stark Industries",
        ),
        "Ann Lee": (["ann.lee@tyrell.com"], ["+1 555 0101"], "Tyrell"),
        "Bo Chan": (["bo.chan@tyrell.com"], [], "Tyrell"),
        "Pedro Álvarez": (["pedro.alvarez@globex.com"], ["+34 91 555 0100"], "Globex"),
    }
    # (Bob's own card is the bug of test_c5_c7_an_employee_card_creates_no_contact)
    contacts = [c for c in world.contacts if c["emails"] != [BOB]]
    assert sorted(c["name"] for c in contacts) == sorted(expected), "no duplicates"
    for contact in contacts:
        assert (contact["emails"], contact["phones"], contact["company"]) == expected[
            contact["name"]
        ]


def test_c7_the_sender_of_his_own_card_is_a_contact_not_a_lead(world: World) -> None:
    result = world.result("C7_vcard_21.eml")
    assert result["created"]["leads"] == []
    joerg = one(world.contacts, name="Jörg Müller")
    stark = one(world.companies, name="Stark Industries")
    assert bindings(world.activity("C7_vcard_21.eml")) == {
        ("contact", joerg["id"]),
        ("company", stark["id"]),
    }


def test_c7_several_cards_and_the_same_cards_again(world: World) -> None:
    assert len(world.result("C7_vcard_several.eml")["created"]["contacts"]) == 2
    again = world.result("C7_vcard_again.eml")
    assert again["action"] == "captured"
    assert again["created"]["contacts"] == []
    rick = lead_of(world.leads, "rick@tyrell.com")
    assert bindings(world.activity("C7_vcard_again.eml")) == {("lead", rick["id"])}


def test_c5_c7_an_employee_card_creates_no_contact(world: World) -> None:
    result = world.result("C7_vcard_employee_card.eml")
    assert result["action"] == "captured"
    assert result["created"]["contacts"] == []
    assert not [c for c in world.contacts if BOB in c["emails"]]
    tony = lead_of(world.leads, "tony@stark-industries.com")
    assert bindings(world.activity("C7_vcard_employee_card.eml")) == {("lead", tony["id"])}


def test_c7_option_off_creates_no_contact(world: World) -> None:
    result = world.result("C7_vcard_option_off.eml")
    assert result["action"] == "captured"
    assert result["created"]["contacts"] == []
    assert not [c for c in world.contacts if c["name"] == "Zed Zeta"]
    assert lead_of(world.leads, "norman@oscorp.com")["mailbox"] == NOVCARD


# --- C8 ---------------------------------------------------------------------------------------


def test_c8_every_activity_is_bound(world: World) -> None:
    assert world.activities
    for activity in world.activities:
        assert activity["bindings"], activity


def test_c8_nothing_to_bind_no_activity(world: World) -> None:
    result = world.result("C8_robot_unknown_sender.eml")
    assert (result["action"], result["reason"]) == ("skipped", "robot: auto-submitted")
    assert not [a for a in world.activities if a["message_id"] == "c8-1@pingdom-vendor.com"]


# --- C9 ---------------------------------------------------------------------------------------


def test_c9_one_message_in_two_mailboxes_and_two_folders_is_one_activity(world: World) -> None:
    first, other_mailbox, other_folder = world.results["C9_message_id.eml"]
    assert first["action"] == "captured"
    for again in (other_mailbox, other_folder):
        assert again["action"] == "duplicate"
        assert again["activities"] == first["activities"]
        assert again["created"] == {"leads": [], "contacts": [], "companies": []}
    same = [a for a in world.activities if a["message_id"] == "c9-1@weyland-yutani.com"]
    assert len(same) == 1


@pytest.mark.parametrize(
    ("relay", "sent", "message_id"),
    [
        ("C9_exchange_relay_copy.eml", "C9_exchange_sent_copy.eml", "c9-orig-1@example.com"),
        ("C9_google_relay_copy.eml", "C9_google_sent_copy.eml", "c9-orig-2@example.com"),
    ],
)
def test_c9_relay_copy_and_sent_copy_are_one_activity(
    world: World, relay: str, sent: str, message_id: str
) -> None:
    assert world.result(relay)["action"] == "captured"
    assert world.result(sent)["action"] == "duplicate"
    assert world.result(sent)["activities"] == world.result(relay)["activities"]
    assert len([a for a in world.activities if a["message_id"] == message_id]) == 1


def test_c9_content_hash_without_message_id(world: World) -> None:
    plain = world.result("C9_no_message_id.eml")
    copy = world.result("C9_no_message_id_copy.eml")
    other = world.result("C9_no_message_id_other.eml")
    assert (plain["action"], copy["action"], other["action"]) == (
        "captured",
        "duplicate",
        "captured",
    )
    assert copy["activities"] == plain["activities"] != other["activities"]
    skinner = lead_of(world.leads, "skinner@fbi-consulting.com")
    assert bindings(world.activity("C9_no_message_id_other.eml")) == {("lead", skinner["id"])}


# --- B3 ---------------------------------------------------------------------------------------


def test_b3_a_conversation_is_one_thread(world: World) -> None:
    original = world.activity("B3_thread_original.eml")
    reply_out = world.activity("B3_thread_reply_outgoing.eml")
    reply_in = world.activity("B3_thread_reply_incoming.eml")
    assert original["thread"] == reply_out["thread"] == reply_in["thread"]
    assert reply_out["direction"] == "outgoing"
    assert original["thread"] != world.activity("C1_unknown_sender.eml")["thread"]


def test_b3_the_answered_mail_is_marked_answered(world: World) -> None:
    assert world.activity("B3_thread_original.eml")["answered"] is True
    assert world.activity("B3_thread_reply_incoming.eml")["answered"] is False
    assert world.activity("C1_unknown_sender.eml")["answered"] is False


def test_b3_reply_to_the_rewritten_message_id_joins_the_thread(world: World) -> None:
    sent = world.activity("C9_exchange_relay_copy.eml")
    reply = world.activity("B3_reply_to_rewritten_id.eml")
    assert reply["thread"] == sent["thread"]


def test_b3_reply_captured_before_its_original(world: World) -> None:
    reply, original = world.activity("B3_early_reply.eml"), world.activity("B3_late_original.eml")
    assert reply["thread"] == original["thread"]


# --- B4 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason", "address"),
    [
        ("B4_auto_submitted.eml", "auto-submitted", "kim@soylent.com"),
        ("B4_bounce_dsn.eml", "delivery report", "mailer-daemon@mx.soylent.com"),
        ("B4_mailing_list.eml", "mailing list", "editor@widgetweekly.com"),
        ("B4_precedence_bulk.eml", "precedence", "promo@megastore.com"),
        ("B4_noreply_sender.eml", "no-reply sender", "no-reply@megastore.com"),
        ("B4_null_sender.eml", "null sender", "robot@megastore.com"),
    ],
)
def test_b4_robots_create_no_lead(world: World, name: str, reason: str, address: str) -> None:
    result = world.result(name)
    assert (result["action"], result["reason"]) == ("skipped", f"robot: {reason}")
    assert not [lead for lead in world.leads if address in lead["emails"]]


def test_b4_robot_mail_from_a_known_lead_is_bound_without_a_new_lead(world: World) -> None:
    result = world.result("B4_auto_reply_known_lead.eml")
    assert result["created"]["leads"] == []
    maria = lead_of(world.leads, MARIA)
    assert bindings(world.activity("B4_auto_reply_known_lead.eml")) == {("lead", maria["id"])}


def test_b4_a_person_writing_from_outlook_is_a_lead(world: World) -> None:
    assert lead_of(world.leads, "walter@graymatter-tech.com")["name"] == "Walter White"


# --- B5 ---------------------------------------------------------------------------------------


def test_b5_free_mail_never_becomes_a_company(world: World) -> None:
    assert lead_of(world.leads, "tom.baker@gmail.com")["company"] is None
    assert not [c for c in world.companies if c["domain"] == "gmail.com"]
    assert world.result("B5_free_mail.eml")["created"]["companies"] == []


def test_b5_business_domain_gives_one_company(world: World) -> None:
    acme = one(world.companies, domain="acme.co.uk")
    assert acme["name"] == "Acme"
    assert lead_of(world.leads, "li.wei@acme.co.uk")["company"] == "Acme"
    assert lead_of(world.leads, "sam.jones@mail.acme.co.uk")["company"] == "Acme"
    assert world.result("B5_business_subdomain.eml")["created"]["companies"] == []


# --- M4 (in the world: every lead of sales@ in turn, across many capture runs) ---------------


def test_m4_sales_leads_go_round_robin(world: World) -> None:
    sales_leads = [lead for lead in world.leads if lead["mailbox"] == SALES]
    assert len(sales_leads) > 10
    expected = [(ANNA, BOB)[i % 2] for i in range(len(sales_leads))]
    assert [lead["responsible"] for lead in sales_leads] == expected


def test_mailbox_json_shows_the_settings(world: World) -> None:
    sales = world.cli.json("mailbox", "show", SALES)
    assert (sales["kind"], sales["owner"], sales["linked"]) == ("company", None, True)
    assert sales["settings"]["queue"] == [ANNA, BOB]
    assert sales["settings"]["since"] == "all"
    bob = world.cli.json("mailbox", "show", BOB)
    assert (bob["kind"], bob["owner"], bob["linked"]) == ("personal", BOB, True)
    assert "bobs-secret-pw" not in world.cli.ok("mailbox", "show", BOB, "--json")
    quiet = one(world.cli.json("mailbox", "list"), address=QUIET)
    assert quiet["settings"]["create_leads"] is False
    novcard = one(world.cli.json("mailbox", "list"), address=NOVCARD)
    assert novcard["settings"]["vcard_contacts"] is False


def test_activities_of_one_mailbox(world: World) -> None:
    mine = world.cli.json("activities", "list", "--mailbox", SUPPORT)
    assert mine == [a for a in world.activities if a["mailbox"] == SUPPORT]
    assert {a["message_id"] for a in mine} == {"c6-9@rival.com"}


def test_activities_of_one_mailbox_spelled_in_capitals(world: World) -> None:
    mine = world.cli.json("activities", "list", "--mailbox", "SUPPORT@Example.COM")
    assert [a["message_id"] for a in mine] == ["c6-9@rival.com"]


# --- M4 and C12 in the world -----------------------------------------------------------------


def test_m4_round_robin_survives_restarts(world: World) -> None:
    expected = {
        "M4_new_lead_1.eml": ANNA,
        "M4_new_lead_2.eml": BOB,
        "M4_new_lead_3.eml": BOB,  # after the two leads of one message: Carol, then Anna
        "M4_after_queue_change.eml": CAROL,  # a new queue starts at its head
    }
    for name, responsible in expected.items():
        [lead_id] = world.result(name)["created"]["leads"]
        assert one(world.leads, id=lead_id)["responsible"] == responsible, name
    two = [
        one(world.leads, id=i) for i in world.result("M4_outgoing_two_new.eml")["created"]["leads"]
    ]
    assert [(lead["emails"], lead["responsible"]) for lead in two] == [
        (["linus@kernel-consulting.com"], CAROL),
        (["ken@unix-labs.com"], ANNA),
    ]
    known = world.result("M4_known_sender.eml")
    assert (known["action"], known["created"]["leads"]) == ("captured", [])
    assert world.cli.json("mailbox", "show", QUEUE)["settings"]["queue"] == [CAROL, BOB]


def test_c12_initial_import_window_counted_back_from_linking(world: World) -> None:
    inside = world.result("C12_inside_window.eml")
    before, after_setting_all = world.results["C12_before_window.eml"]
    assert inside["action"] == "captured"
    assert before["action"] == "skipped"
    assert "import window" in before["reason"] and "2024-03-01" in before["reason"]
    assert after_setting_all["action"] == "captured"
    assert lead_of(world.leads, "kyle@skynet-defense.com")["mailbox"] == WINDOW


# --- fresh CRMs -------------------------------------------------------------------------------


def capture(cli: Cli, mailbox: str, direction: str, *names: str, seen: bool = False) -> list[JSON]:
    """``mailcrm capture --json`` of golden files."""
    flags = ["--seen"] if seen else []
    result: list[JSON] = cli.json(
        "capture", *map(path, names), "--mailbox", mailbox, "--direction", direction, *flags
    )
    return result


def test_u2_u3_who_may_link_a_mailbox(cli: Cli) -> None:
    cli.ok("user", "add", BOB)
    cli.ok("user", "add", ALICE, "--admin")
    cli.ok("user", "add", "carl@example.com", "--no-crm")
    assert one(cli.json("user", "list"), email="carl@example.com")["crm_access"] is False
    # U2: without CRM access, not even with the password
    refused = cli.run(
        "mailbox", "add", "carl@example.com", "--owner", "carl@example.com", "--password-stdin",
        input="carls-pw\n",
    )  # fmt: skip
    assert refused.exit_code == 1
    assert refused.stderr.count("\n") == 1 and "CRM access" in refused.stderr
    assert cli.json("mailbox", "list") == [], "nothing half-made"
    cli.ok("mailbox", "add", "carl@example.com", "--owner", "carl@example.com", "--no-link")
    again = cli.run(
        "mailbox", "set", "carl@example.com", "--link", "--password-stdin", input="pw\n"
    )
    assert again.exit_code == 1 and "CRM access" in again.stderr
    assert cli.json("mailbox", "show", "carl@example.com")["linked"] is False
    [result] = capture(cli, "carl@example.com", "in", "C1_unknown_sender.eml")
    assert (result["action"], result["reason"]) == ("skipped", "mailbox is not linked to the CRM")
    assert cli.json("leads", "list") == []
    # U3: a personal mailbox is linked only with its owner's password
    cli.ok("mailbox", "add", BOB, "--owner", BOB, "--imap-host", "imap.example.com")
    assert cli.json("mailbox", "show", BOB)["linked"] is False
    for args in (
        ["mailbox", "set", BOB, "--link"],
        ["mailbox", "add", ALICE, "--owner", ALICE, "--link"],
    ):
        refused = cli.run(*args)
        assert refused.exit_code == 1
        assert refused.stderr.count("\n") == 1 and "password" in refused.stderr
    cli.ok("mailbox", "set", BOB, "--link", "--password-stdin", input="bobs-own-pw\n")
    assert cli.json("mailbox", "show", BOB)["linked"] is True
    assert "bobs-own-pw" not in cli.ok("mailbox", "show", BOB, "--json")
    assert "bobs-own-pw" not in cli.ok("mailbox", "list")
    cli.ok("mailbox", "add", SALES, "--company")
    assert cli.json("mailbox", "show", SALES)["linked"] is True, "a company mailbox needs no owner"


def test_c10_c11_complete_reopen_and_lead_update(cli: Cli) -> None:
    cli.ok("user", "add", BOB)
    cli.ok("mailbox", "add", SALES, "--company", "--since", "all")
    [unread] = capture(cli, SALES, "in", "C1_unknown_sender.eml")
    [read] = capture(cli, SALES, "in", "B5_free_mail.eml", seen=True)
    [sent] = capture(cli, SALES, "out", "M4_outgoing_two_new.eml")

    def completed() -> dict[int, bool]:
        return {a["id"]: a["completed"] for a in cli.json("activities", "list")}

    unread_id, read_id, sent_id = (r["activities"][0] for r in (unread, read, sent))
    assert completed() == {unread_id: False, read_id: True, sent_id: True}
    cli.ok("activity", "complete", str(unread_id))
    cli.ok("activity", "reopen", str(read_id))
    assert completed() == {unread_id: True, read_id: False, sent_id: True}
    missing = cli.run("activity", "complete", "9999")
    assert (missing.exit_code, missing.stderr) == (1, "mailcrm: no activity 9999\n")
    # C11: a lead edited by a person is "changed"
    maria = lead_of(cli.json("leads", "list"), MARIA)
    assert maria["changed"] is False
    cli.ok("lead", "update", str(maria["id"]), "--name", "María García López", "--status", "won")
    leads = cli.json("leads", "list")
    maria = lead_of(leads, MARIA)
    assert (maria["name"], maria["status"], maria["changed"]) == ("María García López", "won", True)
    assert maria["emails"] == [MARIA]
    assert not [lead for lead in leads if lead["changed"] and lead["id"] != maria["id"]]
    missing = cli.run("lead", "update", "9999", "--name", "x")
    assert (missing.exit_code, missing.stderr) == (1, "mailcrm: no lead 9999\n")


# --- the capture path of the relay (envelope recipients) --------------------------------------


def capture_path_crm(db: Database) -> Capturer:
    """Employees bob and alice, bob's personal mailbox (linked with his password)."""
    with db.session() as session:
        admin.add_user(session, BOB)
        admin.add_user(session, ALICE)
        secrets = SecretBox(Fernet.generate_key())
        settings = admin.MailboxSettings(since="all", password="bobs-pw")
        admin.add_mailbox(session, secrets, BOB, BOB, settings)
    return Capturer(db)


def test_c2_envelope_recipients_become_leads_in_stored_form(db: Database) -> None:
    """The relay hands over RCPT TO addresses as the mail client wrote them."""
    capturer = capture_path_crm(db)
    raw = (GOLDEN / "C2_outgoing_envelope_only.eml").read_bytes()
    result = capturer.capture(
        raw,
        BOB,
        Direction.OUTGOING,
        envelope_to=["Smee@JollyRoger.COM", "<starkey@jollyroger.com>"],
    )
    assert result.action == "captured"
    with db.session() as session:
        leads = views.leads_json(session)
    assert sorted(lead["emails"][0] for lead in leads) == [
        "smee@jollyroger.com",
        "starkey@jollyroger.com",
    ]


def test_c5_an_employee_among_the_envelope_recipients_is_not_a_lead(db: Database) -> None:
    """Bob's client puts himself in Bcc: the relay sees him only in the envelope."""
    capturer = capture_path_crm(db)
    raw = (GOLDEN / "C2_outgoing_to_cc_bcc.eml").read_bytes()
    result = capturer.capture(
        raw, BOB, Direction.OUTGOING, envelope_to=["peter@neverland-ltd.com", "Alice@Example.COM"]
    )
    assert result.action == "captured"
    with db.session() as session:
        addresses = sorted(lead["emails"][0] for lead in views.leads_json(session))
    assert addresses == [
        "hook@jollyroger.com",
        "peter@neverland-ltd.com",
        "wendy@neverland-ltd.com",
    ]


def test_c9_relay_capture_then_sent_folder_copy(db: Database) -> None:
    """The relay captures at send time; the poller then finds the Sent copy: one activity."""
    capturer = capture_path_crm(db)
    relay = capturer.capture(
        (GOLDEN / "C9_exchange_relay_copy.eml").read_bytes(),
        BOB,
        Direction.OUTGOING,
        envelope_from=BOB,
        envelope_to=["dana@fbi-consulting.com"],
    )
    sent = Capturer(db).capture(
        (GOLDEN / "C9_exchange_sent_copy.eml").read_bytes(),
        BOB,
        Direction.OUTGOING,
        location=Location(folder="Sent Items", uidvalidity=7, uid=42),
    )
    assert (relay.action, sent.action) == ("captured", "duplicate")
    assert sent.activities == relay.activities
    with db.session() as session:
        activities = views.activities_json(session)
    assert [a["id"] for a in activities] == relay.activities
