"""Mailbox ownership across gateway nodes (B7): row leases in the database, no consensus of our own.

Every linked mailbox has one row in ``leases`` (mailbox, node, expires_at); a node owns the
mailbox while the row names it and has not expired. Each node keeps a :class:`LeaseKeeper` and
calls :meth:`LeaseKeeper.claim` every third of a lease period; claim heartbeats the node, renews
the leases it holds and takes free or expired ones up to a fair share (``linked / live nodes``,
the remainder going one each to the first nodes by name), so mailboxes spread within one. On
PostgreSQL rows are taken with ``SELECT ... FOR UPDATE SKIP LOCKED`` and expiry is judged by the
database clock, so nodes never contend for a row and clock skew between machines does not
matter; SQLite (one node) has neither and needs neither.

Safety (never two nodes syncing one mailbox): a node believes in a lease only until its *local*
deadline, the monotonic time taken *before* the claiming transaction plus the lease period, which
is never later than the expiry written in the row. Another node takes a row only after that expiry.
Surplus mailboxes (a new node joined) are handed off by not renewing them: the holder drops them at
once, the row lapses, then another node takes it. A node that dies or is cut off from the database
stops renewing; its rows expire and the others take them, within two lease periods.

The poller's loop::

    keeper = LeaseKeeper(db, config.cluster.node_name, config.cluster.lease_seconds)
    async for mine in keeper.watch(stop):   # a frozenset of mailbox ids, every lease/3 seconds
        reconcile_workers(mine)              # start the new ones, stop the ones no longer mine
    # watch() releases every lease when stop is set (stop the workers before it returns)

Hand-over requests. A foreground import (``mailcrm mailbox import``, :mod:`crm.mailboxes.handover`)
holds one mailbox outside any fair share under a node name of its own (``NODE/import-PID``); it
never heartbeats, so it counts in no node's share. Each of its takes also writes a request on the
row (``requested_by``, ``requested_until`` a lease period ahead by the database clock). At its next
claim the holder sees another's live request: it stops renewing the row, believes it no longer (the
poller's guard stops the worker) and takes no row asked for while the request lives. Once the worker
has ended and every database call it queued is done, the poller lets the row go
(:meth:`LeaseKeeper.hand_over`); else it lapses. The import takes the row by the one rule above
(free, expired or its own), so a hand-over is a surplus hand-off that was asked for: the safety
argument is unchanged. Lease and request are given back together; if the import dies both lapse
within a period, and a serve node takes the mailbox back at its next claim. Fair shares are reckoned
as before (a mailbox asked for still counts): no node reshuffles the others for an import.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, TypeVarTuple

from sqlalchemy import ColumnElement, Select, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from crm.store.db import Database
from crm.store.models import Lease, Mailbox, Node, utcnow

log = logging.getLogger("crm.leases")  # its name before the move (issue 17)
Ts = TypeVarTuple("Ts")
FORGET_NODES_AFTER = 20  # lease periods after which a silent node's row is deleted


class LeaseKeeper:
    """This node's share of the linked mailboxes, kept in the ``leases`` table."""

    def __init__(self, db: Database, node: str, lease_seconds: float = 30.0) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.db = db
        self.node = node
        self.lease_seconds = float(lease_seconds)
        self._held: dict[int, float] = {}  # mailbox id -> local monotonic deadline
        self.asked: dict[int, str] = {}  # own rows another node asked for -> the one asking
        self._postgres = db.engine.dialect.name == "postgresql"

    @property
    def renew_interval(self) -> float:
        """How often to call :meth:`claim`: a third of a lease period."""
        return self.lease_seconds / 3

    def owned(self, margin: float = 0.0) -> frozenset[int]:
        """The mailboxes this node may sync right now (leases not past their local deadline).

        With ``margin``, only those it may sync for that many seconds more: a syncer stops that
        early, so it has ended before another node can take the row.
        """
        now = time.monotonic() + margin
        return frozenset(box for box, deadline in self._held.items() if deadline > now)

    def heartbeat(self) -> None:
        """Mark this node alive (upsert ``nodes.last_seen``)."""
        with self.db.session() as session:
            self._heartbeat(session, self._now(session))

    def claim(self) -> frozenset[int]:
        """Heartbeat, renew held leases, take free ones up to a fair share; the mailboxes now mine.

        Raises :class:`sqlalchemy.exc.SQLAlchemyError` when the database fails; :meth:`owned`
        then still tells what may be synced until the held leases run out.
        """
        started = time.monotonic()
        self._ensure_rows()
        with self.db.session() as session:
            now = self._now(session)
            self._heartbeat(session, now)
            share = self._fair_share(session, now)
            keep, asked = self._keep(session, now, share)
            take = self._free(session, now, share - len(keep)) if len(keep) < share else []
            expires = now + dt.timedelta(seconds=self.lease_seconds)
            mine = sorted(keep + take)
            if mine:
                session.execute(
                    update(Lease)
                    .where(Lease.mailbox_id.in_(mine))
                    .values(node=self.node, expires_at=expires)
                )
            self._release_unlinked(session)
        deadline = started + self.lease_seconds
        self._log_changes(set(mine), asked)
        self._held = dict.fromkeys(mine, deadline)
        self.asked = asked
        return frozenset(mine)

    def hand_over(self, boxes: Iterable[int]) -> None:
        """Let go of the rows of ``boxes`` asked for by another node and no longer held here.

        Call it only once nothing of this node touches those mailboxes any more (their workers
        ended, the database calls they queued done). A row is let go only while it still names
        this node and the request is alive, so a mailbox taken back meanwhile stays.
        """
        boxes = sorted(set(boxes) - self._held.keys())
        self.asked = {box: by for box, by in self.asked.items() if box not in boxes}
        if not boxes:
            return
        with self.db.session() as session:
            now = self._now(session)
            let_go = session.execute(
                update(Lease)
                .where(Lease.mailbox_id.in_(boxes), Lease.node == self.node)
                .where(~unasked(self.node, now))
                .values(node=None, expires_at=None)
            )
        count: int = let_go.rowcount  # type: ignore[attr-defined]
        if count:
            log.info("node %s: let go of %d mailboxes asked for", self.node, count)

    def release_all(self) -> None:
        """Give up every lease and request of this node at once (after its syncs stopped)."""
        self._held.clear()
        mine, asking = Lease.node == self.node, Lease.requested_by == self.node
        with self.db.session() as session:
            session.execute(  # one write a row (a second would wait to check the foreign key)
                update(Lease)
                .where(or_(mine, asking))
                .values(
                    node=case((mine, None), else_=Lease.node),
                    expires_at=case((mine, None), else_=Lease.expires_at),
                    requested_by=case((asking, None), else_=Lease.requested_by),
                    requested_until=case((asking, None), else_=Lease.requested_until),
                )
            )
            session.execute(delete(Node).where(Node.name == self.node))

    async def watch(self, stop: asyncio.Event) -> AsyncIterator[frozenset[int]]:
        """Claim every :attr:`renew_interval` until ``stop``; yield the mailboxes mine each time.

        A database failure is logged and yields :meth:`owned` (shrinking as leases run out). Every
        lease is released when the loop ends.
        """
        try:
            while not stop.is_set():
                try:
                    mine = await asyncio.to_thread(self.claim)
                except SQLAlchemyError as exc:
                    log.warning("lease renewal failed for node %s: %s", self.node, _short(exc))
                    mine = self.owned()
                yield mine
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.renew_interval)
        finally:
            with contextlib.suppress(SQLAlchemyError):
                await asyncio.to_thread(self.release_all)

    # --- the steps of a claim --------------------------------------------------------------

    def _now(self, session: Session) -> dt.datetime:
        """The database's clock on PostgreSQL (one clock for every node), else this one's."""
        if self._postgres:
            value: dt.datetime = session.execute(select(func.now())).scalar_one()
            return value.astimezone(dt.UTC)
        return utcnow()

    def _insert(self, model: type[Any]) -> Any:
        dialect = postgresql if self._postgres else sqlite
        return dialect.insert(model)

    def _heartbeat(self, session: Session, now: dt.datetime) -> None:
        stmt = self._insert(Node).values(name=self.node, started_at=now, last_seen=now)
        session.execute(
            stmt.on_conflict_do_update(index_elements=[Node.name], set_={"last_seen": now})
        )
        forget = now - dt.timedelta(seconds=self.lease_seconds * FORGET_NODES_AFTER)
        session.execute(delete(Node).where(Node.last_seen < forget))

    def _ensure_rows(self) -> None:
        """One lease row for every linked mailbox (a short transaction of its own)."""
        missing = (
            select(Mailbox.id)
            .outerjoin(Lease, Lease.mailbox_id == Mailbox.id)
            .where(Mailbox.linked.is_(True), Lease.mailbox_id.is_(None))
            .order_by(Mailbox.id)
        )
        with self.db.session() as session:
            ids = list(session.scalars(missing))
            if ids:
                stmt = self._insert(Lease).values([{"mailbox_id": i} for i in ids])
                session.execute(stmt.on_conflict_do_nothing(index_elements=[Lease.mailbox_id]))

    def _fair_share(self, session: Session, now: dt.datetime) -> int:
        """floor(linked / live nodes), plus one for the first ``linked % live`` nodes by name."""
        live_since = now - dt.timedelta(seconds=self.lease_seconds)
        live = sorted(session.scalars(select(Node.name).where(Node.last_seen >= live_since)))
        linked = (
            session.scalar(
                select(func.count()).select_from(Mailbox).where(Mailbox.linked.is_(True))
            )
            or 0
        )
        if self.node not in live:
            live = sorted([*live, self.node])
        share, extra = divmod(linked, len(live))
        return share + (1 if live.index(self.node) < extra else 0)

    def _locked(self, query: Select[*Ts]) -> Select[*Ts]:
        if self._postgres:
            return query.with_for_update(of=Lease, skip_locked=True)
        return query

    def _linked_leases(self) -> Select[int, dt.datetime | None]:
        return (
            select(Lease.mailbox_id, Lease.expires_at)
            .join(Mailbox, Mailbox.id == Lease.mailbox_id)
            .where(Mailbox.linked.is_(True))
            .order_by(Lease.mailbox_id)
        )

    def _keep(
        self, session: Session, now: dt.datetime, share: int
    ) -> tuple[list[int], dict[int, str]]:
        """Own rows to renew: those held here, and own rows that lapsed; at most ``share``.

        Rows another node asked for are not renewed: they come back apart (row -> the one asking).
        """
        query = self._linked_leases().add_columns(Lease.requested_by, Lease.requested_until)
        rows = session.execute(self._locked(query.where(Lease.node == self.node)))
        keep: list[int] = []
        asked: dict[int, str] = {}
        for box, expires, by, until in rows:
            if by is not None and by != self.node and until is not None and until > now:
                asked[box] = by
            elif box in self._held or expires is None or expires <= now:
                keep.append(box)
        held_first = sorted(keep, key=lambda box: (box not in self._held, box))
        return held_first[:share], asked

    def _free(self, session: Session, now: dt.datetime, wanted: int) -> list[int]:
        """Up to ``wanted`` unowned or expired rows of other nodes, not asked for, locked."""
        free = or_(Lease.node.is_(None), Lease.expires_at.is_(None), Lease.expires_at <= now)
        query = self._linked_leases().where(
            free, or_(Lease.node.is_(None), Lease.node != self.node), unasked(self.node, now)
        )
        return list(session.scalars(self._locked(query.limit(wanted))))

    def _release_unlinked(self, session: Session) -> None:
        unlinked = select(Mailbox.id).where(Mailbox.linked.is_(False))
        session.execute(
            update(Lease)
            .where(Lease.node == self.node, Lease.mailbox_id.in_(unlinked))
            .values(node=None, expires_at=None)
        )

    def _log_changes(self, mine: set[int], asked: dict[int, str]) -> None:
        gained, lost = mine - self._held.keys(), self._held.keys() - mine
        if gained or lost:
            log.info(
                "node %s: %d mailboxes (+%d, -%d)", self.node, len(mine), len(gained), len(lost)
            )
        for box in sorted(lost & asked.keys()):
            log.info("node %s: handing mailbox %d over to %s", self.node, box, asked[box])


def unasked(node: str, now: dt.datetime) -> ColumnElement[bool]:
    """SQL: no live hand-over request on the lease row, but perhaps one of ``node``'s own."""
    return or_(
        Lease.requested_by.is_(None),
        Lease.requested_by == node,
        Lease.requested_until.is_(None),
        Lease.requested_until <= now,
    )


def lease_owners(db: Database) -> dict[int, str]:
    """Mailbox id -> the node holding an unexpired lease on it (for status pages and tests)."""
    postgres = db.engine.dialect.name == "postgresql"
    with db.session() as session:
        now = session.execute(select(func.now())).scalar_one() if postgres else utcnow()
        rows: Sequence[Any] = session.execute(
            select(Lease.mailbox_id, Lease.node).where(
                Lease.node.is_not(None), Lease.expires_at > now
            )
        ).all()
    return {box: node for box, node in rows}


def _short(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
