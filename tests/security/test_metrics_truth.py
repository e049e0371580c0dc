"""Issue 13, item 8: the metrics and the health check tell the truth.

Each counter is checked against what was done through the relay on the real Postfix, with the
capture done by the spool worker's child process (as in ``mailcrm serve``); the spool depth
counts journal segments that wait; ``/healthz`` is 503 while SQLite cannot be written; and
``/metrics`` still answers, with ``mailcrm_database_up 0``, while PostgreSQL is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from crm.store.db import Database
from tests.conftest import PG_ADMIN_URL, Cli
from tests.relaykit import RelayEnv, eventually, message, running
from tests.servers import Postfix
from tests.test_http import Get, free_port, node_config, sample, start_http

N = 4  # messages to customers in the counter test


def external() -> str:
    tag = uuid.uuid4().hex[:8]
    return f"buyer{tag}@customer-{tag}.example"


@contextlib.asynccontextmanager
async def http_for(env: RelayEnv) -> AsyncIterator[Get]:
    env.config.http.port = free_port()
    async for get in start_http(env.config, env.db):
        yield get


async def scrape(get: Get) -> str:
    status, body = await get("/metrics")
    assert status == 200, body
    return body


def counters(body: str) -> dict[str, float]:
    return {
        "relayed": sample(body, "mailcrm_messages_relayed_total") or 0.0,
        "captured": sample(body, "mailcrm_messages_captured_total") or 0.0,
        "duplicate": sample(body, "mailcrm_messages_duplicate_total") or 0.0,
        "employees": sample(body, "mailcrm_messages_skipped_total", reason="only_employees") or 0.0,
    }


@pytest.mark.servers
async def test_counters_match_what_was_relayed_and_captured(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(cli, db_url, tmp_path, postfix) as env, http_for(env) as get:
        before = counters(await scrape(get))
        alice, bob = env.user("alice"), env.user("bob")
        smtp = await env.login(alice)
        first = b""
        for i in range(N):
            raw = message(alice, external(), f"Offer {i}")
            first = first or raw
            assert (await smtp.sendmail(alice, [external()], raw))[0] == {}
        await smtp.sendmail(alice, [external()], first)  # the same Message-ID again
        await smtp.sendmail(alice, [bob], message(alice, bob, "Lunch?"))  # employees only
        await smtp.quit()
        want = {"relayed": N + 2, "captured": N, "duplicate": 1, "employees": 1}

        async def moved() -> dict[str, float]:
            now = counters(await scrape(get))
            return {key: now[key] - before[key] for key in now}

        for _ in range(200):  # the child's counts arrive with the end of its round
            if await moved() == want:
                break
            await asyncio.sleep(0.1)
        assert await moved() == want
        assert len(env.activities()) == want["captured"]
        assert not [e for e in env.spool_entries() if e.state == "pending"]
        await asyncio.sleep(1.0)  # a few more worker rounds count nothing twice
        assert await moved() == want


@pytest.mark.servers
async def test_spool_depth_counts_the_journal_waiting(
    sqlite_cli: Cli, sqlite_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with (
        running(sqlite_cli, sqlite_url, tmp_path, postfix, worker=False) as env,
        http_for(env) as get,
    ):
        alice = env.user("alice")
        smtp = await env.login(alice)
        for i in range(3):
            await smtp.sendmail(alice, [external()], message(alice, external(), f"Quote {i}"))
        await smtp.quit()
        assert len(env.file_copies()) == 3 and not env.spool_entries()
        body = await scrape(get)
        assert sample(body, "mailcrm_spool_depth") == 3
        assert sample(body, "mailcrm_spool_file_depth") == 3
        assert (sample(body, "mailcrm_spool_oldest_age_seconds") or 0) > 0
        env.start_worker()
        await eventually(lambda: len(env.activities()) == 3)
        for _ in range(100):
            body = await scrape(get)
            if sample(body, "mailcrm_spool_depth") == 0:
                break
            await asyncio.sleep(0.1)
        assert sample(body, "mailcrm_spool_depth") == 0
        assert sample(body, "mailcrm_spool_file_depth") == 0


def _sqlite_path(url: str) -> Path:
    return Path(str(make_url(url).database))


async def test_healthz_is_503_while_another_writer_holds_sqlite(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    config = node_config(sqlite_url)
    holder = sqlite3.connect(_sqlite_path(sqlite_url), isolation_level=None)
    try:
        async for get in start_http(config, db):
            status, body = await get("/healthz")
            assert status == 200, body
            holder.execute("BEGIN EXCLUSIVE")  # held longer than the check waits
            status, body = await get("/healthz")
            assert status == 503
            data = json.loads(body)
            assert data["status"] == "unavailable" and "locked" in data["database"]
            holder.execute("ROLLBACK")
            assert (await get("/healthz"))[0] == 200
    finally:
        holder.close()
        db.dispose()


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: not even root may write the file (skip where the filesystem can't)."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i unsupported here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_healthz_is_503_when_the_sqlite_file_is_read_only(sqlite_url: str) -> None:
    Database(sqlite_url).dispose()  # created and migrated, then the file turns read-only
    with immutable(_sqlite_path(sqlite_url)):
        db = Database(sqlite_url)
        try:
            async for get in start_http(node_config(sqlite_url), db, signed_in=False):
                status, body = await get("/healthz")
                _, metrics_body = await get("/metrics")
        finally:
            db.dispose()
    assert status == 503
    assert "readonly" in json.loads(body)["database"]
    assert sample(metrics_body, "mailcrm_database_up") == 1  # readable: the gauges are served


@pytest.mark.postgres
async def test_metrics_answer_while_postgresql_is_unreachable() -> None:
    down = Database(
        "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2", migrate=False
    )
    async for get in start_http(node_config("unused"), down, signed_in=False):
        status, body = await get("/metrics")
    assert status == 200
    assert sample(body, "mailcrm_database_up") == 0
    assert sample(body, "mailcrm_spool_depth") is None  # not known: left out, not 0
    assert sample(body, "mailcrm_messages_relayed_total") is not None
    assert sample(body, "mailcrm_listener_up", listener="http") == 1
    assert {f.name for f in text_string_to_metric_families(body)} >= {"mailcrm_database_up"}


@pytest.fixture
def private_pg() -> Iterator[tuple[str, str]]:
    """A PostgreSQL database of the test's own: (its URL, its name); dropped at the end."""
    name = "mcrm_" + uuid.uuid4().hex[:10]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(False), name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.postgres
async def test_metrics_and_healthz_when_the_postgresql_database_goes(
    private_pg: tuple[str, str],
) -> None:
    url, name = private_pg
    db = Database(url)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async for get in start_http(node_config(url), db):
            assert sample(await scrape(get), "mailcrm_database_up") == 1
            assert (await get("/healthz"))[0] == 200
            with admin.connect() as conn:
                conn.execute(text(f"ALTER DATABASE {name} SET default_transaction_read_only = on"))
            db.dispose()  # new sessions get the setting
            status, body = await get("/healthz")
            assert status == 503 and "read-only" in json.loads(body)["database"]
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
            body = await scrape(get)
            assert sample(body, "mailcrm_database_up") == 0
            assert sample(body, "mailcrm_mailbox_up") is None
            assert (await get("/healthz"))[0] == 503
    finally:
        admin.dispose()
        db.dispose()
