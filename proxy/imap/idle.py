"""IMAP IDLE (RFC 2177) on the selected folder, with a watchdog.

:func:`idle` waits in IDLE until the server reports a change, the caller wakes it, the poller
stops, or ``limit`` seconds pass (the caller re-issues IDLE every 8-10 minutes, before servers
drop quiet connections). aioimaplib can wait forever when the server closes the connection
around IDLE (its issue #110): here every wait also races the connection-lost future, and the
answer to DONE must come within ``done_timeout`` or the connection is declared dead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from .client import CommandFailed, ConnectionLost, ImapClient

log = logging.getLogger(__name__)


async def _first(*waits: Awaitable[object], timeout: float | None) -> set[asyncio.Future[object]]:
    """Wait for the first of ``waits``; the waits made here from coroutines are cancelled after."""
    mine = [asyncio.ensure_future(w) for w in waits if asyncio.iscoroutine(w)]
    given = [w for w in waits if isinstance(w, asyncio.Future)]
    try:
        done, _ = await asyncio.wait(
            [*mine, *given], timeout=timeout, return_when="FIRST_COMPLETED"
        )
    finally:
        for task in mine:
            if not task.done():
                task.cancel()
    return done


async def idle(
    client: ImapClient,
    wake: asyncio.Event,
    stop: asyncio.Event,
    limit: float,
    done_timeout: float = 15.0,
) -> str:
    """IDLE until something happens; returns ``changed``, ``wake``, ``stop`` or ``renew``."""
    if client.changed.is_set():
        return "changed"
    proto = client.protocol
    lost = client.lost
    if proto is None or lost is None or client.is_lost:
        raise ConnectionLost(f"not connected to {client.endpoint.host}")
    command = asyncio.ensure_future(proto.idle())
    ack = asyncio.ensure_future(proto.wait_for_idle_response())
    started = await _first(command, ack, lost, timeout=client.timeout)
    if lost.done() or not started:
        command.cancel()
        ack.cancel()
        client.abort()
        raise ConnectionLost(f"{client.endpoint.host}: no answer to IDLE")
    if command in started:
        ack.cancel()
        raise CommandFailed(f"IDLE refused by {client.endpoint.host}: {_result(command)}")
    try:
        reason = await _wait(client, wake, stop, limit)
    finally:
        await _done(client, command, done_timeout)
    return reason


def _result(command: asyncio.Future[object]) -> str:
    if command.cancelled():
        return "cancelled"
    if command.exception() is not None:
        return str(command.exception())
    return str(getattr(command.result(), "result", "?"))


async def _wait(client: ImapClient, wake: asyncio.Event, stop: asyncio.Event, limit: float) -> str:
    assert client.lost is not None
    done = await _first(client.changed.wait(), wake.wait(), stop.wait(), client.lost, timeout=limit)
    if client.is_lost:
        raise ConnectionLost(f"{client.endpoint.host} closed the connection during IDLE")
    if stop.is_set():
        return "stop"
    if client.changed.is_set():
        return "changed"
    return "wake" if wake.is_set() and done else "renew"


async def _done(client: ImapClient, command: asyncio.Future[object], timeout: float) -> None:
    """End IDLE: DONE, then the tagged answer within ``timeout`` (the watchdog)."""
    proto = client.protocol
    if not command.done() and proto is not None and not client.is_lost:
        proto.idle_done()
    try:
        await client.guard(asyncio.shield(command), "IDLE", timeout)
    except ConnectionLost:
        command.cancel()
        raise
    finally:
        _drain(client)


def _drain(client: ImapClient) -> None:
    """Empty aioimaplib's IDLE queue (the changes were noted by the client already)."""
    proto = client.protocol
    if proto is None:
        return
    while not proto.idle_queue.empty():
        proto.idle_queue.get_nowait()
