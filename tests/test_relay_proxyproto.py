"""The relay behind a TCP load balancer: PROXY protocol v1/v2 against the real test Postfix.

Clients open a TCP connection to the relay, write the header a load balancer (HAProxy, nginx)
would write, then speak SMTP with aiosmtplib over that socket. Assertions are on what users and
operators see: SMTP replies, the message in the recipient's mailbox, the CRM as the CLI shows it,
the relay's log lines (the real client's address), connections closed without a greeting, and
the status page's listener checks.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from crm.config import RelayConfig, load_config
from crm.errors import ConfigError
from proxy.smtp.proxyproto import ProxyPolicy
from proxy.web.status import GREEN, probe_relay
from tests.conftest import Cli
from tests.relaykit import HOST, PASSWORD, RelayEnv, eventually, message, running
from tests.servers import Postfix

pytestmark = pytest.mark.servers

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
LOCAL = SIGNATURE + b"\x20\x00\x00\x00"  # v2 LOCAL: the balancer's own connection


def v1(src: str, sport: int) -> bytes:
    """A PROXY v1 line for a TCP client at src:sport (TCP4 or TCP6 by the address)."""
    family, dst = ("TCP6", "2001:db8::1") if ":" in src else ("TCP4", "192.0.2.1")
    return f"PROXY {family} {src} {dst} {sport} 587\r\n".encode()


def v2(src: str, sport: int, fam_proto: int | None = None) -> bytes:
    """A PROXY v2 header, command PROXY, for a TCP (or ``fam_proto``) client at src:sport."""
    client = ipaddress.ip_address(src)
    dst = ipaddress.ip_address("2001:db8::1" if client.version == 6 else "192.0.2.1")
    body = client.packed + dst.packed + struct.pack("!HH", sport, 587)
    family = fam_proto or (0x11 if client.version == 4 else 0x21)
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def external(name: str = "client") -> str:
    tag = uuid.uuid4().hex[:8]
    return f"{name}{tag}@customer-{tag}.example"


def lb_socket(port: int, header: bytes, source: str = HOST) -> socket.socket:
    """A connection to the relay from ``source`` that starts with ``header``."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((HOST, port))
    sock.sendall(header)
    return sock


async def proxied(
    env: RelayEnv, header: bytes, *, port: int | None = None, **options: Any
) -> aiosmtplib.SMTP:
    """A connected aiosmtplib client behind ``header`` (STARTTLS unless told otherwise)."""
    smtp = env.client(port=None, sock=lb_socket(port or env.port, header), **options)
    await smtp.connect()
    return smtp


