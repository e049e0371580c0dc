"""``Capturer.capture_many`` (the poller's batches): one transaction, as if one per message.

A message the database refuses rolls back only itself (the batch is done again with a SAVEPOINT
per message); one that raced with another writer is rolled back and captured again as a duplicate
with its location; any other error rolls the whole batch back. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import event, func, select
from sqlalchemy.exc import DataError

import crm.capture.batch
import crm.capture.path
import crm.mail.message
from crm.capture.batch import Batch
from crm.capture.path import Capturer, Incoming, Location
from crm.capture.records import apply_decision
from crm.face import admin
from crm.store.db import Database
from crm.store.lookups import existing_activities, existing_activity
from crm.store.models import Activity, ActivityBinding, DavChange, Direction, MessageLocation
from crm.store.secrets import SecretBox
from tests.pollerkit import message
from tests.test_bad_input import SALES, capturer, crm_state

__all__ = ["capturer"]  # the fixture
IN = Direction.INCOMING


def _batch(*subjects: str) -> list[Incoming]:
    return [
        Incoming(
            message(f"Sender {n} <s{n}@client{n}.example>", SALES, subject),
            SALES,
            IN,
            source=subject,
            location=Location("INBOX", 9, n),
        )
        for n, subject in enumerate(subjects, start=1)
    ]


def stale_reads(monkeypatch: pytest.MonkeyPatch, key: str | None, times: int) -> list[int]:
    """The next ``times`` reads of whether ``key`` is captured answer no (as if made before
    another writer committed it): the straight batch's read for all its messages
    (:mod:`crm.capture.batch`) and a message's own (a savepoint each); the reads left."""
    left = [1] * times

    def one(conn: Any, wanted: str) -> list[int]:
        if left and wanted == key:
            left.pop()
            return []
        return existing_activity(conn, wanted)

    def many(conn: Any, keys: Any) -> dict[str, list[int]]:
        found = existing_activities(conn, keys)
        if left and key in found:
            left.pop()
            del found[key]
        return found

    monkeypatch.setattr(crm.capture.path, "_existing_activity", one)
    monkeypatch.setattr(crm.capture.batch, "existing_activities", many)
    return left


