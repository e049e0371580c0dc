"""The relay's client side: one authenticated aiosmtplib session to the user's real SMTP server.

An :class:`UpstreamSession` logs in with the user's own credentials (that login *is* the relay's
password check) and then carries each message, command by command (cut-through): the upstream's
reply to MAIL, every RCPT and DATA goes back to the mail client as it is. Envelope addresses go
through aiosmtplib's ``mail``/``rcpt`` (quoted, control characters refused, so nothing can be
injected). The message goes in one ``BDAT`` where the upstream offers CHUNKING (RFC 3030: one
round trip instead of DATA's two), else after DATA, streamed in chunks with flow control.

Network trouble (refused, timeout, dropped, TLS failure) raises :class:`UpstreamUnavailable`,
which the relay answers with ``451 4.4.1`` so the client keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPException, SMTPResponseException
from aiosmtplib.protocol import SMTPProtocol

from crm.config import RelayConfig
from crm.errors import UpstreamError

from .databuf import MessageBuffer

log = logging.getLogger(__name__)
TEMPORARY = (SMTPException, OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError)
CAPS_TTL = 600.0


class UpstreamUnavailable(UpstreamError):
    """The upstream server could not be reached, timed out or dropped the connection."""


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: code and text (lines separated by ``\\n``, as aiosmtplib gives them)."""

    code: int
    text: str

    def line(self) -> str:
        """The reply as the relay pushes it to its client (multi-line replies kept)."""
        lines = [_clean(t) for t in self.text.split("\n")] or [""]
        head = [f"{self.code}-{t}" for t in lines[:-1]]
        return "\r\n".join([*head, f"{self.code} {lines[-1]}".rstrip()])

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)[:500]


@dataclass(frozen=True)
class Endpoint:
    """Where a user's mail goes: host, port and TLS mode (``ssl``, ``starttls`` or ``none``)."""

    host: str
    port: int
    tls: str = "starttls"

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.tls})"


@dataclass(frozen=True)
class Caps:
    """What the upstream can take, as far as the relay mirrors it in its own EHLO."""

    size: int | None = None  # None: no SIZE extension; 0: SIZE without a stated limit
    eightbit: bool = False
    smtputf8: bool = False

    @classmethod
    def from_extensions(cls, ext: dict[str, str]) -> Caps:
        size = ext.get("size", "").strip() if "size" in ext else None
        return cls(
            size=None if size is None else int(size) if size.isdigit() else 0,
            eightbit="8bitmime" in ext,
            smtputf8="smtputf8" in ext,
        )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UpstreamClient:
    """Settings shared by every upstream session: TLS context, timeout, our EHLO name."""

    def __init__(self, config: RelayConfig, local_hostname: str) -> None:
        self.config = config
        self.timeout = config.upstream_timeout
        self.local_hostname = local_hostname
        self._caps: dict[Endpoint, tuple[float, Caps]] = {}

    def tls_context(self, endpoint: Endpoint) -> ssl.SSLContext:
        """Certificates checked; ``upstream_insecure`` is honoured for loopback hosts only."""
        context = ssl.create_default_context(cafile=self.config.upstream_ca_file)
        if self.config.upstream_insecure and is_loopback(endpoint.host):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def smtp(self, endpoint: Endpoint) -> aiosmtplib.SMTP:
        """An unconnected aiosmtplib client for ``endpoint``."""
        return aiosmtplib.SMTP(
            hostname=endpoint.host,
            port=endpoint.port,
            use_tls=endpoint.tls == "ssl",
            start_tls=endpoint.tls == "starttls",
            tls_context=None if endpoint.tls == "none" else self.tls_context(endpoint),
            timeout=self.timeout,
            local_hostname=self.local_hostname,
        )

    def remember(self, endpoint: Endpoint, caps: Caps) -> None:
        self._caps[endpoint] = (time.monotonic(), caps)

    def cached_caps(self, endpoint: Endpoint) -> Caps | None:
        found = self._caps.get(endpoint)
        if found is None or time.monotonic() - found[0] > CAPS_TTL:
            return None
        return found[1]

    async def probe(self, endpoint: Endpoint) -> Caps:
        """The upstream's extensions after TLS, without logging in (cached for a while)."""
        cached = self.cached_caps(endpoint)
        if cached is not None:
            return cached
        smtp = self.smtp(endpoint)
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()
            caps = Caps.from_extensions(smtp.esmtp_extensions)
            await smtp.quit()
        except TEMPORARY as exc:
            raise UpstreamUnavailable(f"{endpoint}: {exc}") from exc
        finally:
            smtp.close()
        self.remember(endpoint, caps)
        return caps


