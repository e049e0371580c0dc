"""The IMAP poller component of ``mailcrm serve``: one worker per linked mailbox, one event loop.

``run_poller(config, db, stop)`` keeps the set of :class:`~proxy.imap.worker.MailboxWorker`
tasks in line with the database: every ``refresh_s`` it re-reads the mailboxes, starts workers
for mailboxes that should be checked (T3), stops those unlinked or removed, and restarts those
whose connection settings changed. Every ``push_check_s`` it asks the database which folders
hold activities completed or reopened in the CRM and wakes their workers (C10). Each worker
fails alone: one slow or broken server never delays another mailbox.

Several gateway nodes (B7): only mailboxes this node holds a lease on are synced
(:class:`crm.mailboxes.leases.LeaseKeeper`). The leases are renewed every third of a lease period on
a thread of their own, never queued behind capture work on the database thread (an import of many
mailboxes would make them lapse). A guard checks every :data:`GUARD_S` which mailboxes are still
safely ours, a third of a lease period before their deadline, and tells the workers of every other
one to stop at once, all together, without waiting on the database; a worker's polite end is cut
short after a twelfth of a lease period: it has ended before another node may take its row. Every
lease is released on shutdown after the workers stopped. With one node (SQLite) the node simply
holds every lease.

A mailbox asked for by a foreground import (``mailcrm mailbox import``) is dropped at the next
claim and its worker stopped like any lost one; once the worker has ended and every database call
queued before is done (the capture thread runs them in order), the row is let go at once rather
than left to lapse (:meth:`crm.mailboxes.leases.LeaseKeeper.hand_over`). When the import lets go,
the next claim takes the mailbox back and a new worker goes on from the checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from crm.config import Config
from crm.errors import SecretError
from crm.face import Database, StoreError
from crm.face.poller import Capturer, LeaseKeeper, SecretBox, load_key, sync
from crm.vocab import utcnow

from .context import DbThread, PollerContext, token_source
from .plan import MailboxPlan, load_plans
from .schedule import mode_for
from .worker import MailboxWorker, wait_any

log = logging.getLogger("proxy.poller")  # its name before the move (issue 17)
STOP_GRACE_S = 10.0
GUARD_S = 0.25  # how often the guard checks the leases (never waits on the database)


def fingerprint(plan: MailboxPlan) -> tuple[object, ...]:
    """The settings whose change needs a new connection (not owner activity or interval)."""
    return (plan.endpoint, plan.folders, plan.since, plan.kind, plan.linked_at)


def _secrets(config: Config) -> SecretBox | None:
    try:
        return SecretBox(load_key(config, create=False))
    except SecretError as exc:
        log.warning("poller: stored passwords cannot be opened: %s", exc)
        return None


def _timed_pushes(db: Database) -> tuple[dict[int, set[str]], float]:
    """The folders with pushes waiting, and how long the query took (database thread)."""
    started = time.monotonic()
    return sync.folders_with_pushes(db), time.monotonic() - started


class Poller:
    """Supervises the mailbox workers."""

    def __init__(self, config: Config, db: Database) -> None:
        self.config = config
        threads = config.poller.db_threads or (1 if db.single_writer else 4)
        capturer = Capturer(db, config.capture)
        self.ctx = PollerContext(
            config.poller, db, DbThread(threads), capturer, parse=DbThread(name="parse")
        )
        self.ctx.tokens = token_source(db, config)
        self.keeper = LeaseKeeper(db, config.cluster.node_name, config.cluster.lease_seconds)
        self.lease_run = DbThread()  # the leases' own thread: never behind capture work
        self.workers: dict[int, tuple[MailboxWorker, asyncio.Task[None]]] = {}
        self.problems: dict[int, str] = {}
        self.mine: frozenset[int] = frozenset()
        self.changed = asyncio.Event()  # the leases changed: reconcile now

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile and push-check until ``stop``; then stop every worker, release the leases."""
        helpers = [
            asyncio.create_task(self._renew(stop), name="poller:leases"),
            asyncio.create_task(self._guard(stop), name="poller:guard"),
        ]
        next_refresh = 0.0
        try:
            while not stop.is_set():
                self.changed.clear()
                if time.monotonic() >= next_refresh or self._safe() != self.mine:
                    await self.refresh()
                    next_refresh = time.monotonic() + self.ctx.config.refresh_s
                if self.keeper.asked:
                    await self._hand_over()
                pause = await self.check_pushes()
                await wait_any((stop, self.changed), pause)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await asyncio.gather(*(self._stop(mid) for mid in list(self.workers)))
            with contextlib.suppress(StoreError):
                await self.lease_run(self.keeper.release_all)
            await self.lease_run.close()
            await self.ctx.run.close()
            if self.ctx.parse is not None:
                await self.ctx.parse.close()

    def _safe(self) -> frozenset[int]:
        """The mailboxes still ours for at least a third of a lease period."""
        return self.keeper.owned(margin=self.keeper.renew_interval)

    async def _renew(self, stop: asyncio.Event) -> None:
        """Claim every third of a lease period, on the leases' own thread."""
        while not stop.is_set():
            due = time.monotonic() + self.keeper.renew_interval
            try:
                await self.lease_run(self.keeper.claim)
            except StoreError as exc:  # owned() shrinks as the held leases run out
                log.warning("poller: lease renewal failed: %s", exc)
            self.changed.set()
            await wait_any((stop,), due - time.monotonic())

    async def _guard(self, stop: asyncio.Event) -> None:
        """Stop the workers of mailboxes no longer safely ours, at once and all together."""
        while not stop.is_set():
            mine = self._safe()
            for mailbox_id, (worker, _task) in self.workers.items():
                if mailbox_id not in mine:
                    worker.stop.set()
            if mine != self.mine:
                self.changed.set()
            await wait_any((stop,), GUARD_S)

    async def _hand_over(self) -> None:
        """Let go of the mailboxes asked for whose workers have ended (an import is waiting)."""
        ended = set(self.keeper.asked) - self.workers.keys()
        if not ended:
            return
        await self.ctx.run.drain()  # after every call queued before: their last writes done
        try:
            await self.lease_run(self.keeper.hand_over, ended)
        except StoreError as exc:  # asked again at the next claim; or the rows lapse
            log.warning("poller: hand-over failed: %s", exc)

    async def refresh(self) -> None:
        """Start, update, restart or stop workers to match the mailboxes in the database."""
        plans = await self.ctx.run(load_plans, self.ctx.db, _secrets(self.config), self.ctx.config)
        self.mine = self._safe()  # after the wait for the plans: nothing starts that is not ours
        wanted: dict[int, MailboxPlan] = {}
        for plan in plans:
            if plan.id not in self.mine or not mode_for(plan, utcnow(), self.ctx.config).check:
                continue
            if plan.problem or plan.endpoint is None:
                await self._problem(plan)
                continue
            wanted[plan.id] = plan
        await asyncio.gather(*(self._stop(m) for m in list(self.workers) if m not in wanted))
        for mailbox_id, plan in wanted.items():
            running = self.workers.get(mailbox_id)
            if running is not None and running[1].done():
                await self._stop(mailbox_id)
                running = None
            if running is not None and fingerprint(running[0].plan) != fingerprint(plan):
                await self._stop(mailbox_id)
                running = None
            if running is None:
                self._start(plan)
            else:
                running[0].update(plan)

    async def _problem(self, plan: MailboxPlan) -> None:
        reason = plan.problem or "cannot be polled"
        if self.problems.get(plan.id) != reason:
            self.problems[plan.id] = reason
            log.warning("mailbox %s: %s", plan.address, reason)
            await self.ctx.run(sync.record_status, self.ctx.db, plan.id, reason)

    def _start(self, plan: MailboxPlan) -> None:
        self.problems.pop(plan.id, None)
        worker = MailboxWorker(self.ctx, plan)
        worker.grace = min(worker.grace, self.keeper.renew_interval / 4)  # ends inside the margin
        task = asyncio.create_task(worker.run(), name=f"imap:{plan.address}")
        self.workers[plan.id] = (worker, task)
        log.info("watching mailbox %s", plan.address)

    async def _stop(self, mailbox_id: int) -> None:
        worker, task = self.workers.pop(mailbox_id)
        worker.stop.set()
        done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_S)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("stopped watching mailbox %s", worker.plan.address)

    async def check_pushes(self) -> float:
        """Wake the workers whose folders have CRM-side read-state changes waiting (C10).

        Returns the pause before the next check: ``push_check_s``, or longer on a database so
        big that the check itself takes a while (it never takes more than 5 % of the time).
        """
        if not self.workers:
            return self.ctx.config.push_check_s
        pending, took = await self.ctx.run(_timed_pushes, self.ctx.db)
        pause = max(self.ctx.config.push_check_s, 20 * took)
        for mailbox_id, folders in pending.items():
            running = self.workers.get(mailbox_id)
            if running is not None:
                running[0].request_push(folders)
        return pause


async def run_poller(config: Config, db: Database, stop: asyncio.Event) -> None:
    """``mailcrm serve`` component: poll every linked mailbox until ``stop`` is set."""
    if not config.poller.enabled:
        await stop.wait()
        return
    await Poller(config, db).run(stop)
