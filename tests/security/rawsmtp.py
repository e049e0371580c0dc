"""A byte-exact SMTP client for the security tests: it writes what it is given, as it is given.

Role: test support for ``tests/security``. aiosmtplib (rightly) normalises and dot-stuffs what it
sends; an attacker does not, so these tests talk to the relay over plain TCP on loopback (the
relay allows plaintext AUTH there when configured) and write DATA in chosen pieces, with pauses
so that each piece reaches the relay in a read of its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re

_LINE = re.compile(rb"^(\d{3})([ -])")


class RawSMTP:
    """One plaintext SMTP session; replies are read whole (multi-line ones as one string)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def login(cls, host: str, port: int, user: str, password: str) -> RawSMTP:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        assert (await client.reply()).startswith("220")
        assert (await client.command(b"EHLO client.example")).startswith("250")
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        reply = await client.command(b"AUTH PLAIN " + token)
        assert reply.startswith("235"), reply
        return client

    async def reply(self, timeout: float = 20.0) -> str:
        """The next reply, all its lines joined by newlines."""
        lines: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError(f"connection closed; reply so far {lines!r}")
                lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
                match = _LINE.match(line)
                if match is None or match.group(2) == b" ":
                    return "\n".join(lines)

    async def replies(self, count: int) -> list[str]:
        return [await self.reply() for _ in range(count)]

    async def command(self, line: bytes) -> str:
        await self.write(line + b"\r\n")
        return await self.reply()

    async def write(self, *pieces: bytes, pause: float = 0.05) -> None:
        """Write each piece on its own, waiting ``pause`` s after each so it is read alone."""
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            if len(pieces) > 1:
                await asyncio.sleep(pause)

    async def rest(self, timeout: float = 5.0) -> bytes:
        """Everything the relay still sends until it closes (after QUIT)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                return await self.reader.read()
        return b"<no end within the timeout>"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
