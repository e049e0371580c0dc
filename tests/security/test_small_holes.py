"""Issue 13, item 9: smaller holes.

A relay node without the shared secret key refuses CRM logins for now (454) and makes no key of
its own; the SQLite database and its files are private (0600, data dir 0700); ``--db`` with a
password warns; the HTTP listener answers only for Host names this node goes by (DNS
rebinding).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from sqlalchemy import text

from crm.config import Config
from crm.store.db import Database
from proxy.serve import serve
from tests.conftest import Cli
from tests.relaykit import PASSWORD, message, running
from tests.servers import Postfix
from tests.test_http import node_config, start_http


def external_address() -> str:
    tag = uuid.uuid4().hex[:8]
    return f"buyer{tag}@customer-{tag}.example"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # a usual umask: files 0644 unless the code says otherwise
    yield
    os.umask(old)


@pytest.mark.servers
async def test_relay_without_the_shared_key_refuses_crm_logins_and_makes_no_key(
    sqlite_cli: Cli,
    sqlite_url: str,
    tmp_path: Path,
    postfix: Postfix,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = tmp_path / "keys" / "secret.key"
    async with running(sqlite_cli, sqlite_url, tmp_path, postfix) as env:
        env.config.secret_key, env.config.secret_key_file = None, str(key)  # this node lacks it
        alice, outsider = env.user("alice"), env.user("out", crm=False)
        smtp = env.client()
        await smtp.connect()
        with caplog.at_level(logging.INFO), pytest.raises(aiosmtplib.SMTPAuthenticationError) as e:
            await smtp.login(alice, PASSWORD)
        assert e.value.code == 454
        await smtp.quit()
        assert not key.exists() and not key.parent.exists()
        assert env.cli.json("mailbox", "list") == []  # nothing sealed, nothing linked
        assert f"no secret key: set MAILCRM_SECRET_KEY or create {key}" in caplog.text
        smtp = await env.login(outsider)  # no CRM access: nothing to seal, mail goes on
        errors, _ = await smtp.sendmail(
            outsider, [customer := external_address()], message(outsider, customer, "Hello")
        )
        await smtp.quit()
        assert errors == {}
        await env.delivered(customer)


async def test_serve_makes_the_key_on_sqlite_only(
    db: Database, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = node_config(db_url)
    config.secret_key, config.secret_key_file = None, str(tmp_path / "keys" / "secret.key")
    stop = asyncio.Event()
    stop.set()
    with caplog.at_level(logging.ERROR):
        await serve(config, db, stop, components=())
    key = Path(config.secret_key_file)
    if db.engine.dialect.name == "sqlite":  # one node by nature: its key is made at the start
        assert mode(key) == 0o600 and mode(key.parent) == 0o700
    else:  # a gateway's nodes share one key: this node is told it lacks it
        assert not key.exists()
        assert f"no secret key: set MAILCRM_SECRET_KEY or create {key}" in caplog.text


def test_a_new_sqlite_database_and_its_files_are_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "data" / "crm.db"
    db = Database(f"sqlite:///{path}")
    try:
        with db.session() as session:
            session.execute(text("SELECT 1"))
        assert mode(path.parent) == 0o700
        files = [path, path.with_name("crm.db-wal"), path.with_name("crm.db-shm")]
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        db.dispose()


def test_the_cli_default_database_is_private(tmp_path: Path, umask_022: None) -> None:
    cli = Cli("unused", tmp_path / "home")
    del cli.env["MAILCRM_DATABASE_URL"]  # the default: a SQLite file in the data dir
    cli.ok("user", "add", "ann@ourco.example")
    data = tmp_path / "home" / "mailcrm"
    assert mode(data) == 0o700 and mode(data / "mailcrm.db") == 0o600


def test_db_option_with_a_password_warns(sqlite_cli: Cli, sqlite_url: str) -> None:
    result = sqlite_cli.run(
        "--db", "postgresql+psycopg://crm:hunter2@127.0.0.1:1/crm", "user", "list"
    )
    assert "password in --db is visible" in result.stderr
    assert "MAILCRM_DATABASE_URL" in result.stderr
    quiet = sqlite_cli.run("--db", sqlite_url, "user", "list")
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


async def _status(port: int, path: str, host: str | None) -> int:
    headers = {"Host": host} if host is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response,
    ):
        return response.status


async def test_http_answers_only_for_its_own_host_names(db: Database, db_url: str) -> None:
    config: Config = node_config(db_url)
    config.http.allowed_hosts = ["crm.ourco.example", "status.ourco.example:8443"]
    port = config.http.port
    async for _ in start_http(config, db):
        for path in ("/", "/status.json", "/healthz", "/metrics"):
            for host in (
                "rebind.attacker.example",
                f"rebind.attacker.example:{port}",
                "10.9.8.7",
                "status.ourco.example:80",
                "crm.ourco.example.evil",
            ):
                assert await _status(port, path, host) == 421, (path, host)
            for host in (
                f"127.0.0.1:{port}",
                "127.0.0.1",
                "localhost:8026",
                f"[::1]:{port}",
                "LOCALHOST",
                "crm.ourco.example",
                "crm.ourco.example:443",
                "status.ourco.example:8443",
            ):
                assert await _status(port, path, host) == 200, (path, host)
