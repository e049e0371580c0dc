"""Which ``Host`` headers the HTTP listener answers: a guard against DNS rebinding.

A web page on an attacker's site can make a browser resolve the attacker's name to this node's
address and then read the status page as that name. The browser sends that name as ``Host``, so
a request is answered only when its Host is one this node goes by:

- ``localhost``, ``127.0.0.1``, ``[::1]`` (any port: a container's port may be mapped);
- an IP address the connection really arrived at, or the listener's configured ``[http] host``
  (what Prometheus and load balancers scrape by);
- a name in ``[http] allowed_hosts`` (``"status.example.com"``: on any port; with ``:port``, on
  that port only); ``"*"`` there turns the check off.

Requests without a Host header (HTTP/1.0 tools, not browsers) are answered. Others get
``421 Misdirected Request``.
"""

from __future__ import annotations

import ipaddress

from crm.config import HttpConfig

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def split_host(value: str) -> tuple[str, str]:
    """``"Name:8025"`` -> ``("name", "8025")``; ``"[::1]:80"`` -> ``("::1", "80")``."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, ""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class HostPolicy:
    """The Host names one HTTP listener answers to (see the module's text)."""

    def __init__(self, config: HttpConfig) -> None:
        self.anything = "*" in config.allowed_hosts
        self.names = set(LOOPBACK_NAMES)
        if config.host.lower() not in WILDCARDS:
            self.names.add(split_host(config.host)[0])
        self.pairs: set[tuple[str, str]] = set()
        for entry in config.allowed_hosts:
            host, port = split_host(entry)
            if port:
                self.pairs.add((host, port))
            else:
                self.names.add(host)

    def allows(self, header: str | None, local: str | None = None) -> bool:
        """Whether to answer a request with Host ``header`` that arrived at address ``local``."""
        if self.anything or header is None:
            return True
        host, port = split_host(header)
        if host in self.names or (host, port) in self.pairs:
            return True
        address = _ip(host)
        return address is not None and local is not None and address == _ip(local)
