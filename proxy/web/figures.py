"""The web app's background task that keeps the dashboard's figures ready (issue 18): no request
computes them. Started and stopped with the aiohttp app (:func:`keep_figures`, a cleanup
context); every few seconds it asks the :class:`crm.face.figures.FigureKeeper` which views are
due and computes them one after another in a worker thread (one at a time: the relay and the
poller share the machine). A request for a view with no figures yet wakes it at once. A failure
(the database away) is logged and retried on the next round; it never ends the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from crm.face import Database
from crm.face.figures import FigureKeeper
from crm.face.visibility import Viewer

log = logging.getLogger(__name__)
KEEPER: web.AppKey[FigureKeeper] = web.AppKey("figures", FigureKeeper)
WAKE: web.AppKey[asyncio.Event] = web.AppKey("figures_wake", asyncio.Event)
TICK = 5.0  # s between two looks at what is due (sooner when a request wakes the task)
STOP_WAIT = 30.0  # s to let a computation under way finish when the app stops


async def _compute(keeper: FigureKeeper, db: Database, viewer: Viewer | None) -> None:
    def job() -> None:
        with db.session() as session:
            keeper.refresh(session, viewer)

    running = asyncio.ensure_future(asyncio.to_thread(job))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait({running}, timeout=STOP_WAIT)  # no query left behind the app
        raise


async def _keep(keeper: FigureKeeper, db: Database, wake: asyncio.Event) -> None:
    while True:
        wake.clear()
        for viewer in keeper.due():
            try:
                await _compute(keeper, db, viewer)
            except Exception:
                log.exception("dashboard figures of %s", viewer.email if viewer else "all")
                break  # the database is likely away: wait for the next round
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), TICK)


def keeping(db: Database) -> Callable[[web.Application], AsyncIterator[None]]:
    """The aiohttp cleanup context running the task over ``db`` for the app's life."""

    async def keep_figures(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_keep(app[KEEPER], db, app[WAKE]), name="dashboard-figures")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return keep_figures


def install(app: web.Application, db: Database, keeper: FigureKeeper | None = None) -> None:
    """Give ``app`` a figure keeper and the task that fills it."""
    app[KEEPER] = keeper if keeper is not None else FigureKeeper()
    app[WAKE] = asyncio.Event()
    app.cleanup_ctx.append(keeping(db))
