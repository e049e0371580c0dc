"""Helpers for the relay tests: the relay in-process in front of the test Postfix, and a cable.

Role: test support for ``tests/test_relay*.py`` and ``bench/relay.py``. :class:`RelayEnv` runs
the relay (with its own self-signed certificate, random port) and the spool worker on the test's
event loop against one fresh CRM database, with the company upstream set to the test Postfix
(certificate checked against the test CA). Between the relay and Postfix it can put a
:class:`Cable`, a loopback TCP forwarder that can be cut (connections dropped, port refusing) or
stalled (bytes held back), to show what the relay does when the real server goes away or hangs.
Clients are aiosmtplib, as a mail client would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from sqlalchemy import select

from crm.config import Config, RelayConfig
from crm.spool import queue as spool
from crm.spool import runner
from crm.spool.files import FileSpool
from crm.store.db import Database
from crm.store.models import Activity, SpoolEntry
from proxy.smtp.relay import Relay
from proxy.smtp.tls import write_selfsigned
from tests.conftest import Cli
from tests.servers import Dovecot, Postfix

HOST = "127.0.0.1"
PASSWORD = "relay pass 1"


def message(
    sender: str,
    to: str,
    subject: str,
    *,
    body: str = "Hello,\r\nhere is our offer.\r\n",
    msgid: bool = True,
    extra: str = "",
) -> bytes:
    """A small plain-text RFC 5322 message (without Message-ID when ``msgid`` is False)."""
    head = f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
    head += f"Date: {email.utils.formatdate(time.time())}\r\n"
    if msgid:
        head += f"Message-ID: <{uuid.uuid4().hex}@client.example>\r\n"
    head += "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n" + extra
    return (head + "\r\n" + body).encode()


def lf(raw: bytes) -> bytes:
    """Maildir copies have LF line ends: compare in that form."""
    return raw.replace(b"\r\n", b"\n")


async def eventually(check: Callable[[], Any], timeout: float = 20.0, step: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        await asyncio.sleep(step)


class Cable:
    """A loopback TCP forwarder to ``target``, on a fixed port, that can fail on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.stalled = False
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def splice(self) -> None:
        """(Re)open the port and forward."""
        self.stalled = False
        self._server = await asyncio.start_server(self._accept, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Drop every connection and refuse new ones (the server is down)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def stall(self, stalled: bool = True) -> None:
        """Keep connections open but drop every byte (the server hangs), or stop doing so."""
        self.stalled = stalled

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._links.discard(w)
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.stalled:
                continue
            writer.write(data)
            await writer.drain()
        writer.close()


@dataclass
class RelayEnv:
    """The relay and spool worker running for one test, plus what the test needs around them."""

    cli: Cli
    db: Database
    config: Config
    postfix: Postfix
    dovecot: Dovecot
    relay: Relay
    ca: ssl.SSLContext
    cable: Cable | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    wakeup: spool.Wakeup = field(default_factory=spool.Wakeup)  # the relay's kicks wake the worker

    def start_worker(self) -> None:
        """Run the spool worker, woken by the relay's deliveries (as in ``mailcrm serve``)."""
        self.worker = asyncio.create_task(
            runner.run_spool_worker(self.config, self.db, self.stop, wakeup=self.wakeup)
        )

    @property
    def port(self) -> int:
        return self.relay.ports[0]

    def user(self, name: str = "user", crm: bool = True, add_to_crm: bool = True) -> str:
        """A fresh mail user on the test servers (password :data:`PASSWORD`), also in the CRM."""
        address = self.dovecot.add_user(f"{name}{uuid.uuid4().hex[:8]}", PASSWORD)
        if add_to_crm:
            self.cli.ok("user", "add", address, *(() if crm else ("--no-crm",)))
        return address

    def client(self, **options: Any) -> aiosmtplib.SMTP:
        """An unconnected aiosmtplib client for the relay (STARTTLS, our certificate trusted)."""
        settings: dict[str, Any] = {
            "hostname": HOST,
            "port": self.port,
            "start_tls": True,
            "tls_context": self.ca,
            "timeout": 30,
        }
        settings.update(options)
        return aiosmtplib.SMTP(**settings)

    async def login(self, address: str, password: str = PASSWORD) -> aiosmtplib.SMTP:
        smtp = self.client()
        await smtp.connect()
        await smtp.login(address, password)
        return smtp

    def activities(self) -> list[Activity]:
        with self.db.session() as session:
            return list(session.scalars(select(Activity).order_by(Activity.id)))

    def spool_entries(self) -> list[SpoolEntry]:
        with self.db.session() as session:
            return list(session.scalars(select(SpoolEntry).order_by(SpoolEntry.id)))

    def spool_files(self) -> list[Path]:
        """Published spool files waiting for the worker."""
        return FileSpool(spool.spool_dir(self.config)).paths()

    def file_copies(self) -> list[tuple[spool.Envelope, bytes]]:
        """Capture copies on disk: in published files and in the journal's active segment."""
        files = FileSpool(spool.spool_dir(self.config))
        directory = spool.spool_dir(self.config)
        active = sorted(directory.glob(".*.seg")) if directory.is_dir() else []
        return [item for path in files.paths() + active for item in files.read(path)]

    def spooled(self) -> list[tuple[spool.Envelope, bytes]]:
        """Capture copies waiting, wherever they are: delivered pending entries, then files."""
        found = [
            (spool.Envelope(e.mailbox_address, e.envelope_from, e.envelope_to, e.direction), e.raw)
            for e in self.spool_entries()
            if e.delivered and e.state == "pending"
        ]
        return found + self.file_copies()

    async def delivered(self, address: str, count: int = 1, timeout: float = 20.0) -> list[bytes]:
        """Messages delivered to ``address`` (Dovecot INBOX or Postfix's capture Maildir)."""
        found: list[bytes] = await eventually(
            lambda: (m := self.postfix.delivered(address)) and len(m) >= count and m, timeout
        )
        return found

    async def close(self) -> None:
        self.stop.set()
        if self.worker is not None:
            await self.worker
        await self.relay.close(drain=1.0)
        if self.cable is not None:
            await self.cable.cut()
        self.db.dispose()


def relay_config(tmp: Path, postfix: Postfix, port: int, **overrides: Any) -> RelayConfig:
    """Relay settings for tests: random port, own certificate, Postfix (via ``port``) upstream."""
    cert, key = tmp / "relay.crt", tmp / "relay.key"
    if not cert.exists():
        write_selfsigned(cert, key, ["localhost", HOST])
    settings: dict[str, Any] = {
        "host": HOST,
        "port": 0,
        "cert_file": str(cert),
        "key_file": str(key),
        "upstream_host": HOST,
        "upstream_port": port,
        "upstream_tls": "starttls",
        "upstream_ca_file": str(postfix.cert_path),
        "upstream_timeout": 10.0,
        "spool_dir": str(tmp / "spool"),
        "spool_timeout": 2.0,
        "spool_poll_interval": 0.1,
        "hostname": "relay.example.test",
        "max_messages_per_minute": 1000,
    }
    settings.update(overrides)
    return RelayConfig(**settings)


async def start_env(
    cli: Cli,
    db_url: str,
    tmp: Path,
    postfix: Postfix,
    *,
    cable: bool = False,
    worker: bool = True,
    **overrides: Any,
) -> RelayEnv:
    """Start the relay (and the spool worker) for one test."""
    link = None
    if cable:
        link = Cable(postfix.port)
        await link.splice()
    config = Config(database_url=db_url, secret_key=cli.env["MAILCRM_SECRET_KEY"])
    config.relay = relay_config(tmp, postfix, link.port if link else postfix.port, **overrides)
    config.poller.upstream_host = postfix.dovecot.host
    config.poller.upstream_port = postfix.dovecot.imaps_port
    db = Database(db_url)
    wakeup = spool.Wakeup()
    relay = Relay(config, db, config.relay.hostname or "relay.example.test", wakeup)
    await relay.start()
    ca = ssl.create_default_context(cafile=str(tmp / "relay.crt"))
    env = RelayEnv(cli, db, config, postfix, postfix.dovecot, relay, ca, cable=link, wakeup=wakeup)
    if worker:
        env.start_worker()
    return env


@contextlib.asynccontextmanager
async def running(*args: Any, **kwargs: Any) -> Any:
    """``async with running(cli, db_url, tmp, postfix) as env``: started and always closed."""
    env = await start_env(*args, **kwargs)
    try:
        yield env
    finally:
        await env.close()
