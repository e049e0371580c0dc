"""The capture spool (B1, C9): table entries, file fallback, the worker, exactly-once capture."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from crm.capture.path import Capturer
from crm.config import Config, RelayConfig
from crm.errors import ConfigError
from crm.spool import files as filespool
from crm.spool import queue as spool
from crm.spool import runner
from crm.spool import worker as spoolworker
from crm.spool.files import FileSpool
from crm.spool.journal import Journal
from crm.spool.queue import Envelope
from crm.spool.worker import SpoolWorker
from crm.store.db import Database
from crm.store.models import Activity, Direction, SpoolEntry
from tests.conftest import Cli
from tests.relaykit import eventually, message

OWNER = "anna@ourco.example"


@pytest.fixture
def linked(cli: Cli) -> str:
    """A linked personal mailbox to capture into."""
    cli.ok("user", "add", OWNER)
    cli.ok(
        "mailbox",
        "add",
        OWNER,
        "--owner",
        OWNER,
        "--smtp-host",
        "smtp.ourco.example",
        "--imap-host",
        "imap.ourco.example",
        "--password-stdin",
        input="pw\n",
    )
    return OWNER


def _env(to: str) -> Envelope:
    return Envelope(OWNER, OWNER, [to])


def _customer() -> str:
    return f"c{uuid.uuid4().hex[:8]}@customer.example"


def _states(db: Database) -> list[tuple[str, bool, int]]:
    with db.session() as session:
        rows = session.execute(
            select(SpoolEntry.state, SpoolEntry.delivered, SpoolEntry.attempts).order_by(
                SpoolEntry.id
            )
        )
        return [(s, d, a) for s, d, a in rows]


def test_only_delivered_entries_are_captured(db: Database, linked: str, tmp_path: Path) -> None:
    to = _customer()
    spool.enqueue_many(db, [(message(OWNER, to, "Delivered"), _env(to))])
    spool.enqueue(db, message(OWNER, to, "Not delivered"), _env(to), delivered=False)
    worker = SpoolWorker(db, FileSpool(tmp_path))
    assert worker.run_once() == 1
    assert _states(db) == [("done", True, 1), ("pending", False, 0)]
    with db.session() as session:
        activity = session.scalars(select(Activity)).one()
        assert activity.subject == "Delivered" and activity.counterparts == [to]
        raws = session.scalars(select(SpoolEntry.raw).order_by(SpoolEntry.id)).all()
        assert raws[0] == b""  # the bulk is dropped once captured


def _legacy_file(directory: Path, raw: bytes, env: Envelope, name: str) -> Path:
    """A version 1 spool file, as earlier versions wrote one per message."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = json.dumps(dataclasses.asdict(env)).encode()
    path = directory / name
    path.write_bytes(b"MAILCRM-SPOOL 1 " + meta + b"\n" + raw)
    return path


