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
from sqlalchemy import func, select
from sqlalchemy.exc import DataError

import crm.capture.path
import crm.mail.message
from crm.capture.path import Capturer, Incoming, Location
from crm.capture.records import apply_decision
from crm.face import admin
from crm.store.db import Database
from crm.store.lookups import existing_activity
from crm.store.models import Activity, Direction, MessageLocation
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
    def refuse_two(conn: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        made = apply_decision(conn, msg, *args, **kwargs)  # its lead and activity are written...
        if msg.subject == "two":  # ... then the database refuses a value
            raise DataError("INSERT ...", {}, Exception("value too long for type"))
        return made

    monkeypatch.setattr(crm.capture.path, "apply_decision", refuse_two)
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
    stale = [1, 2]  # ... after this batch had looked for it: straight through, then in a savepoint

    def read_too_early(conn: Any, key: str) -> list[int]:
        if stale and key == other.message_key:
            stale.pop()
            return []
        return existing_activity(conn, key)

    monkeypatch.setattr(crm.capture.path, "_existing_activity", read_too_early)
    caplog.set_level(logging.INFO, "crm.capture")
    results = capturer.capture_many(batch)
    assert "capture of a batch of 3 again, a savepoint each" in caplog.text
    assert "raced with another writer (try 1)" in caplog.text
    assert [r.action for r in results] == ["captured", "duplicate", "captured"]
    assert results[1].activities == other.activities
    assert _locations(db)[2] == other.activities[0]
    assert len(crm_state(db)["activities"]) == 3
    assert len(crm_state(db)["leads"]) == 3


def test_any_other_error_rolls_the_whole_batch_back(
    capturer: Capturer, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_on_two(conn: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        if msg.subject == "two":
            raise OSError("disk full")
        return apply_decision(conn, msg, *args, **kwargs)

    monkeypatch.setattr(crm.capture.path, "apply_decision", fail_on_two)
    with pytest.raises(OSError):
        capturer.capture_many(_batch("one", "two", "three"))
    assert crm_state(db) == {"leads": [], "contacts": [], "companies": [], "activities": []}
    assert _locations(db) == {}
    monkeypatch.setattr(crm.capture.path, "apply_decision", apply_decision)
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
