"""Unit tests of the poller's pure pieces: modified UTF-7, response parsing, sequence sets,
UID windows, backoff and throttling hints, and the T1-T3/M4 schedule."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging

import pytest

from crm.config import PollerConfig
from crm.vocab import is_loopback
from proxy.imap import utf7
from proxy.imap.backoff import Backoff, throttle_hint
from proxy.imap.client import Endpoint
from proxy.imap.flags import change_windows
from proxy.imap.importer import found_at_linking, imap_date, uid_windows
from proxy.imap.parse import (
    FetchRecord,
    compact,
    parse_fetch,
    parse_list,
    parse_search,
    parse_select,
    parse_vanished,
)
from proxy.imap.plan import MailboxPlan
from proxy.imap.schedule import mode_for

NOW = dt.datetime(2026, 5, 4, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("readable", "wire"),
    [
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("A&B", "A&-B"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
        ("a😀b", "a&2D3eAA-b"),
    ],
)
def test_modified_utf7_round_trip(readable: str, wire: str) -> None:
    assert utf7.encode(readable) == wire
    assert utf7.decode(wire) == readable


def test_invalid_modified_utf7_is_kept_verbatim() -> None:
    assert utf7.decode("bad&!!!-name") == "bad&!!!-name"
    assert utf7.decode("open&end") == "open&end"


def test_sequence_sets() -> None:
    assert compact([9, 1, 2, 3, 7, 10, 2]) == "1:3,7,9:10"
    assert compact([]) == ""
    assert parse_vanished(b"VANISHED (EARLIER) 41,45:43") == [(41, 41), (43, 45)]
    assert parse_vanished(b"VANISHED 1:4000000000") == [(1, 4000000000)]
    assert parse_vanished(b"EXISTS 3") == []


def test_fetch_records_with_literals_and_uid_after_the_body() -> None:
    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 5 FLAGS (\\Seen \\Recent) MODSEQ (12) BODY[] {5}",
        bytearray(b"hello"),
        b")",
        b"2 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {9}",
        bytearray(b"ID: <x>\r\n"),
        b" UID 6 FLAGS ())",
        b"3 FETCH (FLAGS (\\Answered))",
    ]
    first, second, third = parse_fetch(lines)
    assert (first.uid, first.seen, first.modseq, first.body) == (5, True, 12, b"hello")
    assert (second.uid, second.seen, second.header, second.body) == (6, False, b"ID: <x>\r\n", None)
    assert second.has_flags and not second.answered
    assert (third.uid, third.answered) == (None, True)


def test_fetch_command_knows_when_a_response_is_complete_as_upstream_does() -> None:
    """Our incremental "more data to come" test answers as aioimaplib's rescanning one."""
    import asyncio

    from aioimaplib import aioimaplib as aio

    from proxy.imap.protocol import FetchCommand

    lines: list[bytes | bytearray] = [
        b"1 FETCH (UID 5 FLAGS (\\Seen \\Recent) BODY[] {12}",
        bytearray(b"a ( b ((( c\r\n"),
        b")",
        b"2 FETCH (UID 6 BODY[HEADER.FIELDS (MESSAGE-ID)] {9}",
        bytearray(b"ID: <x>\r\n"),
        b" FLAGS ())",
        b"3 FETCH (FLAGS (\\Answered) UID 7)",
        b"4 FETCH (UID 8 BODY[] {3}",
        bytearray(b")))"),
        b" FLAGS (\\Seen",
        b"))",
    ]
    loop = asyncio.new_event_loop()
    try:
        ours = FetchCommand("A1", "1:8", "(UID FLAGS BODY.PEEK[])", prefix="UID", loop=loop)
        theirs = aio.FetchCommand("A1", "1:8", "(UID FLAGS BODY.PEEK[])", prefix="UID", loop=loop)
        answers = []
        for line in lines:
            ours.append_to_resp(line)
            theirs.append_to_resp(line)
            answers.append(ours.wait_data())
            assert ours.wait_data() == theirs.wait_data(), line
    finally:
        loop.close()
    assert answers == [True, True, False, True, True, False, False, True, True, True, False]


