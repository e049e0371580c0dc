"""The web listener's TLS (issue 18): HTTPS with its own or the relay's certificate, and no plain
HTTP beyond loopback unless ``[http] trusted_proxy`` names the proxy in front."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest

from crm.config import Config
from crm.errors import ConfigError
from crm.face import Database
from proxy.web.app import run_http
from proxy.web.listen import tls_context
from tests.servers import _make_cert
from tests.test_http import node_config, wait_listening


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
