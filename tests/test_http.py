"""The HTTP listener of ``mailcrm serve`` (B6): /healthz, /metrics, the status page's data, and
structured logs; everything over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate, make_msgid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from crm import logs, metrics
from crm.capture.path import Capturer
from crm.config import Config, load_config
from crm.face.visibility import Viewer
from crm.mailboxes.leases import LeaseKeeper
from crm.store.db import Database
from crm.store.models import Direction, Mailbox, SpoolEntry, User, utcnow
from proxy.serve import serve
from proxy.web.app import make_app
from proxy.web.sessions import COOKIE, SessionStore

Get = Callable[[str], Awaitable[tuple[int, str]]]
BOX = "sales@ourco.example"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_config(db_url: str) -> Config:
    config = Config(database_url=db_url, secret_key=Fernet.generate_key().decode())
    config.http.port = free_port()
    config.relay.port = free_port()  # nothing listens there unless a test starts something
    config.cluster.node_name = "node-test"
    return config


async def wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    pytest.fail(f"nothing listens on 127.0.0.1:{port}")


ADMIN = "admin@ourco.example"


def admin_viewer(db: Database) -> Viewer:
    """The admin user (added when missing) the tests' signed-in requests come as."""
    with db.session() as session:
        user = session.scalar(select(User).where(User.email == ADMIN))
        if user is None:
            user = User(email=ADMIN, name="Admin", admin=True, crm_access=True, sees="all")
            session.add(user)
            session.flush()
        return Viewer(user.id, user.email, admin=True, sees_all=True)


async def start_http(
    config: Config, db: Database, sessions: SessionStore | None = None, signed_in: bool = True
) -> AsyncIterator[Get]:
    """The listener's app on ``config.http.port``; ``get`` comes signed in as an admin (the
    status page is behind sign-in; ``/healthz`` and ``/metrics`` need none) unless
    ``signed_in`` is False (a database that cannot be reached signs no one in)."""
    sessions = sessions if sessions is not None else SessionStore(db)
    token = (await sessions.start(admin_viewer(db))).token if signed_in else ""
    runner = web.AppRunner(make_app(config, db, sessions), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, config.http.host, config.http.port).start()
    await wait_listening(config.http.port)

    async def get(path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(cookies={COOKIE: token}) as session,
            session.get(f"http://127.0.0.1:{config.http.port}{path}") as response,
        ):
            return response.status, await response.text()

    try:
        yield get
    finally:
        await runner.cleanup()


