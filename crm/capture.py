"""The capture path shared by ``mailcrm capture``, the SMTP relay and the IMAP poller.

``Capturer.capture`` parses the headers, gathers the context the rules need with a few indexed
queries, asks the pure pipeline (:mod:`crm.pipeline`) for a decision and applies it in one
transaction. A message that cannot be captured is skipped with a logged reason; nothing here
raises for bad mail, and a database error rolls the whole message back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, select
from sqlalchemy.exc import DataError, IntegrityError

from . import metrics
from .addresses import try_normalize
from .db import Database
from .errors import MessageParseError
from .lookups import (
    MailboxExtras,
    contact_names,
    known_entities,
    mailbox_view,
    record_location,
    remember_alias,
    threads,
)
from .lookups import existing_activity as _existing_activity
from .message import ParsedMessage, parse_full, parse_message
from .models import Direction, Exclusion, Mailbox, User, utcnow
from .pipeline import Context, MailboxView, decide
from .records import CreatedRecords, apply_decision
from .vcards import VCardContact, may_contain_vcard, parse_vcards, vcard_parts

log = logging.getLogger(__name__)
CACHE_SECONDS = 5.0
_VCARD_HINTS = (b"vcard", b".vcf", b"text/directory", b"message/rfc822", b"filename*")


@dataclass(frozen=True)
class Location:
    """Where the poller found the message: for read-state and deletion sync (C10, C11)."""

    folder: str
    uidvalidity: int
    uid: int


@dataclass
class CaptureResult:
    """What capturing one message did; the ``capture --json`` fields."""

    source: str
    action: str
    reason: str | None = None
    activities: list[int] = field(default_factory=list)
    created: CreatedRecords = field(default_factory=CreatedRecords)
    message_key: str | None = None

    def as_json(self) -> dict[str, object]:
        """The stable JSON shape of CLI.md."""
        return {
            "source": self.source,
            "action": self.action,
            "reason": self.reason,
            "activities": self.activities,
            "created": self.created.as_json(),
            "message_key": self.message_key,
        }


class _Staff:
    """Employees' addresses and global exclusions, re-read at most every few seconds."""

    def __init__(self) -> None:
        self.loaded_at = -1e9
        self.employees: frozenset[str] = frozenset()
        self.excluded: frozenset[str] = frozenset()

    def refresh(self, session: Connection) -> None:
        if time.monotonic() - self.loaded_at < CACHE_SECONDS:
            return
        users = session.scalars(select(User.email))
        boxes = session.scalars(select(Mailbox.address))
        self.employees = frozenset(users) | frozenset(boxes)
        rows = session.scalars(select(Exclusion.entry).where(Exclusion.mailbox_id.is_(None)))
        self.excluded = frozenset(rows)
        self.loaded_at = time.monotonic()

    def invalidate(self) -> None:
        self.loaded_at = -1e9


class Capturer:
    """Applies the capture rules to raw messages for one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.staff = _Staff()
        self.extras = MailboxExtras(CACHE_SECONDS)

    @metrics.counted
    def capture(
        self,
        raw: bytes,
        mailbox: str,
        direction: Direction,
        *,
        source: str = "",
        seen: bool = False,
        envelope_from: str | None = None,
        envelope_to: Iterable[str] = (),
        location: Location | None = None,
    ) -> CaptureResult:
        """Capture one message seen in ``mailbox``; never raises for bad mail."""
        try:
            msg = parse_message(raw, envelope_from)
        except MessageParseError as exc:
            log.info("capture skipped %s: %s", source or "message", exc)
            return CaptureResult(source, "skipped", str(exc))
        try:
            return self._capture_parsed(
                msg, mailbox, direction, source, seen, _addresses(envelope_to), location
            )
        except IntegrityError:
            log.info("capture of %s raced with another writer; counted as duplicate", msg.key)
            return CaptureResult(source, "duplicate", "already captured", message_key=msg.key)
        except DataError as exc:  # a value the database refuses: this message only, skipped
            reason = f"cannot store: {str(exc.orig).splitlines()[0][:200]}"
            log.warning("capture of %s skipped: %s", source or msg.key, reason)
            return CaptureResult(source, "skipped", reason, message_key=msg.key)

    def _capture_parsed(
        self,
        msg: ParsedMessage,
        mailbox: str,
        direction: Direction,
        source: str,
        seen: bool,
        envelope_to: tuple[str, ...],
        location: Location | None,
    ) -> CaptureResult:
        with self.db.engine.begin() as session:
            box_id, view = mailbox_view(session, mailbox, self.extras)
            self.staff.refresh(session)
            cards = self._vcards(msg, view)
            ctx = self._context(session, msg, view, direction, seen, envelope_to, cards)
            decision = decide(msg, ctx)
            result = CaptureResult(source, decision.action, decision.reason, message_key=msg.key)
            if decision.action == "captured":
                folder = location.folder if location else None
                activity_id, result.created = apply_decision(session, msg, box_id, decision, folder)
                result.activities = [activity_id]
            elif decision.action == "duplicate":
                result.activities = _existing_activity(session, msg.key)
                remember_alias(session, msg)
            if location is not None:
                record_location(
                    session,
                    box_id,
                    msg.key,
                    location.folder,
                    location.uidvalidity,
                    location.uid,
                    seen,
                    result.activities,
                )
        if decision.action == "skipped":
            log.info("capture skipped %s: %s", source or msg.key, decision.reason)
        return result

    def _vcards(self, msg: ParsedMessage, box: MailboxView) -> tuple[VCardContact, ...]:
        if not box.vcard_contacts:
            return ()
        raw = msg.raw.lower()  # cheapest first: no vCard type, .vcf name or forwarded message
        if not any(hint in raw for hint in _VCARD_HINTS) or not may_contain_vcard(msg.headers):
            return ()
        cards: list[VCardContact] = []
        for part in vcard_parts(parse_full(msg.raw)):
            parsed = parse_vcards(part)
            cards.extend(parsed.contacts)
            for error in parsed.errors:
                log.info("vCard in %s skipped: %s", msg.key, error)
        return tuple(cards)

    def _context(
        self,
        session: Connection,
        msg: ParsedMessage,
        view: MailboxView,
        direction: Direction,
        seen: bool,
        envelope_to: tuple[str, ...],
        cards: tuple[VCardContact, ...],
    ) -> Context:
        wanted = {p.address for p in msg.recipients} | set(envelope_to)
        if msg.sender:
            wanted.add(msg.sender.address)
        wanted.update(_addresses(e for c in cards for e in c.emails))
        return Context(
            mailbox=view,
            direction=direction,
            now=utcnow(),
            seen=seen,
            employees=self.staff.employees,
            excluded=self.staff.excluded,
            known=known_entities(session, wanted),
            known_contact_names=contact_names(session, [c.name for c in cards if not c.emails]),
            duplicate=bool(_existing_activity(session, msg.key)),
            threads=threads(session, msg.in_reply_to + msg.references),
            envelope_to=envelope_to,
            vcards=cards,
        )


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    """Envelope or vCard addresses in their stored form; what is not an address is dropped."""
    found = (try_normalize(v.strip().strip("<>")) for v in values)
    return tuple(dict.fromkeys(a for a in found if a))