def test_select_list_and_search_responses() -> None:
    info = parse_select(
        [
            b"FLAGS (\\Answered \\Seen)",
            b"3 EXISTS",
            b"OK [UIDVALIDITY 3857529045] UIDs valid",
            b"OK [UIDNEXT 4392] Predicted next UID",
            b"OK [HIGHESTMODSEQ 90060115205545359] Highest",
            b"[READ-ONLY] Select completed.",
        ]
    )
    assert (info.exists, info.uidvalidity, info.uidnext) == (3, 3857529045, 4392)
    assert info.highest_modseq == 90060115205545359 and info.read_only
    entries = parse_list(
        [
            b'(\\HasNoChildren \\Sent) "/" Sent',
            b'(\\Noselect) "/" "Archiv &- Alt"',
            b'() "." {18}',
            bytearray(b'Entw&APw-rfe "Neu"'),
            b"List completed.",
        ]
    )
    assert [(e.name, e.delimiter, e.selectable) for e in entries] == [
        ("Sent", "/", True),
        ("Archiv & Alt", "/", False),
        ('Entwürfe "Neu"', ".", True),
    ]
    assert "\\sent" in entries[0].attributes
    assert parse_search([b"4 5 9 (MODSEQ 917162500)", b"Search completed."]) == [4, 5, 9]
    assert parse_search([b"", b"Search completed."]) == []


def test_uid_and_change_windows() -> None:
    assert list(uid_windows(1, 10, 4)) == [(1, 4), (5, 8), (9, 10)]
    assert list(uid_windows(11, 10, 4)) == []
    windows = list(change_windows(list(range(1, 1001, 2)), 1000, 200))
    assert windows[0][0] == 1 and windows[-1][1] == 1000
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(windows))
    for low, high in windows:
        assert len([u for u in range(1, 1001, 2) if low <= u <= high]) <= 200
    assert list(change_windows([], 50, 200)) == [(1, 50)]
    assert imap_date(dt.datetime(2024, 3, 7, tzinfo=dt.UTC)) == "07-Mar-2024"