@pytest.fixture
async def http(db: Database, db_url: str) -> AsyncIterator[Get]:
    async for get in start_http(node_config(db_url), db):
        yield get


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition (None when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def add_box(db: Database, address: str = BOX, **fields: object) -> None:
    with db.session() as session:
        session.add(Mailbox(address=address, kind="company", **fields))


def message(sender: str, headers: str = "") -> bytes:
    return (
        f"From: Ann Buyer <{sender}>\r\nTo: {BOX}\r\nSubject: prices\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid()}\r\n{headers}\r\nHello\r\n"
    ).encode()


async def test_healthz_names_the_node_and_reaches_the_database(http: Get) -> None:
    status, body = await http("/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "node": "node-test", "database": "reachable"}


async def test_healthz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    down = Database(
        "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2", migrate=False
    )
    async for get in start_http(node_config("unused"), down, signed_in=False):
        status, body = await get("/healthz")
    assert status == 503
    data = json.loads(body)
    assert data["status"] == "unavailable" and data["database"].startswith("unreachable")


async def test_metrics_parse_and_counters_move(http: Get) -> None:
    _, before = await http("/metrics")
    names = {f.name for f in text_string_to_metric_families(before)}
    for name in (
        "mailcrm_messages_relayed",
        "mailcrm_messages_captured",
        "mailcrm_messages_skipped",
        "mailcrm_spool_depth",
        "mailcrm_spool_oldest_age_seconds",
        "mailcrm_mailbox_sync_age_seconds",
        "mailcrm_mailbox_up",
        "mailcrm_upstream_errors",
        "mailcrm_listener_up",
    ):
        assert name in names, name
    relayed = sample(before, "mailcrm_messages_relayed_total") or 0.0
    errors = sample(before, "mailcrm_upstream_errors_total", kind="imap") or 0.0
    metrics.relayed()
    metrics.upstream_error("imap")
    _, after = await http("/metrics")
    assert sample(after, "mailcrm_messages_relayed_total") == relayed + 1
    assert sample(after, "mailcrm_upstream_errors_total", kind="imap") == errors + 1
    assert sample(after, "mailcrm_listener_up", listener="http") == 1
    assert sample(after, "mailcrm_listener_up", listener="relay") == 0  # nothing listens


async def test_capture_moves_captured_and_skipped(db: Database, http: Get) -> None:
    add_box(db)
    _, before = await http("/metrics")
    got = sample(before, "mailcrm_messages_captured_total") or 0.0
    robots = sample(before, "mailcrm_messages_skipped_total", reason="robot_auto_submitted")
    capturer = Capturer(db)
    assert capturer.capture(message("ann@client.example"), BOX, Direction.INCOMING).action == (
        "captured"
    )
    robot = message("bot@client.example", "Auto-Submitted: auto-generated\r\n")
    result = capturer.capture(robot, BOX, Direction.INCOMING)
    assert result.action == "skipped"
    _, after = await http("/metrics")
    assert sample(after, "mailcrm_messages_captured_total") == got + 1
    label = metrics.reason_label(result.reason)
    assert label.startswith("robot_")
    assert sample(after, "mailcrm_messages_skipped_total", reason=label) == (robots or 0) + 1


async def test_gauges_come_from_the_database(db: Database, http: Get) -> None:
    now = utcnow()
    add_box(db, "green@ourco.example", last_ok_at=now - dt.timedelta(seconds=90), last_check_at=now)
    add_box(db, "red@ourco.example", last_error="login failed: wrong password")
    with db.session() as session:
        for age in (3600, 60):
            session.add(
                SpoolEntry(
                    raw=b"x",
                    mailbox_address=BOX,
                    direction="outgoing",
                    created_at=now - dt.timedelta(seconds=age),
                )
            )
        session.add(SpoolEntry(raw=b"x", mailbox_address=BOX, direction="outgoing", state="done"))
    LeaseKeeper(db, "node-test").claim()
    _, text = await http("/metrics")
    assert sample(text, "mailcrm_spool_depth") == 2
    assert (sample(text, "mailcrm_spool_oldest_age_seconds") or 0) >= 3600
    assert sample(text, "mailcrm_mailbox_up", mailbox="green@ourco.example") == 1
    assert sample(text, "mailcrm_mailbox_up", mailbox="red@ourco.example") == 0
    assert (
        sample(text, "mailcrm_mailbox_sync_age_seconds", mailbox="green@ourco.example") or 0
    ) >= 90
    never = sample(text, "mailcrm_mailbox_sync_age_seconds", mailbox="red@ourco.example")
    assert never == float("inf")
    assert sample(text, "mailcrm_node_leases", node="node-test") == 2


async def test_status_json_shows_mailboxes_and_listeners(db: Database, db_url: str) -> None:
    add_box(db, "red@ourco.example", last_error="login failed: wrong password")
    config = node_config(db_url)

    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake relay ESMTP\r\n")
        await reader.readline()
        writer.close()

    async for get in start_http(config, db):
        _, body = await get("/status.json")
        relay = next(c for c in json.loads(body)["listeners"] if c["key"] == "relay")
        assert relay["status"] == "red" and "not answering" in relay["reason"]
        server = await asyncio.start_server(smtp, "127.0.0.1", config.relay.port)
        async with server:
            _, body = await get("/status.json")
    data = json.loads(body)
    relay = next(c for c in data["listeners"] if c["key"] == "relay")
    assert relay["status"] == "green"
    assert next(c for c in data["listeners"] if c["name"] == "Database")["status"] == "green"
    [box] = data["mailboxes"]
    assert (box["status"], box["status_reason"]) == ("red", "login failed: wrong password")


async def test_status_page_escapes_what_it_shows(db: Database, http: Get) -> None:
    add_box(db, "x@ourco.example", last_error='<script>alert("x")</script> & more')
    status, page = await http("/status")
    assert status == 200
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page


async def test_serve_runs_the_http_component(db: Database, db_url: str) -> None:
    config, stop = node_config(db_url), asyncio.Event()
    task = asyncio.create_task(
        serve(config, db, stop, components=(("http", "proxy.web:run_http"),))
    )
    await wait_listening(config.http.port)
    base = f"http://127.0.0.1:{config.http.port}"
    async with aiohttp.ClientSession() as session:
        for path in ("/status", "/status.json", "/leads", "/"):
            async with session.get(base + path, allow_redirects=False) as response:
                assert response.status == 303, path
                assert response.headers["Location"].startswith("/login"), path
        async with session.post(base + "/leads/1/status", data={"status": "won"}) as response:
            assert response.status == 403
        for path in ("/healthz", "/metrics", "/login"):
            async with session.get(base + path) as response:
                assert response.status == 200, path
                assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    stop.set()
    await task


def test_config_reads_http_cluster_and_log_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mailcrm.toml"
    path.write_text(
        'log_format = "json"\n[http]\nhost = "0.0.0.0"\nport = 9100\n'
        "[cluster]\nlease_seconds = 12\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("MAILCRM_NODE_NAME", "gw-2")
    config = load_config(str(path), "sqlite://")
    assert (config.http.host, config.http.port, config.http.enabled) == ("0.0.0.0", 9100, True)
    assert (config.cluster.node_name, config.cluster.lease_seconds) == ("gw-2", 12)
    assert config.log_format == "json"
    monkeypatch.delenv("MAILCRM_NODE_NAME")
    assert Config().cluster.node_name.endswith(f"-{__import__('os').getpid()}")


def test_json_logs_carry_fields_but_no_secrets_or_bodies() -> None:
    record = logging.LogRecord(
        "crm.test",
        logging.WARNING,
        __file__,
        1,
        "login to postgresql://u:hunter2@db/x failed, password=hunter2",
        (),
        None,
    )
    record.mailbox = BOX
    record.raw = b"From: a\r\n\r\nsecret body"
    line = logs.JsonFormatter().format(record)
    data = json.loads(line)
    assert data["level"] == "warning" and data["logger"] == "crm.test"
    assert data["mailbox"] == BOX and data["raw"] == "<22 bytes>"
    assert "hunter2" not in line and "secret body" not in line
    assert len(logs.redact("x" * 10_000)) < 2100
    assert "AGFAYg" not in logs.redact("C: AUTH PLAIN AGFAYgBj")


def test_configure_puts_the_json_formatter_on_root_handlers() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        logs.configure("json")
        assert isinstance(handler.formatter, logs.JsonFormatter)
        with pytest.raises(ValueError):
            logs.configure("xml")
    finally:
        root.removeHandler(handler)
