"""``mailcrm serve``: runs every long-lived component on one event loop until SIGTERM/SIGINT.

The loop is uvloop's when it is installed (a dependency on Linux), asyncio's otherwise.

Components are coroutines ``run(config, db, stop)`` that return when ``stop`` is set; each is
started here, and one that crashes is logged and restarted after a pause, so a fault in one part
(say, the poller) never takes down another (say, the relay). What components share is made here
and given to those that name it as a keyword parameter: ``wakeup``, the spool worker's wake-up
(:class:`crm.face.relay.Wakeup`) that the relay kicks after a delivery.

The secret key that seals mailbox passwords is made here, at the start, and only on SQLite (one
node by nature); a node of a PostgreSQL gateway must be given the shared key, and says so when
it lacks it (its relay then refuses CRM users' logins for now: :mod:`proxy.directory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import inspect
import logging
import os
import resource
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from crm import logs
from crm.config import Config
from crm.errors import SecretError
from crm.face import Database
from crm.face.relay import Wakeup, load_key

log = logging.getLogger(__name__)
Component = Callable[[Config, Database, asyncio.Event], Awaitable[None]]

# (name, "module:function") of every component; each module owns its part.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("spool", "crm.spool.runner:run_spool_worker"),
    ("relay", "proxy.smtp.relay:run_relay"),
    ("poller", "proxy.imap.poller:run_poller"),
    ("http", "proxy.web:run_http"),
    ("davlog", "crm.store.pruning:run_pruning"),
)
# Component paths before the re-room (issue 17), still accepted: callers outside the package
# (scripts, tests of earlier versions) may name them.
MOVED: dict[str, str] = {
    "crm.spool:run_spool_worker": "crm.spool.runner:run_spool_worker",
    "proxy.relay:run_relay": "proxy.smtp.relay:run_relay",
    "proxy.poller:run_poller": "proxy.imap.poller:run_poller",
}
RESTART_DELAY = 5.0
STARTUP_SECONDS = 2.0  # after this, what the heap holds counts as start-up's


def _load(target: str) -> Component:
    module, _, name = MOVED.get(target, target).partition(":")
    component: Component = getattr(importlib.import_module(module), name)
    return component


def _shared_for(run: Component, shared: dict[str, Any]) -> dict[str, Any]:
    """The shared objects ``run`` takes (by the names of its keyword parameters)."""
    names = inspect.signature(run).parameters
    return {name: value for name, value in shared.items() if name in names}


async def _supervise(
    name: str,
    run: Component,
    config: Config,
    db: Database,
    stop: asyncio.Event,
    shared: dict[str, Any] | None = None,
) -> None:
    extra = _shared_for(run, shared or {})
    while not stop.is_set():
        try:
            await run(config, db, stop, **extra)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("component %s crashed; restarting in %.0f s", name, RESTART_DELAY)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RESTART_DELAY)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``serve`` on uvloop when it is installed (its sockets, TLS and loop are compiled: the
    relay's CPU per message drops by about a fifth), on asyncio's loop otherwise or when
    ``MAILCRM_EVENT_LOOP=asyncio`` says so. The heap start-up built is frozen soon after the
    start (:func:`freeze_startup_heap`)."""
    if os.environ.get("MAILCRM_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(_freezing_after_startup(main))
            return
    asyncio.run(_freezing_after_startup(main))


async def _freezing_after_startup(main: Coroutine[Any, Any, None]) -> None:
    asyncio.get_running_loop().call_later(STARTUP_SECONDS, freeze_startup_heap)
    await main


def freeze_startup_heap() -> None:
    """Move what start-up built (modules, the ORM's metadata, TLS contexts...) out of the cyclic
    garbage collector's reach: a full collection then walks only what serving made since, so it
    pauses the loop, and every connection on it, for a few milliseconds instead of tens of them
    (``gc.freeze``). Start-up's own garbage is collected first."""
    gc.collect()
    gc.freeze()
    log.debug("start-up heap frozen: %d objects", gc.get_freeze_count())


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one; the limit now in force.

    Every linked mailbox holds a socket, so the usual soft limit of 1,024 would run out near a
    thousand mailboxes when ``serve`` is started by hand (the systemd unit sets its own).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit above %d: %s", soft, exc)
    return soft


def check_secret_key(config: Config, db: Database) -> bool:
    """Make sure this node has the secret key: made when missing on SQLite, never on a shared
    database (a key of this node's own would seal passwords no other node can open)."""
    try:
        load_key(config, create=db.engine.dialect.name == "sqlite")
    except (SecretError, OSError) as exc:
        log.error(
            "%s; every node of a gateway needs the same key: relay logins of CRM users "
            "are refused (454) until it is there",
            exc,
        )
        return False
    return True


async def serve(
    config: Config,
    db: Database,
    stop: asyncio.Event | None = None,
    components: tuple[tuple[str, str], ...] = COMPONENTS,
) -> None:
    """Run the components until ``stop`` is set (by SIGTERM or SIGINT when not given)."""
    stop = stop or asyncio.Event()
    if config.log_format != "text":
        logs.configure(config.log_format)  # structured logs (B6)
    log.debug("open files limit: %d", raise_fd_limit())
    check_secret_key(config, db)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    shared: dict[str, Any] = {"wakeup": Wakeup()}  # one per process: the relay wakes the worker
    tasks = [
        asyncio.create_task(_supervise(name, _load(target), config, db, stop, shared), name=name)
        for name, target in components
    ]
    log.info("mailcrm serving: %s", ", ".join(name for name, _ in components))
    try:
        await stop.wait()
    finally:
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
