"""A batch's capture in one transaction: its reads made once for all its messages, its
activities, bindings, addresses and locations written together at its end.

The straight run of :meth:`crm.capture.path.Capturer.capture_many` asks, before its first message,
which entities the batch's addresses belong to, which of its messages are captured already,
which threads they refer to and which companies their domains have: one query each for the whole
batch instead of one each per message.
What a message needs beyond that (a vCard's address) is asked when it is needed. The answers are
kept true as the batch goes on: a lead or contact it creates is known to its later messages, an
activity it captures is a duplicate for a later copy and a thread for a later reply.

Leads, contacts and companies are written at once (a later message binds to their ids). The
activities, their bindings, the new addresses and the locations wait in :class:`Batch` and are
written by :meth:`Batch.flush` with one statement each (and one for the DAV change log of all it
made), before the checkpoint moves and in the same transaction, so a crash loses or doubles
nothing; a later message that must see one of those rows in the database (a copy of a message
captured earlier in the batch) flushes first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Executable, insert

from crm.mail.domains import company_for_domain
from crm.mail.message import ParsedMessage
from crm.store.changes import log_rows
from crm.store.lookups import (
    IN_CHUNK,
    companies_by_domain,
    existing_activities,
    known_entities,
    threads,
)
from crm.store.tables import ACTIVITIES, BINDINGS, EMAILS

from .pipeline import Decision, EntityRef
from .records import (
    CreatedRecords,
    Deferred,
    activity_row,
    activity_touched,
    binding_rows,
    create_entities,
    entities_touched,
    location_insert,
    mark_answered,
    remember_alias,
    set_cursor,
)

# Matched back by message key (unique): in one statement however many, where an order would
# cost SQLAlchemy a statement per row on SQLite.
_ACTIVITIES = insert(ACTIVITIES).returning(ACTIVITIES.c.message_key, ACTIVITIES.c.id)
_BIND = insert(BINDINGS)
_EMAIL = insert(EMAILS)


@dataclass
class _Activity:
    """An activity waiting for the flush, and the result lists that get its id."""

    row: dict[str, Any]
    bindings: list[dict[str, Any]]
    ids: list[int]


@dataclass
class _Asked:
    """Answers read from the database (and made by the batch), and which values were asked."""

    found: dict[str, Any] = field(default_factory=dict)
    asked: set[str] = field(default_factory=set)

    def missing(self, values: Iterable[str]) -> list[str]:
        return sorted({v for v in values if v not in self.asked})


class Batch:
    """The reads and pending writes of one transaction of :meth:`Capturer.capture_many`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.deferred = Deferred()
        self._known = _Asked()  # address -> list[EntityRef]
        self._keys = _Asked()  # message key -> list[int] (activity ids)
        self._threads = _Asked()  # message id -> thread
        self._pending: dict[str, _Activity] = {}  # by message key
        self._locations: list[tuple[dict[str, Any], list[int]]] = []
        self._cursors: dict[int, int] = {}
        self._touched: set[tuple[str, int | None]] = set()  # for the DAV change log

    def gather(self, messages: Sequence[ParsedMessage], envelope_to: Iterable[str] = ()) -> None:
        """Ask for the addresses, keys and referenced ids of all ``messages`` at once."""
        addresses = {p.address for m in messages for p in m.recipients} | set(envelope_to)
        addresses |= {m.sender.address for m in messages if m.sender}
        self.known(addresses)
        self.existing_many(m.key for m in messages)
        self.threads([i for m in messages for i in m.in_reply_to + m.references])
        self._companies(addresses)

    def _companies(self, addresses: Iterable[str]) -> None:
        """The companies the new leads of these addresses would belong to (B5)."""
        guesses = (company_for_domain(a.rpartition("@")[2]) for a in addresses)
        domains = sorted({g.domain for g in guesses if g is not None} - self.deferred.domains)
        for part in _chunks(domains):
            self.deferred.companies.update(companies_by_domain(self.conn, part))
        self.deferred.domains.update(domains)

    def known(self, addresses: Iterable[str]) -> dict[str, tuple[EntityRef, ...]]:
        """:func:`crm.store.lookups.known_entities`, with what this batch created."""
        wanted = set(addresses)
        missing = self._known.missing(wanted)
        for part in _chunks(missing):
            for address, refs in known_entities(self.conn, part).items():
                self._known.found[address] = list(refs)
        self._known.asked.update(missing)
        return {a: tuple(self._known.found[a]) for a in wanted if a in self._known.found}

    def existing_many(self, keys: Iterable[str]) -> None:
        missing = self._keys.missing(keys)
        for part in _chunks(missing):
            self._keys.found.update(existing_activities(self.conn, part))
        self._keys.asked.update(missing)

    def existing(self, key: str) -> list[int]:
        """The activities already made from ``key`` (C9), in the database or in this batch."""
        if key in self._pending:
            self.flush()  # its id is wanted now
        self.existing_many((key,))
        return list(self._keys.found.get(key, ()))

    def threads(self, ids: Iterable[str]) -> dict[str, str]:
        """:func:`crm.store.lookups.threads`, with the activities this batch captured."""
        wanted = set(ids)
        missing = self._threads.missing(wanted)
        for part in _chunks(missing):
            self._threads.found.update(threads(self.conn, tuple(part)))
        self._threads.asked.update(missing)
        return {i: self._threads.found[i] for i in wanted if i in self._threads.found}

    def capture(
        self, msg: ParsedMessage, box_id: int, decision: Decision, folder: str | None
    ) -> tuple[list[int], CreatedRecords]:
        """Apply a ``captured`` decision: its entities now, its activity at the flush (the list
        returned gets the activity's id then)."""
        made = create_entities(self.conn, decision, box_id, self.deferred)
        self._touched |= entities_touched(made)
        for ref, addresses in _addresses_of(decision, made.contacts, made.leads):
            self.known(addresses)  # asked first: the database's answer would replace ours
            for address in addresses:
                self._known.found.setdefault(address, []).append(ref)
        row = activity_row(msg, box_id, decision, folder)
        activity = _Activity(row, binding_rows(0, decision, made), [])
        self._pending[msg.key] = activity
        self._keys.asked.add(msg.key)
        for mid in (row["message_id"], row["alt_message_id"]):
            if mid:
                self._threads.found[mid] = row["thread"]
        if decision.queue_cursor is not None:
            self._cursors[box_id] = decision.queue_cursor
        if decision.answers:
            mark_answered(self.conn, decision.answers)
            self._answered(decision.answers)
        return activity.ids, made.created

    def _answered(self, ids: tuple[str, ...]) -> None:
        wanted = set(ids)
        for pending in self._pending.values():
            row = pending.row
            if (
                row["direction"] == "incoming"
                and {row["message_id"], row["alt_message_id"]} & wanted
            ):
                row["answered"] = True

    def alias(self, msg: ParsedMessage) -> None:
        """:func:`crm.capture.records.remember_alias` of a duplicate (of an activity the
        :meth:`existing` call before has flushed, if it was this batch's)."""
        if msg.header_id:
            remember_alias(self.conn, msg)
            self._threads.asked.discard(msg.header_id)  # its thread may be found by it now

    def locate(self, row: dict[str, Any], activities: list[int]) -> None:
        """A location to record at the flush, with the first of ``activities`` then."""
        self._locations.append((row, activities))

    def flush(self) -> None:
        """Write what waits, in the order of the foreign keys; the batch goes on after."""
        pending = list(self._pending.values())
        if pending:
            rows = self.conn.execute(_ACTIVITIES, [p.row for p in pending])
            ids: dict[str, int] = {key: activity_id for key, activity_id in rows}
            bindings: list[dict[str, Any]] = []
            for activity in pending:
                activity_id = ids[activity.row["message_key"]]
                activity.ids.append(activity_id)
                self._keys.found[activity.row["message_key"]] = [activity_id]
                bindings += [{**b, "activity_id": activity_id} for b in activity.bindings]
                self._touched |= activity_touched(activity_id, activity.bindings)
            self._execute(_BIND, bindings)
        log_rows(self.conn, self._touched)
        self._touched = set()
        self._execute(_EMAIL, self.deferred.emails)
        locations = [
            {**row, "activity_id": activities[0] if activities else None}
            for row, activities in self._locations
        ]
        self._execute(location_insert(self.conn.dialect.name), locations)
        for box_id, cursor in self._cursors.items():
            set_cursor(self.conn, box_id, cursor)
        self._pending, self._locations, self._cursors = {}, [], {}
        self.deferred.emails = []

    def _execute(self, statement: Executable, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.conn.execute(statement, rows)


def _addresses_of(
    decision: Decision, contacts: list[EntityRef], leads: list[EntityRef]
) -> Iterable[tuple[EntityRef, tuple[str, ...]]]:
    for new, ref in zip(decision.new_contacts, contacts, strict=True):
        yield ref, new.addresses
    for lead, ref in zip(decision.new_leads, leads, strict=True):
        yield ref, (lead.address,)


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]
