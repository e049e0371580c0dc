"""The TLS-terminating proxy in front of the web listener (issue 18): ``[http] trusted_proxy``
names it, and only a request whose TCP peer *is* that proxy has its ``X-Forwarded-Proto``
(the scheme the browser used: ``https`` makes the session cookie Secure) and ``X-Forwarded-For``
(the browser's address: what the sign-in throttle counts failures by) honoured. From any other
peer those headers are anyone's claim and are ignored.

aiohttp itself reads no forwarded header (since 2.3); it offers ``request.clone(scheme=...,
remote=...)`` for a middleware like this one, which is all the aiohttp-remotes library builds on
too; one trusted hop needs no more. ``trusted_proxy`` is an IP address, a network
(``10.0.0.0/24``) or a host name, resolved once when the listener starts; a value that is none of
these (a description) trusts no peer, and says so in the log.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HEADER = 2000  # characters of a forwarded header looked at


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip().strip("[]")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _networks(setting: str) -> list[Network]:
    """The networks ``setting`` (address, network or host name) stands for; [] if none."""
    setting = setting.strip()
    try:
        return [ipaddress.ip_network(setting.strip("[]"), strict=False)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(setting, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    addresses = {_address(str(info[4][0])) for info in found}
    return [ipaddress.ip_network(a) for a in addresses if a is not None]


class TrustedProxy:
    """Which TCP peers may say what the browser's scheme and address were."""

    def __init__(self, setting: str | None) -> None:
        self.setting = setting
        self.networks = _networks(setting) if setting else []
        if setting and not self.networks:
            log.warning(
                "http: [http] trusted_proxy %r is no address, network or resolvable host name: "
                "X-Forwarded-Proto/-For are honoured from no peer",
                setting[:100],
            )

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (the connection's remote address) is the proxy."""
        address = _address(peer) if peer else None
        return address is not None and any(address in net for net in self.networks)


def _last(request: web.Request, name: str) -> str | None:
    """The last entry of a comma-separated header: the one the trusted proxy itself added."""
    values = ",".join(request.headers.getall(name, []))[-MAX_HEADER:]
    entries = [e.strip() for e in values.split(",") if e.strip()]
    return entries[-1] if entries else None


TRUSTED: web.AppKey[TrustedProxy] = web.AppKey("trusted_proxy", TrustedProxy)


@web.middleware
async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the trusted proxy's forwarded headers (first in the middleware chain)."""
    trusted = request.app[TRUSTED]
    if not trusted.networks or not trusted.trusts(request.remote):
        return await handler(request)
    changes: dict[str, str] = {}
    proto = (_last(request, hdrs.X_FORWARDED_PROTO) or "").lower()
    if proto in ("http", "https"):
        changes["scheme"] = proto
    client = _address(_last(request, hdrs.X_FORWARDED_FOR) or "")
    if client is not None:
        changes["remote"] = str(client)
    return await handler(request.clone(**changes) if changes else request)  # type: ignore[arg-type]
