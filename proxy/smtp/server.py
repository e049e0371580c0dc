"""The relay's SMTP server protocol: aiosmtpd's ``SMTP`` with the few changes a relay needs.

* AUTH needs TLS (STARTTLS, or the implicit TLS listener); plaintext AUTH only when the config
  allows it *and* the client is on loopback.
* ``MAIL FROM:<a@x> AUTH=<>`` (Outlook) is accepted: the AUTH parameter is dropped.
* DATA is read in large chunks into a :class:`~proxy.smtp.databuf.MessageBuffer` (kept as sent,
  spilled to disk when large) instead of aiosmtpd's list of lines, and handed to the connection's
  ``deliver``; a message over the size limit is read to its end and refused with 552.
* The connection handler hears when the client goes away, so the upstream session goes too.
* With PROXY protocol on (:mod:`proxy.smtp.proxyproto`), a connection is served only after a valid
  header from a trusted load balancer (aiosmtpd reads it; the ``PROXY`` hook here judges it), and
  the real client it names is the peer from then on: in aiosmtpd's session and log lines (also
  after STARTTLS), in the plaintext-on-loopback decision, in the AUTH log lines. A connection
  dropped for want of such a header is logged once, with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from crm.vocab import is_loopback

from .databuf import DataResult, read_data
from .proxyproto import CLOSED_EARLY, Peer, ProxyPolicy, ProxyRefused, log_drop, show
from .session import RelayConnection

log = logging.getLogger("proxy.smtpserver")  # its name before the move (issue 17)
_AUTH_PARAM = re.compile(r"\s+AUTH=\S*", re.IGNORECASE)
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"


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

    def __init__(self, handler: RelayConnection, *, plaintext_auth_on_loopback: bool,
                 on_open: Callable[[], None], on_close: Callable[[], None],
                 proxy: ProxyPolicy | None = None, **kwargs: Any) -> None:
        if proxy is not None:
            kwargs["proxy_protocol_timeout"] = proxy.timeout
        super().__init__(handler, auth_required=True, auth_require_tls=True,
                         enable_SMTPUTF8=True, **kwargs)
        self.relay_handler = handler
        self._plaintext_loopback = plaintext_auth_on_loopback
        # Called when the session starts (after the TLS handshake on the implicit TLS ports)
        # and ends: a connection whose handshake fails never starts, so it never counted.
        self._on_open, self._on_close = on_open, on_close
        self._open = False
        self.proxy = proxy
        self.client: Peer | None = None  # the real client, once known
        self._balancer: Peer | None = None  # the connection's own peer, with PROXY on
        self._proxy_data: ProxyData | None = None
        self._awaiting_header = proxy is not None
        self._eof = False
        self._handle_hooks["PROXY"] = self._on_proxy

    def proxied(self, client: Peer, balancer: Peer) -> None:
        """Before the connection starts: its PROXY header was read already (implicit TLS)."""
        self._proxy_timeout = None
        self._awaiting_header = False
        self.client, self._balancer = client, balancer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        if first:
            self._open = True
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
        if self.client is not None:
            self._known(self.client, self._balancer)
        elif self.proxy is None:
            self._known(peer, None)
        elif self.proxy.trusts(peer):
            self._balancer = peer  # aiosmtpd now reads the header, then calls _on_proxy
        else:
            self._awaiting_header = False
            log_drop(log, peer, "not a trusted load balancer (relay.proxy_trusted)")
            transport.close()

    def _known(self, client: Peer | None, balancer: Peer | None) -> None:
        """Who the client really is: from now on the peer in decisions and log lines."""
        self.client = client
        if balancer is not None and client is not None:
            _set_peer(self.session, client)
            level = logging.DEBUG if client == balancer else logging.INFO  # LOCAL: a check
            log.log(level, "relay: client %s via load balancer %s", show(client),
                    show(balancer))
        hops = [peer for peer in (client, balancer) if peer is not None]
        if self._plaintext_loopback and hops and all(is_loopback(h[0]) for h in hops):
            self._auth_require_tls = False  # the whole way to the relay is on loopback

    async def _on_proxy(self, server: SMTP, session: Session, envelope: Envelope,
                        data: ProxyData) -> bool:
        """aiosmtpd's ``handle_PROXY`` hook: a well-formed header came; act on it or drop."""
        assert self.proxy is not None and self._balancer is not None
        self._awaiting_header = False
        try:
            client = self.proxy.client(data, self._balancer)
        except ProxyRefused as exc:
            log_drop(log, self._balancer, str(exc))
            return False
        self._proxy_data = data
        self._known(client, self._balancer)
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
            log.info("relay: %s logged in as %s", show(self.client), session.auth_data)
        else:  # one line per failure: who, as whom and why (where the login got that far)
            log.warning("relay: failed AUTH from %s%s", show(self.client),
                        f" as {refusal}" if refusal else "")

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
