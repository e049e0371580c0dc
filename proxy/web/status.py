"""What the status page shows (B6, M5): listeners, nodes, mailboxes and the last day's CRM work.

:func:`gather` reads the database (:func:`crm.face.status.read_status`, in a worker thread: it
blocks) and probes this node's listeners over TCP, so a listener is green only when it really
answers. The result is plain data (:class:`Snapshot`), rendered as HTML by :mod:`proxy.web.page` and
as JSON at ``/status.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from crm.config import Config
from crm.face import Database
from crm.face.status import read_status
from crm.face.views import iso
from crm.vocab import utcnow
from proxy.smtp.proxyproto import LOCAL_HEADER

GREEN, RED = "green", "red"
PROBE_TIMEOUT = 2.0
RECENT = dt.timedelta(days=1)


@dataclass
class Check:
    """One listener or node: green or red, and why."""

    name: str
    status: str
    reason: str
    address: str = ""
    key: str = ""


@dataclass
class Snapshot:
    """Everything on the status page, at one moment."""

    node: str | None  # the serve node answering; None from ``mailcrm status`` (no node)
    generated_at: str
    listeners: list[Check] = field(default_factory=list)
    nodes: list[Check] = field(default_factory=list)
    mailboxes: list[dict[str, Any]] = field(default_factory=list)
    leads_today: int = 0
    activities_today: int = 0
    recent_leads: list[dict[str, Any]] = field(default_factory=list)
    recent_activities: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data."""
        return asdict(self)


async def gather(config: Config, db: Database, from_node: bool = True) -> Snapshot:
    """Probe the listeners and read the database; a database failure shows as a red check.

    ``from_node`` False: asked by ``mailcrm status``, a process that is no node of the cluster.
    """
    node = config.cluster.node_name if from_node else None
    snap = Snapshot(node=node, generated_at=iso(utcnow()) or "")
    http = f"{config.http.host}:{config.http.port}"
    snap.listeners.append(Check("HTTP (status, metrics)", GREEN, "serving this page", http, "http"))
    snap.listeners.extend(await probe_relay(config))
    try:
        await asyncio.to_thread(_read_database, config, db, snap)
    except Exception as exc:
        reason = f"unreachable: {_first_line(exc)}"
        snap.listeners.append(Check("Database", RED, reason, db.safe_url))
    else:
        snap.listeners.append(Check("Database", GREEN, "reachable", db.safe_url))
    return snap


async def probe_relay(config: Config) -> list[Check]:
    """The SMTP relay's listeners on this node (none when the relay is off)."""
    relay = config.relay
    if not relay.enabled:
        return []
    host, proxy = _loopback_for(relay.host), relay.proxy_protocol
    checks = [await probe_smtp("SMTP relay (STARTTLS)", host, relay.port, key="relay", proxy=proxy)]
    if relay.tls_port:
        name = "SMTP relay (implicit TLS)"
        checks.append(
            await probe_smtp(name, host, relay.tls_port, tls=True, key="relay_tls", proxy=proxy)
        )
    return checks


async def _connect(
    host: str, port: int, tls: bool, proxy: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """With PROXY protocol on, a v2 LOCAL header (a load balancer's check) goes before TLS."""
    ssl_context = None
    if tls:
        import ssl

        ssl_context = ssl.create_default_context()
        ssl_context.check_hostname, ssl_context.verify_mode = False, ssl.CERT_NONE
    if not proxy:
        return await asyncio.open_connection(host, port, ssl=ssl_context)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(LOCAL_HEADER)
    try:
        if ssl_context is not None:
            await writer.start_tls(ssl_context)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def probe_smtp(
    name: str, host: str, port: int, tls: bool = False, key: str = "", proxy: bool = False
) -> Check:
    """Connect, read the greeting and say QUIT; green on a 220 greeting."""
    address = f"{host}:{port}"
    try:
        reader, writer = await asyncio.wait_for(_connect(host, port, tls, proxy), PROBE_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        return Check(name, RED, f"not answering: {_first_line(exc)}", address, key)
    try:
        greeting = await asyncio.wait_for(reader.readline(), PROBE_TIMEOUT)
        writer.write(b"QUIT\r\n")
        await writer.drain()
    except (OSError, TimeoutError):
        greeting = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if greeting.startswith(b"220"):
        return Check(name, GREEN, "accepting connections", address, key)
    shown = greeting.decode("ascii", "replace").strip()[:80] or "no greeting"
    return Check(name, RED, f"unexpected answer: {shown}", address, key)


async def probe_tcp(name: str, host: str, port: int, key: str = "") -> Check:
    """Green when something accepts a TCP connection at host:port."""
    address = f"{host}:{port}"
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(_loopback_for(host), port), PROBE_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        return Check(name, RED, f"not answering: {_first_line(exc)}", address, key)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Check(name, GREEN, "accepting connections", address, key)


def _loopback_for(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _read_database(config: Config, db: Database, snap: Snapshot) -> None:
    data = read_status(db, config.cluster.lease_seconds, utcnow() - RECENT, config.poller)
    snap.mailboxes = data.mailboxes
    snap.nodes = [
        Check(
            node.name,
            GREEN if node.alive else RED,
            f"{'alive' if node.alive else 'no heartbeat'}: last seen {node.silent_s:.0f} s ago, "
            f"{node.mailboxes} mailboxes",
        )
        for node in data.nodes
    ]
    snap.leads_today, snap.activities_today = data.leads_today, data.activities_today
    snap.recent_leads, snap.recent_activities = data.recent_leads, data.recent_activities
