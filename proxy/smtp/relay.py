"""The SMTP relay component of ``mailcrm serve``: listeners, limits and the shared parts.

Mail clients submit to the STARTTLS listener (default 127.0.0.1:2587) or, when ``relay.tls_port``
is set, to the implicit-TLS one. Each connection gets its own :class:`~proxy.session.
RelayConnection`; what they share lives in :class:`Relay`: the upstream client and its capability
cache, the login directory, the database gate, the deliverer, the per-user rate limiter, the
connection count (one over the limit is told ``421`` and closed) and the
:class:`~proxy.smtp.gatekeeper.Gatekeeper` (per-client limits, login deadline and throttling).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import cast

from crm.config import Config
from crm.face import Database
from crm.face.relay import Journal, Wakeup, files_first, spool_dir

from .dbgate import DbGate
from .delivery import Deliverer
from .directory import Directory
from .gatekeeper import Gatekeeper, plaintext_upstream
from .proxyproto import ProxyPolicy
from .proxytls import PreTLSListener
from .server import RelaySMTP
from .session import RelayConnection
from .tls import relay_context, relay_hostname
from .upstream import UpstreamClient, UpstreamUnavailable
from .values import Caps

log = logging.getLogger("proxy.relay")  # its name before the move (issue 17)
SPILL_AT = 1024 * 1024
PROBE_TIMEOUT = 10.0
PROBE_RETRY = 30.0
IDLE_TIMEOUT = 300.0
DRAIN_TIMEOUT = 20.0


class RateLimiter:
    """A token bucket per user: ``per_minute`` messages, refilled evenly (0: no limit)."""

    def __init__(self, per_minute: int) -> None:
        self.burst = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        if self.burst <= 0:
            return True
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


class _Refuse(asyncio.Protocol):
    """Answers a connection over the limit with 421 and closes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport; uvloop's are not subclasses of asyncio.WriteTransport
        cast(asyncio.WriteTransport, transport).write(
            b"421 4.7.0 Too many connections, try again later\r\n"
        )
        transport.close()


