"""The web listener (issue 18): HTTPS with its own or the relay's certificate, no plain HTTP
beyond loopback unless ``[http] trusted_proxy`` names the proxy in front, and /status showing a
non-admin only their own mailboxes."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import pytest

from crm.config import Config
from crm.errors import ConfigError
from crm.face import Database
from crm.face.visibility import Viewer
from crm.store.models import Mailbox, Node, User, utcnow
from proxy.web.app import run_http
from proxy.web.listen import tls_context
from proxy.web.sessions import COOKIE, SessionStore
from tests.servers import _make_cert
from tests.test_http import node_config, start_http, wait_listening


def test_plain_http_beyond_loopback_is_refused_unless_a_proxy_is_named() -> None:
    config = Config()
    for host in ("127.0.0.1", "::1", "localhost"):
        config.http.host = host
        assert tls_context(config) is None
    for host in ("0.0.0.0", "192.0.2.7", "crm.example", ""):
        config.http.host = host
        with pytest.raises(ConfigError, match="trusted_proxy"):
            tls_context(config)
    config.http.trusted_proxy = "192.0.2.1"
    assert tls_context(config) is None


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    config = Config()
    config.http.host = "0.0.0.0"
    config.http.tls = True
    with pytest.raises(ConfigError, match="relay"):
        tls_context(config)  # no certificate anywhere
    config.http.cert_file = str(tmp_path / "missing.crt")
    with pytest.raises(ConfigError, match="go together"):
        tls_context(config)
    config.http.key_file = str(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match=r"missing\.crt"):
        tls_context(config)


async def test_non_loopback_plain_listener_does_not_start(db: Database, db_url: str) -> None:
    config = node_config(db_url)
    config.http.host = "0.0.0.0"
    with pytest.raises(ConfigError, match="not loopback"):
        await run_http(config, db, asyncio.Event())


@pytest.mark.parametrize("whose", ["http", "relay"])
async def test_https_with_its_own_or_the_relays_certificate(
    db: Database, db_url: str, tmp_path: Path, whose: str
) -> None:
    cert, key = _make_cert(tmp_path, "crm.test", [])
    config = node_config(db_url)
    config.http.host = "0.0.0.0"  # beyond loopback: fine with TLS
    if whose == "http":
        config.http.cert_file, config.http.key_file = str(cert), str(key)
    else:
        config.http.tls = True
        config.relay.cert_file, config.relay.key_file = str(cert), str(key)
    stop = asyncio.Event()
    task = asyncio.create_task(run_http(config, db, stop))
    await wait_listening(config.http.port)
    trust = ssl.create_default_context(cafile=str(cert))
    base = f"127.0.0.1:{config.http.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://{base}/healthz", ssl=trust) as response:
            assert response.status == 200
            assert "node-test" in await response.text()
        async with session.get(f"https://{base}/login", ssl=trust) as response:
            assert response.status == 200
            assert "Sign in" in await response.text()
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://{base}/healthz") as response:
                await response.text()
    stop.set()
    await asyncio.wait_for(task, 60)


async def test_status_shows_a_non_admin_only_their_own_mailboxes(db: Database, db_url: str) -> None:
    with db.session() as s:
        ann = User(email="ann@ourco.example", name="Ann", crm_access=True, sees="own")
        bob = User(email="bob@ourco.example", name="Bob", crm_access=True, sees="own")
        s.add_all([ann, bob])
        s.flush()
        s.add_all([
            Mailbox(address="ann@ourco.example", kind="personal", owner_id=ann.id),
            Mailbox(address="bob@ourco.example", kind="personal", owner_id=bob.id),
            Mailbox(address="sales@ourco.example", kind="company"),
        ])  # fmt: skip
        ann_id = ann.id
    node = Node(name="node-other", last_seen=utcnow())
    with db.session() as s:
        s.add(node)
    sessions = SessionStore(db)
    ann_session = await sessions.start(Viewer(ann_id, "ann@ourco.example", False, False))
    async for admin_get in start_http(node_config(db_url), db, sessions):
        _, body = await admin_get("/status.json")
        admin = json.loads(body)
        port = int(next(c for c in admin["listeners"] if c["key"] == "http")["address"]
                   .rsplit(":", 1)[1])  # fmt: skip
        cookies = {COOKIE: ann_session.token}
        async with aiohttp.ClientSession(cookies=cookies) as session:
            async with session.get(f"http://127.0.0.1:{port}/status.json") as response:
                assert response.status == 200
                mine = await response.json()
            async with session.get(f"http://127.0.0.1:{port}/status") as response:
                page = await response.text()
    assert {b["address"] for b in admin["mailboxes"]} == {
        "ann@ourco.example", "bob@ourco.example", "sales@ourco.example"
    }  # fmt: skip
    assert [n["name"] for n in admin["nodes"]] == ["node-other"]
    assert [b["address"] for b in mine["mailboxes"]] == ["ann@ourco.example"]
    assert mine["nodes"] == []
    assert "ann@ourco.example" in page
    assert "bob@ourco.example" not in page and "sales@ourco.example" not in page
    assert "node-other" not in page
