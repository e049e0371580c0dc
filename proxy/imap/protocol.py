"""aioimaplib's protocol object, with its per-line costs taken out and our observer added.

:class:`Protocol` reports every untagged response to its owner (:meth:`ImapClient.observe`), parses
with a loop instead of one recursion per response line (aioimaplib issue #118), and does not
format every received chunk for a debug log nobody reads. :class:`FetchCommand` knows whether a
FETCH response is complete in constant time per line: aioimaplib's own rescans every line received
so far after each one, which makes a 200-message FETCH quadratic.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any
from typing import Protocol as Interface

from aioimaplib import aioimaplib as aio

log = logging.getLogger(__name__)


class Owner(Interface):
    """What the protocol reports to (an :class:`~proxy.imap.client.ImapClient`); an interface,
    so this module does not import the client that imports it."""

    def connection_lost(self, exc: Exception | None) -> None: ...

    def observe(self, line: bytes) -> None: ...


class FetchCommand(aio.FetchCommand):  # type: ignore[misc]
    """A FETCH whose "more data to come" test is incremental.

    A response is awaited while the parentheses opened since the last ``n FETCH (`` line are not
    all closed; literals (``bytearray`` items) are not counted, exactly as upstream does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open = 0

    def append_to_resp(self, line: bytes | bytearray, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        if isinstance(line, bytes):
            if self.FETCH_MESSAGE_DATA_RE.match(line):
                self._open = 0
            self._open += line.count(b"(") - line.count(b")")

    def wait_data(self) -> bool:
        return self._open != 0


class Protocol(aio.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, reporting unsolicited responses to its owner."""

    incomplete_line: bytes
    current_command: Any
    _sasl: bytes = b""  # the initial response still to send (servers without SASL-IR)

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: Owner) -> None:
        super().__init__(loop, owner.connection_lost)
        self.owner = owner

    async def authenticate(self, mechanism: str, initial: bytes, secret: str) -> Any:
        """``AUTHENTICATE mechanism`` with its initial response (SASL-IR where offered, else
        after the first ``+``). An error challenge (``+ <base64>``, XOAUTH2/OAUTHBEARER after a
        refused token) is answered with an empty line, so the server ends with NO instead of
        waiting for us: aioimaplib's own ``xoauth2`` leaves it waiting (a hang until timeout)."""
        self._sasl = base64.b64encode(initial)
        self.sasl_challenges: list[bytes] = []
        args = [mechanism, self._sasl.decode()] if "SASL-IR" in self.capabilities else [mechanism]
        if len(args) == 2:
            self._sasl = b""
        command = aio.Command("AUTHENTICATE", self.new_tag(), *args, loop=self.loop)
        response = await self.execute(command, scrub=secret)
        if response.result == "OK":
            self.state = aio.AUTH
        return response

    def _continuation(self, line: bytes) -> None:
        pending = self.pending_sync_command
        if pending is None or pending.name != "AUTHENTICATE":
            super()._continuation(line)
            return
        if self._sasl:  # no SASL-IR: the first "+" asks for the initial response
            self.transport.write(self._sasl + aio.CRLF)
            self._sasl = b""
            return
        self.sasl_challenges.append(line[:2000])
        self.transport.write(aio.CRLF)  # answer the error challenge: the server says NO next

    def data_received(self, data: bytes) -> None:
        """Upstream's, without the ``log.debug("Received : %s" % data)`` of every chunk."""
        try:
            self._handle_responses(
                self.incomplete_line + data, self._handle_line, self.current_command
            )
            self.incomplete_line = b""
            self.current_command = None
        except aio.IncompleteRead as incomplete:
            self.current_command = incomplete.cmd
            self.incomplete_line = incomplete.data

    def _untagged_response(self, line: bytes) -> Any:
        self.owner.observe(line[2:] if line.startswith(b"* ") else line)
        if self._unclaimed(line):  # aioimaplib would log each at INFO ("ignored untagged ...")
            log.debug("unsolicited response: %r", line[:200])
            return None
        return super()._untagged_response(line)

    def _unclaimed(self, line: bytes) -> bool:
        """True when no command waits for this untagged response (a VANISHED or EXISTS between
        commands): upstream would drop it too, after an INFO line; the owner has seen it."""
        if self.pending_sync_command is not None or "NOOP" in self.pending_async_commands:
            return False
        body = line.replace(b"* ", b"")
        match = aio.message_data_re.match(body)
        name = match.group(1) if match else body.partition(b" ")[0]
        return name.decode("ascii", "replace").upper() not in self.pending_async_commands

    def _handle_responses(self, data: bytes, line_handler: Any, current_cmd: Any = None) -> None:
        """aioimaplib's parser with its tail recursion turned into a loop (issue #118).

        Our own commands are chunked, but unsolicited responses cannot be: another client
        marking 3,000 messages read sends 3,000 FETCH lines to our IDLE, and the recursive
        original dies at Python's recursion limit. Same steps, same order, as upstream PRs
        #119/#130 do.
        """
        while True:
            if not data:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise aio.IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                data = current_cmd.append_literal_data(data)
                if current_cmd.wait_literal_data():
                    raise aio.IncompleteRead(current_cmd)
            line, separator, tail = data.partition(aio.CRLF)
            if not separator:
                raise aio.IncompleteRead(current_cmd, data)
            cmd = line_handler(line, current_cmd)
            literal = aio.literal_data_re.match(line)
            if literal:
                if cmd is None:
                    cmd = aio.Command("NIL", "unused")
                cmd.begin_literal_data(int(literal.group("size")))
                data, current_cmd = tail, cmd
            elif cmd is not None and cmd.wait_data():
                data, current_cmd = tail, cmd
            else:
                data, current_cmd = tail, None