class UpstreamSession:
    """One logged-in connection to the user's upstream server, reused for many messages."""

    def __init__(self, client: UpstreamClient, endpoint: Endpoint) -> None:
        self.client = client
        self.endpoint = endpoint
        self.smtp = client.smtp(endpoint)
        self.caps = Caps()
        self.in_transaction = False
        self.deferred = False  # DATA said by the client, not yet upstream (CHUNKING)

    @property
    def connected(self) -> bool:
        return self.smtp.is_connected

    async def login(self, username: str, password: str) -> Reply:
        """Connect and AUTH; the upstream's verdict (235, 535 ...) is the relay's verdict."""
        try:
            await self.smtp.connect()
            if self.smtp.is_ehlo_or_helo_needed:
                await self.smtp.ehlo()
            self.caps = Caps.from_extensions(self.smtp.esmtp_extensions)
            self.client.remember(self.endpoint, self.caps)
            response = await self.smtp.login(username, password)
        except SMTPResponseException as exc:
            self.close()
            return Reply(exc.code, exc.message)
        except TEMPORARY as exc:
            self.close()
            raise UpstreamUnavailable(f"{self.endpoint}: {exc}") from exc
        return Reply(response.code, response.message)

    async def mail(self, sender: str, options: list[str], utf8: bool) -> Reply:
        """MAIL FROM with the options the upstream understands."""
        reply = await self._command(
            self.smtp.mail(sender, options=options, encoding="utf-8" if utf8 else "ascii")
        )
        self.in_transaction = reply.ok
        return reply

    async def rcpt(self, recipient: str, utf8: bool) -> Reply:
        """RCPT TO: the upstream's reply for this one recipient."""
        return await self._command(
            self.smtp.rcpt(recipient, encoding="utf-8" if utf8 else "ascii")
        )

    async def rset(self) -> None:
        """End an unfinished transaction (best effort: a broken session is simply closed)."""
        self.in_transaction = self.deferred = False
        if self.connected:
            try:
                await self.smtp.rset()
            except (*TEMPORARY, ValueError):
                self.close()

    async def _command(self, call: Awaitable[aiosmtplib.SMTPResponse]) -> Reply:
        try:
            response = await call
        except UnicodeEncodeError:
            return Reply(553, "5.6.7 Non-ASCII address needs SMTPUTF8")
        except ValueError:
            return Reply(553, "5.1.3 Bad address syntax")
        except SMTPResponseException as exc:
            return self._refused(exc.code, exc.message)
        except TEMPORARY as exc:
            self.close()
            raise UpstreamUnavailable(f"{self.endpoint}: {exc}") from exc
        return Reply(response.code, response.message)

    def _refused(self, code: int, text: str) -> Reply:
        if code == 421:  # the upstream is closing: for the client, a temporary local problem
            self.close()
            return Reply(451, f"4.4.1 {text}")
        return Reply(code, text)

    @property
    def chunking(self) -> bool:
        """The upstream takes ``BDAT`` (RFC 3030 CHUNKING)."""
        return "chunking" in self.smtp.esmtp_extensions

    async def start_data(self) -> Reply:
        """DATA, sent as soon as the client sends its own (the 354 comes while it transmits).

        With CHUNKING nothing is sent yet: the message goes in one ``BDAT`` once it is whole
        (:meth:`send_message`), which saves the 354 round trip; the 354 returned is our own.
        """
        self.in_transaction = False
        if self.chunking:
            self.deferred = True
            return Reply(354, "BDAT to follow")
        return await self._data()

    async def _data(self) -> Reply:
        try:
            start = await self.smtp.execute_command(b"DATA")
        except TEMPORARY as exc:
            self.close()
            raise UpstreamUnavailable(f"{self.endpoint}: {exc}") from exc
        if start.code != 354:
            return self._refused(start.code, start.message)
        return Reply(start.code, start.message)

    async def send_message(self, buffer: MessageBuffer) -> Reply:
        """After :meth:`start_data`: the message; the upstream's final reply.

        A deferred DATA becomes one ``BDAT <size> LAST`` with the message itself (no dot-stuffing
        on the wire), or, for a message spilled to disk or with bare LF line ends (whose
        un-stuffing only DATA's reader does as the client meant it), DATA after all.
        """
        if self.deferred:
            self.deferred = False
            raw = None if buffer.spilled else buffer.raw()
            if raw is not None and raw.count(b"\n") == raw.count(b"\r\n"):
                return await self._final(self._bdat(raw))
            start = await self._data()
            if start.code != 354:
                return start
        return await self._final(self._stream(buffer.chunks()))

    async def _final(self, sending: Awaitable[aiosmtplib.SMTPResponse]) -> Reply:
        try:
            final = await sending
        except TEMPORARY as exc:
            self.close()
            raise UpstreamUnavailable(f"{self.endpoint}: {exc}") from exc
        if final.code >= 400:
            return self._refused(final.code, final.message)
        return Reply(final.code, final.message)

    async def _bdat(self, raw: bytes) -> aiosmtplib.SMTPResponse:
        protocol = self._protocol()
        protocol.write(b"BDAT %d LAST\r\n" % len(raw) + raw)  # one write: one TLS record, one send
        return await protocol.read_response(timeout=self.client.timeout)

    def _protocol(self) -> SMTPProtocol:
        protocol = self.smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        return protocol

    async def _stream(self, chunks: AsyncIterator[bytes | bytearray]) -> aiosmtplib.SMTPResponse:
        protocol = self._protocol()
        held = b""  # the last piece goes out with the final dot, in one write
        async for chunk in chunks:
            if held:
                protocol.write(held)
                async with asyncio.timeout(self.client.timeout):
                    await protocol._drain_helper()  # flow control: never buffer a whole message
            held = bytes(chunk)
        protocol.write(held + b".\r\n")
        return await protocol.read_response(timeout=self.client.timeout)

    async def quit(self) -> None:
        """Polite goodbye; errors ignored."""
        if self.connected:
            try:
                await self.smtp.quit(timeout=5)
            except (*TEMPORARY, ValueError):
                pass
        self.close()

    def close(self) -> None:
        self.in_transaction = self.deferred = False
        self.smtp.close()
