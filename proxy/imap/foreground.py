"""``mailcrm mailbox import``: one mailbox imported in the foreground, through the poller's code.

The session is the poller's (:func:`.worker.open_session`: connect, log in, QRESYNC, folders),
each folder one :func:`.folder.sync_folder` pass, so capture, checkpoints, read state and
deletions behave exactly as in ``mailcrm serve``. Differences, all on purpose:

* Window: ``--since`` is the mailbox's *initial import window* (M3) and is stored as such once
  the server has accepted the login, as ``mailbox set --since`` would: capture judges every
  message by the stored window (C12), and the poller goes on with the window the CRM was filled
  with (after a UIDVALIDITY change, for old mail moved into a folder). Widening forgets the
  locations of messages that were skipped (:func:`crm.mailboxes.sync.set_window`). Every message of
  the window not yet recorded is imported, below the checkpoint too (``from_start``): ``--since
  all`` on a mailbox polled with ``3d`` brings the older mail, and a second run skips what is
  recorded. The checkpoint never moves back, so the poller neither skips nor doubles anything.
* Count first: one UID SEARCH per window of each folder (minus what is recorded) gives the total
  for the progress bar (:mod:`.importview`), which the poller's progress hook then advances.
* Lease (B7): the mailbox's lease is held for the whole run (:mod:`.hold`). A serve node holding
  it is asked to hand it over and takes it back when the import lets go; another import in the
  way is refused (or waited for, ``--wait``); a lost lease stops the import. The lease is given
  back only after the database thread's last batch is stored, so no serve node syncs meanwhile.
* Interrupts: SIGINT or SIGTERM cancels the run; the batch on the database thread finishes and
  is counted, checkpoints stay behind their captures, and running again resumes. A second
  signal ends the process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from crm.config import Config, PollerConfig
from crm.errors import InvalidInput, UpstreamError
from crm.face import Database, StoreError
from crm.face.poller import Capturer, import_node, sync
from crm.vocab import WINDOWS, utcnow

from .client import ImapClient
from .context import DbThread, PollerContext, token_source
from .folder import sync_folder
from .hold import LeaseHold
from .importer import ImportStats, imap_date, uid_windows
from .importview import ImportView
from .parse import chunks
from .plan import FolderPlan, MailboxPlan
from .schedule import mode_for
from .summary import ImportSummary
from .worker import open_session

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


def prepare(plan: MailboxPlan, since: str | None, config: PollerConfig) -> str:
    """The window to import (``since`` or the mailbox's); refusals as :class:`InvalidInput`."""
    if since is not None and since not in WINDOWS:
        raise InvalidInput(f"--since must be {' or '.join(WINDOWS)}, not {since!r}")
    mode = mode_for(plan, utcnow(), config)
    if not mode.check:
        raise InvalidInput(f"mailbox {plan.address} is not synced: {mode.reason}")
    if plan.problem or plan.endpoint is None:
        raise InvalidInput(f"mailbox {plan.address}: {plan.problem or 'no IMAP server'}")
    return since or plan.since


class _CountingDb(DbThread):
    """The poller's database thread, adding up what every stored batch did, per folder.

    The sum is made on the thread itself, so a batch that completes after an interrupt cancelled
    its caller is still counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.folder = ""
        self.stats: dict[str, ImportStats] = {}

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        folder = self.folder

        def counted() -> T:
            result = fn(*args, **kwargs)
            if isinstance(result, ImportStats):
                total = self.stats.setdefault(folder, ImportStats())
                total.captured += result.captured
                total.duplicate += result.duplicate
                total.skipped += result.skipped
            return result

        return await super().__call__(counted)


async def count_new(
    ctx: PollerContext, plan: MailboxPlan, client: ImapClient, folder: FolderPlan
) -> int:
    """How many messages of the window in ``folder`` are not recorded yet."""
    info = await client.select(folder.name)
    since = plan.window_start(utcnow())
    criteria = f" SINCE {imap_date(since - dt.timedelta(days=1))}" if since else ""
    if info.uidnext > 0:
        span = ctx.config.search_span
        windows = [f"{low}:{high}" for low, high in uid_windows(1, info.uidnext - 1, span)]
    else:
        windows = ["1:*"]
    new = 0
    for uid_range in windows:
        uids = sorted(set(await client.uid_search(f"UID {uid_range}{criteria}")))
        for part in chunks(uids, 500):
            known = await ctx.run(
                sync.recorded, ctx.db, plan.id, folder.name, info.uidvalidity, part
            )
            new += len(part) - len(known)
    return new


class _Signals:
    """SIGINT/SIGTERM cancel the run once; a second signal acts as if none were caught."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.caught: str | None = None
        self.loop = asyncio.get_running_loop()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.add_signal_handler(sig, self._caught, sig)

    def _caught(self, sig: signal.Signals) -> None:
        self.caught = sig.name
        self.remove()
        self.task.cancel()

    def remove(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.remove_signal_handler(sig)


class ForegroundImport:
    """One run of ``mailcrm mailbox import``."""

    def __init__(
        self, config: Config, db: Database, plan: MailboxPlan, since: str, view: ImportView
    ) -> None:
        self.stored_since = plan.since
        self.plan = dataclasses.replace(plan, since=since)
        self.view = view
        self.db_thread = _CountingDb()
        capturer = Capturer(db, config.capture)
        self.parse = DbThread(name="parse")
        self.ctx = PollerContext(
            config.poller, db, self.db_thread, capturer, view.event, parse=self.parse
        )
        self.ctx.tokens = token_source(db, config)
        node = import_node(config.cluster.node_name, os.getpid())
        lease_s = config.cluster.lease_seconds
        self.hold = LeaseHold(db, node, lease_s, plan.id, plan.address, self.db_thread)
        self.folders: list[FolderPlan] = []

    async def run(self, wait: bool = False) -> ImportSummary:
        """Take the lease, import every folder, release; never raises for an interrupt."""
        main = asyncio.current_task()
        assert main is not None
        signals = _Signals(main)
        signals.install()
        failure: str | None = None
        try:
            await self._leased(main, wait)
        except asyncio.CancelledError:
            if signals.caught is None and self.hold.lost is None:
                raise
            main.uncancel()
            failure = None if signals.caught else self.hold.lost
        except UpstreamError as exc:
            failure = str(exc)
        finally:
            signals.remove()
            await self.db_thread.close()
            await self.parse.close()
            self.view.close()
        stats = self.db_thread.stats
        return ImportSummary.of(self.plan, self.folders, stats, signals.caught, failure)

    async def _leased(self, main: asyncio.Task[Any], wait: bool) -> None:
        try:
            await self.hold.acquire(wait, self.view.note)
            keeper = asyncio.create_task(self.hold.keep(main))
            try:
                await self._import()
            finally:
                keeper.cancel()
        finally:
            await self.db_thread.drain()  # a batch an interrupt left running is stored first
            await self.hold.release()

    async def _import(self) -> None:
        try:
            async with open_session(self.ctx, self.plan) as (client, found):
                self.folders = list(found.folders)
                if self.plan.since != self.stored_since:
                    await self.ctx.run(sync.set_window, self.ctx.db, self.plan.id, self.plan.since)
                counts = {}
                for folder in self.folders:
                    counts[folder.name] = await count_new(self.ctx, self.plan, client, folder)
                self.view.plan(counts)
                for folder in self.folders:
                    self.db_thread.folder = folder.name
                    self.view.begin(folder.name)
                    await sync_folder(self.ctx, self.plan, client, folder, from_start=True)
                    self.view.end(folder.name)
                await self._status(found.problem)
        except UpstreamError as exc:
            await self._status(str(exc))
            raise
        except OSError as exc:
            await self._status(f"network error: {exc}")
            raise UpstreamError(f"network error: {exc}") from exc

    async def _status(self, problem: str | None) -> None:
        with contextlib.suppress(StoreError):
            await self.ctx.run(sync.record_status, self.ctx.db, self.plan.id, problem)
