"""The relay when things go wrong (B1, B2): upstream down or hanging, CRM database away, limits.

The upstream is the real test Postfix behind a :class:`~tests.relaykit.Cable` that can be cut or
stalled; the CRM database is made unavailable for real (SQLite: another process-level writer
holds the lock; PostgreSQL: the schema disappears). A fake upstream (aiosmtpd) is used only for
what Postfix cannot be made to do here: lacking SMTPUTF8/8BITMIME, refusing a message at DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_URL, Cli
from tests.relaykit import HOST, PASSWORD, RelayEnv, eventually, lf, message, running
from tests.servers import Postfix

pytestmark = pytest.mark.servers


def external(name: str = "client") -> str:
    tag = uuid.uuid4().hex[:8]
    return f"{name}{tag}@customer-{tag}.example"


@contextlib.contextmanager
def database_down(db_url: str) -> Iterator[None]:
    """The CRM database refuses work: SQLite locked by another writer, PostgreSQL schema gone."""
    url = make_url(db_url)
    if url.drivername.startswith("sqlite"):
        holder = sqlite3.connect(str(url.database), timeout=0, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    schema = str(url.query["options"]).split("search_path=")[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER SCHEMA {schema} RENAME TO {schema}_down"))
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"ALTER SCHEMA {schema}_down RENAME TO {schema}"))
        admin.dispose()


async def test_upstream_down_gives_451_and_loses_nothing(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(cli, db_url, tmp_path, postfix, cable=True) as env:
        assert env.cable is not None
        alice, customer = env.user("alice"), external()
        raw = message(alice, customer, "Sent while the server was down")
        smtp = await env.login(alice)
        await env.cable.cut()
        # MAIL goes upstream with the first RCPT (PIPELINING): the 451 comes at MAIL when the
        # relay already knows the session is gone, else at RCPT; temporary either way
        refused = (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientsRefused)
        with pytest.raises(refused) as caught:
            await smtp.sendmail(alice, [customer], raw)
        error = caught.value
        refusal = error.recipients[0] if isinstance(error, refused[1]) else error
        assert isinstance(refusal, aiosmtplib.SMTPResponseException)
        assert refusal.code == 451 and refusal.message.startswith("4.4.1")
        other = env.client()
        await other.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as auth:
            await other.login(alice, PASSWORD)
        assert auth.value.code == 454 and auth.value.message.startswith("4.7.0")
        await other.quit()
        assert env.spool_entries() == [] and env.file_copies() == []

        await env.cable.splice()  # the server is back; the client retries its message
        errors, reply = await smtp.sendmail(alice, [customer], raw)
        await smtp.quit()
        assert errors == {} and reply.startswith("2.0.0")
        got = await env.delivered(customer)
        assert len(got) == 1 and lf(raw) in lf(got[0])
        await eventually(env.activities)
        await asyncio.sleep(0.5)
        assert [a.subject for a in env.activities()] == ["Sent while the server was down"]


async def test_upstream_hanging_during_data_gives_451(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(cli, db_url, tmp_path, postfix, cable=True, upstream_timeout=2.0) as env:
        assert env.cable is not None
        alice, customer = env.user("alice"), external()
        raw = message(alice, customer, "Hung upstream")
        smtp = await env.login(alice)
        await smtp.mail(alice)
        await smtp.rcpt(customer)
        env.cable.stall()
        with pytest.raises(aiosmtplib.SMTPDataError) as caught:
            await smtp.data(raw)
        assert caught.value.code == 451 and caught.value.message.startswith("4.4.1")
        env.cable.stall(False)
        await eventually(lambda: env.spool_entries() == [])  # the capture copy is dropped
        assert env.activities() == [] and env.postfix.delivered(customer) == []

        await smtp.sendmail(alice, [customer], raw)  # the client retries
        await smtp.quit()
        assert len(await env.delivered(customer)) == 1
        assert len(await eventually(env.activities)) == 1


async def test_crm_database_unavailable_while_sending(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(cli, db_url, tmp_path, postfix, spool_timeout=1.0) as env:
        alice, first, second = env.user("alice"), external(), external()
        smtp = await env.login(alice)  # links alice's mailbox while the CRM is up
        with database_down(db_url):
            errors, reply = await smtp.sendmail(alice, [first], message(alice, first, "One"))
            assert errors == {} and reply.startswith("2.0.0")
            late = await env.login(alice)  # a new connection during the outage
            await late.sendmail(alice, [second], message(alice, second, "Two"))
            await late.quit()
            await env.delivered(first)
            await env.delivered(second)
            assert len(env.file_copies()) == 2  # the capture copies wait on disk
        await smtp.quit()
        activities = await eventually(
            lambda: len(env.activities()) == 2 and env.activities(), timeout=40
        )
        assert sorted(a.subject for a in activities) == ["One", "Two"]
        assert env.file_copies() == []
        subjects = sorted(a["subject"] for a in env.cli.json("activities", "list"))
        assert subjects == ["One", "Two"]


async def test_spool_entry_is_durable_when_the_client_gets_250(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(cli, db_url, tmp_path, postfix, worker=False) as env:
        alice, to, bcc = env.user("alice"), external("to"), external("bcc")
        raw = message(alice, to, "Spooled")
        smtp = await env.login(alice)
        await smtp.sendmail(alice, [to, bcc], raw)
        await smtp.quit()
        [(envelope, copy)] = env.spooled()  # SQLite: the spool journal; PostgreSQL: the table
        assert copy == raw and envelope.envelope_from == alice
        assert envelope.envelope_to == [to, bcc] and envelope.mailbox == alice
        assert envelope.direction == "outgoing" and env.activities() == []
        assert (env.file_copies() != []) is db_url.startswith("sqlite")


async def test_unusable_spool_directory_falls_back_to_the_database(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the disk refuses: a file where the spool directory should be")
    async with running(cli, db_url, tmp_path, postfix, worker=False, spool_dir=str(blocker)) as env:
        alice, to = env.user("alice"), external("to")
        raw = message(alice, to, "Spool directory unusable")
        smtp = await env.login(alice)
        errors, reply = await smtp.sendmail(alice, [to], raw)
        await smtp.quit()
        assert errors == {} and reply.startswith("2.0.0")
        [(envelope, copy)] = env.spooled()  # in the database, both ways
        assert copy == raw and envelope.envelope_to == [to]
        [entry] = env.spool_entries()
        assert entry.delivered and entry.state == "pending"
        assert len(await env.delivered(to)) == 1


async def test_fifty_concurrent_clients(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(cli, db_url, tmp_path, postfix) as env:
        users = [env.user(f"u{i}") for i in range(5)]
        customers = [external(f"c{i}") for i in range(50)]

        async def one(i: int) -> str:
            sender = users[i % len(users)]
            smtp = await env.login(sender)
            _, reply = await smtp.sendmail(
                sender, [customers[i]], message(sender, customers[i], f"Parallel {i}")
            )
            await smtp.quit()
            return str(reply)

        replies = await asyncio.gather(*(one(i) for i in range(50)))
        assert all(r.startswith("2.0.0 Ok: ") and " queued as " in r for r in replies)
        for customer in customers:
            await env.delivered(customer)
        activities = await eventually(
            lambda: len(env.activities()) == 50 and env.activities(), timeout=60
        )
        assert sorted(a.subject for a in activities) == sorted(f"Parallel {i}" for i in range(50))
        # the clients' QUIT returns before the relay's side of the sockets is closed
        assert await eventually(lambda: env.relay.connections == 0)


def on_loop(kind: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario`` on a new event loop of ``kind``: the tests' own loop is asyncio's,
    ``mailcrm serve`` runs on uvloop, and the two order a connection's events differently."""
    factory = asyncio.new_event_loop
    if kind == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_clients_that_vanish_are_not_counted_as_open(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix, loop: str
) -> None:
    """A client that disappears (a load balancer's bare TCP check, a killed mail client: no
    QUIT) at any point leaves no open connection behind: the count the connection limit and a
    shutdown's drain go by comes back to zero at once, and the relay serves the next client."""

    async def scenario() -> None:
        async with running(cli, db_url, tmp_path, postfix, tls_port=0) as env:
            alice, customer = env.user("alice"), external()
            for port in env.relay.ports:  # connect and close, as a TCP health check does
                for _ in range(3):
                    socket.create_connection((HOST, port)).close()
            with socket.create_connection((HOST, env.relay.ports[1])) as sock:
                sock.sendall(b"EHLO not.tls.example\r\n")  # a TLS handshake that fails
            tls = await asyncio.open_connection(HOST, env.relay.ports[1], ssl=env.ca)
            await tls[0].readline()  # greeted over implicit TLS
            plain = await asyncio.open_connection(HOST, env.port)  # greeted, before STARTTLS
            await plain[0].readline()
            idle = await env.login(alice)  # logged in, between messages
            in_data = await env.login(alice)  # in the middle of a message
            await in_data.mail(alice)
            await in_data.rcpt(customer)
            code, _ = await in_data.execute_command(b"DATA")
            assert code == 354
            assert in_data.transport is not None
            in_data.transport.write(b"Subject: half a message\r\n\r\nthe first line\r\n")
            await asyncio.sleep(0.2)
            for transport in (
                plain[1].transport,
                tls[1].transport,
                idle.transport,
                in_data.transport,
            ):
                assert transport is not None
                transport.abort()
            # the relay's side closes a moment after the reset reaches it (not after the idle
            # timeout, five minutes)
            assert await eventually(lambda: env.relay.connections == 0, timeout=10)
            smtp = await env.login(alice)
            await smtp.sendmail(
                alice, [customer], message(alice, customer, "After the vanished ones")
            )
            await smtp.quit()
            await env.delivered(customer)

    on_loop(loop, scenario)


