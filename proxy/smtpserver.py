"""The relay's SMTP server protocol: aiosmtpd's ``SMTP`` with the few changes a relay needs.

* AUTH needs TLS (STARTTLS, or the implicit TLS listener); plaintext AUTH only when the config
  allows it *and* the client is on loopback.
* ``MAIL FROM:<a@x> AUTH=<>`` (Outlook) is accepted: the AUTH parameter is dropped.
* DATA is read in large chunks into a :class:`~proxy.databuf.MessageBuffer` (kept as sent,
  spilled to disk when large) instead of aiosmtpd's list of lines, and handed to the connection's
  ``deliver``; a message over the size limit is read to its end and refused with 552.
* The connection handler hears when the client goes away, so the upstream session goes too.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, syntax

from .databuf import DataResult, read_data
from .session import RelayConnection
from .upstream import is_loopback

log = logging.getLogger(__name__)
_AUTH_PARAM = re.compile(r"\s+AUTH=\S*", re.IGNORECASE)
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"


class _LoginDataWarning(logging.Filter):
    """aiosmtpd logs a deprecation warning on every successful AUTH; keep the log useful."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_LoginDataWarning())


class RelaySMTP(SMTP):
    """One client connection; ``handler`` is its own :class:`RelayConnection`."""

    def __init__(self, handler: RelayConnection, *, plaintext_auth_on_loopback: bool,
                 on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(handler, auth_required=True, auth_require_tls=True,
                         enable_SMTPUTF8=True, **kwargs)
        self.relay_handler = handler
        self._plaintext_loopback = plaintext_auth_on_loopback
        self._on_close: Callable[[], None] | None = on_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if not first:
            return
        if transport.get_extra_info("ssl_object") is not None:  # the implicit TLS listener
            self.tls_context = None
            self._auth_require_tls = False
        peer = transport.get_extra_info("peername")
        if self._plaintext_loopback and peer and is_loopback(str(peer[0])):
            self._auth_require_tls = False

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            if self._on_close is not None:
                on_close, self._on_close = self._on_close, None
                self.relay_handler.closed()
                on_close()

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg:
            arg = _AUTH_PARAM.sub("", arg)
        await super().smtp_MAIL(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        started = self.relay_handler.begin_data()
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        buffer = self.relay_handler.new_buffer()
        try:
            result, rest = await read_data(self._reader, buffer, self.data_size_limit,
                                           self._reset_timeout)
        except BaseException:
            await self.relay_handler.abort(started)
            raise
        if rest:  # a client pipelining after the dot: give those commands back
            self._reader._buffer[0:0] = rest  # type: ignore[attr-defined]
        if result is DataResult.TOO_BIG:
            buffer.close()
            await self.relay_handler.abort(started)
            status = TOO_BIG
        else:
            status = await self.relay_handler.deliver(envelope, buffer, started)
            buffer.close()
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)
