"""A foreground import's hold on one mailbox's lease (B7): ask for it, keep it, give it back.

The lease is asked for and taken with :meth:`crm.mailboxes.handover.ForegroundLease.take` under a
node name of the import's own (``NODE/import-PID``). A ``mailcrm serve`` node holding the mailbox
hands it over at its next claim (it stops syncing it, then lets the row go or lets it lapse), which
the import waits for (:data:`HANDOVER_PERIODS` lease periods at most, unless told to wait as long as
it takes), and takes it back once the import lets go. Another import in the way is refused at once,
or waited for. The lease and the request are renewed together every sixth of a period and believed
as the serve nodes believe theirs: until the local deadline (the monotonic time taken before the
last successful take, plus the period) less a third of a period, so the stopped import has ended
before another node may take the row. Past that point without a renewal, or when the row names
another node, the import is stopped.

Lease calls run one at a time, in order, on a thread of their own: the release always comes
after the take or renewal before it, even one whose caller was cancelled by an interrupt, so an
interrupted import never leaves its lease or request behind until expiry. On SQLite (one writer
at a time) they run on the import's database thread instead, between its batches: on a thread of
their own they would wait for the lock while capture transactions follow one another, and could
starve; in line a renewal waits for one batch at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from crm.errors import MailcrmError
from crm.face import Database, StoreError
from crm.face.poller import ForegroundLease, is_import_node

from .context import DbThread

log = logging.getLogger(__name__)
HANDOVER_PERIODS = 3  # a serve node hands over within 4/3 of a period; give up after this many
POLL_S = 1.0  # how often to look again while waiting (at most; a third of a period if shorter)


class MailboxBusy(MailcrmError):
    """Another import holds the mailbox, or its serve node did not hand it over in time."""


class LeaseHold:
    """The lease of one mailbox, held for one foreground run."""

    def __init__(
        self, db: Database, node: str, lease_seconds: float, mailbox_id: int, address: str,
        capture_run: DbThread,
    ) -> None:  # fmt: skip
        self.keeper = ForegroundLease(db, node, lease_seconds)
        self.mailbox_id = mailbox_id
        self.address = address
        self.inline = db.engine.dialect.name == "sqlite"
        self.run = capture_run if self.inline else DbThread()
        self.deadline = 0.0
        self.lost: str | None = None

    async def acquire(self, wait: bool, note: Callable[[str], None]) -> None:
        """Ask for the lease and take it; with ``wait``, wait as long as it takes.

        Without ``wait``, :class:`MailboxBusy` when another import is in the way, or when the
        serve node holding the mailbox has not handed it over in :data:`HANDOVER_PERIODS`.
        """
        give_up = time.monotonic() + HANDOVER_PERIODS * self.keeper.lease_seconds
        told: str | None = None
        while True:
            asked = time.monotonic()
            holder = await self.run(self.keeper.take, self.mailbox_id)
            if holder is None:
                self.deadline = asked + self.keeper.lease_seconds
                return
            if not wait:
                self._refuse(holder, give_up)
            if holder != told:
                note(self._waiting(holder))
                told = holder
            await asyncio.sleep(min(self.keeper.renew_interval, POLL_S))

    def _refuse(self, holder: str, give_up: float) -> None:
        if is_import_node(holder):
            raise MailboxBusy(
                f"mailbox {self.address} is being imported by {holder}; "
                "try again when it has finished, or add --wait"
            )
        if time.monotonic() >= give_up:
            waited = HANDOVER_PERIODS * self.keeper.lease_seconds
            raise MailboxBusy(
                f"node {holder} did not hand over mailbox {self.address} in {waited:.0f} s; "
                "try again, or add --wait to wait as long as it takes"
            )

    def _waiting(self, holder: str) -> str:
        if is_import_node(holder):
            return f"waiting for {holder} to finish importing mailbox {self.address} ..."
        return f"asking node {holder} to hand over mailbox {self.address} ..."

    async def keep(self, main: asyncio.Task[Any]) -> None:
        """Renew until cancelled; once the lease is lost, note why and cancel ``main``.

        A renewal begins a sixth of a period after the one before began (at once if that one took
        longer) and is awaited up to the cutoff, a third of a period before the deadline: slow
        renewals (on SQLite, each behind a capture's transaction) keep the lease too.
        """
        margin = self.keeper.renew_interval
        due = self.deadline - self.keeper.lease_seconds + margin / 2
        while (cutoff := self.deadline - margin) > time.monotonic():
            await asyncio.sleep(max(min(due, cutoff) - time.monotonic(), 0.0))
            asked = time.monotonic()
            due = asked + margin / 2
            try:
                holder = await asyncio.wait_for(
                    self.run(self.keeper.take, self.mailbox_id), max(cutoff - asked, 0.01)
                )
            except (StoreError, TimeoutError) as exc:
                log.warning("lease of %s not renewed: %s", self.address, exc)
                continue
            if holder is not None:
                self.lost = f"node {holder} holds the lease of {self.address} now"
                break
            self.deadline = asked + self.keeper.lease_seconds
        self.lost = self.lost or f"the lease of {self.address} could not be renewed in time"
        main.cancel()

    async def release(self) -> None:
        """Give lease and request back (after any take still running), stop the lease thread.

        Call it once the import's database thread is idle (its last batch stored)."""
        with contextlib.suppress(StoreError):
            await self.run(self.keeper.release_all)
        if not self.inline:
            await self.run.close()
