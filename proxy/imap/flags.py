"""Read state (C10) and deletions (C11) of one selected folder, in bounded chunks.

Server -> CRM: with QRESYNC, ``UID SEARCH MODSEQ`` names the messages changed since the last
pass, and ``UID FETCH ... (CHANGEDSINCE m VANISHED)`` over UID ranges holding at most
``chunk_size`` of them returns their flags and the UIDs expunged meanwhile. Without it, the
known UIDs are fetched ``chunk_size`` at a time: flags are compared and a known UID missing from
the answer is gone (only when every returned record was readable, so a parse problem can never
delete anything). CRM -> server: activities completed or reopened in the CRM are pushed as
``UID STORE +/-FLAGS.SILENT (\\Seen)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from crm.face.poller import deletions, sync

from .client import CommandFailed, ImapClient
from .context import PollerContext
from .parse import FetchRecord, SelectInfo, chunks
from .plan import FolderPlan, MailboxPlan

log = logging.getLogger(__name__)


def change_windows(changed: Sequence[int], last: int, per: int) -> Iterator[tuple[int, int]]:
    """UID ranges covering ``[1, last]``, each holding at most ``per`` of ``changed``."""
    inside = sorted(u for u in set(changed) if 1 <= u <= last)
    low = 1
    for index in range(per, len(inside), per):
        high = inside[index] - 1
        yield low, high
        low = high + 1
    if low <= last:
        yield low, last


class FlagSync:
    """Flag scan, deletion detection and flag pushes for one selected folder."""

    def __init__(
        self,
        ctx: PollerContext,
        plan: MailboxPlan,
        client: ImapClient,
        folder: FolderPlan,
        info: SelectInfo,
    ) -> None:
        self.ctx, self.plan, self.client, self.folder, self.info = ctx, plan, client, folder, info
        self.changed = 0
        self.removed = deletions.Removed()

    @property
    def qresync(self) -> bool:
        """True when CHANGEDSINCE/VANISHED can be used for this pass."""
        return (
            self.ctx.config.use_qresync
            and self.client.has("QRESYNC")
            and self.info.highest_modseq > 0
        )

    async def scan(self, checkpoint: sync.Checkpoint) -> None:
        """Bring server-side flag changes and deletions into the CRM."""
        if checkpoint.last_uid <= 0:
            return
        if self.qresync and checkpoint.highest_modseq > 0:
            if checkpoint.highest_modseq != self.info.highest_modseq:
                await self._since(checkpoint)
        else:
            await self._full()
        await self._forget_ranges(self.client.take_vanished())

    async def _since(self, cp: sync.Checkpoint) -> None:
        changed = await self.client.uid_search(
            f"UID 1:{cp.last_uid} MODSEQ {cp.highest_modseq + 1}"
        )
        for low, high in change_windows(changed, cp.last_uid, self.ctx.config.chunk_size):
            records = await self.client.uid_fetch(
                f"{low}:{high}", "(UID FLAGS)", f"(CHANGEDSINCE {cp.highest_modseq} VANISHED)"
            )
            await self._apply(records)
            await self._forget_ranges(self.client.take_vanished())

    async def _full(self) -> None:
        after = 0
        while True:
            uids = await self.ctx.run(
                sync.known_uids,
                self.ctx.db,
                self.plan.id,
                self.folder.name,
                self.info.uidvalidity,
                after,
                self.ctx.config.chunk_size,
            )
            if not uids:
                return
            records = await self.client.uid_fetch(uids, "(UID FLAGS)")
            await self._apply(records)
            present = {r.uid for r in records if r.uid is not None}
            readable = all(r.uid is not None for r in records)
            gone = [u for u in uids if u not in present] if readable else []
            await self._forget(gone)
            await self._forget_ranges(self.client.take_vanished())
            after = uids[-1]

    async def _apply(self, records: Sequence[FetchRecord]) -> None:
        flags = [
            sync.ServerFlags(r.uid, r.seen, r.answered)
            for r in records
            if r.uid is not None and r.has_flags
        ]
        if flags:
            self.changed += await self.ctx.run(
                sync.apply_server_flags,
                self.ctx.db,
                self.plan.id,
                self.folder.name,
                self.info.uidvalidity,
                flags,
            )

    async def _forget(self, uids: Sequence[int]) -> None:
        """C11 for ``uids`` (a VANISHED range can be huge: bounded database statements)."""
        for part in chunks(sorted(set(uids)), self.ctx.config.chunk_size):
            removed = await self.ctx.run(
                deletions.forget_vanished,
                self.ctx.db,
                self.plan.id,
                self.folder.name,
                self.info.uidvalidity,
                part,
            )
            self._count(removed)

    async def _forget_ranges(self, ranges: Sequence[tuple[int, int]]) -> None:
        """C11 for the known UIDs inside VANISHED ranges, a page at a time."""
        for low, high in ranges:
            after = low - 1
            while True:
                uids = await self.ctx.run(
                    sync.known_uids,
                    self.ctx.db,
                    self.plan.id,
                    self.folder.name,
                    self.info.uidvalidity,
                    after,
                    self.ctx.config.chunk_size,
                )
                inside = [u for u in uids if u <= high]
                await self._forget(inside)
                if len(inside) < len(uids) or not uids:
                    break
                after = uids[-1]

    def _count(self, removed: deletions.Removed) -> None:
        self.removed.locations += removed.locations
        self.removed.activities += removed.activities
        self.removed.leads += removed.leads
        if removed.activities:
            log.info(
                "%s/%s: deleted on the server: activities %s, leads %s removed",
                self.plan.address,
                self.folder.name,
                removed.activities,
                removed.leads,
            )

    async def forget_stale(self) -> None:
        """Locations of an older UIDVALIDITY that were not re-mapped are gone (C11)."""
        removed = await self.ctx.run(
            deletions.forget_stale,
            self.ctx.db,
            self.plan.id,
            self.folder.name,
            self.info.uidvalidity,
        )
        self._count(removed)

    async def push(self) -> int:
        """Send CRM-side completions/reopenings upstream as ``\\Seen``; returns how many."""
        pushed = 0
        while True:
            pending = await self.ctx.run(
                sync.pending_pushes,
                self.ctx.db,
                self.plan.id,
                self.folder.name,
                self.info.uidvalidity,
                self.ctx.config.chunk_size,
            )
            if not pending:
                return pushed
            for seen in (True, False):
                uids = [uid for uid, want in pending if want == seen]
                if uids:
                    await self._store(uids, seen)
                    pushed += len(uids)

    async def _store(self, uids: list[int], seen: bool) -> None:
        if not self.info.read_only:
            try:
                await self.client.uid_store(
                    uids, "+FLAGS.SILENT" if seen else "-FLAGS.SILENT", "(\\Seen)"
                )
            except CommandFailed as exc:  # the server's state wins at the next scan
                log.warning(
                    "%s/%s: cannot set \\Seen: %s", self.plan.address, self.folder.name, exc
                )
        await self.ctx.run(
            sync.confirm_pushes,
            self.ctx.db,
            self.plan.id,
            self.folder.name,
            self.info.uidvalidity,
            uids,
            seen,
        )
