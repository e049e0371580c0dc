"""Helpers for the poller tests: a mailbox on the test Dovecot, messages, the poller in-process.

Role: test support for ``tests/test_poller*.py`` and ``tests/test_imap*.py``. :class:`MailEnv`
ties one fresh Dovecot user to one fresh CRM database (through the ``cli`` fixture, like a
script), writes the config the poller reads (the test CA, short timers), and can run
``run_poller`` on the test's event loop (:meth:`MailEnv.poller`) or ``mailcrm serve`` with only
the poller in a child process (:meth:`MailEnv.spawn`). Flags are read and changed with the
stdlib ``imaplib``, as a user's mail client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import imaplib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from crm.config import load_config
from crm.store.db import Database
from crm.store.models import Activity, FolderState, MessageLocation
from proxy.imap.poller import run_poller
from tests.conftest import Cli
from tests.servers import Dovecot

PASSWORD = "s3cret pass"
LEASE_S = 3.0
ROOT = Path(__file__).resolve().parent.parent

FAST = {
    "refresh_s": 0.3,
    "push_check_s": 0.2,
    "backoff_min_s": 0.2,
    "backoff_max_s": 1.0,
    "auth_backoff_min_s": 0.5,
    "timeout_s": 10.0,
    "active_interval_s": 3600,
}


def message(
    sender: str,
    to: str,
    subject: str,
    *,
    msgid: str | None = None,
    days_ago: float = 0.0,
    body: str = "Hello,\r\nplease send an offer.\r\n",
    extra: str = "",
) -> bytes:
    """A small RFC 5322 message."""
    when = email.utils.formatdate(time.time() - days_ago * 86400, localtime=False)
    mid = msgid or f"<{uuid.uuid4().hex}@mail.example.org>"
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {when}\r\n"
        f"Message-ID: {mid}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    )
    return (head + extra + "\r\n" + body).encode()


def _toml(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines)


class MailEnv:
    """One Dovecot user, its linked mailbox, and the CRM behind it."""

    def __init__(self, dovecot: Dovecot, cli: Cli, tmp: Path, **poller: Any) -> None:
        self.dovecot = dovecot
        self.cli = cli
        self.tmp = tmp
        self.user = "u" + uuid.uuid4().hex[:10]
        self.address = dovecot.add_user(self.user, PASSWORD)
        self.url = cli.env["MAILCRM_DATABASE_URL"]
        self.config_path = tmp / "mailcrm.toml"
        self.extra_cas: list[Path] = []
        self.write_config(**poller)

    def write_config(self, **poller: Any) -> None:
        """The config file the poller and the CLI read: the test CA and quick timers."""
        settings = {"ca_file": str(self.ca_bundle()), **FAST, **poller}
        cluster = {"lease_seconds": LEASE_S}
        text = "[poller]\n" + _toml(settings) + "\n\n[cluster]\n" + _toml(cluster) + "\n"
        self.config_path.write_text(text)
        self.cli.env["MAILCRM_CONFIG"] = str(self.config_path)

    def ca_bundle(self) -> Path:
        """Dovecot's certificate (and Postfix's, when there is one) in one CA file."""
        bundle = self.tmp / "ca.pem"
        certs = [self.dovecot.cert_path, *self.extra_cas]
        bundle.write_bytes(b"".join(Path(c).read_bytes() for c in certs))
        return bundle

    def link(self, *extra: str, password: str = PASSWORD, address: str | None = None) -> str:
        """Add the employee and link the mailbox over IMAPS."""
        address = address or self.address
        self.cli.ok("user", "add", address, "--name", "Employee")
        self.cli.ok(
            "mailbox", "add", address, "--owner", address,
            "--imap-host", "127.0.0.1", "--imap-port", str(self.dovecot.imaps_port),
            "--imap-tls", "ssl", "--password-stdin", *extra,
            input=password + "\n",
        )  # fmt: skip
        return address

    def deliver(
        self, raw: bytes, folder: str = "INBOX", seen: bool = False, days_ago: float = 0
    ) -> Path:
        """Put a message into the user's Maildir (INTERNALDATE ``days_ago`` days back)."""
        stamp = time.time() - days_ago * 86400 if days_ago else None
        return self.dovecot.deliver(self.user, raw, folder=folder, seen=seen, mtime=stamp)

    # -- what users see ------------------------------------------------------------------------

    def activities(self) -> list[dict[str, Any]]:
        """``mailcrm activities list --json``."""
        result: list[dict[str, Any]] = self.cli.json("activities", "list")
        return result

    def leads(self) -> list[dict[str, Any]]:
        """``mailcrm leads list --json``."""
        result: list[dict[str, Any]] = self.cli.json("leads", "list")
        return result

    def mailbox(self) -> dict[str, Any]:
        """``mailcrm mailbox show ADDRESS --json``."""
        result: dict[str, Any] = self.cli.json("mailbox", "show", self.address)
        return result

    def count(self, model: Any = Activity) -> int:
        """Rows of one table (fast, for the big tests)."""
        db = Database(self.url, migrate=False)
        try:
            with db.session() as s:
                return int(s.scalar(select(func.count()).select_from(model)) or 0)
        finally:
            db.dispose()

    def locations(self) -> list[tuple[str, int, int, str]]:
        """(folder, uidvalidity, uid, message key) of every recorded location."""
        db = Database(self.url, migrate=False)
        try:
            with db.session() as s:
                rows = s.execute(
                    select(
                        MessageLocation.folder,
                        MessageLocation.uidvalidity,
                        MessageLocation.uid,
                        MessageLocation.message_key,
                    )
                ).all()
                return [tuple(r) for r in rows]  # type: ignore[misc]
        finally:
            db.dispose()

    def checkpoints(self) -> dict[str, tuple[int, int]]:
        """folder -> (uidvalidity, last_uid)."""
        db = Database(self.url, migrate=False)
        try:
            with db.session() as s:
                rows = s.execute(
                    select(FolderState.folder, FolderState.uidvalidity, FolderState.last_uid)
                )
                return {f: (v, u) for f, v, u in rows}
        finally:
            db.dispose()

    # -- the user's mail client ----------------------------------------------------------------

    @contextlib.contextmanager
    def imap(self, folder: str = "INBOX") -> Iterator[imaplib.IMAP4_SSL]:
        """A stdlib IMAP session as the user, with ``folder`` selected."""
        conn = imaplib.IMAP4_SSL(
            "127.0.0.1", self.dovecot.imaps_port, ssl_context=self.dovecot.ssl_context()
        )
        try:
            conn.login(self.address, PASSWORD)
            if folder:
                conn.select(f'"{folder}"')
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags, as the user's client sees them."""
        with self.imap(folder) as conn:
            typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
            assert typ == "OK", data
        found: dict[int, set[str]] = {}
        for item in data:
            if not isinstance(item, bytes) or b"UID " not in item:
                continue  # an unsolicited FETCH (another session changed flags) has no UID
            parts = imaplib.ParseFlags(item)
            uid = int(item.split(b"UID ")[1].split()[0].rstrip(b")"))
            found[uid] = {p.decode() for p in parts}
        return found

    # -- running the poller --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def poller(self) -> AsyncIterator[asyncio.Task[None]]:
        """``run_poller`` on this event loop until the block ends."""
        config = load_config(str(self.config_path), self.url)
        config.secret_key = self.cli.env["MAILCRM_SECRET_KEY"]
        db = Database(self.url)
        stop = asyncio.Event()
        task = asyncio.create_task(run_poller(config, db, stop))
        try:
            yield task
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
            db.dispose()

    def spawn(self, log: Path) -> subprocess.Popen[bytes]:
        """``serve`` with only the poller component, in a child process (for kill -9)."""
        code = textwrap.dedent(
            """
            import asyncio, logging, sys
            from crm.config import load_config
            from crm.store.db import Database
            from proxy.serve import serve
            logging.basicConfig(level=logging.INFO, stream=sys.stderr)
            config = load_config(sys.argv[1], sys.argv[2])
            asyncio.run(serve(config, Database(config.database_url),
                              components=(("poller", "proxy.imap.poller:run_poller"),)))
            """
        )
        env = {**os.environ, **self.cli.env}
        with log.open("ab") as sink:
            return subprocess.Popen(
                [sys.executable, "-c", code, str(self.config_path), self.url],
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=sink,
            )


async def until(
    check: Callable[[], Any], timeout: float = 60.0, every: float = 0.1, what: str = ""
) -> Any:
    """Poll ``check`` (run in a thread) until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what or check}: last value {last!r}")


class TcpProxy:
    """A TCP forwarder in front of the server, to cut, taint or freeze connections on demand."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, port)
        self.port = 0
        self.accepted = 0
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._pairs.append((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.frozen:
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.close()

    @property
    def open(self) -> int:
        """Connections currently open."""
        return sum(1 for client, _ in self._pairs if not client.is_closing())

    def drop(self, farewell: bytes = b"") -> None:
        """Close every connection (after writing ``farewell`` to the client, e.g. a BYE)."""
        for client, upstream in self._pairs:
            if farewell and not client.is_closing():
                client.write(farewell)
            client.close()
            upstream.close()
        self._pairs.clear()
