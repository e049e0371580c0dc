"""Bad input (issue 2): mail that is not valid MIME, has undecodable headers or odd charsets, a
2 MB header, no From, a date in the year 0, NUL bytes or a giant Message-ID is captured as well
as it can be or skipped with a logged reason, on SQLite and PostgreSQL; it never crashes the
capture path or the CLI batch, and never leaves a half-written transaction.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

import crm.capture.path
from crm.capture.path import Capturer, CaptureResult
from crm.capture.records import apply_decision
from crm.face import admin, views
from crm.store.db import Database
from crm.store.models import Direction
from crm.store.secrets import SecretBox
from tests.conftest import Cli

GOLDEN = Path(__file__).parent / "golden"
SALES, WINDOW, BOB = "sales@example.com", "window@example.com", "bob@example.com"
IN, OUT = Direction.INCOMING, Direction.OUTGOING
JSON = dict[str, Any]


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


@pytest.fixture
def capturer(db: Database) -> Capturer:
    """A company mailbox sales@ (all time), window@ (last 3 days) and an employee bob."""
    with db.session() as session:
        admin.add_user(session, BOB)
        box = SecretBox(Fernet.generate_key())
        admin.add_mailbox(session, box, SALES, None, admin.MailboxSettings(since="all"))
        admin.add_mailbox(session, box, WINDOW, None, admin.MailboxSettings(since="3d"))
    return Capturer(db)


def crm_state(db: Database) -> dict[str, list[JSON]]:
    """Everything a user can list."""
    with db.session() as session:
        return {
            "leads": views.leads_json(session),
            "contacts": views.contacts_json(session),
            "companies": views.companies_json(session),
            "activities": views.activities_json(session),
        }


def only_lead(db: Database) -> JSON:
    [lead] = crm_state(db)["leads"]
    return lead


def only_activity(db: Database) -> JSON:
    [activity] = crm_state(db)["activities"]
    return activity


# --- not a message at all ---------------------------------------------------------------------


NOT_MESSAGES = [
    ("BAD_not_mime.eml", golden("BAD_not_mime.eml"), "not an RFC 5322 message"),
    ("empty.eml", b"", "empty message"),
    ("blank.eml", b"\r\n\r\n  \n", "empty message"),
    (
        "image.png",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00",
        "not an RFC 5322 message",
    ),
]


def test_not_a_message_is_skipped_with_a_logged_reason(
    capturer: Capturer, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crm.capture")
    for source, raw, reason in NOT_MESSAGES:
        result = capturer.capture(raw, SALES, IN, source=source)
        assert result.action == "skipped", source
        assert result.reason is not None and reason in result.reason, (source, result.reason)
        logged = [r.getMessage() for r in caplog.records]
        assert any(source in m and reason in m for m in logged), (source, logged)
    assert crm_state(db) == {"leads": [], "contacts": [], "companies": [], "activities": []}


# --- captured as well as it can be ------------------------------------------------------------


def test_broken_mime_structure_is_captured_from_its_headers(
    capturer: Capturer, db: Database
) -> None:
    result = capturer.capture(golden("BAD_broken_mime.eml"), SALES, IN)
    assert result.action == "captured"
    lead = only_lead(db)
    assert (lead["name"], lead["emails"], lead["company"]) == (
        "Broken Mime",
        ["broken@mime-mess.com"],
        "Mime Mess",
    )
    assert only_activity(db)["subject"] == "Broken structure"


def test_raw_8bit_headers_are_decoded(capturer: Capturer, db: Database) -> None:
    result = capturer.capture(golden("BAD_undecodable_headers.eml"), SALES, IN)
    assert result.action == "captured"
    assert only_lead(db)["name"] == "Jörg Müller"
    assert only_activity(db)["subject"] == "Grüße aus Köln"


def test_odd_and_unknown_charsets(capturer: Capturer, db: Database) -> None:
    result = capturer.capture(golden("BAD_odd_charsets.eml"), SALES, IN)
    assert result.action == "captured"
    lead = only_lead(db)
    assert lead["emails"] == ["odette@odd-charsets.com"]
    assert lead["name"].startswith("Od") and lead["name"].endswith("tte")
    assert lead["name"].encode("utf-8")  # a real string: no lone surrogates
    subject = only_activity(db)["subject"]
    assert "にほんご" in subject and "Привет" in subject


def test_missing_from(capturer: Capturer, db: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="crm.capture")
    incoming = capturer.capture(golden("BAD_missing_from.eml"), SALES, IN, source="no-from.eml")
    assert (incoming.action, incoming.reason) == ("skipped", "no sender address")
    assert any("no-from.eml" in r.getMessage() for r in caplog.records)
    outgoing = capturer.capture(golden("BAD_missing_from.eml"), SALES, OUT)
    assert outgoing.action == "captured", "outgoing mail needs only its recipients"
    assert only_lead(db)["emails"] == ["nora@nowhere-inc.com"]


def test_from_without_a_usable_address(capturer: Capturer, db: Database) -> None:
    result = capturer.capture(golden("BAD_invalid_from_address.eml"), SALES, IN)
    assert (result.action, result.reason) == ("skipped", "no sender address")
    assert crm_state(db)["leads"] == []


def test_message_without_body(capturer: Capturer, db: Database) -> None:
    assert capturer.capture(golden("BAD_header_only.eml"), SALES, IN).action == "captured"
    assert only_activity(db)["subject"] == "No body at all"


def test_date_in_the_year_0_is_an_unknown_date(capturer: Capturer, db: Database) -> None:
    """Not "2000-01-01" (the stdlib's two-digit-year rule) and not outside the import window."""
    result = capturer.capture(golden("BAD_date_year_0.eml"), WINDOW, IN)
    assert result.action == "captured", result.reason
    date = only_activity(db)["date"]
    assert date is None or not date.startswith(("0000", "2000"))


def test_nul_bytes_in_headers(capturer: Capturer, db: Database) -> None:
    result = capturer.capture(golden("BAD_nul_in_headers.eml"), SALES, IN)
    assert result.action == "captured"
    lead, activity = only_lead(db), only_activity(db)
    assert lead["emails"] == ["nul@nul-bytes.com"]
    assert "\x00" not in lead["name"] and "\x00" not in activity["subject"]
    assert activity["subject"].startswith("NUL") and activity["subject"].endswith("inside")


def test_giant_message_id(
    capturer: Capturer, db: Database, request: pytest.FixtureRequest, db_url: str
) -> None:
    raw = golden("BAD_long_message_id.eml")
    first = capturer.capture(raw, SALES, IN)
    again = capturer.capture(raw, SALES, IN)
    assert (first.action, again.action) == ("captured", "duplicate")
    assert again.activities == first.activities
    assert only_lead(db)["emails"] == ["long@long-ids.com"]


# --- 2 MB headers -----------------------------------------------------------------------------

TWO_MB = 2 * 1024 * 1024


def head(n: int) -> bytes:
    """The ordinary headers of the n-th big message."""
    return (
        b"From: Big Header <big%d@big-headers.com>\r\n"
        b"To: sales@example.com\r\n"
        b"Message-ID: <big-%d@big-headers.com>\r\n"
        b"Date: Wed, 13 Mar 2024 12:00:00 +0000\r\n" % (n, n)
    )


def _subject(n: int) -> bytes:
    return head(n) + b"Subject: " + b"word " * (TWO_MB // 5) + b"\r\n\r\nbody\r\n"


def _one_line(n: int) -> bytes:
    return head(n) + b"Subject: one line\r\nX-Junk: " + b"a" * TWO_MB + b"\r\n\r\nbody\r\n"


def _folded(n: int) -> bytes:
    folded = b"\r\n ".join([b"w" * 70] * (TWO_MB // 72))
    return head(n) + b"Subject: folded\r\nX-Folded: " + folded + b"\r\n\r\nbody\r\n"


def _many(n: int) -> bytes:
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(TWO_MB // 100))
    return head(n) + b"Subject: many headers\r\n" + many + b"\r\nbody\r\n"


def _references(n: int) -> bytes:
    ids = b" ".join(b"<ref-%d@big-headers.com>" % i for i in range(TWO_MB // 24))
    return (
        head(n)
        + b"Subject: long thread\r\nIn-Reply-To: <ref-7@big-headers.com>\r\nReferences: "
        + ids
        + b"\r\n\r\nbody\r\n"
    )


def _cc(n: int) -> bytes:
    cc = b", ".join(b"Person %d <p%d@cc-crowd.com>" % (i, i) for i in range(TWO_MB // 34))
    return head(n) + b"Subject: crowded cc\r\nCc: " + cc + b"\r\n\r\nbody\r\n"


BIG = [
    (_subject, "word word"),
    (_one_line, "one line"),
    (_folded, "folded"),
    (_many, "many headers"),
    (_references, "long thread"),
    (_cc, "crowded cc"),
]


def test_2mb_headers_are_captured(capturer: Capturer, db: Database) -> None:
    activities: dict[int, int] = {}
    for n, (make, _subject_start) in enumerate(BIG, start=1):
        raw = make(n)
        assert len(raw) > TWO_MB
        result = capturer.capture(raw, SALES, IN, source=make.__name__)
        assert result.action == "captured", (make.__name__, result.reason)
        [activities[n]] = result.activities
    state = crm_state(db)
    assert len(state["leads"]) == len(BIG), "only the senders: the crowd in Cc is not a lead"
    for n, (make, subject) in enumerate(BIG, start=1):
        [activity] = [a for a in state["activities"] if a["id"] == activities[n]]
        assert activity["subject"].startswith(subject), make.__name__
        assert activity["message_id"] == f"big-{n}@big-headers.com", make.__name__
        [lead] = [x for x in state["leads"] if x["emails"] == [f"big{n}@big-headers.com"]]
        assert lead["name"] == "Big Header"
        assert activity["bindings"] == [{"type": "lead", "id": lead["id"]}]


# --- no half-written transaction --------------------------------------------------------------


def test_a_race_with_another_writer_leaves_nothing_half_written(
    capturer: Capturer, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes capture the same new message at once: the loser's lead must not remain."""
    first = capturer.capture(golden("C1_unknown_sender.eml"), SALES, IN)
    assert first.action == "captured"
    before = crm_state(db)
    # the second writer did its reads before the first one committed: it saw nothing
    monkeypatch.setattr(crm.capture.path, "_existing_activity", lambda session, key: [])
    monkeypatch.setattr(crm.capture.path, "known_entities", lambda session, addresses: {})
    second = Capturer(db).capture(golden("C1_unknown_sender.eml"), SALES, IN)
    assert second.action == "duplicate"
    assert crm_state(db) == before


def test_a_failure_while_writing_rolls_the_whole_message_back(
    capturer: Capturer, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = apply_decision

    def fail_after_writing(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)  # leads, companies and the activity are flushed ...
        raise OSError("disk full")  # ... then the database goes away

    monkeypatch.setattr(crm.capture.path, "apply_decision", fail_after_writing)
    try:
        result: CaptureResult | None = capturer.capture(
            golden("C2_outgoing_to_cc_bcc.eml"), SALES, OUT
        )
    except OSError:
        result = None
    assert result is None or result.action != "captured"
    assert crm_state(db) == {"leads": [], "contacts": [], "companies": [], "activities": []}
    monkeypatch.setattr(crm.capture.path, "apply_decision", real)
    assert capturer.capture(golden("C2_outgoing_to_cc_bcc.eml"), SALES, OUT).action == "captured"
    assert len(crm_state(db)["leads"]) == 3


# --- the CLI batch goes on --------------------------------------------------------------------


def cli_crm(cli: Cli) -> None:
    cli.ok("user", "add", BOB)
    cli.ok("mailbox", "add", SALES, "--company", "--since", "all")


def test_cli_batch_reports_bad_messages_and_goes_on(cli: Cli, tmp_path: Path) -> None:
    cli_crm(cli)
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.eml"
    batch = [
        str(GOLDEN / "BAD_not_mime.eml"),
        str(GOLDEN / "C1_unknown_sender.eml"),
        str(empty),
        str(GOLDEN / "BAD_undecodable_headers.eml"),
        str(missing),
        str(GOLDEN / "BAD_missing_from.eml"),
        str(GOLDEN / "B5_free_mail.eml"),
    ]
    results = cli.json("capture", *batch, "--mailbox", SALES, "--direction", "in")
    assert [r["source"] for r in results] == batch
    assert [r["action"] for r in results] == [
        "skipped",
        "captured",
        "skipped",
        "captured",
        "skipped",
        "skipped",
        "captured",
    ]
    reasons = [r["reason"] or "" for r in results]
    assert "not an RFC 5322 message" in reasons[0]
    assert "empty message" in reasons[2]
    assert "cannot read" in reasons[4]
    assert reasons[5] == "no sender address"
    emails = sorted(lead["emails"][0] for lead in cli.json("leads", "list"))
    assert emails == [
        "joerg@undecodable-headers.de",
        "maria.garcia@globex.com",
        "tom.baker@gmail.com",
    ]
    text = cli.ok("capture", *batch, "--mailbox", SALES, "--direction", "in")
    assert "0 captured, 3 duplicate, 4 skipped" in text


def test_cli_batch_goes_on_after_a_message_the_capture_path_cannot_store(cli: Cli) -> None:
    cli_crm(cli)
    batch = [
        str(GOLDEN / "C1_unknown_sender.eml"),
        str(GOLDEN / "BAD_odd_charsets.eml"),
        str(GOLDEN / "BAD_nul_in_headers.eml"),
        str(GOLDEN / "BAD_long_message_id.eml"),
        str(GOLDEN / "B5_free_mail.eml"),
    ]
    result = cli.run("capture", *batch, "--mailbox", SALES, "--direction", "in", "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    actions = [r["action"] for r in json.loads(result.stdout)]
    assert actions[0] == actions[-1] == "captured"
    assert all(a in ("captured", "skipped") for a in actions)
    emails = {lead["emails"][0] for lead in cli.json("leads", "list")}
    assert {"maria.garcia@globex.com", "tom.baker@gmail.com"} <= emails