async def dropped(port: int, header: bytes = b"", source: str = HOST) -> bytes:
    """What the relay says to a connection that starts with ``header``: b"" when it hangs up."""
    reader, writer = await asyncio.open_connection(sock=lb_socket(port, header, source))
    try:
        return await asyncio.wait_for(reader.read(), 30)
    except ConnectionResetError:  # closed with our header unread: the kernel says RST
        return b""
    finally:
        writer.close()


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.fixture
async def env(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[RelayEnv]:
    caplog.set_level(logging.INFO, logger="proxy")
    caplog.set_level(logging.INFO, logger="mail.log")
    async with running(
        cli,
        db_url,
        tmp_path,
        postfix,
        tls_port=0,
        proxy_protocol=True,
        proxy_trusted=["127.0.0.1/32"],
        proxy_timeout=1.0,
    ) as started:
        yield started


HEADERS = {
    "v1 TCP4": (v1("203.0.113.7", 40001), "203.0.113.7:40001"),
    "v1 TCP6": (v1("2001:db8::7", 40002), "[2001:db8::7]:40002"),
    "v2 TCP4": (v2("198.51.100.9", 40003), "198.51.100.9:40003"),
    "v2 TCP6": (v2("2001:db8::9", 40004), "[2001:db8::9]:40004"),
}


async def test_headers_name_the_client_in_logs_and_mail_is_relayed_and_captured(
    env: RelayEnv, caplog: pytest.LogCaptureFixture
) -> None:
    alice = env.user("alice")
    sent = {}
    for kind, (header, client) in HEADERS.items():
        customer = external()
        smtp = await proxied(env, header)
        await smtp.login(alice, PASSWORD)
        await smtp.sendmail(alice, [customer], message(alice, customer, f"Via {kind}"))
        await smtp.quit()
        sent[kind] = customer
        assert logged(caplog, f"relay: client {client} via load balancer 127.0.0.1:")
        assert logged(caplog, f"relay: {client} logged in as {alice}")  # after STARTTLS too
    local = lb_socket(env.port, LOCAL)
    own = f"127.0.0.1:{local.getsockname()[1]}"
    smtp = env.client(port=None, sock=local)
    await smtp.connect()
    await smtp.login(alice, PASSWORD)
    customer = sent["v2 LOCAL"] = external()
    await smtp.sendmail(alice, [customer], message(alice, customer, "Via v2 LOCAL"))
    await smtp.quit()
    assert logged(caplog, f"relay: {own} logged in as {alice}")  # LOCAL: the connection itself

    for kind, customer in sent.items():
        assert b"Subject: Via " + kind.encode() in (await env.delivered(customer))[0]
    activities = await eventually(lambda: len(env.activities()) == 5 and env.activities())
    assert sorted(a.subject for a in activities) == sorted(f"Via {kind}" for kind in sent)
    assert logged(caplog, "('203.0.113.7', 40001) sender: ")  # aiosmtpd's own lines too
    assert not logged(caplog, PASSWORD)


async def test_plaintext_auth_follows_the_proxied_address(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    caplog.set_level(logging.DEBUG, logger="mail.log")
    async with running(
        cli, db_url, tmp_path, postfix, allow_plaintext_auth_on_loopback=True, proxy_protocol=True
    ) as env:
        alice, customer = env.user("alice"), external()
        remote = await proxied(env, v1("198.51.100.4", 50000), start_tls=False)
        await remote.ehlo()
        assert "auth" not in remote.esmtp_extensions  # a loopback connection, a remote client
        token = base64.b64encode(f"\0{alice}\0{PASSWORD}".encode())
        reply = await remote.execute_command(b"AUTH", b"PLAIN", token)
        assert reply.code == 538 and "5.7.11" in reply.message
        await remote.quit()
        assert logged(caplog, "relay: failed AUTH from 198.51.100.4:50000")

        local = await proxied(env, v2("127.0.0.1", 50001), start_tls=False)
        await local.login(alice, PASSWORD)  # a loopback client through a loopback balancer
        await local.sendmail(alice, [customer], message(alice, customer, "Plain, on loopback"))
        await local.quit()
        await env.delivered(customer)
        assert not logged(caplog, PASSWORD) and not logged(caplog, token.decode())


async def test_untrusted_sources_are_dropped_on_both_listeners(
    env: RelayEnv, caplog: pytest.LogCaptureFixture
) -> None:
    alice = env.user("alice")
    for port in env.relay.ports:
        assert await dropped(port, v1("203.0.113.66", 4444), source="127.0.0.2") == b""
    lines = logged(caplog, "dropped: not a trusted load balancer (relay.proxy_trusted)")
    assert len(lines) == 2 and all("from 127.0.0.2:" in line for line in lines)
    assert not logged(caplog, "203.0.113.66")  # the header of an untrusted source means nothing

    for port, tls in zip(env.relay.ports, (False, True), strict=True):
        customer = external()
        options = {"start_tls": False, "use_tls": True} if tls else {}
        smtp = await proxied(env, v1("203.0.113.8", 4445), port=port, **options)
        await smtp.login(alice, PASSWORD)
        await smtp.sendmail(alice, [customer], message(alice, customer, "Still served"))
        await smtp.quit()
        await env.delivered(customer)


BAD_HEADERS = {
    b"": "no PROXY header within 1 s",  # a mail client straight to the relay waits for 220
    b"EHLO client.example\r\n": "invalid PROXY header: PROXY unrecognized signature",
    b"PROXY TCP4 203.0.113.300 192.0.2.1 1 587\r\n": "PROXYv1 address malformed",
    b"PROXY TCP4 203.0.113.3 192.0.2.1 1 587 extra\r\n": "PROXYv1 unrecognized extraneous data",
    SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12): "PROXYv2 illegal version",
    v2("203.0.113.4", 53, fam_proto=0x12): "only TCP over IPv4 or IPv6 is accepted",
}


async def test_missing_or_malformed_headers_are_dropped_and_others_served(
    env: RelayEnv, caplog: pytest.LogCaptureFixture
) -> None:
    alice = env.user("alice")
    for port in env.relay.ports:
        for header, reason in BAD_HEADERS.items():
            caplog.clear()
            assert await dropped(port, header) == b"", header  # closed, never a greeting
            assert logged(caplog, "relay: connection from 127.0.0.1:"), header
            assert logged(caplog, reason), (header, [r.getMessage() for r in caplog.records])
        sock = lb_socket(port, b"")
        sock.close()  # a load balancer's bare TCP check: an INFO line, not a warning
        await eventually(lambda: logged(caplog, "closed before sending a PROXY header"))

    customer = external()
    smtp = await proxied(env, v2("203.0.113.5", 6000))
    await smtp.login(alice, PASSWORD)
    await smtp.sendmail(alice, [customer], message(alice, customer, "After the bad ones"))
    await smtp.quit()
    await env.delivered(customer)
    # the client's QUIT returns before the relay's side of the socket is closed
    assert await eventually(lambda: env.relay.connections == 0)


async def test_implicit_tls_listener_reads_the_header_before_tls(
    env: RelayEnv, caplog: pytest.LogCaptureFixture
) -> None:
    alice = env.user("alice")
    tls_port = env.relay.ports[1]
    for header, client in (HEADERS["v1 TCP4"], HEADERS["v2 TCP6"]):
        customer = external()
        smtp = await proxied(env, header, port=tls_port, start_tls=False, use_tls=True)
        await smtp.ehlo()
        assert "starttls" not in smtp.esmtp_extensions and "auth" in smtp.esmtp_extensions
        await smtp.login(alice, PASSWORD)
        await smtp.sendmail(alice, [customer], message(alice, customer, "Over TLS, proxied"))
        await smtp.quit()
        await env.delivered(customer)
        assert logged(caplog, f"relay: client {client} via load balancer 127.0.0.1:")
        assert logged(caplog, f"relay: {client} logged in as {alice}")

    status = replace(
        env.config, relay=replace(env.config.relay, port=env.relay.ports[0], tls_port=tls_port)
    )
    checks = await probe_relay(status)  # the status page's probe sends a v2 LOCAL header
    assert [(c.key, c.status) for c in checks] == [("relay", GREEN), ("relay_tls", GREEN)]
    # a good header, then no TLS at all: the session never starts, so it never counts as open
    assert await dropped(tls_port, HEADERS["v1 TCP4"][0] + b"EHLO not.tls.example\r\n") == b""
    assert await eventually(lambda: env.relay.connections == 0)


async def test_proxy_protocol_off_by_default_header_is_just_a_bad_command(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    async with running(cli, db_url, tmp_path, postfix) as env:
        assert env.config.relay.proxy_protocol is False
        alice, customer = env.user("alice"), external()
        reader, writer = await asyncio.open_connection(HOST, env.port)
        assert (await reader.readline()).startswith(b"220 ")  # greeting first, as always
        writer.write(v1("203.0.113.7", 40001))
        assert (await reader.readline()).startswith(b'500 Error: command "PROXY"')
        writer.close()
        smtp = await env.login(alice)
        await smtp.sendmail(alice, [customer], message(alice, customer, "Direct"))
        await smtp.quit()
        await env.delivered(customer)
        [line] = logged(caplog, f" logged in as {alice}")
        assert line.startswith("relay: 127.0.0.1:")  # the connection's own address
        assert not logged(caplog, "via load balancer") and not logged(caplog, "203.0.113.7")


def test_proxy_settings_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "mailcrm.toml"
    path.write_text('[relay]\nproxy_protocol = true\nproxy_trusted = ["10.0.0.0/8", "fd00::/8"]\n')
    policy = ProxyPolicy.from_config(load_config(str(path)).relay)
    assert policy is not None and policy.timeout == 10.0
    assert policy.trusts(("10.1.2.3", 1)) and policy.trusts(("::ffff:10.1.2.3", 1, 0, 0))
    assert not policy.trusts(("127.0.0.1", 1)) and not policy.trusts(("192.0.2.1", 1))
    assert ProxyPolicy.from_config(RelayConfig()) is None  # off by default

    path.write_text('[relay]\nproxy_protocol = true\nproxy_trusted = ["10.0.0.0/8", "lb1"]\n')
    with pytest.raises(ConfigError, match=r"relay.proxy_trusted: 'lb1' is not a network"):
        ProxyPolicy.from_config(load_config(str(path)).relay)
