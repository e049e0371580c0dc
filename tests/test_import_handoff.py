"""``mailcrm mailbox import`` while ``mailcrm serve`` runs (B7): the serve node hands the mailbox
over and takes it back.

Role: integration tests on a real Dovecot with a real ``mailcrm serve`` process (poller only) on
SQLite and PostgreSQL. A trigger records every write to the lease row (``lease_history``, by the
database's order); the serve node's log says when its worker for the mailbox ran. Together they
show that the serve node's worker had ended before the import took the row and started again only
after the import let go. Counts come from the database; a killed import is given a bounded time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url

from crm.mailboxes.handover import ForegroundLease, is_import_node
from crm.store.db import Database
from crm.store.models import Lease
from tests.pollerkit import LEASE_S, ROOT, MailEnv
from tests.test_mailbox_import import env, fill, mailbox_id, owners, per_uid, spawn, wait_for

__all__ = ["env"]
pytestmark = pytest.mark.servers
SERVE = "serve-a"
HISTORY = {
    "postgresql": [
        "CREATE TABLE lease_history (id bigserial PRIMARY KEY, at timestamptz NOT NULL,"
        " mailbox_id integer, node text)",
        "CREATE FUNCTION lease_history() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO lease_history (at, mailbox_id, node)"
        " VALUES (clock_timestamp(), NEW.mailbox_id, NEW.node); RETURN NEW; END $$",
        "CREATE TRIGGER lease_history AFTER INSERT OR UPDATE ON leases"
        " FOR EACH ROW EXECUTE FUNCTION lease_history()",
    ],
    "sqlite": [
        "CREATE TABLE lease_history (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,"
        " mailbox_id INTEGER, node TEXT)",
        *(
            f"CREATE TRIGGER lease_history_{op} AFTER {op} ON leases BEGIN"
            " INSERT INTO lease_history (at, mailbox_id, node)"
            " VALUES (strftime('%Y-%m-%d %H:%M:%f', 'now'), NEW.mailbox_id, NEW.node); END"
            for op in ("insert", "update")
        ),
    ],
}
LOGGED = re.compile(r"^(\S+ \S+) INFO proxy\.poller: (stopped watching|watching) mailbox (\S+)$")


def record_lease_history(env: MailEnv) -> None:
    db = Database(env.url, migrate=False)
    try:
        with db.engine.begin() as conn:
            for statement in HISTORY[db.engine.dialect.name]:
                conn.exec_driver_sql(statement)
    finally:
        db.dispose()


def lease_history(env: MailEnv) -> list[tuple[dt.datetime, str | None]]:
    """(when, node) of every write to the mailbox's lease row, node changes only, in order."""
    db = Database(env.url, migrate=False)
    try:
        with db.session() as s:
            rows = s.execute(text("SELECT at, node FROM lease_history ORDER BY id")).all()
    finally:
        db.dispose()
    changes: list[tuple[dt.datetime, str | None]] = []
    for at, node in rows:
        when = at if isinstance(at, dt.datetime) else dt.datetime.fromisoformat(at)
        if not changes or changes[-1][1] != node:
            changes.append((when.replace(tzinfo=when.tzinfo or dt.UTC), node))
    return changes


def serve_spans(log: Path, address: str) -> list[tuple[dt.datetime, dt.datetime]]:
    """When the serve node's worker for ``address`` ran, from its log (ms, local time)."""
    spans: list[tuple[dt.datetime, dt.datetime]] = []
    started: dt.datetime | None = None
    for line in log.read_text().splitlines():
        found = LOGGED.match(line)
        if not found or found[3] != address:
            continue
        when = dt.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").astimezone(dt.UTC)
        if found[2] == "watching":
            started = when
        elif started is not None:
            spans.append((started, when + dt.timedelta(milliseconds=1)))
            started = None
    if started is not None:
        spans.append((started, dt.datetime.max.replace(tzinfo=dt.UTC)))
    return spans


