"""Where a DAV client's sync stands in the change log (``dav_changes``): the position a sync token
carries, and which changes come after it.

On SQLite one transaction writes at a time, so change ids become visible in their order and a
position is the newest change id the client has. On PostgreSQL ids come from a sequence and
become visible when their transaction commits, in any order: a transaction that took id 7 and
commits after a client synced at id 8 would be skipped for good. There a position also holds the
transactions still running when it was read (``pg_snapshot_xip`` of the same statement's
snapshot): every change then invisible was theirs or has a higher id (a later transaction takes
later ids), so "after" a position means a higher id or one of those transactions (``txid``,
migration 0140, indexed). Nothing is skipped and nothing sent twice. While more than
:data:`MAX_RUNNING` transactions run the position keeps the oldest of them instead
(``txid >= xmin``), which may send a change twice, never skip one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, or_, select, text
from sqlalchemy.orm import Session

from .models import DavChange

MAX_RUNNING = 64  # running transactions a token names; beyond, their oldest
_TEXT = re.compile(r"([0-9]{1,18})((?:\.[0-9]{1,19}){0,64}|x[0-9]{1,19})")
_SNAPSHOT = text(
    "SELECT (SELECT max(id) FROM dav_changes WHERE entity_type = ANY(:kinds)),"
    " pg_snapshot_xmin(s)::text, ARRAY(SELECT x::text FROM pg_snapshot_xip(s) x)"
    " FROM pg_current_snapshot() s"
)


@dataclass(frozen=True)
class Position:
    """A change id; on PostgreSQL, the transactions that were running when it was read
    (``running``), or while too many ran, the oldest of them (``oldest``)."""

    change: int
    running: tuple[int, ...] = ()
    oldest: int | None = None

    def __str__(self) -> str:
        if self.oldest is not None:
            return f"{self.change}x{self.oldest}"
        return ".".join(str(n) for n in (self.change, *self.running))

    @classmethod
    def parse(cls, value: str) -> Position | None:
        """The position a token's text names (None: not one)."""
        found = _TEXT.fullmatch(value)
        if found is None:
            return None
        rest = found[2]
        if rest.startswith("x"):
            return cls(int(found[1]), oldest=int(rest[1:]))
        return cls(int(found[1]), tuple(int(n) for n in rest.split(".")[1:]))


def newest(session: Session, kinds: tuple[str, ...]) -> int:
    """The newest change of ``kinds`` (0: none yet): a collection's tag."""
    found = session.scalar(select(func.max(DavChange.id)).where(DavChange.entity_type.in_(kinds)))
    return int(found or 0)


def current(session: Session, kinds: tuple[str, ...]) -> Position:
    """The position of everything visible now in the changes of ``kinds`` (on PostgreSQL one
    statement, so the newest id and the running transactions are of one snapshot)."""
    if session.get_bind().dialect.name != "postgresql":
        return Position(newest(session, kinds))
    top, oldest, running = session.execute(_SNAPSHOT, {"kinds": list(kinds)}).one()
    if len(running) > MAX_RUNNING:
        return Position(int(top or 0), oldest=int(oldest))
    return Position(int(top or 0), tuple(sorted(int(x) for x in running)))


def one_snapshot(session: Session) -> None:
    """PostgreSQL: every statement of ``session``'s transaction sees one snapshot (REPEATABLE
    READ), so a position read in it covers exactly what its other reads did not see. Call it
    before the transaction's first statement."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def after(position: Position) -> ColumnElement[bool]:
    """The changes a client at ``position`` has not had."""
    later = DavChange.id > position.change
    if position.oldest is not None:
        since = text("txid >= CAST(:oldest AS xid8)").bindparams(oldest=str(position.oldest))
        return or_(later, since)
    if not position.running:
        return later
    names = ", ".join(f"CAST(:run{n} AS xid8)" for n in range(len(position.running)))
    values = {f"run{n}": str(x) for n, x in enumerate(position.running)}
    return or_(later, text(f"txid IN ({names})").bindparams(**values))