def fail_in_batch(monkeypatch: pytest.MonkeyPatch, subject: str, error: Exception) -> None:
    """The message ``subject`` fails once written: in a straight batch when the batch writes
    its activities (the database refuses one of them), in a savepoint run as its own."""
    real_flush = Batch.flush

    def flush(batch: Batch) -> None:
        doomed = any(p.row["subject"] == subject for p in batch._pending.values())
        real_flush(batch)
        if doomed:
            raise error

    def apply(conn: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        made = apply_decision(conn, msg, *args, **kwargs)  # its lead and activity are written...
        if msg.subject == subject:  # ... then it fails
            raise error
        return made

    monkeypatch.setattr(Batch, "flush", flush)
    monkeypatch.setattr(crm.capture.path, "apply_decision", apply)


def _locations(db: Database) -> dict[int, int | None]:
    with db.session() as s:
        rows = s.execute(select(MessageLocation.uid, MessageLocation.activity_id))
        return {uid: activity for uid, activity in rows}


def test_a_batch_is_captured_in_order_with_its_locations(capturer: Capturer, db: Database) -> None:
    results = capturer.capture_many(_batch("one", "two", "three"))
    assert [r.action for r in results] == ["captured"] * 3
    assert _locations(db) == {n: r.activities[0] for n, r in enumerate(results, start=1)}
    assert len(crm_state(db)["leads"]) == 3


def test_the_round_robin_goes_on_through_a_batch_and_after_it(db: Database) -> None:
    """The mailbox row is read once per batch: the queue cursor it carries must still move."""
    queue = ["ann@example.com", "ben@example.com", "cy@example.com"]
    with db.session() as session:
        for user in queue:
            admin.add_user(session, user)
        settings = admin.MailboxSettings(since="all", queue=queue)
        admin.add_mailbox(session, SecretBox(Fernet.generate_key()), SALES, None, settings)
    capturer = Capturer(db)
    capturer.capture_many(_batch("one", "two", "three", "four"))
    capturer.capture(message("Eve <eve@five.example>", SALES, "five"), SALES, IN)
    owners = {lead["emails"][0]: lead["responsible"] for lead in crm_state(db)["leads"]}
    assert [owners[f"s{n}@client{n}.example"] for n in (1, 2, 3, 4)] == queue + queue[:1]
    assert owners["eve@five.example"] == queue[1]


def test_a_refused_message_rolls_back_only_itself(
    capturer: Capturer, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_in_batch(
        monkeypatch, "two", DataError("INSERT ...", {}, Exception("value too long for type"))
    )
    results = capturer.capture_many(_batch("one", "two", "three"))
    assert [r.action for r in results] == ["captured", "skipped", "captured"]
    assert results[1].reason == "cannot store: value too long for type"
    assert sorted(_locations(db)) == [1, 3]
    state = crm_state(db)
    assert sorted(a["subject"] for a in state["activities"]) == ["one", "three"]
    emails = sorted(e for lead in state["leads"] for e in lead["emails"])
    assert emails == ["s1@client1.example", "s3@client3.example"]


def test_a_race_in_a_batch_is_captured_again_with_its_location(
    capturer: Capturer,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = _batch("one", "two", "three")
    other = Capturer(db).capture(batch[1].raw, SALES, IN)  # another writer committed "two"...
    assert other.action == "captured"
    # ... after this batch had looked for it: straight through, then in a savepoint
    stale = stale_reads(monkeypatch, other.message_key, 2)
    caplog.set_level(logging.INFO, "crm.capture")
    results = capturer.capture_many(batch)
    assert "capture of a batch of 3 again, a savepoint each" in caplog.text
    assert "raced with another writer (try 1)" in caplog.text
    assert [r.action for r in results] == ["captured", "duplicate", "captured"]
    assert not stale
    assert results[1].activities == other.activities
    assert _locations(db)[2] == other.activities[0]
    assert len(crm_state(db)["activities"]) == 3
    assert len(crm_state(db)["leads"]) == 3


def test_any_other_error_rolls_the_whole_batch_back(
    capturer: Capturer, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_in_batch(monkeypatch, "two", OSError("disk full"))
    with pytest.raises(OSError):
        capturer.capture_many(_batch("one", "two", "three"))
    assert crm_state(db) == {"leads": [], "contacts": [], "companies": [], "activities": []}
    assert _locations(db) == {}
    monkeypatch.undo()
    assert [r.action for r in capturer.capture_many(_batch("one", "two"))] == ["captured"] * 2
    with db.session() as s:
        assert len(s.scalars(select(Activity.id)).all()) == 2


def test_a_batch_parsed_ahead_is_captured_as_one_parsed_in_the_transaction(
    capturer: Capturer, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller parses a batch on its parse thread (``prepare``) before the transaction: the
    transaction then parses nothing, and what it does is the same, also for a message that does
    not parse (skipped with its reason) and a duplicate."""
    broken = Incoming(b"\xff" * 10, SALES, IN, source="broken", location=Location("INBOX", 9, 9))
    items = [*_batch("one", "two"), broken]
    prepared = capturer.prepare(items)
    assert [i.parsed is not None for i in prepared] == [True, True, False]
    parsed_in_transaction: list[bytes] = []
    original = crm.mail.message.parse_message

    def counting(raw: bytes, *args: Any) -> Any:
        parsed_in_transaction.append(raw)
        return original(raw, *args)

    monkeypatch.setattr("crm.capture.path.parse_message", counting)
    results = capturer.capture_many([*prepared, prepared[0]])  # the last one twice
    assert parsed_in_transaction == [broken.raw]  # only the one that did not parse ahead
    assert [r.action for r in results] == ["captured", "captured", "skipped", "duplicate"]
    assert results[2].reason == capturer.capture(broken.raw, SALES, IN).reason
    assert _locations(db) == {1: results[0].activities[0], 2: results[1].activities[0]}


def test_then_runs_in_the_last_transaction_of_the_batch(capturer: Capturer, db: Database) -> None:
    """The poller's checkpoint moves in the commit of the captures it covers: ``then`` sees them
    uncommitted in its transaction, and a failure in it rolls them back with it."""

    def fail(conn: Any, results: Any) -> None:
        raise RuntimeError("the checkpoint could not move")

    with pytest.raises(RuntimeError):
        capturer.capture_many(_batch("one", "two"), then=fail)
    assert _locations(db) == {}
    seen: list[int | None] = []
    count = select(func.count()).select_from(MessageLocation)
    results = capturer.capture_many(
        _batch(*(f"m{n}" for n in range(20))), then=lambda conn, _: seen.append(conn.scalar(count))
    )
    assert seen == [20]  # after every capture of the batch (SQLite: its last slice of 16)
    assert len(_locations(db)) == 20 and [r.action for r in results] == ["captured"] * 20


def _item(raw: bytes, uid: int, direction: Direction = IN) -> Incoming:
    return Incoming(raw, SALES, direction, source=f"uid {uid}", location=Location("INBOX", 9, uid))


def test_a_batch_sees_what_its_earlier_messages_made(capturer: Capturer, db: Database) -> None:
    """Within one batch, as if each message had its own transaction: a sender made a lead by
    an earlier message is known (no second lead), a domain's company is made once, a reply
    takes the thread of its original, a copy is a duplicate of the activity made earlier (its
    location too), and a reply sent marks the original answered."""
    ann, bob = "Ann <ann@acme.example>", "Bob <bob@acme.example>"
    first = message(ann, SALES, "offer", msgid="<m1@acme.example>")
    reply = "In-Reply-To: <m1@acme.example>\r\nReferences: <m1@acme.example>\r\n"
    items = [
        _item(first, 1),
        _item(message(bob, SALES, "also"), 2),
        _item(message(ann, SALES, "again"), 3),
        _item(message(ann, SALES, "Re: offer", extra=reply), 4),
        _item(first, 5),  # the same message again (another folder's copy, say)
        _item(message(f"Sales <{SALES}>", ann, "Re: offer", extra=reply), 6, Direction.OUTGOING),
    ]
    results = capturer.capture_many(capturer.prepare(items))
    assert [r.action for r in results] == ["captured"] * 4 + ["duplicate", "captured"]
    assert results[4].activities == results[0].activities
    assert _locations(db) == {n: r.activities[0] for n, r in enumerate(results, start=1)}
    state = crm_state(db)
    assert sorted(e for lead in state["leads"] for e in lead["emails"]) == [
        "ann@acme.example",
        "bob@acme.example",
    ]
    assert [c["domain"] for c in state["companies"]] == ["acme.example"]
    with db.session() as s:
        rows = {a.id: a for a in s.scalars(select(Activity))}
        first_row = rows[results[0].activities[0]]
        assert first_row.answered
        assert rows[results[3].activities[0]].thread == first_row.thread
        assert rows[results[5].activities[0]].thread == first_row.thread
        bindings = s.execute(select(ActivityBinding.activity_id, ActivityBinding.entity_id))
        leads_of = {a: e for a, e in bindings}
    assert leads_of[results[0].activities[0]] == leads_of[results[2].activities[0]]


def test_a_batch_reads_and_writes_once_for_all_its_messages(
    capturer: Capturer, db: Database
) -> None:
    """The statements of a batch do not grow with its messages (their reads are made once for
    the batch, their activities, bindings and locations written together): a batch of 12 new
    messages from known senders costs what a batch of 4 does."""
    senders = [f"Sender {n} <s{n}@client{n}.example>" for n in range(12)]
    capturer.capture_many([_item(message(s, SALES, "hello"), n) for n, s in enumerate(senders)])
    capturer.staff.seconds = capturer.extras.seconds = 3600.0  # no cache refresh in between
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    def batch_of(size: int, first_uid: int) -> int:
        items = [
            _item(message(s, SALES, f"again {first_uid}"), first_uid + n)
            for n, s in enumerate(senders[:size])
        ]
        statements.clear()
        results = capturer.capture_many(capturer.prepare(items))
        assert [r.action for r in results] == ["captured"] * size
        return len(statements)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        four, twelve = batch_of(4, 100), batch_of(12, 200)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert twelve == four, statements
    assert len(_locations(db)) == 12 + 4 + 12


def test_a_batch_logs_what_it_made_for_dav_in_one_straight_run(
    capturer: Capturer, db: Database
) -> None:
    """New leads with a company and without one (free mail, B5) in one batch: it runs straight
    through (no SAVEPOINT: before, a lead without a company made the change log's sort fail and
    every such batch fell back to one savepoint per message) and the DAV change log names each
    new lead, company and activity."""
    senders = ["Ann <ann@acme.example>", "Eve <eve@gmail.com>", "Bob <bob@beta.example>"]
    items = [_item(message(s, SALES, "hello"), n) for n, s in enumerate(senders, start=1)]
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        results = capturer.capture_many(capturer.prepare(items))
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert [r.action for r in results] == ["captured"] * 3
    assert not [s for s in statements if "SAVEPOINT" in s.upper()], statements
    made = {
        (kind, eid) for r in results for kind, ids in r.created.as_json().items() for eid in ids
    }
    made |= {("activities", a) for r in results for a in r.activities}
    with db.session() as s:
        logged = {(k, e) for k, e in s.execute(select(DavChange.entity_type, DavChange.entity_id))}
    wanted = {(kind.rstrip("s").replace("companie", "company").replace("activitie", "activity"),
               eid) for kind, eid in made}  # fmt: skip
    assert wanted <= logged, (wanted, logged)
    assert {kind for kind, _ in wanted} == {"lead", "company", "activity"}
