"""The upstream wire (:mod:`proxy.smtp.wire`): pipelined commands, replies in order however they
arrive.

A scripted server on loopback answers with the exact bytes each test needs (split replies, several
in one segment, a malformed line, a hang-up): faults a real Postfix does not produce on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

import aiosmtplib
import pytest

from proxy.smtp.wire import Wire, command_line

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def _wire(script: Script) -> AsyncIterator[Wire]:
    server = await asyncio.start_server(script, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await asyncio.get_running_loop().create_connection(
        asyncio.Protocol, "127.0.0.1", port
    )
    wire = Wire(cast(asyncio.WriteTransport, transport), timeout=2.0)  # uvloop's: no subclass
    transport.set_protocol(wire)
    try:
        yield wire
    finally:
        transport.close()
        server.close()


async def test_pipelined_replies_arrive_in_order_however_split() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"RCPT TO:<b@c.example>\r\n")  # both commands came in one write
        for piece in (b"250 2.1.0 O", b"k\r\n550-5.1.1 no such\r\n550 5.1.1 ", b"user\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        await reader.readuntil(b"RSET\r\n")
        writer.write(b"250 2.0.0 Ok\r\n")

    async for wire in _wire(script):
        mail = command_line(b"MAIL FROM:", "a@b.example", ["SIZE=10"], "ascii")
        rcpt = command_line(b"RCPT TO:", "b@c.example", [], "ascii")
        assert mail == b"MAIL FROM:<a@b.example> SIZE=10\r\n"
        sender, recipient = await wire.command(mail, rcpt)
        assert (sender.code, sender.message) == (250, "2.1.0 Ok")
        assert (recipient.code, recipient.message) == (550, "5.1.1 no such\n5.1.1 user")
        [reset] = await wire.command(b"RSET\r\n")
        assert reset.code == 250 and wire.connected


async def test_a_malformed_reply_fails_and_closes() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"hello, I am not SMTP\r\n")

    async for wire in _wire(script):
        with pytest.raises(aiosmtplib.SMTPResponseException, match="Malformed"):
            await wire.command(b"NOOP\r\n")
        assert not wire.connected


async def test_a_hang_up_and_a_silence_are_errors_not_hangs() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    async for wire in _wire(hang_up):
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await wire.command(b"NOOP\r\n")
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            wire.send(b"NOOP\r\n")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async for wire in _wire(silent):
        with pytest.raises(aiosmtplib.SMTPReadTimeoutError):
            await wire.command(b"NOOP\r\n")
        assert not wire.connected


def test_command_lines_cannot_be_injected() -> None:
    line = command_line(b"RCPT TO:", "a@b.example>\r\nRCPT TO:<c@d.example", [], "ascii")
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")  # one command, whatever it says
    with pytest.raises(ValueError, match="control"):
        command_line(b"MAIL FROM:", "a@b.example", ["SIZE=1\r\nDATA"], "ascii")
    with pytest.raises(UnicodeEncodeError):
        command_line(b"MAIL FROM:", "jörg@b.example", [], "ascii")
    utf8 = command_line(b"MAIL FROM:", "jörg@b.example", ["SMTPUTF8"], "utf-8")
    assert utf8 == "MAIL FROM:<jörg@b.example> SMTPUTF8\r\n".encode()
