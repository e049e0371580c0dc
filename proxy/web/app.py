"""The HTTP listener of ``mailcrm serve`` (B6): ``/healthz`` and ``/metrics`` (open), the web CRM
(:mod:`.crmpages`, issue 18) and ``/status``, ``/status.json`` behind sign-in (:mod:`.guard`).

Loopback (127.0.0.1:8025) unless ``[http]`` in the config says otherwise. Database work runs in
worker threads so a slow database never stalls the relay on the same event loop. Requests whose
``Host`` this node does not go by are answered 421 (:mod:`proxy.web.hosts`, DNS rebinding).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crm.config import Config
from crm.face import Database
from crm.face.relay import spool_dir
from crm.face.status import metrics

from ..dav import mount as mount_dav
from . import crmpages, figures, forwarded, guard
from .hosts import HostPolicy
from .listen import tls_context
from .page import render
from .sessions import SessionStore
from .signin import SignIn
from .status import Check, Snapshot, gather, probe_relay

log = logging.getLogger(__name__)
HEALTH_TIMEOUT = 5.0
WRITE_WAIT = 3.0  # s /healthz waits for SQLite's write lock before it says "locked"
CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
DB: web.AppKey[Database] = web.AppKey("db", Database)
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
HOSTS: web.AppKey[HostPolicy] = web.AppKey("hosts", HostPolicy)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(config: Config, db: Database, sessions: SessionStore | None = None) -> web.Application:
    """The aiohttp application for one node (``sessions``: the sign-in sessions to keep)."""
    app = web.Application(
        middlewares=[forwarded.forwarded, check_host, guard.headers, guard.gate],
        client_max_size=guard.MAX_FORM,
    )
    app[CONFIG], app[DB], app[HOSTS] = config, db, HostPolicy(config.http)
    app[forwarded.TRUSTED] = forwarded.TrustedProxy(config.http.trusted_proxy)
    app[crmpages.DB] = db
    figures.install(app, db)
    app[REGISTRY] = metrics.registry(db, spool=spool_dir(config))
    app[guard.SESSIONS] = sessions if sessions is not None else SessionStore(db)
    app[guard.SIGNIN] = SignIn(config, db)
    app[guard.TEMPLATES] = guard.templates()
    app.router.add_get("/login", guard.login_page)
    app.router.add_post("/login", guard.login)
    app.router.add_post("/logout", guard.logout)
    app.router.add_static("/static/", guard.static_dir())
    crmpages.add_routes(app)
    app.router.add_get("/status", status_page)
    app.router.add_get("/status.json", status_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    mount_dav(app, config, db)
    return app


async def run_http(config: Config, db: Database, stop: asyncio.Event) -> None:
    """The ``serve`` component: listen until ``stop`` is set."""
    if not config.http.enabled:
        log.info("HTTP listener disabled in the config")
        await stop.wait()
        return
    context = tls_context(config)
    runner = web.AppRunner(make_app(config, db), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.http.host, config.http.port, ssl_context=context)
        await site.start()
        scheme = "https" if context else "http"
        log.info("web CRM, status and metrics on %s://%s:%d/", scheme, config.http.host,
                 config.http.port)  # fmt: skip
        await stop.wait()
    finally:
        await runner.cleanup()


@web.middleware
async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """421 for a Host this node does not go by (a DNS rebinding page, a wrong proxy)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    local = str(sockname[0]) if isinstance(sockname, tuple) else None
    if not request.app[HOSTS].allows(request.headers.get(hdrs.HOST), local):
        log.info(
            "http: request for Host %r refused (not in [http] allowed_hosts)",
            request.headers.get(hdrs.HOST, "")[:100],
        )
        return web.Response(
            status=421,
            text="421 Misdirected Request: this node does not "
            "answer for that Host (see [http] allowed_hosts)\n",
        )
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    """200 when this node can write to its database, 503 (with the reason) otherwise."""
    config, db = request.app[CONFIG], request.app[DB]
    body: dict[str, Any] = {"status": "ok", "node": config.cluster.node_name}
    try:
        await asyncio.wait_for(asyncio.to_thread(db.check_writable, WRITE_WAIT), HEALTH_TIMEOUT)
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
        body.update(status="unavailable", database=f"unreachable: {reason.splitlines()[0][:200]}")
        return web.json_response(body, status=503)
    body["database"] = "reachable"
    return web.json_response(body)


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus text exposition: counters, database gauges (``mailcrm_database_up`` 0 and
    none of them while the database is down), listener probes, process."""
    listeners = await probe_relay(request.app[CONFIG])
    body = await asyncio.to_thread(generate_latest, request.app[REGISTRY])
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_ListenerCollector(listeners))
    response = web.Response(body=body + generate_latest(extra))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


class _ListenerCollector(Collector):
    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks

    def collect(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "mailcrm_listener_up", "1 when the listener answers on this node.", labels=["listener"]
        )
        up.add_metric(["http"], 1.0)
        for check in self.checks:
            up.add_metric([check.key or check.name], 1.0 if check.status == "green" else 0.0)
        return [up]


def _for_viewer(request: web.Request, snap: Snapshot) -> Snapshot:
    """An admin sees every mailbox and node; anyone else only their own mailboxes, no nodes and
    none of the CRM's recent records (those follow the visibility rule on the CRM's pages)."""
    viewer = guard.current(request).viewer
    if not viewer.admin:
        snap.mailboxes = [box for box in snap.mailboxes if box.get("owner") == viewer.email]
        snap.nodes, snap.recent_leads, snap.recent_activities = [], [], []
    return snap


async def status_page(request: web.Request) -> web.Response:
    """The status page (HTML)."""
    snap = _for_viewer(request, await gather(request.app[CONFIG], request.app[DB]))
    return web.Response(text=render(snap), content_type="text/html", charset="utf-8")


async def status_json(request: web.Request) -> web.Response:
    """The status page's data as JSON."""
    snap = _for_viewer(request, await gather(request.app[CONFIG], request.app[DB]))
    return web.json_response(snap.as_json())