async def test_limits_recipients_rate_and_connections(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(
        cli,
        db_url,
        tmp_path,
        postfix,
        max_recipients=3,
        max_messages_per_minute=2,
        max_connections=2,
    ) as env:
        alice = env.user("alice")
        smtp = await env.login(alice)
        await smtp.mail(alice)
        for _ in range(3):
            await smtp.rcpt(external())
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as many:
            await smtp.rcpt(external())
        assert many.value.code == 452 and many.value.message.startswith("4.5.3")
        await smtp.rset()
        await smtp.mail(alice)
        await smtp.rset()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as rate:
            await smtp.mail(alice)
        assert rate.value.code == 450 and rate.value.message.startswith("4.7.1")

        second = env.client()
        await second.connect()
        third = env.client()
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
            await third.connect()
        assert refused.value.code == 421
        await second.quit()
        await smtp.quit()


class FakeUpstream:
    """An aiosmtpd server without 8BITMIME/SMTPUTF8 that accepts any login."""

    def __init__(self, data_reply: str | None = None) -> None:
        self.data_reply = data_reply
        self.mail_reply: str | None = None
        self.pipelining = False
        self.commands: list[str] = []
        self.server: asyncio.Server | None = None
        self.received: list[bytes] = []

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING"] * self.pipelining + responses[-1:]

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.commands.append(f"MAIL {address}")
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.received.append(bytes(envelope.original_content or b""))
        return self.data_reply or "250 2.0.0 accepted by the fake"

    @staticmethod
    def accept(*_args: Any) -> AuthResult:
        return AuthResult(success=True)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(
                self,
                decode_data=True,
                enable_SMTPUTF8=False,
                auth_require_tls=False,
                authenticator=self.accept,
                hostname="fake.example",
                loop=loop,
            ),
            HOST,
            0,
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream()
    yield upstream
    await upstream.stop()


async def _fake_env(
    cli: Cli, db_url: str, tmp: Path, postfix: Postfix, fake: FakeUpstream
) -> contextlib.AbstractAsyncContextManager[RelayEnv]:
    port = await fake.start()
    return running(cli, db_url, tmp, postfix, upstream_port=port, upstream_tls="none")


async def test_upstream_without_smtputf8_is_mirrored(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix, fake: FakeUpstream
) -> None:
    async with await _fake_env(cli, db_url, tmp_path, postfix, fake) as env:
        alice = env.user("alice")
        smtp = await env.login(alice)
        assert "smtputf8" not in smtp.esmtp_extensions
        assert "8bitmime" not in smtp.esmtp_extensions
        reply = await smtp.execute_command(b"MAIL", f"FROM:<{alice}>".encode(), b"SMTPUTF8")
        assert reply.code == 555 and "SMTPUTF8" in reply.message
        reply = await smtp.execute_command(b"MAIL", f"FROM:<{alice}>".encode(), b"BODY=8BITMIME")
        assert reply.code == 555
        await smtp.quit()


async def test_upstream_refusing_the_sender_is_heard_at_rcpt(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix, fake: FakeUpstream
) -> None:
    """With PIPELINING upstream, MAIL goes up with the first RCPT: a refused sender is the
    reply to that RCPT and to every later one, and nothing is sent or captured."""
    fake.pipelining = True
    fake.mail_reply = "553 5.7.1 Sender address rejected by the fake"
    async with await _fake_env(cli, db_url, tmp_path, postfix, fake) as env:
        alice, first, second = env.user("alice"), external(), external()
        smtp = await env.login(alice)
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
            await smtp.sendmail(alice, [first, second], message(alice, first, "Refused"))
        assert [(r.code, r.message) for r in caught.value.recipients] == [
            (553, "5.7.1 Sender address rejected by the fake")
        ] * 2
        fake.mail_reply = None  # the same session sends the next message
        errors, _ = await smtp.sendmail(alice, [first], message(alice, first, "Accepted"))
        await smtp.quit()
        assert errors == {} and fake.commands == [f"MAIL {alice}"] * 2
        assert len(fake.received) == 1 and b"Subject: Accepted" in fake.received[0]
        activities = await eventually(env.activities)
        assert [a.subject for a in activities] == ["Accepted"]


async def test_upstream_refusing_at_data_is_relayed_as_is(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix, fake: FakeUpstream
) -> None:
    fake.data_reply = "554 5.7.1 Message rejected: looks like spam"
    async with await _fake_env(cli, db_url, tmp_path, postfix, fake) as env:
        alice, customer = env.user("alice"), external()
        smtp = await env.login(alice)
        with pytest.raises(aiosmtplib.SMTPDataError) as caught:
            await smtp.sendmail(alice, [customer], message(alice, customer, "Spammy"))
        assert caught.value.code == 554
        assert caught.value.message == "5.7.1 Message rejected: looks like spam"
        await smtp.quit()
        await asyncio.sleep(0.5)  # past the journal's segment age: nothing is published late
        assert env.spool_entries() == [] and env.file_copies() == []
        assert env.activities() == [] and len(fake.received) == 1