def test_backoff_grows_with_jitter_and_honours_hints() -> None:
    backoff = Backoff(2.0, 60.0, rand=lambda: 1.0)
    assert [backoff.next() for _ in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    backoff.reset()
    low = Backoff(2.0, 60.0, rand=lambda: 0.0)
    assert low.next() == 1.0
    assert backoff.next(hint=300.0) == 300.0
    assert backoff.next(floor=120.0) == 120.0
    assert throttle_hint("NO [UNAVAILABLE] Server busy") == 60.0
    assert throttle_hint("BYE Too many connections, try again in 5 minutes") == 300.0
    assert throttle_hint("NO [AUTHENTICATIONFAILED] Authentication failed.") is None


def test_plaintext_only_on_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("imap.example.com") and not is_loopback("10.0.0.1")
    endpoint = Endpoint("imap.example.com", 993, "ssl", "a", "b")
    assert endpoint.ssl_context().check_hostname


def _plan(**changes: object) -> MailboxPlan:
    values: dict[str, object] = {
        "id": 1,
        "address": "a@example.com",
        "kind": "personal",
        "linked": True,
        "owner_ok": True,
        "owner_active_at": None,
        "linked_at": NOW - dt.timedelta(days=30),
        "since": "3d",
        "folders": (),
        "interval_s": None,
        "endpoint": None,
        "smtp": None,
        "problem": None,
    }
    values.update(changes)
    return MailboxPlan(**values)  # type: ignore[arg-type]


def test_schedule_t1_t3_and_company_intervals() -> None:
    config = PollerConfig()
    active = mode_for(_plan(owner_active_at=NOW - dt.timedelta(hours=1)), NOW, config)
    assert (active.check, active.interval_s, active.idle) == (True, 600, True)
    inactive = mode_for(_plan(owner_active_at=NOW - dt.timedelta(days=2)), NOW, config)
    assert (inactive.check, inactive.interval_s, inactive.idle) == (True, 86400, False)
    linked_now = mode_for(_plan(linked_at=NOW - dt.timedelta(minutes=5)), NOW, config)
    assert linked_now.interval_s == 600
    assert not mode_for(_plan(linked=False), NOW, config).check
    assert not mode_for(_plan(owner_ok=False), NOW, config).check
    company = mode_for(_plan(kind="company", interval_s=120, owner_ok=False), NOW, config)
    assert (company.check, company.interval_s, company.idle) == (True, 120, True)
    assert mode_for(_plan(kind="company"), NOW, config).interval_s == 600
    window = _plan(linked_at=NOW).window_start(NOW)
    assert window == NOW - dt.timedelta(days=3)
    assert _plan(since="all").window_start(NOW) is None


def test_a_duplicate_that_raced_is_captured_again_for_its_location(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A capture that raced is rolled back to its savepoint; store_batch still records its
    location, captures the rest of the batch, and only then moves the checkpoint."""
    from cryptography.fernet import Fernet

    from crm.capture.path import Capturer
    from crm.face import admin
    from crm.mailboxes import sync
    from crm.store.db import Database
    from crm.store.models import Direction
    from crm.store.secrets import SecretBox
    from proxy.imap.importer import store_batch
    from proxy.imap.parse import FetchRecord
    from proxy.imap.plan import FolderPlan
    from tests.pollerkit import message
    from tests.test_capture_batch import stale_reads

    db = Database(sqlite_url)
    with db.session() as s:
        admin.add_user(s, "me@example.com")
        settings = admin.MailboxSettings(password="x", since="all")
        box = admin.add_mailbox(s, SecretBox(Fernet.generate_key()), "me@example.com",
                                "me@example.com", settings)  # fmt: skip
        box_id = box.id
    raw = message("Ann <ann@acme.example>", "me@example.com", "hello")
    other = Capturer(db).capture(raw, "me@example.com", Direction.INCOMING)  # the relay, say
    early = stale_reads(monkeypatch, other.message_key, 1)  # looked before the other's commit
    later = message("Bo <bo@beta.example>", "me@example.com", "hi")
    records = [FetchRecord(seq=1, uid=7, body=raw), FetchRecord(seq=2, uid=8, body=later)]
    plan = _plan(id=box_id, address="me@example.com", since="all")
    stats = store_batch(Capturer(db), plan, FolderPlan("INBOX", Direction.INCOMING), 5, records, 8)
    assert (stats.captured, stats.duplicate, stats.skipped) == (1, 1, 0)
    assert not early
    assert sync.recorded(db, box_id, "INBOX", 5, [7, 8]) == {7, 8}
    assert sync.load_checkpoint(db, box_id, "INBOX") == sync.Checkpoint(5, 8, 0)
    db.dispose()


def test_mail_arriving_in_the_second_of_linking_is_live_not_history() -> None:
    """INTERNALDATE has whole seconds: a message stamped with the second of linking may have come
    after it, so the import window never applies to it (it is captured, not lost)."""
    linked = dt.datetime(2026, 5, 4, 12, 0, 7, 640_000, tzinfo=dt.UTC)
    plan = _plan(linked_at=linked)

    def arrived(at: dt.datetime) -> FetchRecord:
        record = FetchRecord(seq=1, uid=9)
        record.internaldate = at
        return record

    assert found_at_linking(plan, arrived(linked - dt.timedelta(seconds=1)))
    assert not found_at_linking(plan, arrived(linked.replace(microsecond=0)))
    assert not found_at_linking(plan, arrived(linked + dt.timedelta(seconds=1)))
    assert found_at_linking(_plan(linked_at=None), arrived(linked))


async def test_unsolicited_vanished_is_logged_at_debug_and_still_observed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from proxy.imap.protocol import Protocol

    class Owner:
        def __init__(self) -> None:
            self.seen: list[bytes] = []

        def connection_lost(self, exc: Exception | None) -> None:
            pass

        def observe(self, line: bytes) -> None:
            self.seen.append(line)

    owner = Owner()
    protocol = Protocol(asyncio.get_running_loop(), owner)
    caplog.set_level(logging.DEBUG)
    protocol.data_received(b"* VANISHED 41:43\r\n* 12 EXISTS\r\n")
    assert owner.seen == [b"VANISHED 41:43", b"12 EXISTS"]
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert loud == [], [r.getMessage() for r in loud]
    quiet = [r.getMessage() for r in caplog.records if "VANISHED 41:43" in r.getMessage()]
    assert quiet and all(r.levelno == logging.DEBUG for r in caplog.records)
