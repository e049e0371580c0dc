"""The web listener behind a TLS-terminating proxy (issue 18): ``[http] trusted_proxy`` names it,
and only from that peer are ``X-Forwarded-Proto: https`` (the session cookie turns Secure) and
``X-Forwarded-For`` (the sign-in throttle counts that client) honoured; from any other peer they
are ignored. Sign-in is checked by the real Postfix against Dovecot's passwords."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from crm.config import load_config
from crm.store.db import Database
from proxy.web.app import make_app
from proxy.web.forwarded import TrustedProxy
from tests.conftest import Cli
from tests.pollerkit import PASSWORD, MailEnv
from tests.servers import Dovecot, Postfix
from tests.test_http import free_port, wait_listening

FROM_BROWSER = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"}


@pytest.fixture
def env(dovecot: Dovecot, cli: Cli, tmp_path: Path) -> MailEnv:
    """A fresh Dovecot user and CRM database."""
    return MailEnv(dovecot, cli, tmp_path)


@asynccontextmanager
async def listener(env: MailEnv, postfix: Postfix, trusted_proxy: str | None) -> AsyncIterator[str]:
    """The web listener on loopback, sign-in checked by the test Postfix."""
    config = load_config(str(env.config_path), env.url)
    config.secret_key = env.cli.env["MAILCRM_SECRET_KEY"]
    config.http.trusted_proxy = trusted_proxy
    config.relay.auth_failures_before_delay = 100  # no waiting in this test
    config.relay.auth_failures_before_refusal = 2
    relay = config.relay
    relay.upstream_host, relay.upstream_port = "127.0.0.1", postfix.port
    relay.upstream_tls, relay.upstream_ca_file = "starttls", str(postfix.cert_path)
    db = Database(env.url)
    runner = web.AppRunner(make_app(config, db), handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await wait_listening(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        db.dispose()


async def _sign_in(
    base: str, email: str, password: str, headers: dict[str, str]
) -> tuple[int, str]:
    """POST /login; the status and the session's Set-Cookie ("" when none), or the page."""
    async with aiohttp.ClientSession() as client, client.post(
        f"{base}/login", data={"email": email, "password": password, "next": "/"},
        headers=headers, allow_redirects=False,
    ) as response:  # fmt: skip
        cookie = next((c for c in response.headers.getall("Set-Cookie", [])
                       if c.startswith("mailcrm_session=")), "")  # fmt: skip
        return response.status, cookie or await response.text()


def _secure(cookie: str) -> bool:
    return "secure" in [part.strip().lower() for part in cookie.split(";")]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_forwarded_headers_are_honoured_from_the_trusted_proxy_only(
    env: MailEnv, postfix: Postfix
) -> None:
    alice = env.link()
    # The test talks from 127.0.0.1: as the proxy when that is the trusted one.
    async with listener(env, postfix, "127.0.0.1") as base:
        status, cookie = await _sign_in(base, alice, PASSWORD, FROM_BROWSER)
        assert status == 303 and _secure(cookie), cookie
        assert "httponly" in cookie.lower()
        status, cookie = await _sign_in(base, alice, PASSWORD, {})  # plain HTTP to the proxy
        assert status == 303 and not _secure(cookie), cookie
        # Failures count for the browser's address the proxy names, not for the proxy.
        for n in range(2):
            status, page = await _sign_in(base, f"nobody{n}@ourco.example", "x", FROM_BROWSER)
            assert status == 401 and "Wrong email or password." in page
        status, page = await _sign_in(base, "nobody9@ourco.example", "x", FROM_BROWSER)
        assert "Too many failed sign-ins" in page
        other = {**FROM_BROWSER, "X-Forwarded-For": "198.51.100.1, 203.0.113.6"}
        status, page = await _sign_in(base, "nobody8@ourco.example", "x", other)
        assert status == 401 and "Wrong email or password." in page
    # Another peer is the proxy: whatever this one claims is ignored.
    for trusted in ("192.0.2.1", None):
        async with listener(env, postfix, trusted) as base:
            status, cookie = await _sign_in(base, alice, PASSWORD, FROM_BROWSER)
            assert status == 303 and cookie and not _secure(cookie), cookie
            for n in range(2):
                xff = {**FROM_BROWSER, "X-Forwarded-For": f"203.0.113.{10 + n}"}
                status, page = await _sign_in(base, f"nobody{n}@ourco.example", "x", xff)
                assert status == 401 and "Wrong email or password." in page
            xff = {**FROM_BROWSER, "X-Forwarded-For": "203.0.113.99"}
            status, page = await _sign_in(base, "nobody7@ourco.example", "x", xff)
            assert "Too many failed sign-ins" in page  # all counted for 127.0.0.1


def test_what_trusted_proxy_may_name() -> None:
    assert TrustedProxy("192.0.2.1").trusts("192.0.2.1")
    assert not TrustedProxy("192.0.2.1").trusts("192.0.2.2")
    assert TrustedProxy("10.0.0.0/24").trusts("10.0.0.77")
    assert not TrustedProxy("10.0.0.0/24").trusts("10.0.1.1")
    assert TrustedProxy("::1").trusts("::1") and not TrustedProxy("::1").trusts("127.0.0.1")
    assert TrustedProxy("127.0.0.1").trusts("::ffff:127.0.0.1")
    assert TrustedProxy("localhost").trusts("127.0.0.1")  # a host name, resolved
    for nothing in ("docker-proxy (published on 127.0.0.1 only)", "", None):
        assert not TrustedProxy(nothing).trusts("127.0.0.1")
    assert not TrustedProxy("192.0.2.1").trusts(None)
    assert not TrustedProxy("192.0.2.1").trusts("not an address")
