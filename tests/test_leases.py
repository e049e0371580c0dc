"""Mailbox leases (B7): one node per mailbox, an even spread, and takeover when a node dies.

The in-process tests run on SQLite and PostgreSQL and move time by expiring rows with SQL; the
cluster test runs two keeper processes on the real PostgreSQL, kills one with SIGKILL, and checks
from their own records that no two nodes ever believed they held the same mailbox at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from crm.mailboxes.leases import LeaseKeeper, lease_owners
from crm.store.db import Database
from crm.store.models import Lease, Mailbox, Node

PAST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
Samples = list[tuple[float, frozenset[int]]]


def add_mailboxes(db: Database, count: int, linked: bool = True, start: int = 0) -> list[int]:
    """``count`` company mailboxes; their ids."""
    with db.session() as session:
        boxes = [
            Mailbox(address=f"box{start + i}@example.com", kind="company", linked=linked)
            for i in range(count)
        ]
        session.add_all(boxes)
        session.flush()
        return [b.id for b in boxes]


def expire(db: Database, node: str, keep: frozenset[int] = frozenset()) -> None:
    """Let time pass for ``node``: its rows outside ``keep`` expire."""
    with db.session() as session:
        session.execute(
            update(Lease)
            .where(Lease.node == node, Lease.mailbox_id.not_in(keep))
            .values(expires_at=PAST)
        )


def kill_node(db: Database, node: str) -> None:
    """``node`` stopped heartbeating long ago and its leases lapsed."""
    expire(db, node)
    with db.session() as session:
        session.execute(update(Node).where(Node.name == node).values(last_seen=PAST))


def test_one_node_owns_every_linked_mailbox(db: Database) -> None:
    linked = add_mailboxes(db, 10)
    add_mailboxes(db, 2, linked=False, start=10)
    keeper = LeaseKeeper(db, "a", lease_seconds=30)
    assert keeper.claim() == frozenset(linked)
    assert keeper.owned() == frozenset(linked)
    assert lease_owners(db) == dict.fromkeys(linked, "a")
    assert keeper.claim() == frozenset(linked)  # renewal keeps them
    keeper.release_all()
    assert keeper.owned() == frozenset()
    assert lease_owners(db) == {}


def test_unlinking_a_mailbox_releases_its_lease(db: Database) -> None:
    ids = add_mailboxes(db, 3)
    keeper = LeaseKeeper(db, "a")
    keeper.claim()
    with db.session() as session:
        session.execute(update(Mailbox).where(Mailbox.id == ids[0]).values(linked=False))
    assert keeper.claim() == frozenset(ids[1:])
    assert ids[0] not in lease_owners(db)


def test_a_second_node_gets_half_after_the_handoff(db: Database) -> None:
    ids = add_mailboxes(db, 100)
    a, b = LeaseKeeper(db, "a"), LeaseKeeper(db, "b")
    assert len(a.claim()) == 100
    assert b.claim() == frozenset()  # nothing is free yet
    kept = a.claim()  # two live nodes: a keeps its share and stops renewing the rest
    assert len(kept) == 50 and a.owned() == kept
    assert b.claim() == frozenset()  # the surplus is still leased to a until it expires
    expire(db, "a", keep=kept)
    taken = b.claim()
    assert len(taken) == 50 and not taken & kept and taken | kept == set(ids)
    assert a.claim() == kept and b.claim() == taken  # stable once spread
    owners = lease_owners(db)
    assert sorted(owners) == sorted(ids)
    assert sorted(owners.values()).count("a") == 50


def test_the_survivor_takes_a_dead_nodes_mailboxes(db: Database) -> None:
    ids = add_mailboxes(db, 10)
    a, b = LeaseKeeper(db, "a"), LeaseKeeper(db, "b")
    a.claim()
    b.claim()
    expire(db, "a", keep=a.claim())
    assert len(b.claim()) == 5
    kill_node(db, "a")
    assert b.claim() == frozenset(ids)


def test_an_uneven_count_spreads_within_one(db: Database) -> None:
    add_mailboxes(db, 7)
    keepers = [LeaseKeeper(db, name) for name in ("a", "b", "c")]
    for keeper in keepers:
        keeper.heartbeat()
    for _ in range(2):
        for keeper in keepers:
            expire(db, keeper.node, keep=keeper.claim())
    sizes = sorted(len(k.claim()) for k in keepers)
    assert sizes == [2, 2, 3]


def test_owned_forgets_leases_past_their_local_deadline(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    add_mailboxes(db, 2)
    keeper = LeaseKeeper(db, "a", lease_seconds=0.2)
    assert len(keeper.claim()) == 2
    time.sleep(0.3)
    assert keeper.owned() == frozenset()  # without a renewal nothing may be synced
    db.dispose()


async def test_watch_yields_ownership_and_releases_on_stop(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    ids = add_mailboxes(db, 4)
    keeper, stop = LeaseKeeper(db, "a"), asyncio.Event()
    async for mine in keeper.watch(stop):
        assert mine == frozenset(ids)
        stop.set()
    assert lease_owners(db) == {}
    db.dispose()


def test_lease_seconds_must_be_positive(sqlite_url: str) -> None:
    with pytest.raises(ValueError):
        LeaseKeeper(Database(sqlite_url, migrate=False), "a", lease_seconds=0)


# --- two processes on the real PostgreSQL ---------------------------------------------------

LEASE = 3.0


def run_node(url: str, name: str, lease: float, log_path: str) -> None:
    """A node: claims every lease/3 and writes ``monotonic-time id id ...`` every 50 ms."""
    keeper = LeaseKeeper(Database(url, migrate=False), name, lease)
    next_claim = 0.0
    with open(log_path, "a", encoding="ascii") as log:
        while True:
            if time.monotonic() >= next_claim:
                next_claim = time.monotonic() + keeper.renew_interval
                with contextlib.suppress(SQLAlchemyError):
                    keeper.claim()
            now = time.monotonic()  # taken before owned(): the belief holds at this instant
            log.write(f"{now:.4f} {' '.join(map(str, sorted(keeper.owned())))}\n")
            log.flush()
            time.sleep(0.05)


def read_samples(path: Path) -> Samples:
    lines = path.read_text(encoding="ascii").split("\n")[:-1]  # the last one may be cut
    samples: Samples = []
    for line in lines:
        parts = line.split()
        samples.append((float(parts[0]), frozenset(int(p) for p in parts[1:])))
    return samples


def last(path: Path) -> frozenset[int]:
    samples = read_samples(path) if path.exists() else []
    return samples[-1][1] if samples else frozenset()


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, tick: Callable[[], None]
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting ({timeout:.0f} s) for {what}")
        tick()
        time.sleep(0.05)


def intervals(samples: Samples, box: int) -> list[tuple[float, float]]:
    """The spans of consecutive samples in which a node held ``box``."""
    spans: list[tuple[float, float]] = []
    start: float | None = None
    prev = 0.0
    for when, owned in samples:
        if box in owned and start is None:
            start = when
        elif box not in owned and start is not None:
            spans.append((start, prev))
            start = None
        prev = when
    if start is not None:
        spans.append((start, prev))
    return spans


def assert_never_shared(a: Samples, b: Samples, boxes: list[int]) -> None:
    for box in boxes:
        for a_start, a_end in intervals(a, box):
            for b_start, b_end in intervals(b, box):
                assert a_end < b_start or b_end < a_start, (box, (a_start, a_end), (b_start, b_end))


@pytest.fixture
def spawn() -> Iterator[Callable[..., multiprocessing.process.BaseProcess]]:
    ctx = multiprocessing.get_context("spawn")
    started: list[multiprocessing.process.BaseProcess] = []

    def start(*args: object) -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=run_node, args=args, daemon=True)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_processes_share_and_take_over(
    db_url: str, tmp_path: Path, spawn: Callable[..., multiprocessing.process.BaseProcess]
) -> None:
    db = Database(db_url)
    boxes = add_mailboxes(db, 100)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    db_samples: list[dict[int, str]] = []

    def sample_db() -> None:
        db_samples.append(lease_owners(db))

    node_a = spawn(db_url, "node-a", LEASE, str(log_a))
    wait_for(lambda: len(last(log_a)) == 100, 60, "node a to own all 100", sample_db)
    spawn(db_url, "node-b", LEASE, str(log_b))

    def spread() -> bool:
        a, b = last(log_a), last(log_b)
        return abs(len(a) - len(b)) <= 1 and not a & b and len(a | b) == 100

    wait_for(spread, 60, "an even spread over two nodes", sample_db)
    steady = time.monotonic() + 2 * LEASE
    wait_for(lambda: time.monotonic() > steady, 60, "two lease periods", sample_db)
    assert spread(), (len(last(log_a)), len(last(log_b)))
    owners = lease_owners(db)
    assert sorted(owners) == boxes
    assert abs(list(owners.values()).count("node-a") - 50) <= 1

    node_a.kill()  # SIGKILL: no release, no goodbye
    killed_at = time.monotonic()
    wait_for(lambda: len(last(log_b)) == 100, 60, "node b to own all 100", sample_db)
    taken_at = next(t for t, owned in read_samples(log_b) if t > killed_at and len(owned) == 100)
    print(f"takeover after SIGKILL: {taken_at - killed_at:.2f} s (lease {LEASE:.0f} s)")
    assert taken_at - killed_at < 2 * LEASE, f"takeover took {taken_at - killed_at:.1f} s"
    assert set(lease_owners(db).values()) == {"node-b"}

    assert_never_shared(read_samples(log_a), read_samples(log_b), boxes)
    assert db_samples and all(set(s) <= set(boxes) for s in db_samples)
    assert any(set(s.values()) == {"node-a", "node-b"} for s in db_samples)
    db.dispose()
