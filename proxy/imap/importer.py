"""New mail of one folder: found by UID SEARCH in UID windows, fetched in bounded chunks, captured.

Memory stays flat whatever the folder size: a SEARCH covers at most ``search_span`` UIDs, a FETCH
at most ``chunk_size`` messages and ``fetch_bytes`` bytes (sizes are asked first), and at most
two chunks are in memory: a pipeline, one being captured on the database thread while the next is
fetched (event loop) and then parsed on the parse thread (:attr:`PollerContext.parse`), so the
capture's transaction holds the database only for its queries.
Messages are read with ``BODY.PEEK[]``, so capture never changes the user's read state.

A fetched batch is captured in one transaction (:meth:`crm.capture.path.Capturer.capture_many`): one
commit per batch, and a message the database refuses, or that raced with another writer, rolls
back only itself (the batch is then done again with a SAVEPOINT per message). The checkpoint
(last UID done) moves in the commit of the captures it covers (on SQLite, whose batches are cut
into several transactions, in the last one); a crash before only repeats work that capture
recognises (location and message key), so nothing is missed and nothing doubled. A message
skipped on a fault (it cannot be read, or capturing it failed) is counted for the mailbox in that
same commit (:mod:`crm.mailboxes.faults`). After a UIDVALIDITY change, messages are first matched
to the old ones by Message-ID (headers only) and re-mapped instead of imported again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from crm.errors import MessageParseError
from crm.face.poller import Capturer, Incoming, Location, faults, parse_message, sync
from crm.vocab import utcnow

from .client import ImapClient
from .context import PollerContext
from .parse import FetchRecord, chunks
from .plan import FolderPlan, MailboxPlan

log = logging.getLogger(__name__)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
ID_HEADERS = "MESSAGE-ID X-MICROSOFT-ORIGINAL-MESSAGE-ID X-GOOGLE-ORIGINAL-MESSAGE-ID"


@dataclass
class ImportStats:
    """What one import pass did."""

    found: int = 0
    captured: int = 0
    duplicate: int = 0
    skipped: int = 0
    remapped: int = 0


def imap_date(when: dt.datetime) -> str:
    """``01-Jan-2024``: the date form of SEARCH SINCE."""
    return f"{when.day:02d}-{MONTHS[when.month - 1]}-{when.year}"


def uid_windows(first: int, last: int, span: int) -> Iterator[tuple[int, int]]:
    """``[first, last]`` in consecutive windows of ``span`` UIDs."""
    low = first
    while low <= last:
        high = min(last, low + span - 1)
        yield low, high
        low = high + 1


def store_batch(
    capturer: Capturer,
    plan: MailboxPlan,
    folder: FolderPlan,
    uidvalidity: int,
    records: Sequence[FetchRecord],
    checkpoint: int,
) -> ImportStats:
    """Capture fetched messages in UID order in one transaction, then advance the checkpoint
    (database thread).

    As if each message had a transaction of its own (:meth:`Capturer.capture_many`): one the
    database refuses is skipped alone, and one that raced with another writer (the relay's spool,
    another node) is rolled back and captured once more as a plain duplicate, so its location is
    recorded before the checkpoint moves past it.
    """
    items = prepare_batch(capturer, plan, folder, uidvalidity, records)
    return store_items(capturer, plan, folder, uidvalidity, items, checkpoint)


def prepare_batch(
    capturer: Capturer,
    plan: MailboxPlan,
    folder: FolderPlan,
    uidvalidity: int,
    records: Sequence[FetchRecord],
) -> list[Incoming]:
    """The fetched messages to capture, in UID order, parsed (parse thread: no database)."""
    wanted = sorted((r for r in records if r.uid is not None and r.body is not None),
                    key=lambda r: r.uid or 0)  # fmt: skip
    return capturer.prepare([_incoming(plan, folder, uidvalidity, r) for r in wanted])


def store_items(
    capturer: Capturer,
    plan: MailboxPlan,
    folder: FolderPlan,
    uidvalidity: int,
    items: Sequence[Incoming],
    checkpoint: int,
) -> ImportStats:
    """:func:`store_batch` of messages already prepared (database thread)."""
    stats = ImportStats()
    if not items:
        sync.save_checkpoint(capturer.db, plan.id, folder.name, uidvalidity, last_uid=checkpoint)
        return stats
    # the checkpoint and the mailbox's count of faults (SPEC B6) move in the captures' commit
    advance = faults.batch_done(plan.id, folder.name, uidvalidity, last_uid=checkpoint)
    for result in capturer.capture_many(items, then=advance):  # one commit for all
        stats.captured += result.action == "captured"
        stats.duplicate += result.action == "duplicate"
        stats.skipped += result.action == "skipped"
    return stats


def _incoming(
    plan: MailboxPlan, folder: FolderPlan, uidvalidity: int, record: FetchRecord
) -> Incoming:
    assert record.uid is not None and record.body is not None
    return Incoming(
        record.body,
        plan.address,
        folder.direction,
        source=f"imap:{plan.address}/{folder.name}/{uidvalidity}/{record.uid}",
        seen=record.seen,
        location=Location(folder.name, uidvalidity, record.uid),
        history=found_at_linking(plan, record),
    )


def found_at_linking(plan: MailboxPlan, record: FetchRecord) -> bool:
    """C12: the message was in the mailbox when it was linked (it arrived, by the server's
    INTERNALDATE, before ``linked_at``), so the import window applies to it; mail that arrived
    later is live mail and always captured. Without either date: history, as before.

    INTERNALDATE counts whole seconds: mail that arrived in the second of linking may be later
    than ``linked_at``, so it is live (captured rather than lost to the window)."""
    if plan.linked_at is None or record.internaldate is None:
        return True
    return record.internaldate < plan.linked_at.replace(microsecond=0)


class Importer:
    """Imports the mail of one selected folder above a checkpoint."""

    def __init__(
        self,
        ctx: PollerContext,
        plan: MailboxPlan,
        client: ImapClient,
        folder: FolderPlan,
        uidvalidity: int,
    ) -> None:
        self.ctx, self.plan, self.client, self.folder = ctx, plan, client, folder
        self.uidvalidity = uidvalidity
        self.stats = ImportStats()
        self._storing: asyncio.Future[ImportStats] | None = None
        self._checkpoint = -1  # the last checkpoint handed to the database thread

    async def run(self, last_uid: int, uidnext: int, remapping: bool) -> ImportStats:
        """Import every message above ``last_uid`` (inside the window, C12)."""
        since = self.plan.window_start(utcnow())
        criteria = f" SINCE {imap_date(since - dt.timedelta(days=1))}" if since else ""
        if uidnext <= 0:
            found = await self.client.uid_search(f"UID {last_uid + 1}:*{criteria}")
            high = max(found, default=0)
            windows = [(last_uid + 1, high)] if high > last_uid else []
        else:
            windows = list(uid_windows(last_uid + 1, uidnext - 1, self.ctx.config.search_span))
        try:
            for low, high in windows:
                await self._window(low, high, criteria, remapping)
        finally:
            await self._drain()
        return self.stats

    async def _window(self, low: int, high: int, criteria: str, remapping: bool) -> None:
        found = await self.client.uid_search(f"UID {low}:{high}{criteria}")
        uids = sorted(u for u in set(found) if low <= u <= high)
        self.stats.found += len(uids)
        done: set[int] = set()
        for part in chunks(uids, 500):
            done |= await self.ctx.run(
                sync.recorded, self.ctx.db, self.plan.id, self.folder.name, self.uidvalidity, part
            )
        todo = [u for u in uids if u not in done]
        self.ctx.report("found", len(todo))
        for chunk in chunks(todo, self.ctx.config.chunk_size):
            wanted = await self._remap(chunk) if remapping else list(chunk)
            for batch in await self._batches(wanted):
                records = await self.client.uid_fetch(batch, "(UID FLAGS INTERNALDATE BODY.PEEK[])")
                await self._store(records, batch[-1])
            if not wanted:
                await self._store([], chunk[-1])
        if high != self._checkpoint:  # not already moved there by the last batch
            await self._store([], high)

    async def _batches(self, uids: Sequence[int]) -> list[list[int]]:
        """Split ``uids`` so that one FETCH carries at most ``fetch_bytes`` (one big one alone)."""
        if not uids:
            return []
        sizes = {r.uid: r.size or 0 for r in await self.client.uid_fetch(uids, "(UID RFC822.SIZE)")}
        batches: list[list[int]] = [[]]
        total = 0
        for uid in uids:
            if uid not in sizes:
                continue  # expunged meanwhile
            if batches[-1] and total + sizes[uid] > self.ctx.config.fetch_bytes:
                batches.append([])
                total = 0
            batches[-1].append(uid)
            total += sizes[uid]
        return [b for b in batches if b]

    async def _store(self, records: list[FetchRecord], checkpoint: int) -> None:
        """Parse a fetched batch on the parse thread (while the previous one is still being
        captured), then hand it to the database thread once the previous one is done."""
        capturer, plan, folder = self.ctx.capturer, self.plan, self.folder
        items: list[Incoming] = []
        if records:
            items = await self.ctx.parsing(
                prepare_batch, capturer, plan, folder, self.uidvalidity, records
            )
        self._checkpoint = checkpoint
        await self._drain()
        self._storing = asyncio.ensure_future(
            self.ctx.run(store_items, capturer, plan, folder, self.uidvalidity, items, checkpoint)
        )

    async def _drain(self) -> None:
        if self._storing is None:
            return
        storing, self._storing = self._storing, None
        stats = await storing
        self.stats.captured += stats.captured
        self.stats.duplicate += stats.duplicate
        self.stats.skipped += stats.skipped
        self.ctx.report("done", stats.captured + stats.duplicate + stats.skipped)

    async def _remap(self, uids: Sequence[int]) -> list[int]:
        """UIDVALIDITY changed: re-map known messages by Message-ID; the rest is imported."""
        records = await self.client.uid_fetch(
            uids, f"(UID FLAGS BODY.PEEK[HEADER.FIELDS ({ID_HEADERS})])"
        )
        found: list[tuple[int, str]] = []
        for record in records:
            key = _key(record.header)
            if record.uid is not None and key is not None:
                found.append((record.uid, key))
        mapped = await self.ctx.run(
            sync.remap, self.ctx.db, self.plan.id, self.folder.name, self.uidvalidity, found
        )
        self.stats.remapped += len(mapped)
        flags = [sync.ServerFlags(r.uid, r.seen, r.answered) for r in records if r.uid in mapped]
        await self.ctx.run(
            sync.apply_server_flags,
            self.ctx.db,
            self.plan.id,
            self.folder.name,
            self.uidvalidity,
            flags,
        )
        return [u for u in uids if u not in mapped]


def _key(header: bytes | None) -> str | None:
    """The capture key of a message from its Message-ID headers alone (None without one)."""
    if not header or not header.strip():
        return None
    try:
        msg = parse_message(header.rstrip(b"\r\n") + b"\r\n\r\n")
    except MessageParseError:
        return None
    return msg.key if msg.message_id else None
