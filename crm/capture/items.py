"""What goes into the capture path and what comes out of it: :class:`Incoming` (a message with
what its caller knows, its :class:`Location` for the poller) and :class:`CaptureResult` (the
``capture --json`` fields). Re-exported by :mod:`crm.capture.path`, which defines their use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crm.mail.message import ParsedMessage
from crm.vocab import Direction

from .records import CreatedRecords


@dataclass(frozen=True)
class Location:
    """Where the poller found the message: for read-state and deletion sync (C10, C11)."""

    folder: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class Incoming:
    """One message to capture, with what its caller knows about it."""

    raw: bytes
    mailbox: str
    direction: Direction
    source: str = ""
    seen: bool = False
    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()
    location: Location | None = None
    history: bool = False  # found in the mailbox at linking: the import window applies (C12)
    #: The message parsed ahead by :meth:`Capturer.prepare` (None: parsed when captured).
    parsed: ParsedMessage | None = field(default=None, compare=False, repr=False)


@dataclass
class CaptureResult:
    """What capturing one message did; the ``capture --json`` fields."""

    source: str
    action: str
    reason: str | None = None
    activities: list[int] = field(default_factory=list)
    created: CreatedRecords = field(default_factory=CreatedRecords)
    message_key: str | None = None
    vcards_skipped: int = 0  # vCards not read: over the per-message limits
    #: skipped on a fault of the message (unreadable, refused, an error while capturing it),
    #: not by a rule: what the poller counts per mailbox (SPEC B6)
    fault: bool = False

    def as_json(self) -> dict[str, object]:
        """The stable JSON shape of docs/CLI.md."""
        return {
            "source": self.source,
            "action": self.action,
            "reason": self.reason,
            "activities": self.activities,
            "created": self.created.as_json(),
            "message_key": self.message_key,
            "vcards_skipped": self.vcards_skipped,
        }