class Relay:
    """Everything the relay's connections share; ``start`` opens the listeners."""

    def __init__(
        self, config: Config, db: Database, hostname: str, wakeup: Wakeup | None = None
    ) -> None:
        self.config = config.relay
        self.hostname = hostname
        sqlite = db.engine.dialect.name == "sqlite"
        self.gate = DbGate(timeout=config.relay.spool_timeout, threads=1 if sqlite else 8)
        self.directory = Directory(config, db, self.gate)
        self.client = UpstreamClient(config.relay, hostname)
        kick = wakeup.kick if wakeup is not None else (lambda: None)  # no worker here to wake
        self.deliverer = Deliverer(
            db,
            self.gate,
            Journal(spool_dir(config)),
            files_first=files_first(config, db),
            kick=kick,
        )
        self.limiter = RateLimiter(config.relay.max_messages_per_minute)
        self.spill_at = SPILL_AT
        self.spill_dir: Path | None = spool_dir(config) / "tmp"
        self.tls_context = relay_context(config.relay)
        self.proxy = ProxyPolicy.from_config(config.relay)  # None: PROXY protocol off
        # open sessions (from connection_made to connection_lost); one still in its TLS
        # handshake on an implicit TLS port is not one yet (asyncio ends those in 60 s)
        self.connections = 0
        self.gatekeeper = Gatekeeper(config.relay, lambda: self.connections)
        self.servers: list[asyncio.Server | PreTLSListener] = []
        self._probe: asyncio.Task[Caps] | None = None
        self._warmup: asyncio.Task[Caps] | None = None
        self._probe_failed = -PROBE_RETRY

    # --- shared helpers for the connections ---------------------------------------------------

    async def default_caps(self) -> Caps:
        """What to advertise before AUTH: the company upstream's capabilities, when known."""
        endpoint = self.directory.company_endpoint()
        if endpoint is None:
            return Caps()
        cached = self.client.cached_caps(endpoint)
        if cached is not None or time.monotonic() - self._probe_failed < PROBE_RETRY:
            return cached or Caps()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self.client.probe(endpoint))
        try:
            return await asyncio.wait_for(asyncio.shield(self._probe), PROBE_TIMEOUT)
        except (UpstreamUnavailable, TimeoutError) as exc:
            log.warning("relay: cannot probe upstream %s: %s", endpoint, exc)
            self._probe_failed = time.monotonic()
            return Caps()

    def size_limit(self, caps: Caps) -> int:
        """The SIZE the relay advertises and enforces: its own limit or the upstream's."""
        limit = self.config.max_message_size
        return min(limit, caps.size) if caps.size else limit

    # --- listeners ----------------------------------------------------------------------------

    def _protocol(self) -> asyncio.BaseProtocol:
        if self.connections >= self.config.max_connections:
            log.warning("relay: connection refused, %d open already", self.connections)
            return _Refuse()
        return RelaySMTP(
            RelayConnection(self),
            plaintext_auth_on_loopback=self.config.allow_plaintext_auth_on_loopback,
            on_open=self._opened,
            on_close=self._closed,
            gatekeeper=self.gatekeeper,
            proxy=self.proxy,
            hostname=self.hostname,
            ident="mailcrm relay",
            tls_context=self.tls_context,
            data_size_limit=self.config.max_message_size,
            timeout=IDLE_TIMEOUT,
            loop=asyncio.get_running_loop(),
        )

    def _opened(self) -> None:
        self.connections += 1

    def _closed(self) -> None:
        self.connections -= 1

    async def start(self) -> None:
        """Open the STARTTLS listener and, when configured, the implicit TLS one."""
        if self.spill_dir is not None:
            try:
                self.spill_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning(
                    "relay: %s unusable (%s); large messages spill to /tmp", self.spill_dir, exc
                )
                self.spill_dir = None
        loop = asyncio.get_running_loop()
        cfg = self.config
        self.servers.append(await loop.create_server(self._protocol, cfg.host, cfg.port))
        if cfg.tls_port is not None and self.proxy is not None:  # PROXY header before TLS
            listener = PreTLSListener(self._protocol, self.proxy, self.tls_context)
            self.servers.append(await listener.listen(cfg.host, cfg.tls_port))
        elif cfg.tls_port is not None:
            self.servers.append(
                await loop.create_server(
                    self._protocol, cfg.host, cfg.tls_port, ssl=self.tls_context
                )
            )
        log.info("relay listening on %s", ", ".join(f"{cfg.host}:{p}" for p in self.ports))
        company = self.directory.company_endpoint()
        if company is not None and plaintext_upstream(company) and not cfg.allow_plaintext_upstream:
            log.error(
                "relay: upstream %s has no TLS: logins through it are refused (set "
                "relay.upstream_tls, or relay.allow_plaintext_upstream = true)",
                company,
            )
        if company is not None:
            self._warmup = asyncio.create_task(self.default_caps())

    @property
    def ports(self) -> list[int]:
        """The bound ports: submission first, then implicit TLS (useful with port 0)."""
        return [int(s.sockets[0].getsockname()[1]) for s in self.servers if s.sockets]

    async def close(self, drain: float = DRAIN_TIMEOUT) -> None:
        """Stop listening, let open connections finish for up to ``drain`` seconds."""
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        deadline = time.monotonic() + drain
        while self.connections > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for task in (self._probe, self._warmup):
            if task is not None:
                task.cancel()
        await asyncio.to_thread(self.deliverer.close)
        self.gate.close()


async def run_relay(
    config: Config, db: Database, stop: asyncio.Event, *, wakeup: Wakeup | None = None
) -> None:
    """Component of ``mailcrm serve``: relay mail until ``stop`` is set; a delivery kicks
    ``wakeup``, the spool worker's wake-up in this process."""
    if not config.relay.enabled:
        log.info("relay disabled in the config")
        await stop.wait()
        return
    mail_log = logging.getLogger("mail.log")  # aiosmtpd logs every command at INFO
    if mail_log.level == logging.NOTSET:
        mail_log.setLevel(logging.WARNING)
    relay_context(config.relay)  # the data directory's pair written first, when there is none
    hostname = await asyncio.to_thread(relay_hostname, config.relay)
    relay = Relay(config, db, hostname, wakeup)
    await relay.start()
    try:
        await stop.wait()
    finally:
        await relay.close()
