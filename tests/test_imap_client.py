"""The IMAP connection wrapper against the real Dovecot: TLS modes, certificates, login, LIST.

Role: integration tests of :mod:`proxy.imap.client` and :mod:`proxy.imap.folders` below the
poller: implicit TLS and STARTTLS with certificates checked, plaintext only to loopback, a
refused login, SPECIAL-USE discovery, and a lost connection waking a waiting command.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from crm.errors import UpstreamAuthError, UpstreamError
from crm.store.models import Direction
from proxy.imap.client import ConnectionLost, Endpoint, ImapClient
from proxy.imap.folders import discover
from tests.servers import Dovecot, dovecot

__all__ = ["dovecot"]
pytestmark = pytest.mark.servers
PASSWORD = "pw for tests"


@pytest.fixture
def login(dovecot: Dovecot) -> Iterator[str]:
    """A fresh Dovecot user's address."""
    yield dovecot.add_user("c" + uuid.uuid4().hex[:10], PASSWORD)


def _endpoint(dovecot: Dovecot, login: str, tls: str, **extra: object) -> Endpoint:
    port = dovecot.imaps_port if tls == "ssl" else dovecot.imap_port
    values: dict[str, object] = {"ca_file": str(dovecot.cert_path), **extra}
    return Endpoint("127.0.0.1", port, tls, login, PASSWORD, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("tls", ["ssl", "starttls", "none"])
async def test_every_tls_mode_logs_in_and_finds_inbox_and_sent(
    dovecot: Dovecot, login: str, tls: str
) -> None:
    client = ImapClient(_endpoint(dovecot, login, tls), timeout=10)
    try:
        await client.connect()
        await client.login()
        assert client.has("IDLE") and client.has("QRESYNC")
        found = await discover(client, ())
        assert [(f.name, f.direction) for f in found.folders] == [
            ("INBOX", Direction.INCOMING),
            ("Sent", Direction.OUTGOING),
        ]
        configured = await discover(client, ["INBOX", "Nowhere", "\\Sent"])
        assert configured.missing == ["Nowhere"]
        await client.enable("QRESYNC")
        info = await client.select("INBOX")
        assert info.uidvalidity > 0 and info.highest_modseq > 0
    finally:
        await client.logout()


async def test_plaintext_is_refused_beyond_loopback() -> None:
    client = ImapClient(Endpoint("imap.example.com", 143, "none", "a", "b"), timeout=1)
    with pytest.raises(UpstreamError, match="plaintext IMAP"):
        await client.connect()


@pytest.mark.parametrize("tls", ["ssl", "starttls"])
async def test_certificates_are_checked(dovecot: Dovecot, login: str, tls: str) -> None:
    client = ImapClient(_endpoint(dovecot, login, tls, ca_file=None), timeout=10)
    with pytest.raises(UpstreamError, match="certificate verify failed"):
        await client.connect()
    await client.logout()
    trusting = ImapClient(_endpoint(dovecot, login, tls, ca_file=None, insecure=True), timeout=10)
    await trusting.connect()
    await trusting.login()
    await trusting.logout()


async def test_a_refused_login_says_why(dovecot: Dovecot, login: str) -> None:
    endpoint = Endpoint(
        "127.0.0.1", dovecot.imaps_port, "ssl", login, "wrong", str(dovecot.cert_path)
    )
    client = ImapClient(endpoint, timeout=10)
    await client.connect()
    with pytest.raises(UpstreamAuthError, match="AUTHENTICATIONFAILED"):
        await client.login()
    await client.logout()


async def test_a_lost_connection_wakes_a_waiting_command(dovecot: Dovecot, login: str) -> None:
    client = ImapClient(_endpoint(dovecot, login, "ssl"), timeout=30)
    await client.connect()
    await client.login()
    await client.select("INBOX")
    assert client.protocol is not None
    waiting = asyncio.ensure_future(client.simple("NOOP"))
    client.protocol.transport.close()
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(waiting, 5)
    assert client.is_lost