@pytest.fixture
def serve(env: MailEnv, tmp_path: Path) -> Iterator[Path]:
    """``mailcrm -v serve`` (poller only, node ``serve-a``) until the test ends; its log."""
    config = env.config_path.read_text() + "\n[relay]\nenabled = false\n\n[http]\nenabled = false\n"
    env.config_path.write_text(config)
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import cli; cli.main()", "-v", "serve"],
            cwd=ROOT,
            env={**os.environ, **env.cli.env, "MAILCRM_NODE_NAME": SERVE},
            stdout=sink,
            stderr=sink,
        )
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serving(env: MailEnv, count: int, log: Path) -> None:
    """Wait until the serve node holds the mailbox and has captured ``count`` messages."""
    try:
        wait_for(lambda: owners(env).get(mailbox_id(env)) == SERVE, what="the serve node's lease")
        wait_for(lambda: env.count() == count, what=f"{count} captured by the serve node")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe serve node's log:\n{log.read_text()[-4000:]}") from None


def test_the_serve_node_hands_over_and_takes_back(
    env: MailEnv, serve: Path, tmp_path: Path
) -> None:
    env.link()
    fill(env, 200, days_ago=40)  # outside the serve node's 3d window: the import's
    fill(env, 20)
    record_lease_history(env)
    serving(env, 20, serve)
    out, err = tmp_path / "out", tmp_path / "err"
    job = spawn(env, "mailbox", "import", env.address, "--since", "all", "--json", out=out, err=err)
    try:
        assert job.wait(120) == 0, err.read_text()
    finally:
        if job.poll() is None:
            job.kill()
    assert f"asking node {SERVE} to hand over mailbox {env.address} ..." in err.read_text()
    assert json.loads(out.read_text())["imported"] == 200
    wait_for(lambda: owners(env).get(mailbox_id(env)) == SERVE, 4 * LEASE_S, "taken back")
    fill(env, 5)  # new mail after the import: the serve node's again
    wait_for(lambda: env.count() == 225, what="new mail captured by the serve node")
    assert set(per_uid(env).values()) == {1} and len(per_uid(env)) == 225

    history = lease_history(env)
    nodes = [node for _, node in history]
    importer = next(node for node in nodes if node and is_import_node(node))
    assert nodes[nodes.index(SERVE) :] == [SERVE, None, importer, None, SERVE], history
    took = next(at for at, node in history if node == importer)
    gave_back = history[nodes.index(importer) + 1][0]
    spans = serve_spans(serve, env.address)
    assert len(spans) >= 2, serve.read_text()
    for start, end in spans:  # the serve node's worker never ran while the import held the row
        assert end < took or start > gave_back, (start, end, took, gave_back)


def test_a_killed_import_gives_the_mailbox_back(env: MailEnv, serve: Path, tmp_path: Path) -> None:
    env.link()
    fill(env, 1200, days_ago=40)
    fill(env, 10)
    serving(env, 10, serve)
    out, err = tmp_path / "out", tmp_path / "err"
    job = spawn(env, "mailbox", "import", env.address, "--since", "all", out=out, err=err)
    try:
        wait_for(lambda: env.count() >= 110, what="import under way")
        assert is_import_node(owners(env)[mailbox_id(env)])
        job.kill()  # SIGKILL: no release; lease and request lapse by themselves
        killed = time.monotonic()
        job.wait(10)
    finally:
        if job.poll() is None:
            job.kill()
    wait_for(lambda: owners(env).get(mailbox_id(env)) == SERVE, 4 * LEASE_S, "taken back")
    took = time.monotonic() - killed
    print(f"taken back {took:.2f} s after SIGKILL (lease {LEASE_S:.0f} s)")
    assert took < 2 * LEASE_S + 1.5, f"the serve node took {took:.1f} s"
    before = env.count()
    assert 110 <= before < 1210
    again = env.cli.json("mailbox", "import", env.address, "--since", "all")  # hands over again
    assert again["imported"] == 1210 - before
    assert env.count() == 1210 and set(per_uid(env).values()) == {1}
    wait_for(lambda: owners(env).get(mailbox_id(env)) == SERVE, 4 * LEASE_S, "taken back")


@contextlib.contextmanager
def another_import(env: MailEnv) -> Iterator[ForegroundLease]:
    """Another import holding the mailbox, renewing every third of a period until the block ends."""
    db = Database(env.url, migrate=False)
    other, stop = ForegroundLease(db, "host/import-1", LEASE_S), threading.Event()
    assert other.take(mailbox_id(env)) is None

    def renew() -> None:
        while not stop.wait(other.renew_interval):
            other.take(mailbox_id(env))

    renewing = threading.Thread(target=renew)
    renewing.start()
    try:
        yield other
    finally:
        stop.set()
        renewing.join()
        other.release_all()
        db.dispose()


