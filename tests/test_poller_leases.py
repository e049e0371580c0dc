"""The poller keeps its leases (B7): renewals never wait behind capture work on the database
thread, and the workers of a mailbox that is lost, or whose renewal runs late, are told to stop at
once and all together, a third of a lease period before another node may take the row.

In-process, with stand-in workers (no IMAP server), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from cryptography.fernet import Fernet

from crm.config import Config
from crm.face import admin
from crm.mailboxes.leases import LeaseKeeper, lease_owners
from crm.store.db import Database
from crm.store.secrets import SecretBox
from proxy.imap import poller as poller_module
from proxy.imap.poller import GUARD_S, Poller
from proxy.imap.worker import MailboxWorker
from tests.pollerkit import until

LEASE = 1.5
GOODBYE_S = 0.4  # how long a stand-in worker takes to end after being told to stop


class StandInWorker:
    """Runs until told to stop, notes when, then takes a while to say goodbye."""

    stopped: ClassVar[dict[int, float]] = {}

    def __init__(self, _ctx: Any, plan: Any) -> None:
        self.plan = plan
        self.stop = asyncio.Event()
        self.grace = 2.0

    async def run(self) -> None:
        await self.stop.wait()
        StandInWorker.stopped[self.plan.id] = time.monotonic()
        await asyncio.sleep(GOODBYE_S)

    def update(self, plan: Any) -> None:
        self.plan = plan

    def request_push(self, _folders: set[str]) -> None:
        return None


@pytest.fixture
def poller(db: Database, monkeypatch: pytest.MonkeyPatch) -> Poller:
    """Node ``a`` over four company mailboxes, with stand-in workers."""
    monkeypatch.setattr(poller_module, "MailboxWorker", StandInWorker)
    StandInWorker.stopped = {}
    key = Fernet.generate_key()
    with db.session() as session:
        for n in range(4):
            settings = admin.MailboxSettings(imap_host="imap.invalid", password="pw")
            admin.add_mailbox(session, SecretBox(key), f"box{n}@ourco.example", None, settings)
    config = Config(database_url=db.url, secret_key=key.decode())
    config.cluster.node_name, config.cluster.lease_seconds = "a", LEASE
    config.poller.refresh_s, config.poller.push_check_s = 0.2, 0.1
    return Poller(config, db)


@contextlib.asynccontextmanager
async def running(poller: Poller) -> AsyncIterator[None]:
    """The poller's loop until the block ends, with every mailbox's worker started."""
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        await until(lambda: len(poller.workers) == 4, timeout=20, what="four workers")
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def node_alive(db: Database, name: str) -> AsyncIterator[None]:
    """Another node heartbeating (it takes nothing) until the block ends."""
    keeper = LeaseKeeper(db, name, LEASE)

    async def beat() -> None:
        while True:
            await asyncio.to_thread(keeper.heartbeat)
            await asyncio.sleep(LEASE / 5)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_renewals_do_not_wait_for_the_database_thread(poller: Poller) -> None:
    async with running(poller):
        mine = poller.keeper.owned()
        busy = asyncio.ensure_future(poller.ctx.run(time.sleep, 2.5 * LEASE))  # a long import
        seen = []
        while not busy.done():
            seen.append(poller.keeper.owned())
            await asyncio.sleep(0.05)
        assert len(mine) == 4 and set(seen) == {mine}, "the leases lapsed while captures ran"
        assert StandInWorker.stopped == {}


async def test_lost_mailboxes_stop_at_once_and_together(poller: Poller, db: Database) -> None:
    async with running(poller):
        busy = asyncio.ensure_future(poller.ctx.run(time.sleep, 2 * LEASE))
        joined = time.monotonic()
        await asyncio.to_thread(LeaseKeeper(db, "b", LEASE).heartbeat)  # half must go to b
        await until(lambda: len(StandInWorker.stopped) == 2, timeout=LEASE, what="two stopped")
        assert not busy.done(), "the stops waited for the database thread"
        told = sorted(StandInWorker.stopped.values())
        await busy
    assert told[1] - told[0] < GUARD_S, f"stopped one after the other: {told}"
    assert told[1] - joined < LEASE / 3 + GUARD_S + 0.3


async def test_a_late_renewal_stops_the_workers_before_the_deadline(poller: Poller) -> None:
    claim, hang = poller.keeper.claim, threading.Event()
    started: list[float] = []

    def stuck_claim() -> frozenset[int]:  # the database stops answering the lease thread
        if started:
            hang.wait(4 * LEASE)
            return poller.keeper.owned()
        started.append(time.monotonic())
        return claim()

    async with running(poller):
        poller.keeper.claim = stuck_claim  # type: ignore[method-assign]
        try:
            await until(lambda: len(StandInWorker.stopped) == 4, timeout=3 * LEASE, what="stops")
            latest = max(StandInWorker.stopped.values())
        finally:
            hang.set()
    deadline = started[0] + LEASE  # the local deadline of the last renewal that worked
    assert latest < deadline - LEASE / 3 + GUARD_S + 0.1, (latest - started[0], deadline)


async def test_a_worker_waiting_on_the_database_ends_before_its_row_can_expire(
    poller: Poller, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stuck(self: MailboxWorker) -> float:  # a session queued on the busy database thread
        await self.ctx.run(time.sleep, 3 * LEASE)
        return 60.0

    monkeypatch.setattr(poller_module, "MailboxWorker", MailboxWorker)
    monkeypatch.setattr(MailboxWorker, "_session", stuck)
    async with running(poller), node_alive(db, "b"):  # half must go to b
        tasks = {box: task for box, (_worker, task) in poller.workers.items()}
        while sum(task.done() for task in tasks.values()) < 2:
            await asyncio.sleep(0.02)
        owners = await asyncio.to_thread(lease_owners, db)
    ended = [box for box, task in tasks.items() if task.done()]
    assert all(owners.get(box) == "a" for box in ended), "the row expired before the worker ended"
