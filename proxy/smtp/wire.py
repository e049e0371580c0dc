"""The upstream connection after login: commands written together, every reply read in order.

aiosmtplib (5.1) connects, negotiates TLS and logs in for the relay, but it reads one reply per
command and drops reply data that arrives while a parsed reply waits to be picked up, so it
cannot pipeline (RFC 2920). Once the login succeeded, the relay's upstream session moves the
connection's transport to a :class:`Wire` (asyncio's ``set_protocol``): from then on commands go
out as given, several in one write where the upstream offers PIPELINING, and every reply is
queued in the order it came. Envelope commands are built by :func:`command_line`, with
aiosmtplib's address quoting and no control character let through, so nothing can be injected.

A dropped connection, a timeout or a reply that is not SMTP raises
:class:`aiosmtplib.SMTPServerDisconnected` / :class:`aiosmtplib.SMTPReadTimeoutError` /
:class:`aiosmtplib.SMTPResponseException`, as aiosmtplib's own reader would.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Iterable
from typing import cast

import aiosmtplib
from aiosmtplib import SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.email import quote_address

MAX_REPLY = 32 * 1024  # a whole reply, continuation lines included
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_LINE = re.compile(rb"(\d{3})([ -]?)([^\n]*?)\r?\n")


def command_line(verb: bytes, address: str, options: Iterable[str], encoding: str) -> bytes:
    """``MAIL FROM:<a>`` / ``RCPT TO:<a>`` with options; ValueError for control characters,
    UnicodeEncodeError for a non-ASCII address without SMTPUTF8."""
    parts = [verb + quote_address(address).encode(encoding)]
    parts += [option.encode("ascii") for option in options]
    line = b" ".join(parts)
    if _CONTROL.search(line):
        raise ValueError("command contains a control character")
    return line + b"\r\n"


class Wire(asyncio.Protocol):
    """The protocol of one upstream connection from the login on."""

    def __init__(self, transport: asyncio.WriteTransport, timeout: float | None) -> None:
        self.transport = transport
        self.timeout = timeout
        self._buffer = bytearray()
        self._replies: collections.deque[aiosmtplib.SMTPResponse] = collections.deque()
        self._arrived = asyncio.Event()
        self._error: Exception | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    @classmethod
    def take_over(cls, smtp: aiosmtplib.SMTP, timeout: float | None) -> Wire:
        """Move ``smtp``'s connection here (no reply may be outstanding)."""
        transport = smtp.transport
        if transport is None or transport.is_closing():
            raise SMTPServerDisconnected("connection lost")
        wire = cls(cast(asyncio.WriteTransport, transport), timeout)  # uvloop's: not a subclass
        transport.set_protocol(wire)
        return wire

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (reply := self._parse()) is not None:
                self._replies.append(reply)
        except SMTPResponseException as exc:
            self._fail(exc)
            self.transport.close()
        self._arrived.set()

    def _parse(self) -> aiosmtplib.SMTPResponse | None:
        """The first whole reply in the buffer, taken out of it; None while it is incomplete."""
        pos, text = 0, []
        while (match := _LINE.match(self._buffer, pos)) is not None:
            code, more, line = match.groups()
            text.append(line.strip(b" \t").decode("utf-8", "surrogateescape"))
            pos = match.end()
            if more != b"-":
                del self._buffer[:pos]
                return aiosmtplib.SMTPResponse(int(code), "\n".join(text))
        end = self._buffer.find(b"\n", pos)
        if end >= 0 or len(self._buffer) > MAX_REPLY:
            bad = bytes(self._buffer[pos : pos + 80]).decode("utf-8", "replace")
            raise SMTPResponseException(-1, f"Malformed SMTP response: {bad!r}")
        return None

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SMTPServerDisconnected("Connection lost"))
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._arrived.set()

    # --- for the upstream session --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._error is None and not self.transport.is_closing()

    def send(self, data: bytes) -> None:
        if not self.connected:
            raise self._error or SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is full (flow control for a long message)."""
        async with asyncio.timeout(self.timeout):
            await self._writable.wait()
        if self._error is not None:
            raise self._error

    async def replies(self, count: int) -> list[aiosmtplib.SMTPResponse]:
        """The next ``count`` replies, in order."""
        try:
            async with asyncio.timeout(self.timeout):
                while len(self._replies) < count:
                    if self._error is not None:
                        raise self._error
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError as exc:
            self.transport.close()
            raise SMTPReadTimeoutError("Timed out waiting for server response") from exc
        return [self._replies.popleft() for _ in range(count)]

    async def command(self, *lines: bytes) -> list[aiosmtplib.SMTPResponse]:
        """Write ``lines`` at once; their replies."""
        self.send(b"".join(lines))
        return await self.replies(len(lines))
