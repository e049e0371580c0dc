"""The relay's client side: one authenticated aiosmtplib session to the user's real SMTP server.

An :class:`UpstreamSession` logs in with the user's own credentials (that login *is* the relay's
password check) and then carries each message, command by command (cut-through): the upstream's
reply to MAIL, every RCPT and DATA goes back to the mail client as it is. aiosmtplib connects,
negotiates TLS and logs in; the transaction then runs on :class:`~proxy.smtp.wire.Wire`, which can
pipeline (envelope addresses quoted as aiosmtplib does, control characters refused, so nothing
can be injected). The message goes in one ``BDAT`` where the upstream offers CHUNKING (RFC 3030: one
round trip instead of DATA's two), else after DATA, streamed in chunks with flow control; either
way in the canonical form the relay read it in (CRLF only, dots stuffed), so no smuggled command
can ride along.

Network trouble (refused, timeout, dropped, TLS failure) raises :class:`UpstreamUnavailable`,
which the relay answers with ``451 4.4.1`` so the client keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable

import aiosmtplib
from aiosmtplib import SMTPAuthenticationError, SMTPException, SMTPResponse, SMTPResponseException

from crm.config import RelayConfig
from crm.errors import UpstreamError
from crm.vocab import Endpoint, is_loopback

from .databuf import MessageBuffer
from .values import Caps, Reply
from .wire import Wire, command_line

log = logging.getLogger("proxy.upstream")  # its name before the move (issue 17)
TEMPORARY = (SMTPException, OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError)
CAPS_TTL = 600.0


class UpstreamUnavailable(UpstreamError):
    """The upstream server could not be reached, timed out or dropped the connection."""


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
    """One logged-in connection to the user's upstream server, reused for many messages.

    From the login on the connection is a :class:`~proxy.smtp.wire.Wire`. Where the upstream offers
    PIPELINING, MAIL is answered here and goes up with the first RCPT in one write (one round
    trip less per message, as Postfix itself answers MAIL and judges the sender at RCPT): an
    upstream refusing the sender is heard by the client at that RCPT, and at every later one.
    """

    def __init__(self, client: UpstreamClient, endpoint: Endpoint) -> None:
        self.client = client
        self.endpoint = endpoint
        self.smtp = client.smtp(endpoint)
        self.caps = Caps()
        self.wire: Wire | None = None
        self.in_transaction = False
        self.deferred = False  # DATA said by the client, not yet upstream (CHUNKING)
        self._mail: bytes | None = None  # MAIL said by the client, not yet upstream (PIPELINING)
        self._sender_refused: Reply | None = None

    @property
    def connected(self) -> bool:
        return self.wire.connected if self.wire is not None else self.smtp.is_connected

    @property
    def pipelining(self) -> bool:
        """The upstream takes commands written together (RFC 2920 PIPELINING)."""
        return "pipelining" in self.smtp.esmtp_extensions

    @property
    def chunking(self) -> bool:
        """The upstream takes ``BDAT`` (RFC 3030 CHUNKING)."""
        return "chunking" in self.smtp.esmtp_extensions

    async def login(self, username: str, password: str, token: str | None = None) -> Reply:
        """Connect and AUTH (XOAUTH2 with an OAuth2 ``token``: aiosmtplib answers the error
        challenge with an empty line); the upstream's verdict (235, 535 ...) is the relay's."""
        try:
            await self.smtp.connect()
            if self.smtp.is_ehlo_or_helo_needed:
                await self.smtp.ehlo()
            self.caps = Caps.from_extensions(self.smtp.esmtp_extensions)
            self.client.remember(self.endpoint, self.caps)
            if token is not None:
                response = await self.smtp.auth_xoauth2(username, token)
            else:
                response = await self._password_login(username, password)
            self.wire = Wire.take_over(self.smtp, self.client.timeout)
        except SMTPResponseException as exc:
            self.close()
            return Reply(exc.code, exc.message)
        except TEMPORARY as exc:
            self.close()
            raise UpstreamUnavailable(f"{self.endpoint}: {exc}") from exc
        return Reply(response.code, response.message)

    async def _password_login(self, username: str, password: str) -> SMTPResponse:
        """AUTH with the mechanisms the upstream offers, in aiosmtplib's order, but stop at the
        first 535: a wrong password is one failed login upstream, not one per mechanism (the
        upstream's own brute-force counter would count a client's one try two or three times).
        Another refusal (504: a mechanism offered but not really supported) tries the next."""
        methods = self.smtp.supported_auth_methods
        if not methods:
            return await self.smtp.login(username, password)  # its clear "no AUTH" error
        refused: SMTPAuthenticationError | None = None
        for name in methods:
            try:
                method = getattr(self.smtp, f"auth_{name.replace('-', '')}")
                response: SMTPResponse = await method(username, password)
                return response
            except SMTPAuthenticationError as exc:
                if exc.code == 535:
                    raise
                refused = exc
        assert refused is not None
        raise refused

    async def mail(self, sender: str, options: list[str], utf8: bool) -> Reply:
        """MAIL FROM with the options the upstream understands (held for the first RCPT when
        the upstream pipelines)."""
        self._sender_refused = None
        try:
            line = command_line(b"MAIL FROM:", sender, options, _encoding(utf8))
        except ValueError as exc:
            return _bad_address(exc)
        if self.pipelining:
            self._mail, self.in_transaction = line, True
            return Reply(250, "2.1.0 Ok")
        [reply] = await self._exchange(line)
        self.in_transaction = reply.ok
        return reply

    async def rcpt(self, recipient: str, utf8: bool) -> Reply:
        """RCPT TO: the upstream's reply for this one recipient (or its refusal of the sender)."""
        if self._sender_refused is not None:
            return self._sender_refused
        try:
            line = command_line(b"RCPT TO:", recipient, (), _encoding(utf8))
        except ValueError as exc:
            return _bad_address(exc)
        if self._mail is None:
            [reply] = await self._exchange(line)
            return reply
        mail, self._mail = self._mail, None
        sender, reply = await self._exchange(mail, line)
        if not sender.ok:
            self.in_transaction, self._sender_refused = False, sender
            return sender
        return reply

    async def rset(self) -> None:
        """End an unfinished transaction (best effort: a broken session is simply closed)."""
        begun = (self.in_transaction and self._mail is None) or self.deferred
        self.in_transaction = self.deferred = False
        self._mail = self._sender_refused = None
        if begun and self.connected:
            with contextlib.suppress(UpstreamUnavailable):
                await self._exchange(b"RSET\r\n")

    async def _exchange(self, *lines: bytes) -> list[Reply]:
        """Send ``lines`` in one write; their replies (421 closes the session)."""
        try:
            responses = await self._wire().command(*lines)
        except TEMPORARY as exc:
            self.close()
            raise UpstreamUnavailable(f"{self.endpoint}: {exc}") from exc
        return [self._reply(r) for r in responses]

    def _reply(self, response: aiosmtplib.SMTPResponse) -> Reply:
        if response.code == 421:  # the upstream is closing: for the client, a temporary problem
            self.close()
            return Reply(451, f"4.4.1 {response.message}")
        return Reply(response.code, response.message)

    async def start_data(self) -> Reply:
        """DATA, sent as soon as the client sends its own (the 354 comes while it transmits).

        With CHUNKING nothing is sent yet: the message goes in one ``BDAT`` once it is whole
        (:meth:`send_message`), which saves the 354 round trip; the 354 returned is our own.
        """
        self.in_transaction = False
        if self.chunking:
            self.deferred = True
            return Reply(354, "BDAT to follow")
        [reply] = await self._exchange(b"DATA\r\n")
        return reply

    async def send_message(self, buffer: MessageBuffer) -> Reply:
        """After :meth:`start_data`: the message; the upstream's final reply.

        A deferred DATA becomes one ``BDAT <size> LAST`` with the message itself (no dot-stuffing
        on the wire), or, for a message spilled to disk, DATA after all. Either way the message
        is in canonical form (CRLF line ends only, :mod:`proxy.smtp.lineends`): the upstream reads
        this one message and nothing after it.
        """
        if self.deferred:
            self.deferred = False
            if not buffer.spilled:
                return await self._final(self._bdat(buffer.raw()))
            [start] = await self._exchange(b"DATA\r\n")
            if start.code != 354:
                return start
        return await self._final(self._stream(buffer.chunks()))

    async def _final(self, sending: Awaitable[aiosmtplib.SMTPResponse]) -> Reply:
        try:
            final = await sending
        except TEMPORARY as exc:
            self.close()
            raise UpstreamUnavailable(f"{self.endpoint}: {exc}") from exc
        return self._reply(final)

    def _wire(self) -> Wire:
        if self.wire is None:
            raise aiosmtplib.SMTPServerDisconnected("not logged in")
        return self.wire

    async def _bdat(self, raw: bytes) -> aiosmtplib.SMTPResponse:
        wire = self._wire()
        wire.send(b"BDAT %d LAST\r\n" % len(raw) + raw)  # one write: one TLS record, one send
        [final] = await wire.replies(1)
        return final

    async def _stream(self, chunks: AsyncIterator[bytes | bytearray]) -> aiosmtplib.SMTPResponse:
        wire = self._wire()
        held = b""  # the last piece goes out with the final dot, in one write
        async for chunk in chunks:
            if held:
                wire.send(held)
                await wire.drain()  # flow control: never buffer a whole message
            held = bytes(chunk)
        wire.send(held + b".\r\n")
        [final] = await wire.replies(1)
        return final

    async def quit(self) -> None:
        """Polite goodbye; errors ignored."""
        if self.connected:
            with contextlib.suppress(UpstreamUnavailable, TimeoutError):
                await asyncio.wait_for(self._exchange(b"QUIT\r\n"), 5)
        self.close()

    def close(self) -> None:
        self.in_transaction = self.deferred = False
        self._mail = self._sender_refused = None
        self.smtp.close()


def _encoding(utf8: bool) -> str:
    return "utf-8" if utf8 else "ascii"


def _bad_address(exc: ValueError) -> Reply:
    if isinstance(exc, UnicodeEncodeError):
        return Reply(553, "5.6.7 Non-ASCII address needs SMTPUTF8")
    return Reply(553, "5.1.3 Bad address syntax")