def test_journal_segments_are_published_and_imported(
    db: Database, linked: str, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    files, journal = FileSpool(directory), Journal(directory)
    first, second, third = _customer(), _customer(), _customer()
    batch = [(message(OWNER, to, f"Batch {to}"), _env(to)) for to in (first, second)]
    later = (message(OWNER, third, "Appended later"), _env(third))
    assert journal.append(batch) is False and journal.append([later]) is False
    [active] = directory.glob(".*.seg")
    assert files.paths() == [] and active.stat().st_mode & 0o777 == 0o600  # not published yet
    assert journal.publish() is True and not journal.waiting and not active.exists()
    [path] = files.paths()
    assert files.read(path) == [(env, raw) for raw, env in [*batch, later]]
    legacy_raw = message(OWNER, third, "Written by an earlier version")
    _legacy_file(directory, legacy_raw, _env(third), "20000101000000000000-old.msg")
    (directory / "20000101000000000001-junk.msg").write_bytes(b"not a spool file")
    worker = SpoolWorker(db, files)
    assert worker.run_once() == 8  # four imported from two files, four captured
    assert files.paths() == [] and len(list(directory.glob("*.bad"))) == 1
    assert _states(db) == [("done", True, 1)] * 4
    with db.session() as session:
        subjects = sorted(session.scalars(select(Activity.subject)))
    assert subjects == sorted(
        [f"Batch {first}", f"Batch {second}", "Appended later", "Written by an earlier version"]
    )


def test_a_segment_is_published_when_full_or_old(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=10_000)
    files = FileSpool(tmp_path)
    assert journal.append([(b"x" * 6000, _env("a@b.example"))]) is False
    assert journal.append([(b"y" * 6000, _env("c@d.example"))]) is True  # full: published
    assert len(files.paths()) == 1 and not journal.waiting
    journal.append([(b"z", _env("e@f.example"))])
    assert journal.publish(older_than=60) is False and journal.waiting  # too young
    assert journal.publish(older_than=0) is True and len(files.paths()) == 2


def test_a_segment_left_by_a_crash_is_recovered_without_its_cut_record(
    db: Database, linked: str, tmp_path: Path
) -> None:
    to = _customer()
    raw = message(OWNER, to, "Acknowledged before the crash")
    code = (
        "import sys; from pathlib import Path; from crm.spool.journal import Journal;"
        "from crm.spool.queue import Envelope;"
        f"j = Journal(Path({str(tmp_path)!r}));"
        f"j.append([({raw!r}, Envelope({OWNER!r}, {OWNER!r}, [{to!r}]))]);"
        f"j.append([(b'x' * 100, Envelope({OWNER!r}, {OWNER!r}, ['b@c.example']))]);"
        "import os; os._exit(0)"  # dies holding the active segment
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)
    [segment] = tmp_path.glob(".*.seg")
    segment.write_bytes(segment.read_bytes()[:-40])  # the second append cut short by the crash
    files = FileSpool(tmp_path)
    held = Journal(tmp_path)
    held.append([(b"live", _env("d@e.example"))])  # a live writer's segment: left alone
    assert files.recover(min_age=60) == 0  # too young to judge
    assert files.recover(min_age=0) == 1
    [path] = files.paths()
    assert files.read(path) == [(Envelope(OWNER, OWNER, [to]), raw)]
    assert len(list(tmp_path.glob(".*.seg"))) == 1  # the live one
    assert SpoolWorker(db, files).run_once() == 2
    with db.session() as session:
        assert session.scalars(select(Activity.subject)).all() == ["Acknowledged before the crash"]


def _orphan(directory: Path, subject: str) -> None:
    """A journal segment a crashed relay left: unlocked, two minutes old, one whole record."""
    to = _customer()
    path = directory / f".20260101000000000000-{uuid.uuid4().hex}{filespool.SEGMENT_SUFFIX}"
    records = filespool.encode_records([(message(OWNER, to, subject), _env(to))])
    path.write_bytes(filespool.MAGIC_BATCH + b"".join(records))
    os.utime(path, (time.time() - 120, time.time() - 120))


def test_the_worker_publishes_what_a_crashed_relay_left(
    db: Database, linked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = SpoolWorker(db, FileSpool(tmp_path))
    _orphan(tmp_path, "Left by a crash")
    assert worker.run_once() == 2  # looked for at once: imported and captured
    _orphan(tmp_path, "Left by another crash")
    assert worker.run_once() == 0  # the next look comes RECOVER_EVERY seconds later
    monkeypatch.setattr(spoolworker, "RECOVER_EVERY", 0.0)
    assert worker.run_once() == 2
    with db.session() as session:
        subjects = sorted(session.scalars(select(Activity.subject)))
    assert subjects == ["Left by a crash", "Left by another crash"]


def test_cut_batch_file_is_moved_aside(db: Database, tmp_path: Path) -> None:
    journal, files = Journal(tmp_path), FileSpool(tmp_path)
    journal.append([(b"x" * 100, _env("a@b.example")), (b"y", _env("c@d.example"))])
    journal.publish()
    [path] = files.paths()
    path.write_bytes(path.read_bytes()[:-50])
    assert SpoolWorker(db, files).run_once() == 0
    assert files.paths() == [] and path.with_suffix(".bad").exists()


def test_hidden_copies_left_by_an_earlier_version_are_purged(db: Database, tmp_path: Path) -> None:
    files = FileSpool(tmp_path)
    old = _legacy_file(tmp_path, b"old", _env("a@b.example"), ".1-old.msg.tmp")
    new = _legacy_file(tmp_path, b"new", _env("a@b.example"), ".2-new.msg.tmp")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    SpoolWorker(db, files).purge()
    assert not old.exists() and new.exists()


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", True), ("files", True), ("database", False)]
)
def test_spool_first_setting(db: Database, choice: str, expected: bool) -> None:
    config = Config(relay=RelayConfig(spool_first=choice))
    sqlite = db.engine.dialect.name == "sqlite"
    assert spool.files_first(config, db) is (expected if choice != "auto" else sqlite)


def test_spool_first_refuses_unknown_values(db: Database) -> None:
    with pytest.raises(ConfigError, match="spool_first"):
        spool.files_first(Config(relay=RelayConfig(spool_first="disk")), db)


def test_missing_mailbox_waits_for_the_link(
    db: Database, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spoolworker, "RETRY_BASE", 0.2)
    to = _customer()
    entry = spool.enqueue(db, message(OWNER, to, "Before the link"), _env(to))
    worker = SpoolWorker(db, FileSpool(tmp_path))
    worker.run_once()
    assert _states(db) == [("pending", True, 1)]
    worker.run_once()  # not retried before its time
    assert _states(db) == [("pending", True, 1)]
    cli.ok("user", "add", OWNER)
    cli.ok("mailbox", "add", OWNER, "--owner", OWNER, "--password-stdin", input="pw\n")
    deadline = dt.datetime.now() + dt.timedelta(seconds=10)
    while _states(db)[0][0] == "pending" and dt.datetime.now() < deadline:
        worker.run_once()
    assert _states(db) == [("done", True, 2)] and entry


def test_a_batch_with_an_unlinked_mailbox_is_captured_entry_by_entry(
    db: Database, linked: str, tmp_path: Path
) -> None:
    stranger = "nobody@ourco.example"  # no mailbox yet: that entry waits, the others go on
    sent = [_customer() for _ in range(4)]
    for i, to in enumerate(sent):
        env = _env(to) if i != 2 else Envelope(stranger, stranger, [to])
        spool.enqueue(db, message(OWNER if i != 2 else stranger, to, f"Batch {i}"), env)
    results = SpoolWorker(db, FileSpool(tmp_path)).capture_batch()
    assert [r.action for r in results] == ["captured", "captured", "skipped", "captured"]
    assert _states(db) == [("done", True, 1)] * 2 + [("pending", True, 1), ("done", True, 1)]
    with db.session() as session:
        subjects = session.scalars(select(Activity.subject).order_by(Activity.id)).all()
    assert subjects == ["Batch 0", "Batch 1", "Batch 3"]


def test_small_entries_are_captured_together(
    db: Database, linked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = SpoolWorker(db, FileSpool(tmp_path))
    calls: list[int] = []
    many = worker.capturer.capture_many

    def counted(items: Any) -> Any:
        calls.append(len(items))
        return many(items)

    monkeypatch.setattr(worker.capturer, "capture_many", counted)
    monkeypatch.setattr(spoolworker, "TOGETHER_BYTES", 20_000)
    big = message(OWNER, _customer(), "Big", body=("x" * 70 + "\r\n") * 430)
    for i in range(3):
        spool.enqueue(db, message(OWNER, _customer(), f"Small {i}"), _env("a@b.example"))
    spool.enqueue(db, big, _env("a@b.example"))
    results = worker.capture_batch()
    assert [r.action for r in results] == ["captured"] * 4
    assert calls == [3]  # the three small ones in one call, the big one on its own
    assert [s for s, _, _ in _states(db)] == ["done"] * 4


def test_failing_capture_is_retried_then_given_up(
    db: Database, linked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spoolworker, "RETRY_BASE", 0.0)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("pipeline bug")

    to = _customer()
    spool.enqueue(db, message(OWNER, to, "Poison"), _env(to), delivered=True)
    worker = SpoolWorker(db, FileSpool(tmp_path))
    monkeypatch.setattr(worker.capturer, "capture", broken)
    for _ in range(spoolworker.MAX_ATTEMPTS):
        worker.run_once()
    assert _states(db) == [("failed", True, spoolworker.MAX_ATTEMPTS)]


def test_undelivered_leftovers_are_purged(db: Database, linked: str, tmp_path: Path) -> None:
    to = _customer()
    old = spool.enqueue(db, message(OWNER, to, "Old"), _env(to), delivered=False)
    spool.enqueue(db, message(OWNER, to, "In flight"), _env(to), delivered=False)
    with db.session() as session:
        session.execute(
            update(SpoolEntry)
            .where(SpoolEntry.id == old)
            .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
        )
    SpoolWorker(db, FileSpool(tmp_path)).purge()
    assert _states(db) == [("pending", False, 0)]


def _slow(capture: Any) -> Any:
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.02)
        return capture(*args, **kwargs)

    return slow


@pytest.mark.postgres
def test_several_workers_capture_each_entry_once(db_url: str, linked: str, tmp_path: Path) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several workers share one PostgreSQL; SQLite has one worker")
    db = Database(db_url)
    for i in range(40):
        to = _customer()
        spool.enqueue(db, message(OWNER, to, f"Entry {i}"), _env(to), delivered=True)
    workers = [SpoolWorker(Database(db_url), FileSpool(tmp_path)) for _ in range(4)]
    for worker in workers:  # captures that take a while, so the workers surely overlap
        worker.capturer.capture = _slow(worker.capturer.capture)  # type: ignore[method-assign]
    done: list[int] = []

    def drain(worker: SpoolWorker) -> None:
        done.append(worker.run_once(batch=100))

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(done) == 40 and sum(1 for n in done if n) > 1  # shared, and nothing twice
    assert _states(db) == [("done", True, 1)] * 40
    with db.session() as session:
        assert len(session.scalars(select(Activity.id)).all()) == 40
    for worker in workers:
        worker.db.dispose()
    db.dispose()


async def test_worker_component_wakes_on_kick(
    db: Database, linked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config(
        database_url=db.url, relay=RelayConfig(spool_dir=str(tmp_path), spool_poll_interval=60.0)
    )
    idle, pause = asyncio.Event(), runner._sleep

    async def watched(stop: asyncio.Event, wake: asyncio.Event, delay: float) -> None:
        if delay >= 60.0:  # the worker is idle: its next poll is a minute away
            idle.set()
        await pause(stop, wake, delay)

    monkeypatch.setattr(runner, "_sleep", watched)
    stop, wakeup = asyncio.Event(), spool.Wakeup()
    task = asyncio.create_task(runner.run_spool_worker(config, db, stop, wakeup=wakeup))
    await asyncio.wait_for(idle.wait(), 60)
    to = _customer()
    await asyncio.to_thread(spool.enqueue, db, message(OWNER, to, "Kicked"), _env(to), True)
    spool.Wakeup().kick()  # another process's wake-up: not this worker's
    await asyncio.sleep(0.5)
    assert _states(db) == [("pending", True, 0)]
    wakeup.kick()
    await eventually(lambda: _states(db) == [("done", True, 1)], timeout=60)
    stop.set()
    await asyncio.wait_for(task, 5)


def test_serve_gives_the_relay_and_the_worker_one_wakeup() -> None:
    """``mailcrm serve`` hands its spool wake-up to the components that take one: the relay
    (which kicks it after a delivery) and the spool worker (which listens), nobody else."""
    from proxy.serve import COMPONENTS, _load, _shared_for

    wakeup = spool.Wakeup()
    takers = {
        name
        for name, target in COMPONENTS
        if _shared_for(_load(target), {"wakeup": wakeup}) == {"wakeup": wakeup}
    }
    assert takers == {"spool", "relay"}


def test_capturer_dedups_a_repeat(db: Database, linked: str, tmp_path: Path) -> None:
    """After a crash between capture and marking, the entry is taken again: nothing new."""
    to = _customer()
    raw = message(OWNER, to, "Twice")
    Capturer(db).capture(raw, OWNER, Direction.OUTGOING, envelope_to=[to])
    spool.enqueue(db, raw, _env(to), delivered=True)
    result = SpoolWorker(db, FileSpool(tmp_path)).capture_next()
    assert result is not None and result.action == "duplicate"
    with db.session() as session:
        assert len(session.scalars(select(Activity.id)).all()) == 1


async def test_worker_captures_in_process_when_its_child_keeps_dying(
    db: Database, linked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def dead(_self: Any, _purge: bool) -> tuple[int, str]:
        return 0, runner._ChildRunner.DIED

    monkeypatch.setattr(runner._ChildRunner, "run", dead)
    config = Config(
        database_url=db.url, relay=RelayConfig(spool_dir=str(tmp_path), spool_poll_interval=0.05)
    )
    to = _customer()
    spool.enqueue(db, message(OWNER, to, "Captured anyway"), _env(to))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run_spool_worker(config, db, stop))
    await eventually(lambda: _states(db) == [("done", True, 1)], timeout=10)
    stop.set()
    await asyncio.wait_for(task, 5)


_PARENT = """
import asyncio, multiprocessing, sys, time
from crm.spool import runner
from crm.config import Config, RelayConfig
config = Config(database_url=sys.argv[1], relay=RelayConfig(spool_dir=sys.argv[2]))
print(asyncio.run(runner._ChildRunner(config).run(False)), flush=True)
print(*(p.pid for p in multiprocessing.active_children()), flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_capture_process_ends_with_its_parent_even_on_kill_9(
    sqlite_url: str, tmp_path: Path
) -> None:
    """kill -9 of ``mailcrm serve`` leaves no capture process (and its helpers) behind."""
    Database(sqlite_url).dispose()
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, sqlite_url, str(tmp_path / "spool")],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    children: list[int] = []
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "(0, None)"  # one round ran in the child
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert children and not any(_gone(pid) for pid in children)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 15
        while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(pid) for pid in children), "orphans left running"
    finally:
        for pid in [parent.pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                if not _gone(pid):
                    os.kill(pid, signal.SIGKILL)
