"""A foreground import's hold on one mailbox's lease (B7): take it, keep it, give it back.

The lease is taken with :meth:`crm.leases.LeaseKeeper.take` under a node name of the import's own
(``NODE/import-PID``), so no ``mailcrm serve`` node syncs the mailbox meanwhile; it is renewed
every third of a lease period and believed as the serve nodes believe theirs: until the local
deadline (the monotonic time taken before the last successful take, plus the period) less a
third of a period, so the stopped import has ended before another node may take the row. Past
that point without a renewal, or when the row names another node, the import is stopped.

Lease calls run one at a time, in order, on a thread of their own: the release always comes
after the take or renewal before it, even one whose caller was cancelled by an interrupt, so an
interrupted import never leaves its lease behind until expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from crm.db import Database
from crm.errors import MailcrmError
from crm.leases import LeaseKeeper

from .context import DbThread

log = logging.getLogger(__name__)


class MailboxBusy(MailcrmError):
    """Another node holds the mailbox's lease."""


class LeaseHold:
    """The lease of one mailbox, held for one foreground run."""

    def __init__(
        self, db: Database, node: str, lease_seconds: float, mailbox_id: int, address: str
    ) -> None:
        self.keeper = LeaseKeeper(db, node, lease_seconds)
        self.mailbox_id = mailbox_id
        self.address = address
        self.run = DbThread()
        self.deadline = 0.0
        self.lost: str | None = None

    async def acquire(self, wait: bool, note: Callable[[str], None]) -> None:
        """Take the lease; held elsewhere: :class:`MailboxBusy`, or wait for it with ``wait``."""
        told = False
        while True:
            asked = time.monotonic()
            holder = await self.run(self.keeper.take, self.mailbox_id)
            if holder is None:
                self.deadline = asked + self.keeper.lease_seconds
                return
            if not wait:
                raise MailboxBusy(
                    f"mailbox {self.address} is being synced by node {holder} "
                    "(mailcrm serve); try again when it has let go, or add --wait"
                )
            if not told:
                note(f"waiting for node {holder} to let go of {self.address} ...")
                told = True
            await asyncio.sleep(self.keeper.renew_interval)

    async def keep(self, main: asyncio.Task[Any]) -> None:
        """Renew until cancelled; once the lease is lost, note why and cancel ``main``."""
        margin = self.keeper.renew_interval
        while time.monotonic() < self.deadline - margin:
            await asyncio.sleep(min(margin, self.deadline - margin - time.monotonic()))
            asked = time.monotonic()
            try:
                holder = await asyncio.wait_for(
                    self.run(self.keeper.take, self.mailbox_id),
                    max(self.deadline - margin - asked, 0.01),
                )
            except (SQLAlchemyError, TimeoutError) as exc:
                log.warning("lease of %s not renewed: %s", self.address, exc)
                continue
            if holder is not None:
                self.lost = f"node {holder} holds the lease of {self.address} now"
                break
            self.deadline = asked + self.keeper.lease_seconds
        self.lost = self.lost or f"the lease of {self.address} could not be renewed in time"
        main.cancel()

    async def release(self) -> None:
        """Give the lease back (after any take still running) and stop the lease thread."""
        with contextlib.suppress(SQLAlchemyError):
            await self.run(self.keeper.release_all)
        await self.run.close()
