"""The vCards of one message (SPEC C7), within the per-message limits of ``[capture]``.

:func:`message_vcards` is what capture asks: it looks at the cheap signs first (a vCard type,
a ``.vcf`` name or a forwarded message somewhere in the raw bytes, then the top-level headers),
parses the MIME tree only then, and reads at most ``max_vcard_bytes`` of vCard data and
``max_vcard_contacts`` contacts from the whole message, not per part: one attachment of 100,000
cards makes 100 contacts, and the rest is counted and logged as skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from crm.config import CaptureConfig

from .message import ParsedMessage
from .mimebounds import parse_full
from .vcards import VCardContact, may_contain_vcard, parse_vcards, vcard_parts

log = logging.getLogger("crm.vcards")
_VCARD_HINTS = (b"vcard", b".vcf", b"text/directory", b"message/rfc822", b"filename*")


@dataclass(frozen=True)
class MessageCards:
    """The contacts of a message's vCards, and how many cards the limits left unread."""

    contacts: tuple[VCardContact, ...] = ()
    skipped: int = 0


def message_vcards(msg: ParsedMessage, limits: CaptureConfig) -> MessageCards:
    """The contacts of every vCard of ``msg``, at most ``limits.max_vcard_contacts``."""
    raw = msg.raw.lower()  # cheapest first: no vCard type, .vcf name or forwarded message
    if not any(hint in raw for hint in _VCARD_HINTS) or not may_contain_vcard(msg.headers):
        return MessageCards()
    cards: list[VCardContact] = []
    skipped = 0
    wanted = max(0, limits.max_vcard_contacts)
    for part in vcard_parts(parse_full(msg.raw, msg.key), max(0, limits.max_vcard_bytes)):
        parsed = parse_vcards(part, wanted - len(cards))
        cards.extend(parsed.contacts)
        skipped += parsed.unread
        for error in parsed.errors:
            log.info("vCard in %s skipped: %s", msg.key, error)
    if skipped:
        log.warning(
            "vCards of %s: %d cards skipped, over the limit of %d contacts per message",
            msg.key, skipped, wanted,
        )  # fmt: skip
    return MessageCards(tuple(cards), skipped)