def test_another_import_is_refused_or_waited_for(env: MailEnv, tmp_path: Path) -> None:
    env.link()
    fill(env, 5)
    out, err = tmp_path / "out", tmp_path / "err"
    with another_import(env):
        refused = env.cli.run("mailbox", "import", env.address)
        assert refused.exit_code == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "is being imported by host/import-1" in refused.stderr
        assert "--wait" in refused.stderr and env.count() == 0
        job = spawn(env, "mailbox", "import", env.address, "--wait", "--json", out=out, err=err)
        try:
            waiting = f"waiting for host/import-1 to finish importing mailbox {env.address}"
            wait_for(lambda: waiting in err.read_text(), what="waiting")
            time.sleep(2 * LEASE_S)
            assert job.poll() is None and env.count() == 0
        except BaseException:
            job.kill()
            raise
    try:
        assert job.wait(60) == 0, err.read_text()
    finally:
        if job.poll() is None:
            job.kill()
    assert json.loads(out.read_text())["imported"] == 5


def test_a_holder_that_does_not_hand_over_is_given_up_on(env: MailEnv) -> None:
    env.link()
    fill(env, 3)
    db = Database(env.url, migrate=False)
    try:  # an older mailcrm serve: renews its lease and never hears the request
        with db.session() as s:
            far = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
            s.merge(Lease(mailbox_id=mailbox_id(env), node="old-node", expires_at=far))
        started = time.monotonic()
        result = env.cli.run("mailbox", "import", env.address)
        waited = time.monotonic() - started
        assert result.exit_code == 1
        assert f"asking node old-node to hand over mailbox {env.address} ..." in result.stderr
        assert result.stderr.splitlines()[-1] == (
            f"mailcrm: node old-node did not hand over mailbox {env.address} in "
            f"{3 * LEASE_S:.0f} s; try again, or add --wait to wait as long as it takes"
        )
        assert 3 * LEASE_S <= waited < 3 * LEASE_S + 5 and env.count() == 0
        with db.session() as s:
            row = s.execute(select(Lease.node, Lease.requested_by)).one()
        assert tuple(row) == ("old-node", None), "the request went with the import"
    finally:
        db.dispose()


def steal_lease(url: str) -> None:
    """Give every lease row to node "thief" now, while an import writes batch after batch.

    On SQLite a writer waiting in the busy handler sleeps between tries and can miss every short
    gap between the import's transactions until the import ends; this thief tries as eagerly.
    """
    far = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    if not url.startswith("sqlite"):
        db = Database(url, migrate=False)
        try:
            with db.session() as s:
                s.execute(update(Lease).values(node="thief", expires_at=far))
        finally:
            db.dispose()
        return
    conn = sqlite3.connect(make_url(url).database or "", timeout=0, isolation_level=None)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.execute(
                    "UPDATE leases SET node = 'thief', expires_at = ?",
                    (far.strftime("%Y-%m-%d %H:%M:%S.%f"),),
                )
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.0002)
    finally:
        conn.close()


def test_a_lost_lease_stops_the_import(env: MailEnv, tmp_path: Path) -> None:
    env.link("--since", "all")
    fill(env, 3000)  # the import must not finish before it notices
    out, log = tmp_path / "out", tmp_path / "err"
    first = spawn(env, "mailbox", "import", env.address, out=out, err=log)
    try:
        wait_for(lambda: env.count() >= 100, what="import under way")
        steal_lease(env.url)  # another node took the row (a clock gone wrong, say)
        assert first.wait(60) == 1, log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
    stopped_at = env.count()
    assert stopped_at < 3000, "the import went on without its lease"
    last = log.read_text().splitlines()[-1]
    assert last.startswith(f"mailcrm: import of {env.address} stopped: node thief holds the lease")
    assert f"{stopped_at} imported" in last
    assert owners(env) == {mailbox_id(env): "thief"}, "the thief's lease is left alone"
