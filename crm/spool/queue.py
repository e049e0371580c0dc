"""The durable capture spool (B1, C2, C9): relayed mail waits here until the CRM has captured it.

Once the upstream accepted a message, the relay makes it durable with its whole envelope before
it answers the client's DATA: in the ``spool`` table as *delivered* (PostgreSQL), or in the local
:class:`crm.spool.files.FileSpool` (SQLite, and on PostgreSQL whenever the database cannot take
the entry in time; see :func:`files_first`). Only delivered entries are ever captured.
This module is the table and the envelope every part of the spool shares;
:func:`crm.spool.runner.run_spool_worker` (the ``spool`` component of ``mailcrm serve``) has the
:mod:`crm.spool.worker` move the files into the table and capture every delivered entry exactly
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from crm.config import Config, data_dir
from crm.errors import ConfigError
from crm.store.db import Database
from crm.store.models import SpoolEntry, utcnow
from crm.vocab import Direction

log = logging.getLogger("crm.spool")  # its name before the move (issue 17)
UNDELIVERED_MAX_AGE = dt.timedelta(days=1)
ROUND = 50  # entries a worker round captures at most; a full round means more are waiting


@dataclass
class Envelope:
    """Where a spooled message is captured and who it went to."""

    mailbox: str
    envelope_from: str | None
    envelope_to: list[str] = field(default_factory=list)
    direction: str = Direction.OUTGOING.value


def spool_dir(config: Config) -> Path:
    """The file spool: ``relay.spool_dir`` or ``<data dir>/spool``."""
    return Path(config.relay.spool_dir) if config.relay.spool_dir else data_dir() / "spool"


def files_first(config: Config, db: Database) -> bool:
    """Whether the relay writes capture copies to the file spool first (``relay.spool_first``).

    ``auto`` (the default): files on SQLite, whose single write lock the capture worker holds
    while it captures, the database on PostgreSQL, where any node can capture the entry.
    """
    choice = config.relay.spool_first
    if choice not in ("auto", "files", "database"):
        raise ConfigError(f"relay.spool_first must be auto, files or database, not {choice!r}")
    if choice == "auto":
        return db.engine.dialect.name == "sqlite"
    return choice == "files"


class Wakeup:
    """The spool worker's wake-up: made by whoever runs the worker (``mailcrm serve``) and given
    to the relay of the same process, which calls :meth:`kick` after a delivery so the copy is
    captured at once instead of at the next poll. Without one, a worker only polls."""

    def __init__(self) -> None:
        self._events: set[asyncio.Event] = set()  # the workers listening now

    def kick(self) -> None:
        """Wake the listening spool workers now."""
        for event in list(self._events):
            event.set()

    @contextlib.contextmanager
    def listening(self, event: asyncio.Event) -> Iterator[None]:
        """While in the block, :meth:`kick` sets ``event`` (a spool worker's wake-up)."""
        self._events.add(event)
        try:
            yield
        finally:
            self._events.discard(event)


# --- the table ------------------------------------------------------------------------------


def enqueue(db: Database, raw: bytes, env: Envelope, delivered: bool = True) -> int:
    """Store one message with its envelope; its id."""
    with db.session() as session:
        entry = SpoolEntry(
            raw=raw,
            mailbox_address=env.mailbox,
            direction=env.direction,
            envelope_from=env.envelope_from,
            envelope_to=list(env.envelope_to),
            delivered=delivered,
            state="pending",
        )
        session.add(entry)
        session.flush()
        return entry.id


def enqueue_many(db: Database, items: Iterable[tuple[bytes, Envelope]]) -> int:
    """Store delivered messages in one transaction (the relay's group commit); how many."""
    rows = [
        {
            "raw": raw,
            "mailbox_address": env.mailbox,
            "direction": env.direction,
            "envelope_from": env.envelope_from,
            "envelope_to": list(env.envelope_to),
            "delivered": True,
            "state": "pending",
            "attempts": 0,
            "created_at": utcnow(),
        }
        for raw, env in items
    ]
    if rows:
        with db.session() as session:
            session.execute(insert(SpoolEntry), rows)
    return len(rows)


def pending(db: Database) -> list[dict[str, Any]]:
    """Entries not captured yet (for status pages and tests)."""
    with db.session() as session:
        rows: Iterable[SpoolEntry] = session.scalars(
            select(SpoolEntry).where(SpoolEntry.state == "pending").order_by(SpoolEntry.id)
        )
        return [
            {
                "id": e.id,
                "mailbox": e.mailbox_address,
                "delivered": e.delivered,
                "envelope_to": e.envelope_to,
                "attempts": e.attempts,
            }
            for e in rows
        ]
