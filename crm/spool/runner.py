"""The ``spool`` component of ``mailcrm serve``: paces the spool worker (:mod:`.worker`), which
runs in a child process at a lower CPU priority, or in a thread of this process.

A round starts at once when the relay of this process kicks the worker's
:class:`crm.spool.queue.Wakeup` after a delivery, otherwise at the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from sqlalchemy.exc import SQLAlchemyError

from crm import metrics
from crm.capture.path import Capturer
from crm.config import Config
from crm.store.db import Database

from .files import FileSpool
from .queue import ROUND, Wakeup, spool_dir
from .worker import SpoolWorker, child_init, child_run

log = logging.getLogger("crm.spool")  # its name before the move (issue 17)
PURGE_EVERY = 3600.0
CHILD_DEATHS = 3  # consecutive deaths of the capture process before capturing in-process
GATHER = 0.25  # s between rounds once caught up: mail sent meanwhile is captured as one batch


async def _sleep(stop: asyncio.Event, wake: asyncio.Event, delay: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class _ChildRunner:
    """Runs worker rounds in one child process (spawned on first use, again if it dies)."""

    DIED = "the capture worker process died"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pool: ProcessPoolExecutor | None = None

    async def run(self, purge: bool) -> tuple[int, str | None]:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=child_init,
                initargs=(self.config, logging.getLogger().getEffectiveLevel()),
            )
        try:
            done, error, counts = await asyncio.get_running_loop().run_in_executor(
                self.pool, child_run, purge
            )
        except BrokenProcessPool:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
            return 0, self.DIED
        metrics.add_counts(counts)  # the child's captures, in the counters /metrics serves
        return done, error

    async def close(self) -> None:
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown, True, cancel_futures=True)


class _ThreadRunner:
    """Runs worker rounds in a thread of this process (``in_process=True``)."""

    def __init__(self, config: Config, db: Database) -> None:
        capturer = Capturer(db, config.capture)
        self.worker = SpoolWorker(db, FileSpool(spool_dir(config)), capturer)

    async def run(self, purge: bool) -> tuple[int, str | None]:
        try:
            if purge:
                await asyncio.to_thread(self.worker.purge)
            return await asyncio.to_thread(self.worker.run_once), None
        except (SQLAlchemyError, OSError) as exc:
            return 0, f"{exc.__class__.__name__}: {exc}"

    async def close(self) -> None:
        return None


async def run_spool_worker(
    config: Config,
    db: Database,
    stop: asyncio.Event,
    *,
    in_process: bool = False,
    wakeup: Wakeup | None = None,
) -> None:
    """Component of ``mailcrm serve``: capture spooled mail until ``stop`` is set.

    The capture runs in a child process at a lower CPU priority (``in_process`` runs it in a
    thread here instead); this coroutine only paces it: at once after a kick of ``wakeup`` (the
    relay of this process is given the same one), every ``relay.spool_poll_interval`` seconds
    otherwise, backing off while the database fails. A
    round that caught up is followed by a short pause (:data:`GATHER`): under a stream of mail
    the next round takes what came meanwhile as one batch, not one round per message.
    """
    runner: _ChildRunner | _ThreadRunner
    runner = _ThreadRunner(config, db) if in_process else _ChildRunner(config)
    poll = max(config.relay.spool_poll_interval, 0.05)
    wake = asyncio.Event()
    delay, purged, deaths = poll, -PURGE_EVERY, 0
    loop = asyncio.get_running_loop()
    with (wakeup or Wakeup()).listening(wake):
        try:
            while not stop.is_set():
                wake.clear()
                purge = loop.time() - purged >= PURGE_EVERY
                done, error = await runner.run(purge)
                if error is None:
                    delay, purged, deaths = poll, loop.time() if purge else purged, 0
                else:
                    log.warning("spool worker: %s; retrying in %.1f s", error, delay)
                    delay = min(delay * 2, poll * 10)
                    deaths += error == _ChildRunner.DIED
                    if deaths >= CHILD_DEATHS:  # cannot run a child here: capture in a thread
                        log.error(
                            "spool worker: the capture process keeps dying; capturing in "
                            "this process instead"
                        )
                        await runner.close()
                        runner, deaths = _ThreadRunner(config, db), 0
                if not done:
                    await _sleep(stop, wake, delay)
                elif done < ROUND:  # caught up: let a batch gather instead of a round per message
                    await _sleep(stop, asyncio.Event(), min(GATHER, delay))
        finally:
            await runner.close()
