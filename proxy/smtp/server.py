"""The relay's SMTP server protocol: aiosmtpd's ``SMTP`` with the few changes a relay needs.

* AUTH needs TLS (STARTTLS, or the implicit TLS listener); plaintext AUTH only when the config
  allows it *and* the client is on loopback.
* ``MAIL FROM:<a@x> AUTH=<>`` (Outlook) is accepted: the AUTH parameter is dropped.
* DATA is read in large chunks into a :class:`~proxy.smtp.databuf.MessageBuffer` (canonical CRLF
  form, spilled to disk when large) instead of aiosmtpd's list of lines, and handed to the
  connection's ``deliver``. Only ``<CR><LF>.<CR><LF>`` ends it; bare CR/LF are normalised
  (:mod:`proxy.smtp.lineends`: no smuggled second transaction upstream). Whatever goes wrong during
  DATA (too big: 552; the spill file refused, an error in delivery: 451) the data is read to its
  end and answered once, so no line of a message is ever taken for a command.
* The connection handler hears when the client goes away, so the upstream session goes too.
* With PROXY protocol on (:mod:`proxy.smtp.proxyproto`), a connection is served only after a valid
  header from a trusted load balancer (aiosmtpd reads it; the ``PROXY`` hook here judges it), and
  the real client it names is the peer from then on: in aiosmtpd's session and log lines (also
  after STARTTLS), in the plaintext-on-loopback decision, in the AUTH log lines. A connection
  dropped for want of such a header is logged once, with the reason. A ``PROXY UNKNOWN`` header
  leaves the client unknown: never loopback.
* Once the client is known, the :class:`~proxy.smtp.gatekeeper.Gatekeeper` admits it (or it is told
  ``421``: too many connections from its address); until it has logged in, its connection lasts
  at most the gatekeeper's login timeout from its start, then the long idle timeout applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any, cast

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from crm.vocab import is_loopback

from .databuf import DataResult, MessageBuffer, read_data
from .gatekeeper import LOGIN_TIMEOUT, TOO_MANY_CONNECTIONS, Gatekeeper
from .proxyproto import CLOSED_EARLY, Peer, ProxyPolicy, ProxyRefused, log_drop, show
from .session import RelayConnection
from .values import Reply

log = logging.getLogger("proxy.smtpserver")  # its name before the move (issue 17)
_AUTH_PARAM = re.compile(r"\s+AUTH=\S*", re.IGNORECASE)
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
LOCAL_ERROR = "451 4.3.0 Local error in processing, try again later"


class _LoginDataWarning(logging.Filter):
    """aiosmtpd logs a deprecation warning on every successful AUTH; keep the log useful."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_LoginDataWarning())


def _set_peer(session: Session | None, peer: Peer) -> None:
    """The peer aiosmtpd logs and hands on (annotated ``str``, it holds a ``peername``)."""
    assert session is not None
    session.peer = peer  # type: ignore[assignment]


