"""The life of one mailbox in the poller: connect, sync, IDLE or sleep, and start over on failure.

A session logs in, resolves the folders (M3), and runs a full pass over them (the IDLE folder,
INBOX, last, so it stays selected). Then, where the server offers IDLE and the schedule allows
(:mod:`.schedule`), it waits in IDLE: a change syncs INBOX at once; a push request from the CRM
(an activity completed) syncs the folders concerned; every ``idle_renew_s`` IDLE is renewed, and
at the mailbox's interval every folder is passed again. Without IDLE the session ends after the
pass and the worker sleeps until the next check is due (or a push request wakes it).

Failures are recorded on the mailbox (M5: red, with the reason) and retried after a jittered
exponential backoff; a refused login waits longer (no lock-outs for a wrong password).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

from crm.errors import UpstreamAuthError, UpstreamError
from crm.face.poller import sync
from crm.face.status import metrics
from crm.vocab import utcnow

from .backoff import Backoff, throttle_hint
from .client import ImapClient
from .context import PollerContext
from .folder import sync_folder
from .folders import Discovery, discover
from .idle import idle
from .plan import FolderPlan, MailboxPlan
from .schedule import mode_for

log = logging.getLogger(__name__)
STOP_GRACE_S = 2.0


@contextlib.asynccontextmanager
async def open_session(
    ctx: PollerContext, plan: MailboxPlan
) -> AsyncIterator[tuple[ImapClient, Discovery]]:
    """Connect, log in, enable QRESYNC and resolve the folders; log out at the end.

    Every sync session starts here: the poller's and ``mailcrm mailbox import``'s.
    """
    assert plan.endpoint is not None
    client = ImapClient(plan.endpoint, ctx.config.timeout_s)
    try:
        token = (await ctx.token(plan.address))[0] if plan.endpoint.oauth else None
        await client.connect()
        await client.login(token)
        if ctx.config.use_qresync:
            await client.enable("QRESYNC")
        yield client, await discover(client, plan.folders)
    finally:
        await client.logout()


async def wait_any(events: Sequence[asyncio.Event], timeout: float) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds have passed."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=max(timeout, 0.0), return_when="FIRST_COMPLETED")
    finally:
        for wait in waits:
            wait.cancel()


class MailboxWorker:
    """Keeps one mailbox in sync until stopped."""

    def __init__(self, ctx: PollerContext, plan: MailboxPlan) -> None:
        self.ctx = dataclasses.replace(ctx, run=ctx.run.lane(plan.id))  # its calls in order
        self.plan = plan
        self.stop = asyncio.Event()
        self.grace = STOP_GRACE_S  # how long a session may take to end politely once stopped
        self.wake = asyncio.Event()
        self.push_folders: set[str] = set()
        self.folders: list[FolderPlan] = []
        self.backoff = Backoff(ctx.config.backoff_min_s, ctx.config.backoff_max_s)
        self.failure: str | None = None  # the reason last recorded on the mailbox

    def request_push(self, folders: set[str]) -> None:
        """The CRM changed read state in these folders: sync them soon."""
        mine = {f.name for f in self.folders}
        if not self.folders or folders & mine:
            self.push_folders |= folders
            self.wake.set()

    async def run(self) -> None:
        """Sessions and pauses until :attr:`stop` is set."""
        while not self.stop.is_set():
            wakeable = False
            try:
                delay = await self._stoppable(self._session())
                self.backoff.reset()
                self.failure = None
                wakeable = True
            except UpstreamAuthError as exc:
                await self._failed(str(exc), "auth")
                delay = self.backoff.next(floor=self.ctx.config.auth_backoff_min_s)
            except UpstreamError as exc:
                await self._failed(str(exc), "imap")
                delay = self.backoff.next(throttle_hint(str(exc)))
            except OSError as exc:
                await self._failed(f"network error: {exc}", "imap")
                delay = self.backoff.next()
            except Exception as exc:  # a bug or a database fault: logged, retried, never fatal
                log.exception("mailbox %s: sync failed", self.plan.address)
                await self._failed(f"internal error: {type(exc).__name__}: {exc}", "internal")
                delay = self.backoff.next()
            await self._sleep(delay, wakeable)

    async def _stoppable(self, session: Coroutine[Any, Any, float]) -> float:
        """Run a session; once stop is set it gets a moment to end politely, then is cancelled."""
        task = asyncio.ensure_future(session)
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait([task, stopping], return_when="FIRST_COMPLETED")
            if not task.done():
                await asyncio.wait([task], timeout=self.grace)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return 0.0
            return task.result()
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()

    async def _failed(self, reason: str, kind: str) -> None:
        self.failure = reason
        log.warning("mailbox %s: %s", self.plan.address, reason)
        metrics.upstream_error(kind)
        with contextlib.suppress(Exception):
            await self.ctx.run(sync.record_status, self.ctx.db, self.plan.id, reason)

    async def _sleep(self, seconds: float, wakeable: bool) -> None:
        """Sleep; a stop ends it, and a push request too unless it is a backoff after a failure."""
        if not self.push_folders:
            self.wake.clear()
        events = (self.stop, self.wake) if wakeable else (self.stop,)
        if self.plan.endpoint is not None and self.plan.endpoint.oauth:
            await self._sleep_keeping_token(events, seconds)
        else:
            await wait_any(events, seconds)

    async def _sleep_keeping_token(self, events: Sequence[asyncio.Event], seconds: float) -> None:
        """An OAuth2 mailbox's sleep between sessions: its token is still refreshed when due, so
        a withdrawn grant shows (red) at once, not at the next check hours later."""
        end = time.monotonic() + seconds
        while not any(event.is_set() for event in events):
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                _token, due = await self.ctx.token(self.plan.address)
            except UpstreamError as exc:  # refused, or the provider is odd: said on the mailbox
                if str(exc) != self.failure:  # (once: a failed session may have said it already)
                    await self._failed(str(exc), "auth")
                await wait_any(events, left)
                return
            await wait_any(events, min(left, max((due - utcnow()).total_seconds(), 1.0)))

    async def _session(self) -> float:
        """One connection; returns how long to sleep before the next."""
        async with open_session(self.ctx, self.plan) as (client, found):
            self.folders = sorted(found.folders, key=lambda f: f.name.upper() == "INBOX")
            if self.plan.endpoint is not None and self.plan.endpoint.oauth:
                return await _with_token_kept(
                    self.ctx, self.plan.address, self._watch(client, found.problem)
                )
            return await self._watch(client, found.problem)

    async def _watch(self, client: ImapClient, problem: str | None) -> float:
        while not self.stop.is_set():
            mode = mode_for(self.plan, utcnow(), self.ctx.config)
            due = time.monotonic() + mode.interval_s
            await self._pass(client, self.folders)
            await self.ctx.run(sync.record_status, self.ctx.db, self.plan.id, problem)
            if not (mode.idle and client.has("IDLE") and self.folders):
                return due - time.monotonic()
            await self._idle_until(client, self.folders[-1], due)
        return 0.0

    async def _pass(
        self,
        client: ImapClient,
        folders: list[FolderPlan],
        scan: bool = True,
        noticed_at: float | None = None,
    ) -> None:
        """Sync ``folders``; ``noticed_at``: when the server's IDLE notice that caused it came."""
        self.push_folders.clear()
        self.wake.clear()
        for folder in folders:
            await sync_folder(self.ctx, self.plan, client, folder, scan, noticed_at=noticed_at)

    def update(self, plan: MailboxPlan) -> None:
        """New settings that need no reconnection (owner activity, interval)."""
        sooner = (
            mode_for(plan, utcnow(), self.ctx.config).interval_s
            < mode_for(self.plan, utcnow(), self.ctx.config).interval_s
        )
        self.plan = plan
        if sooner:
            self.wake.set()

    async def _idle_until(self, client: ImapClient, inbox: FolderPlan, due: float) -> None:
        """IDLE on the last folder of the pass (INBOX) until the next full pass is due."""
        renew = self.ctx.config.idle_renew_s
        while not self.stop.is_set() and time.monotonic() < due:
            limit = min(renew, max(due - time.monotonic(), 0.0))
            reason = await idle(client, self.wake, self.stop, limit, self.ctx.config.timeout_s)
            if reason == "changed":
                noticed = client.changed_at
                scan = client.needs_scan or client.has("QRESYNC")
                await self._pass(client, [inbox], scan, noticed)
            elif reason == "wake":
                wanted = [f for f in self.folders if f.name in self.push_folders] or [inbox]
                await self._pass(client, [*[f for f in wanted if f != inbox], inbox])
            elif reason == "renew":
                await client.noop()


async def _with_token_kept(
    ctx: PollerContext, address: str, session: Coroutine[Any, Any, float]
) -> float:
    """Run an OAuth2 mailbox's session while its access token is refreshed at 80 % of each
    lifetime, connection or not: a long IDLE never outlives a revoked grant (servers check the
    token only at login). A refused refresh ends the session with its reason."""
    task = asyncio.ensure_future(session)
    keeper = asyncio.ensure_future(_keep_token(ctx, address))
    try:
        await asyncio.wait([task, keeper], return_when="FIRST_COMPLETED")
        if keeper.done() and not task.done():
            task.cancel()
            keeper.result()  # raises the refusal
        return await task
    finally:
        keeper.cancel()
        task.cancel()


async def _keep_token(ctx: PollerContext, address: str) -> None:
    while True:
        _token, due = await ctx.token(address)
        await asyncio.sleep(max((due - utcnow()).total_seconds(), 1.0))
