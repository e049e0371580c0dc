"""The DAV change log kept to a retention (SPEC B8): ``dav_changes`` rows older than ``[dav]
change_log_days`` are deleted, in batches, by the ``davlog`` component of ``mailcrm serve`` (every
hour) or by ``mailcrm db prune-dav-changes``.

Each row carries when the database wrote it (``created_at``, migration 0130); a prune deletes the
rows below the newest one written before the horizon (ids follow time: a sync token is an id).

What a sync token may still be answered from (:func:`floor`) follows from two rules: rows go
oldest first (in batches of :data:`BATCH`, each its own short transaction: no long lock on
SQLite), and the newest row of each kind stays (so a collection whose kinds changed long ago
keeps a token base, and the newest row of the log stays: SQLite never hands out an id again). A
token older than what may be gone is refused: the client syncs anew (RFC 6578 3.2). Deleting by
id is idempotent: nodes pruning at once delete each row once and wait for nothing but the rows
of the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from crm.config import Config
from crm.vocab import utcnow

from .db import Database
from .models import DavChange

log = logging.getLogger(__name__)
KINDS = ("lead", "contact", "company", "activity")  # every entity_type the log holds
BATCH = 5000  # rows deleted per transaction
PAUSE = 0.05  # s between two batches: other writers take SQLite's lock meanwhile
PRUNE_EVERY = 3600.0  # s between two prunes of the davlog component


@dataclass(frozen=True)
class Pruned:
    """What one prune did: rows deleted, and the change they were below (None: no change is
    older than the retention)."""

    deleted: int
    below: int | None


def horizon(session: Session, cutoff: dt.datetime) -> int | None:
    """The change above the newest one written at or before ``cutoff`` (one index lookup): every
    row below it is older; None when no row is."""
    found = session.scalar(
        select(DavChange.id)
        .where(DavChange.created_at <= cutoff)
        .order_by(DavChange.created_at.desc(), DavChange.id.desc())
        .limit(1)
    )
    return None if found is None else int(found) + 1


def _newest(kind: str) -> Any:
    newest = select(func.max(DavChange.id)).where(DavChange.entity_type == kind)
    return func.coalesce(newest.scalar_subquery(), -1)


def _oldest(*where: Any) -> Any:
    return select(func.min(DavChange.id)).where(*where).scalar_subquery()


def _deletable() -> Any:
    """Rows a prune may delete: all but the newest of each kind."""
    return DavChange.id.not_in([_newest(kind) for kind in KINDS])


def prune_batch(session: Session, below: int, batch: int = BATCH) -> int:
    """Delete the oldest ``batch`` rows below change ``below`` (the newest of each kind stays)."""
    oldest = (
        select(DavChange.id)
        .where(DavChange.id < below, _deletable())
        .order_by(DavChange.id)
        .limit(batch)
    )
    result = session.execute(delete(DavChange).where(DavChange.id.in_(oldest.scalar_subquery())))
    return int(getattr(result, "rowcount", 0) or 0)


def prune(
    db: Database,
    days: int,
    now: dt.datetime | None = None,
    batch: int = BATCH,
    pause: float = 0,
    stopping: Callable[[], bool] = lambda: False,
) -> Pruned:
    """Delete the rows older than ``days`` days, ``batch`` per transaction, until done or
    ``stopping()`` (asked between batches: a node shutting down stops at once)."""
    now = now or utcnow()
    with db.session() as session:
        below = horizon(session, now - dt.timedelta(days=days))
    deleted = 0
    while below is not None:
        with db.session() as session:
            done = prune_batch(session, below, batch)
        deleted += done
        if done < batch or stopping():
            break
        if pause:
            time.sleep(pause)
    return Pruned(deleted, below)


@functools.cache
def _floor_query(kinds: tuple[str, ...]) -> Any:
    """Built once per collection: a sync asks it on every request (SQLAlchemy's cache of the
    compiled statement then saves milliseconds each time)."""
    return select(_oldest(_deletable()), *(_oldest(DavChange.entity_type == k) for k in kinds))


def floor(session: Session, kinds: tuple[str, ...]) -> int:
    """Tokens of a collection of ``kinds`` below this are too old to answer: a change of one of
    the kinds after them may have been pruned (0: none was). One statement of index lookups.

    Pruned rows all lie below the oldest row a prune would still delete (``start``), and below
    the oldest kept row of their own kind; a token at either bound misses nothing of that kind.
    """
    start, *oldest = session.execute(_floor_query(kinds)).one()
    lowest = 0
    for first in oldest:
        bounds = [int(b) for b in (start, first) if b is not None]
        if bounds:
            lowest = max(lowest, min(bounds) - 1)
    return lowest


async def run_pruning(config: Config, db: Database, stop: asyncio.Event) -> None:
    """The ``davlog`` component of ``mailcrm serve``: prune the change log every hour, at once
    on start (``[dav] change_log_days = 0`` keeps it whole). A failure (the database away) is
    logged and tried again on the next round."""
    days = config.dav.change_log_days
    while days and not stop.is_set():
        try:
            done = await asyncio.to_thread(prune, db, days, None, BATCH, PAUSE, stop.is_set)
        except Exception as exc:  # the database away: the next round tries again
            log.warning("DAV change log: pruning failed (%s); trying again in an hour", exc)
        else:
            if done.deleted:
                log.info("DAV change log: %d changes older than %d days deleted", done.deleted,
                         days)  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PRUNE_EVERY)
    await stop.wait()
