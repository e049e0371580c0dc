"""Capture from several threads at once (the poller's ``db_threads`` on PostgreSQL, or several
nodes): the round robin stays exact, a message is never captured twice, a sender never becomes
two leads. On SQLite (one writer: the threads take turns) and PostgreSQL (they really overlap).
"""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography.fernet import Fernet

from crm.capture.path import Capturer, Incoming, Location
from crm.face import admin
from crm.store.db import Database
from crm.store.models import Direction
from crm.store.secrets import SecretBox
from tests.pollerkit import message
from tests.test_bad_input import crm_state

QUEUE = ["ann@example.com", "ben@example.com", "cy@example.com"]
BOXES = ["sales@example.com", "info@example.com"]
THREADS = 4


def _company_mailboxes(db: Database) -> None:
    with db.session() as session:
        for user in QUEUE:
            admin.add_user(session, user)
        box = SecretBox(Fernet.generate_key())
        for address in BOXES:
            settings = admin.MailboxSettings(since="all", queue=QUEUE)
            admin.add_mailbox(session, box, address, None, settings)


def _items(raws: list[tuple[str, bytes]], folder_uid: int) -> list[Incoming]:
    return [
        Incoming(
            raw,
            mailbox,
            Direction.INCOMING,
            source=f"{mailbox}/{n}",
            location=Location("INBOX", folder_uid, n),
        )
        for n, (mailbox, raw) in enumerate(raws, start=1)
    ]


def _in_threads(capturers: list[Capturer], offered: list[tuple[str, bytes]]) -> list[Any]:
    """Each mailbox's messages on two threads, in batches of 5 (as the poller's lanes do, one
    mailbox per batch): batches of different mailboxes overlap, those of one take turns."""
    lanes: list[list[tuple[str, bytes]]] = [[] for _ in capturers]
    for n, (mailbox, raw) in enumerate(offered):
        lanes[2 * BOXES.index(mailbox) + n % 2].append((mailbox, raw))

    def run(n: int) -> list[Any]:
        items = _items(lanes[n], 100 + n)
        return [
            r for k in range(0, len(items), 5) for r in capturers[n].capture_many(items[k : k + 5])
        ]

    with ThreadPoolExecutor(len(capturers)) as pool:
        return [r for lane in pool.map(run, range(len(capturers))) for r in lane]


def test_threads_capturing_at_once_keep_the_round_robin_and_dedup_exact(db: Database) -> None:
    _company_mailboxes(db)
    # 60 strangers write to sales@, 10 of them twice; 30 others to info@; every message is
    # offered twice (two locations, one Message-ID), in a shuffled order over the threads
    sales = [
        message(f"S {n} <s{n}@client{n}.example>", BOXES[0], f"enquiry {n}") for n in range(60)
    ]
    again = [message(f"S {n} <s{n}@client{n}.example>", BOXES[0], f"again {n}") for n in range(10)]
    info = [message(f"T {n} <t{n}@other{n}.example>", BOXES[1], f"question {n}") for n in range(30)]
    offered = [(BOXES[0], raw) for raw in sales + again] + [(BOXES[1], raw) for raw in info]
    offered = offered * 2
    random.Random(19).shuffle(offered)
    results = _in_threads(capturers=[Capturer(db) for _ in range(THREADS)], offered=offered)
    actions = Counter(r.action for r in results)
    assert actions["captured"] + actions["duplicate"] == len(offered)
    state = crm_state(db)
    assert len(state["activities"]) == 100
    leads = state["leads"]
    expected = [f"s{n}@client{n}.example" for n in range(60)]
    expected += [f"t{n}@other{n}.example" for n in range(30)]
    assert sorted(email for lead in leads for email in lead["emails"]) == sorted(expected)
    # each company mailbox hands its new leads round robin: 60 + 30 leads over 3 people
    assert Counter(lead["responsible"] for lead in leads) == {user: 30 for user in QUEUE}


def test_one_message_to_two_mailboxes_captured_at_once_is_one_activity(db: Database) -> None:
    """Copies of one message (To: sales@, Cc: info@) reach both mailboxes' threads at once."""
    _company_mailboxes(db)
    copies = [
        message(
            f"C {n} <c{n}@copied{n}.example>", BOXES[0], f"both {n}", extra=f"Cc: {BOXES[1]}\r\n"
        )
        for n in range(40)
    ]
    offered = [(box, raw) for raw in copies for box in BOXES]
    results = _in_threads(capturers=[Capturer(db) for _ in range(THREADS)], offered=offered)
    assert Counter(r.action for r in results) == {"captured": 40, "duplicate": 40}
    state = crm_state(db)
    assert len(state["activities"]) == 40
    assert sorted(email for lead in state["leads"] for email in lead["emails"]) == sorted(
        f"c{n}@copied{n}.example" for n in range(40)
    )


def test_batches_naming_several_mailboxes_in_any_order_do_not_deadlock(db: Database) -> None:
    """The spool worker's batches hold mail for many mailboxes, and several nodes take batches at
    once: each locks its mailboxes' rows; in different orders they deadlocked on PostgreSQL."""
    _company_mailboxes(db)
    mails = [
        (BOXES[n % 2], message(f"M {n} <m{n}@mixed{n}.example>", BOXES[n % 2], f"mixed {n}"))
        for n in range(80)
    ]
    random.Random(7).shuffle(mails)
    capturers = [Capturer(db) for _ in range(THREADS)]

    def run(n: int) -> list[Any]:
        part = _items(mails[n::THREADS], 200 + n)
        # every batch names both mailboxes, in the order its messages come
        return [
            r for k in range(0, len(part), 4) for r in capturers[n].capture_many(part[k : k + 4])
        ]

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for lane in pool.map(run, range(THREADS)) for r in lane]
    assert Counter(r.action for r in results) == {"captured": 80}
    leads = crm_state(db)["leads"]
    assert len(leads) == 80
    # 40 new leads in each mailbox, round robin from the first of the queue: 14, 13, 13 each
    assert Counter(lead["responsible"] for lead in leads) == dict(
        zip(QUEUE, (28, 26, 26), strict=True)
    )
