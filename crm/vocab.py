"""The shared vocabulary: words every part of mailcrm spells the same way, in one place.

The kinds of things (directions, CRM entities, mailbox kinds), the UTC clock, a mailbox's initial
import window (M3) and poll intervals, the TLS modes of an upstream server, an upstream endpoint and
which hosts count as loopback. Plain Python only: the ORM, the rules, the CLI and the protocol front
ends all import it (see ARCHITECTURE.md).
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
from dataclasses import dataclass


class EntityType(enum.StrEnum):
    """The CRM entities an activity can be bound to."""

    LEAD = "lead"
    CONTACT = "contact"
    COMPANY = "company"


class Direction(enum.StrEnum):
    """Which way a message went, seen from the company."""

    INCOMING = "incoming"
    OUTGOING = "outgoing"


class MailboxKind(enum.StrEnum):
    """SPEC M1: personal (one owner) or company (shared by the CRM)."""

    PERSONAL = "personal"
    COMPANY = "company"


# A mailbox's initial import window (M3): how far back its first import reaches.
WINDOWS: dict[str, dt.timedelta | None] = {"3d": dt.timedelta(days=3), "all": None}
DEFAULT_WINDOW = "3d"
# How often a company mailbox is polled, by its name in the CLI.
INTERVALS = {"2m": 120, "5m": 300, "10m": 600, "1h": 3600, "3h": 10800, "12h": 43200}
INTERVAL_NAMES = {seconds: name for name, seconds in INTERVALS.items()}
# How an upstream server is reached: TLS from the first byte, upgraded by STARTTLS, or plaintext
# (loopback only).
TLS_MODES = ("ssl", "starttls", "none")
LOCAL_NAMES = ("localhost", "localhost.localdomain")


def utcnow() -> dt.datetime:
    """Now, as an aware UTC datetime (the clock every stored time is read on)."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Endpoint:
    """An upstream server: host, port and TLS mode (one of :data:`TLS_MODES`)."""

    host: str
    port: int
    tls: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.tls})"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` (any case, a final dot allowed), ``localhost.localdomain`` and
    loopback addresses, IPv4 loopback written as an IPv4-mapped IPv6 address included (a
    dual-stack listener sees IPv4 clients so)."""
    name = host.strip().rstrip(".").lower()
    if name in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback
