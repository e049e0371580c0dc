"""Hand-over requests on mailbox leases (B7): a foreground import asks, the holder lets go.

Keeper-level tests on SQLite and PostgreSQL move time by rewriting rows with SQL; the poller test
runs the real :class:`~proxy.imap.poller.Poller` with stand-in workers (as ``test_poller_leases``)
and checks that a row is let go only after the mailbox's worker ended and the capture thread
drained.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, ClassVar

import pytest
from sqlalchemy import select, update

from crm.mailboxes.handover import ForegroundLease, import_node, is_import_node
from crm.mailboxes.leases import LeaseKeeper, lease_owners
from crm.store.db import Database
from crm.store.models import Lease
from proxy.imap import poller as poller_module
from proxy.imap.context import PollerContext
from proxy.imap.poller import Poller
from tests.pollerkit import until
from tests.test_leases import PAST, add_mailboxes, expire
from tests.test_poller_leases import LEASE, StandInWorker, poller, running

__all__ = ["poller"]
IMPORT = "host/import-1"


def request_of(db: Database, box: int) -> str | None:
    with db.session() as session:
        return session.scalar(select(Lease.requested_by).where(Lease.mailbox_id == box))


def test_import_node_names() -> None:
    assert import_node("host-7", 42) == "host-7/import-42"
    assert is_import_node("host-7/import-42") and not is_import_node("host-7")


def test_the_holder_hands_over_and_takes_back_after_the_import(db: Database) -> None:
    box, other = add_mailboxes(db, 2)
    serve, imp = LeaseKeeper(db, "host"), ForegroundLease(db, IMPORT)
    assert serve.claim() == {box, other}
    assert imp.take(box) == "host", "asked, but the row is still the holder's"
    assert request_of(db, box) == IMPORT
    assert serve.claim() == {other}, "the holder drops it at its next claim"
    assert serve.owned() == {other} and serve.asked == {box: IMPORT}
    assert imp.take(box) == "host", "not expired, not let go yet"
    serve.hand_over([box])  # its worker ended
    assert serve.asked == {} and lease_owners(db) == {other: "host"}
    assert serve.claim() == {other}, "not taken back while the request lives"
    assert imp.take(box) is None
    assert serve.claim() == {other} and imp.take(box) is None, "renewed"
    imp.release_all()
    assert request_of(db, box) is None and lease_owners(db) == {other: "host"}
    assert serve.claim() == {box, other}


def test_without_a_hand_over_the_import_waits_for_expiry(db: Database) -> None:
    (box,) = add_mailboxes(db, 1)
    serve, imp = LeaseKeeper(db, "host"), ForegroundLease(db, IMPORT)
    serve.claim()
    assert imp.take(box) == "host"
    assert serve.claim() == frozenset()
    expire(db, "host")
    assert serve.claim() == frozenset(), "a lapsed row asked for is not taken back"
    assert imp.take(box) is None


def test_hand_over_leaves_alone_what_is_held_again_or_no_longer_asked(db: Database) -> None:
    (box,) = add_mailboxes(db, 1)
    serve, imp = LeaseKeeper(db, "host"), ForegroundLease(db, IMPORT)
    serve.claim()
    imp.take(box)
    serve.claim()
    with db.session() as session:  # the import died: its request lapsed
        session.execute(update(Lease).values(requested_until=PAST))
    serve.hand_over([box])
    assert lease_owners(db) == {box: "host"}, "no request alive: the row lapses as usual"
    expire(db, "host")
    assert serve.claim() == {box}
    imp.take(box)  # a new import asks while the mailbox is held again
    serve.hand_over([box])
    assert lease_owners(db) == {box: "host"}, "held again: let go only after the next claim"


def test_a_second_import_finds_the_first_in_the_way(db: Database) -> None:
    (box,) = add_mailboxes(db, 1)
    serve = LeaseKeeper(db, "host")
    first, second = ForegroundLease(db, IMPORT), ForegroundLease(db, "host/import-2")
    serve.claim()
    assert first.take(box) == "host"
    assert second.take(box) == IMPORT, "the first request is alive"
    serve.claim()
    expire(db, "host")
    assert second.take(box) == IMPORT, "the free row is the first asker's"
    assert first.take(box) is None
    assert second.take(box) == IMPORT
    first.release_all()
    assert second.take(box) is None


def test_a_foreground_lease_is_never_taken_by_a_serve_node(db: Database) -> None:
    (box,) = add_mailboxes(db, 1)
    foreground, serve = ForegroundLease(db, IMPORT), LeaseKeeper(db, "host")
    assert foreground.take(box) is None
    assert serve.claim() == frozenset()
    assert foreground.take(box) is None, "renewal"
    expire(db, IMPORT)
    assert serve.claim() == frozenset(), "lapsed, but the request lives"
    foreground.release_all()
    assert serve.claim() == {box}
    assert foreground.take(box) == "host"


def test_shares_are_kept_and_nobody_takes_the_asked_row(db: Database) -> None:
    boxes = add_mailboxes(db, 4)
    a, b, imp = LeaseKeeper(db, "a"), LeaseKeeper(db, "b"), ForegroundLease(db, IMPORT)
    a.heartbeat()
    b.heartbeat()
    for _ in range(2):
        for keeper in (a, b):
            expire(db, keeper.node, keep=keeper.claim())
    mine_a, mine_b = a.claim(), b.claim()
    assert len(mine_a) == len(mine_b) == 2
    asked = min(mine_a)
    imp.take(asked)
    assert a.claim() == mine_a - {asked}
    expire(db, "a", keep=mine_a - {asked})
    assert a.claim() == mine_a - {asked} and b.claim() == mine_b, "the lapsed row stays free"
    assert imp.take(asked) is None
    imp.release_all()
    assert a.claim() == mine_a and b.claim() == mine_b
    assert sorted(lease_owners(db)) == boxes


class LeavingWorker(StandInWorker):
    """Ends at once when told to stop, leaving a batch behind on the capture thread."""

    stored: ClassVar[dict[int, float]] = {}
    grace = 2.0

    def __init__(self, ctx: PollerContext, plan: Any) -> None:
        super().__init__(ctx, plan)
        self.ctx = ctx
        self.left: asyncio.Future[None] | None = None

    async def run(self) -> None:
        await self.stop.wait()
        StandInWorker.stopped[self.plan.id] = time.monotonic()
        box = self.plan.id

        def batch() -> None:
            time.sleep(LEASE / 2)
            LeavingWorker.stored[box] = time.monotonic()

        self.left = asyncio.ensure_future(self.ctx.run(batch))


async def test_the_poller_lets_go_after_the_worker_ended_and_the_thread_drained(
    poller: Poller, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller_module, "MailboxWorker", LeavingWorker)
    imp = ForegroundLease(db, "a/import-1", LEASE)
    async with running(poller):
        box = min(poller.workers)
        assert await asyncio.to_thread(imp.take, box) == "a"
        await until(lambda: box not in lease_owners(db), timeout=3 * LEASE, every=0.02)
        let_go = time.monotonic()
        stored = LeavingWorker.stored.get(box, math.inf)
        assert let_go >= stored, "let go before the worker's last batch was stored"
        assert let_go - StandInWorker.stopped[box] < LEASE, "waited for expiry instead"
        assert await asyncio.to_thread(imp.take, box) is None
        for _ in range(3):  # claims come and go: the mailbox stays with the import
            await asyncio.sleep(LEASE / 3)
            assert box not in poller.workers and await asyncio.to_thread(imp.take, box) is None
        assert set(StandInWorker.stopped) == {box}, "the other mailboxes' workers ran on"
        await asyncio.to_thread(imp.release_all)
        await until(lambda: box in poller.workers, timeout=2 * LEASE, what="taken back")