class RelaySMTP(SMTP):
    """One client connection; ``handler`` is its own :class:`RelayConnection`."""

    def __init__(
        self,
        handler: RelayConnection,
        *,
        plaintext_auth_on_loopback: bool,
        on_open: Callable[[], None],
        on_close: Callable[[], None],
        gatekeeper: Gatekeeper,
        proxy: ProxyPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        if proxy is not None:
            kwargs["proxy_protocol_timeout"] = proxy.timeout
        super().__init__(
            handler, auth_required=True, auth_require_tls=True, enable_SMTPUTF8=True, **kwargs
        )
        self.relay_handler = handler
        self._plaintext_loopback = plaintext_auth_on_loopback
        # Called when the session starts (after the TLS handshake on the implicit TLS ports)
        # and ends: a connection whose handshake fails never starts, so it never counted.
        self._on_open, self._on_close = on_open, on_close
        self._open = False
        self.gatekeeper = gatekeeper
        self._admitted = False  # counted by the gatekeeper under its client's address
        self._started = 0.0
        self.proxy = proxy
        self.client: Peer | None = None  # the real client, once known
        self._balancer: Peer | None = None  # the connection's own peer, with PROXY on
        self._proxy_data: ProxyData | None = None
        self._awaiting_header = proxy is not None
        self._header_read = False  # by the implicit TLS listener, before the connection
        self._eof = False
        self._handle_hooks["PROXY"] = self._on_proxy

    def proxied(self, client: Peer | None, balancer: Peer) -> None:
        """Before the connection starts: its PROXY header was read already (implicit TLS)."""
        self._proxy_timeout = None
        self._awaiting_header = False
        self._header_read = True
        self.client, self._balancer = client, balancer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        if first:
            self._open = True
            self._started = self.loop.time()
            self._on_open()
        super().connection_made(transport)
        if not first:
            self._after_starttls()
            return
        if transport.get_extra_info("ssl_object") is not None:  # the implicit TLS listener
            self.tls_context = None
            self._auth_require_tls = False
        raw = transport.get_extra_info("peername")
        peer = (str(raw[0]), int(raw[1])) if raw else None
        if self.proxy is None or self._header_read:
            if not self._known(self.client if self._header_read else peer, self._balancer):
                self._turn_away(transport)
        elif self.proxy.trusts(peer):
            self._balancer = peer  # aiosmtpd now reads the header, then calls _on_proxy
        else:
            self._awaiting_header = False
            log_drop(log, peer, "not a trusted load balancer (relay.proxy_trusted)")
            transport.close()

    def _known(self, client: Peer | None, balancer: Peer | None) -> bool:
        """Who the client really is (None: a PROXY ``UNKNOWN``): from now on the peer in
        decisions and log lines. False when the gatekeeper does not admit it."""
        self.client = client
        self.relay_handler.client = client[0] if client else None
        if balancer is not None and client is not None:
            _set_peer(self.session, client)
        if balancer is not None:
            level = logging.DEBUG if client == balancer else logging.INFO  # LOCAL: a check
            log.log(level, "relay: client %s via load balancer %s", show(client), show(balancer))
        hops = [peer for peer in (client, balancer) if peer is not None]
        if self._plaintext_loopback and client and all(is_loopback(h[0]) for h in hops):
            self._auth_require_tls = False  # the whole way to the relay is on loopback
        self._admitted = self.gatekeeper.admit(self.relay_handler.client)
        return self._admitted

    def _turn_away(self, transport: asyncio.BaseTransport) -> None:
        """Too many connections from this client: 421 instead of the greeting, and close."""
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()  # before it ran: no greeting
        cast(asyncio.WriteTransport, transport).write(TOO_MANY_CONNECTIONS.encode() + b"\r\n")
        transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Until the login, the deadline counts from the connection's start (no idling)."""
        session = self.session
        if duration is None and not (session is not None and session.authenticated):
            left = self._started + self.gatekeeper.login_timeout() - self.loop.time()
            duration = max(left, 0.01)
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        session = self.session
        if (
            session is not None
            and not session.authenticated
            and not self._awaiting_header
            and self.transport is not None
        ):
            log.info("relay: %s dropped: no login within the time allowed", show(self.client))
            with contextlib.suppress(Exception):
                cast(asyncio.WriteTransport, self.transport).write(LOGIN_TIMEOUT.encode() + b"\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def _on_proxy(
        self, server: SMTP, session: Session, envelope: Envelope, data: ProxyData
    ) -> bool:
        """aiosmtpd's ``handle_PROXY`` hook: a well-formed header came; act on it or drop."""
        assert self.proxy is not None and self._balancer is not None
        self._awaiting_header = False
        try:
            client = self.proxy.client(data, self._balancer)
        except ProxyRefused as exc:
            log_drop(log, self._balancer, str(exc))
            return False
        self._proxy_data = data
        if not self._known(client, self._balancer):
            await self.push(TOO_MANY_CONNECTIONS)
            return False
        return True

    def _after_starttls(self) -> None:
        """aiosmtpd starts a new session after STARTTLS: it keeps the real client."""
        if self._balancer is not None and self.client is not None and self.session:
            _set_peer(self.session, self.client)
            self.session.proxy_data = self._proxy_data

    def eof_received(self) -> bool | None:
        """The client closed its side: aiosmtpd ends the session; the socket closes too.

        aiosmtpd would keep a plaintext socket half-open (asyncio's stream protocol does) and
        leave the closing to its session task; on uvloop, the end of a bare connect-and-close
        (a load balancer's TCP check) comes before that task first runs, so nothing closed the
        socket before the idle timeout and it counted against ``max_connections`` for minutes.
        """
        self._eof = True
        super().eof_received()
        return False

    def _no_header(self, error: Exception | None) -> str:
        data = self.session.proxy_data if self.session is not None else None
        if data is not None:
            return f"invalid PROXY header: {data.error or 'unrecognised'}"
        if self._eof or error is not None:
            return CLOSED_EARLY
        return f"no PROXY header within {self._proxy_timeout:g} s"

    def connection_lost(self, error: Exception | None) -> None:
        if self._awaiting_header:
            self._awaiting_header = False
            log_drop(log, self._balancer, self._no_header(error))
        try:
            super().connection_lost(error)
        finally:
            if self._admitted:
                self._admitted = False
                self.gatekeeper.release(self.relay_handler.client)
            if self._open:
                self._open = False
                self.relay_handler.closed()
                self._on_close()

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        session = self.session
        before = session is not None and session.authenticated
        await super().smtp_AUTH(arg)
        refusal, self.relay_handler.refusal = self.relay_handler.refusal, None
        if session is None or before or not arg or self.transport is None:
            return
        if session.authenticated:
            self._reset_timeout()  # the long idle timeout from now on
            log.info("relay: %s logged in as %s", show(self.client), session.auth_data)
        else:  # one line per failure: who, as whom and why (where the login got that far)
            log.warning(
                "relay: failed AUTH from %s%s",
                show(self.client),
                f" as {refusal}" if refusal else "",
            )

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
            try:
                result, rest = await read_data(
                    self._reader, buffer, self.data_size_limit, self._reset_timeout
                )
            except BaseException:  # the client went away (or timed out) during DATA
                await self.relay_handler.abort(started)
                raise
            if rest:  # a client pipelining after the end: give those commands back
                self._reader._buffer[0:0] = rest  # type: ignore[attr-defined]
            status = await self._data_status(result, envelope, buffer, started)
        finally:
            buffer.close()
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    async def _data_status(
        self,
        result: DataResult,
        envelope: Envelope,
        buffer: MessageBuffer,
        started: asyncio.Task[Reply] | None,
    ) -> str:
        """The one reply to a DATA read to its end: the delivery's, or why there was none."""
        if result is DataResult.OK:
            try:
                return await self.relay_handler.deliver(envelope, buffer, started)
            except Exception:
                log.exception("relay: message not delivered: error during delivery")
        with contextlib.suppress(Exception):
            await self.relay_handler.abort(started)
        return TOO_BIG if result is DataResult.TOO_BIG else LOCAL_ERROR
