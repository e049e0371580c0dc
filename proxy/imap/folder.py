"""One sync pass over one folder: SELECT, new mail, read state, deletions, pushes, checkpoint.

Order matters: new mail first (what users wait for), then the server's flag changes and
deletions, then the CRM's changes pushed upstream, then the HIGHESTMODSEQ of the SELECT is
saved (changes made after it are simply seen again next time). On a new UIDVALIDITY the
checkpoint starts over and the import re-maps known messages by Message-ID; locations of the old
UIDVALIDITY that found no new home are treated as deleted only once the import has covered the
whole folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from crm.face.poller import sync

from .client import ImapClient
from .context import PollerContext
from .flags import FlagSync
from .importer import Importer, ImportStats
from .plan import FolderPlan, MailboxPlan

log = logging.getLogger(__name__)


@dataclass
class PassReport:
    """What one pass over one folder did."""

    folder: str
    imported: ImportStats
    flags_changed: int = 0
    pushed: int = 0
    activities_removed: int = 0


async def sync_folder(
    ctx: PollerContext,
    plan: MailboxPlan,
    client: ImapClient,
    folder: FolderPlan,
    scan: bool = True,
    from_start: bool = False,
    noticed_at: float | None = None,
) -> PassReport:
    """Run one pass; ``scan`` False skips the flag/deletion scan (new mail only).

    ``from_start`` imports every message of the window that is not recorded yet, not only those
    above the checkpoint (a foreground import, whose window may be wider than the one the
    checkpoint was made with); the checkpoint itself never moves back. ``noticed_at``
    (monotonic): when the IDLE notice that started this pass arrived; the log line says how long
    after it the pass ended (the IDLE latency that is mailcrm's, not the server's).
    """
    info = await client.select(folder.name)
    client.changed.clear()
    stored = await ctx.run(sync.load_checkpoint, ctx.db, plan.id, folder.name)
    remapping = stored is not None and stored.uidvalidity not in (0, info.uidvalidity)
    if stored is None or stored.uidvalidity != info.uidvalidity:
        if remapping:
            log.warning(
                "%s/%s: UIDVALIDITY changed (%s -> %s): re-mapping by Message-ID",
                plan.address,
                folder.name,
                stored.uidvalidity if stored else None,
                info.uidvalidity,
            )
        await ctx.run(sync.save_checkpoint, ctx.db, plan.id, folder.name, info.uidvalidity, 0, 0)
        stored = sync.Checkpoint(info.uidvalidity, 0, 0)
    importer = Importer(ctx, plan, client, folder, info.uidvalidity)
    start = 0 if from_start else stored.last_uid
    report = PassReport(folder.name, await importer.run(start, info.uidnext, remapping))
    flags = FlagSync(ctx, plan, client, folder, info)
    if scan or stored.highest_modseq == 0:
        await flags.scan(stored)
    report.pushed = await flags.push()
    if stored.highest_modseq == 0:
        await flags.forget_stale()
    report.flags_changed = flags.changed
    report.activities_removed = len(flags.removed.activities)
    await ctx.run(
        sync.save_checkpoint,
        ctx.db,
        plan.id,
        folder.name,
        info.uidvalidity,
        None,
        info.highest_modseq,
    )
    _log(plan, report, noticed_at)
    return report


def _log(plan: MailboxPlan, report: PassReport, noticed_at: float | None) -> None:
    stats = report.imported
    if stats.found or report.flags_changed or report.pushed or report.activities_removed:
        after = (
            ""
            if noticed_at is None
            else f", {(time.monotonic() - noticed_at) * 1000:.0f} ms after the server's notice"
        )
        log.info(
            "%s/%s: %d new (%d captured, %d duplicate, %d skipped, %d re-mapped), "
            "%d read-state changes, %d pushed, %d activities removed%s",
            plan.address,
            report.folder,
            stats.found,
            stats.captured,
            stats.duplicate,
            stats.skipped,
            stats.remapped,
            report.flags_changed,
            report.pushed,
            report.activities_removed,
            after,
        )
