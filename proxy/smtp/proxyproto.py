"""PROXY protocol (v1 and v2) for the relay: which load balancers may send it and what it means.

With ``relay.proxy_protocol = true`` every connection to the relay's listeners must start with a
PROXY header (HAProxy ``send-proxy``/``send-proxy-v2``, nginx ``proxy_protocol on``). Headers are
parsed by aiosmtpd (:func:`aiosmtpd.proxy_protocol.get_proxy`); this module decides what to make
of them, in :class:`ProxyPolicy`:

* only a connection from one of ``relay.proxy_trusted`` (networks) may send a header; any other
  is dropped before a byte is read, as is one whose header is missing or malformed;
* a ``PROXY`` command for TCP over IPv4/IPv6 names the real client, which the relay then uses
  for its logs and its decisions; ``LOCAL`` (v2, the balancer's own health checks) keeps the
  connection's own address; ``UNKNOWN`` (v1) and ``AF_UNSPEC`` (v2) leave the client unknown
  (None): it is not the balancer, so never loopback; anything else (UDP, UNIX) is refused.

:class:`SocketReader` feeds aiosmtpd's parser from a bare socket without reading past the header,
for the implicit-TLS listener (:mod:`proxy.smtp.proxytls`), where TLS starts right after it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from aiosmtpd.proxy_protocol import AF, PROTO, V2_CMD, V2_SIGNATURE, ProxyData

from crm.config import RelayConfig
from crm.errors import ConfigError

Peer = tuple[str, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
V1_MAX = 107  # the longest PROXY v1 line, CRLF included
LOCAL_HEADER = V2_SIGNATURE + b"\x20\x00\x00\x00"  # v2 LOCAL: "my own connection" (probes)


CLOSED_EARLY = "closed before sending a PROXY header"  # often a load balancer's TCP check


class ProxyRefused(Exception):
    """A connection the relay drops before its greeting; the message says why."""


def log_drop(logger: logging.Logger, balancer: Peer | None, reason: str) -> None:
    """One line per dropped connection (a bare TCP check only at INFO: no warning flood)."""
    level = logging.INFO if reason == CLOSED_EARLY else logging.WARNING
    logger.log(level, "relay: connection from %s dropped: %s", show(balancer), reason)


def show(peer: Peer | None) -> str:
    """``host:port`` (``[v6]:port``) for logs."""
    if not peer:
        return "unknown"
    host, port = str(peer[0]), peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # an IPv4 balancer seen on a dual-stack listener
    return ip


@dataclass(frozen=True)
class ProxyPolicy:
    """What the relay accepts as a PROXY header, and from whom."""

    trusted: tuple[Network, ...]
    timeout: float

    @classmethod
    def from_config(cls, config: RelayConfig) -> ProxyPolicy | None:
        """The policy of ``[relay]``, or None when PROXY protocol is off."""
        if not config.proxy_protocol:
            return None
        networks = []
        for text in config.proxy_trusted:
            try:
                networks.append(ipaddress.ip_network(str(text).strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(
                    f"config: relay.proxy_trusted: {text!r} is not a network"
                ) from exc
        if not networks:
            raise ConfigError(
                "config: relay.proxy_protocol needs relay.proxy_trusted, the "
                "load balancers' networks"
            )
        if config.proxy_timeout <= 0:
            raise ConfigError("config: relay.proxy_timeout must be above 0 seconds")
        return cls(tuple(networks), float(config.proxy_timeout))

    def trusts(self, peer: Any) -> bool:
        """Whether the connection's own address (``peername``) is a trusted load balancer."""
        ip = _address(str(peer[0])) if peer else None
        return ip is not None and any(ip in network for network in self.trusted)

    def client(self, data: ProxyData, balancer: Peer) -> Peer | None:
        """The real client a valid header names: ``balancer`` for LOCAL, None for UNKNOWN."""
        if data.version == 2 and data.command == V2_CMD.LOCAL:
            return balancer
        if data.family == AF.UNSPEC:
            return None  # the balancer does not know: someone, somewhere
        if data.family in (AF.INET, AF.INET6) and data.protocol == PROTO.STREAM:
            return str(data.src_addr), int(data.src_port or 0)
        raise ProxyRefused(f"PROXY v{data.version}: only TCP over IPv4 or IPv6 is accepted")


class SocketReader:
    """aiosmtpd's ``AsyncReader`` on a non-blocking socket; never reads a byte too many."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def read(self, n: int = -1) -> bytes:
        return await self.loop.sock_recv(self.sock, max(n, 1))

    async def readexactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = await self.loop.sock_recv(self.sock, n - len(data))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(data), n)
            data += chunk
        return bytes(data)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        data = bytearray()
        while not data.endswith(separator):
            if len(data) >= V1_MAX:
                raise asyncio.LimitOverrunError("PROXY v1 line too long", len(data))
            data += await self.readexactly(1)
        return bytes(data)
