"""Flood and brute force against the relay in front of the real Postfix/Dovecot (issue 13, item 6).

One address (127.0.0.1) floods or guesses; another client (127.0.0.2, also loopback on Linux,
a different address to the relay) must still be greeted, log in quickly and send. What is
asserted is what the clients get (220, 421, 535, 454, 538), what Postfix delivered, and how
often Dovecot was asked for a password (its log), not timings where a count will do.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
import uuid
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import Cli
from tests.relaykit import HOST, PASSWORD, RelayEnv, eventually, message, running
from tests.servers import Postfix

pytestmark = pytest.mark.servers
OTHER = "127.0.0.2"  # another client address on the loopback network


def external() -> str:
    tag = uuid.uuid4().hex[:8]
    return f"buyer{tag}@customer-{tag}.example"


async def idler(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A connection from 127.0.0.1 that reads the relay's first line and then says nothing."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(HOST, 0))
    return reader, writer, await asyncio.wait_for(reader.readline(), 10)


async def send_from_other(env: RelayEnv, user: str, subject: str) -> float:
    """Log in from 127.0.0.2 and send one message; the seconds the login took."""
    smtp = env.client(source_address=(OTHER, 0))
    await smtp.connect()
    started = time.monotonic()
    await smtp.login(user, PASSWORD)
    took = time.monotonic() - started
    customer = external()
    await smtp.sendmail(user, [customer], message(user, customer, subject))
    await smtp.quit()
    await env.delivered(customer)
    return took


async def test_idle_flood_from_one_address_locks_nobody_else_out(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(
        cli,
        db_url,
        tmp_path,
        postfix,
        max_connections=200,
        max_connections_per_client=20,
        unauthenticated_timeout=3.0,
        unauthenticated_timeout_busy=1.0,
    ) as env:
        alice = env.user("alice")
        idlers = [await idler(env.port) for _ in range(210)]
        firsts = [line[:4] for _, _, line in idlers]
        assert firsts.count(b"220 ") == 20 and firsts.count(b"421 ") == 190
        refused = next(line for _, _, line in idlers if line.startswith(b"421"))
        assert b"4.7.0 Too many connections from your address" in refused

        await send_from_other(env, alice, "Despite the flood")  # greeted, logged in, sent

        greeted = [(r, w) for r, w, line in idlers if line.startswith(b"220")]
        for reader, _ in greeted:  # dropped at the login deadline, with a reason
            rest = await asyncio.wait_for(reader.read(), 10)
            assert rest.startswith(b"421 4.4.2")
        for _, writer, _ in idlers:
            writer.close()
        assert await eventually(lambda: env.relay.connections == 0)
        assert env.relay.gatekeeper.per_client == {}


async def test_brute_force_is_throttled_before_the_upstream(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    async with running(
        cli,
        db_url,
        tmp_path,
        postfix,
        auth_failures_before_delay=3,
        auth_delay=1.0,
        auth_delay_max=2.0,
        auth_failures_before_refusal=6,
        auth_refusal_seconds=60.0,
    ) as env:
        alice, bob = env.user("alice"), env.user("bob")
        guesser = await env.login(bob)  # a logged-in session may AUTH no more: a fresh one
        await guesser.quit()
        guesser = env.client()
        await guesser.connect()
        await guesser.ehlo()
        replies: list[tuple[int, float]] = []

        async def guess_all() -> None:
            for attempt in range(15):
                token = base64.b64encode(f"\0{alice}\0wrong {attempt}".encode())
                started = time.monotonic()
                reply = await guesser.execute_command(b"AUTH", b"PLAIN", token)
                replies.append((reply.code, time.monotonic() - started))
                assert reply.code != 235

        guessing = asyncio.create_task(guess_all())
        await eventually(lambda: len(replies) >= 4)  # now waiting out its 2nd delay (2 s)
        took = await send_from_other(env, bob, "While someone guesses")
        assert not guessing.done()  # the guesser's delay did not hold the other session up
        await guessing
        codes = [code for code, _ in replies]
        assert codes[:6] == [535] * 6 and codes[6:] == [454] * 9
        upstream = max(seconds for _, seconds in replies[:3])  # the free attempts: its answer
        assert [round(s - upstream) for _, s in replies[3:6]] == [1, 2, 2]  # + growing delays
        assert all(seconds < 0.5 for _, seconds in replies[6:])  # refused at once
        assert took < 1.0  # bob, from elsewhere, waited for none of them

        # Dovecot was asked for alice's password for 6 attempts, not 15 (each twice: the relay's
        # upstream client tries PLAIN, then LOGIN); the right one is refused too while the
        # refusal lasts (from any address), and never reaches the upstream.
        mismatches = [
            line
            for line in env.dovecot.log().splitlines()
            if alice.lower() in line.lower() and "mismatch" in line.lower()
        ]
        assert 6 <= len(mismatches) <= 2 * 6, mismatches
        other = env.client(source_address=(OTHER, 0))
        await other.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
            await other.login(alice, PASSWORD)
        assert caught.value.code == 454 and caught.value.message.startswith("4.7.0")
        await other.quit()
        await guesser.quit()
        refusals = [
            r.getMessage() for r in caplog.records if "too many failed logins" in r.getMessage()
        ]
        assert refusals and all(line.startswith("relay: failed AUTH from ") for line in refusals)


async def test_guessing_many_logins_from_one_address_is_throttled(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(
        cli,
        db_url,
        tmp_path,
        postfix,
        auth_failures_before_delay=2,
        auth_delay=0.1,
        auth_delay_max=0.1,
        auth_failures_before_refusal=4,
        auth_refusal_seconds=60.0,
    ) as env:
        bob = env.user("bob")
        smtp = env.client()
        await smtp.connect()
        await smtp.ehlo()
        codes = []
        for _ in range(8):  # a different, unknown login each time: the address is counted
            token = base64.b64encode(f"\0nobody{uuid.uuid4().hex[:6]}\0guess".encode())
            codes.append((await smtp.execute_command(b"AUTH", b"PLAIN", token)).code)
        await smtp.quit()
        assert codes == [535] * 4 + [454] * 4
        await send_from_other(env, bob, "Other address, not throttled")


async def test_proxy_unknown_client_is_not_loopback(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix, caplog: pytest.LogCaptureFixture
) -> None:
    """A load balancer on loopback that does not know the client (PROXY v1 UNKNOWN) does not
    make the client a loopback one: plaintext AUTH stays refused."""
    caplog.set_level(logging.INFO, logger="proxy")
    async with running(
        cli,
        db_url,
        tmp_path,
        postfix,
        allow_plaintext_auth_on_loopback=True,
        proxy_protocol=True,
        proxy_trusted=["127.0.0.1/32"],
    ) as env:
        alice = env.user("alice")
        sock = socket.create_connection((HOST, env.port))
        sock.sendall(b"PROXY UNKNOWN\r\n")
        smtp = env.client(port=None, sock=sock, start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        assert not smtp.supports_extension("auth")
        token = base64.b64encode(f"\0{alice}\0{PASSWORD}".encode())
        reply = await smtp.execute_command(b"AUTH", b"PLAIN", token)
        assert reply.code == 538 and "5.7.11" in reply.message
        await smtp.quit()
        assert any(
            r.getMessage().startswith("relay: client unknown via load balancer")
            for r in caplog.records
        )
