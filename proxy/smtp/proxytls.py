"""The implicit-TLS listener when PROXY protocol is on: the header in clear first, then TLS.

A load balancer sends the PROXY header before the client's first TLS byte, so asyncio's
``create_server(ssl=...)`` (which starts TLS on the first byte) cannot take it, and aiosmtpd
reads the header from a stream that has already buffered what follows. This listener accepts
the TCP connection itself, drops it unless it comes from a trusted load balancer, reads exactly
the header (aiosmtpd's parser over :class:`~proxy.smtp.proxyproto.SocketReader`), and only then
hands the socket to asyncio with TLS (``connect_accepted_socket``), the relay's protocol told who
the real client is. It offers what :class:`~proxy.smtp.relay.Relay` uses of an ``asyncio.Server``:
``sockets``, ``close`` and ``wait_closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from aiosmtpd.proxy_protocol import get_proxy

from .proxyproto import (
    CLOSED_EARLY,
    Peer,
    ProxyPolicy,
    ProxyRefused,
    SocketReader,
    log_drop,
    show,
)
from .server import RelaySMTP

log = logging.getLogger("proxy.proxytls")  # its name before the move (issue 17)
ACCEPT_PAUSE = 1.0  # after a failed accept (out of file descriptors, say)
TLS_HANDSHAKE_TIMEOUT = 60.0


class PreTLSListener:
    """Listening sockets whose connections send a PROXY header, then speak TLS."""

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        policy: ProxyPolicy,
        context: ssl.SSLContext,
    ) -> None:
        self.factory = factory
        self.policy = policy
        self.context = context
        self.sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int) -> PreTLSListener:
        """Bind every address of ``host`` (as asyncio does) and start accepting."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(100)
                sock.setblocking(False)
            except OSError:
                sock.close()
                self.close()
                raise
            self.sockets.append(sock)
        for sock in self.sockets:
            self._spawn(self._accept(sock))
        return self

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                log.warning("relay: accept on the implicit TLS port failed: %s", exc)
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            conn.setblocking(False)
            self._spawn(self._serve(conn, (str(address[0]), int(address[1]))))

    async def _serve(self, conn: socket.socket, balancer: Peer) -> None:
        try:
            client = await self._handshake(conn, balancer)
        except ProxyRefused as exc:
            log_drop(log, balancer, str(exc))
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: self._attach(client, balancer),
                conn,
                ssl=self.context,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            )
        except OSError as exc:  # TLS handshake failed or the client went away
            log.info("relay: TLS with %s failed: %s", show(client), exc)
            conn.close()

    async def _handshake(self, conn: socket.socket, balancer: Peer) -> Peer | None:
        """The real client's address (None: unknown), from the PROXY header ``conn`` starts
        with."""
        if not self.policy.trusts(balancer):
            raise ProxyRefused("not a trusted load balancer (relay.proxy_trusted)")
        try:
            async with asyncio.timeout(self.policy.timeout):
                data = await get_proxy(SocketReader(conn))
        except TimeoutError:
            raise ProxyRefused(f"no PROXY header within {self.policy.timeout:g} s") from None
        except (EOFError, OSError):
            raise ProxyRefused(CLOSED_EARLY) from None
        if not data.valid:
            raise ProxyRefused(f"invalid PROXY header: {data.error or 'unrecognised'}")
        return self.policy.client(data, balancer)

    def _attach(self, client: Peer | None, balancer: Peer) -> asyncio.BaseProtocol:
        protocol = self.factory()
        if isinstance(protocol, RelaySMTP):
            protocol.proxied(client, balancer)
        return protocol

    def close(self) -> None:
        """Stop accepting; connections already handed to asyncio go on."""
        for task in list(self._tasks):
            task.cancel()
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
