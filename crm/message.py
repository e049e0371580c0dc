"""Raw RFC 5322 bytes to the facts the capture rules need, parsing headers first.

Only the top-level headers are parsed (stdlib ``email`` with ``policy.default``); the body is
walked later, and only when a rule needs it (vCards). Broken headers never raise: an address
header that cannot be parsed is read leniently, a bad date becomes ``None``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses

from .addresses import try_normalize
from .errors import MessageParseError
from .robots import robot_reason

_HEADER_PARSER = BytesParser(policy=policy.default)
_MSGID = re.compile(r"<([^<>\s]+)>")
_ORIGINAL_ID_HEADERS = ("X-Microsoft-Original-Message-ID", "X-Google-Original-Message-ID")
MAX_HEADER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Party:
    """A normalised address with the display name it was written with."""

    address: str
    name: str


@dataclass(frozen=True)
class ParsedMessage:
    """What the capture rules read from one message."""

    raw: bytes
    headers: EmailMessage
    key: str
    message_id: str | None
    subject: str
    sender: Party | None
    to: tuple[Party, ...]
    cc: tuple[Party, ...]
    bcc: tuple[Party, ...]
    date: dt.datetime | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    robot: str | None

    @property
    def recipients(self) -> tuple[Party, ...]:
        """To, Cc and Bcc in that order."""
        return self.to + self.cc + self.bcc


def _header_text(headers: EmailMessage, name: str) -> str | None:
    try:
        value = headers.get(name)
    except Exception:  # a header policy.default cannot even fold: read it raw
        value = headers.get_all(name, failobj=[None])[0]
    return None if value is None else str(value)


def message_ids(value: str | None) -> tuple[str, ...]:
    """Every ``<id>`` in a Message-ID, In-Reply-To or References value, without brackets."""
    if not value:
        return ()
    found = _MSGID.findall(value)
    if not found and value.strip() and " " not in value.strip():
        found = [value.strip().strip("<>")]
    return tuple(found)


def _parties(headers: EmailMessage, name: str) -> tuple[Party, ...]:
    values = headers.get_all(name) or []
    pairs: list[tuple[str, str]] = []
    for value in values:
        try:
            pairs.extend((a.display_name, a.addr_spec) for a in value.addresses)
        except Exception:  # not an AddressHeader, or one that policy.default could not parse
            pairs.extend(getaddresses([str(value)]))
    parties: list[Party] = []
    for display, spec in pairs:
        address = try_normalize(spec) if spec else None
        if address and all(p.address != address for p in parties):
            parties.append(Party(address, (display or "").strip()))
    return tuple(parties)


def _date(headers: EmailMessage) -> dt.datetime | None:
    try:
        header = headers.get("Date")
        when = getattr(header, "datetime", None)
    except Exception:
        return None
    if not isinstance(when, dt.datetime) or when.year < 1970:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def content_key(raw: bytes, headers: EmailMessage) -> str:
    """A stable hash for a message that has no Message-ID (C9): a few headers and the body."""
    digest = hashlib.sha256()
    for name in ("From", "To", "Cc", "Date", "Subject"):
        digest.update((_header_text(headers, name) or "").encode("utf-8", "replace") + b"\0")
    split = re.search(rb"\r?\n\r?\n", raw)
    body = raw[split.end() :] if split else b""
    digest.update(b"\n".join(line.rstrip() for line in body.splitlines()).rstrip())
    return "sha256:" + digest.hexdigest()[:40]


def parse_message(raw: bytes, envelope_sender: str | None = None) -> ParsedMessage:
    """Parse the headers of ``raw``; raises MessageParseError when it is not a message at all."""
    if not isinstance(raw, bytes | bytearray) or not raw.strip():
        raise MessageParseError("empty message")
    raw = bytes(raw)
    headers = _HEADER_PARSER.parsebytes(raw[: MAX_HEADER_BYTES + 65536], headersonly=True)
    if not headers.keys():
        raise MessageParseError("no headers: not an RFC 5322 message")
    own_id = next(iter(message_ids(_header_text(headers, "Message-ID"))), None)
    original = None
    for name in _ORIGINAL_ID_HEADERS:
        original = original or next(iter(message_ids(_header_text(headers, name))), None)
    key_id = original or own_id
    key = "mid:" + key_id[:190] if key_id else content_key(raw, headers)
    senders = _parties(headers, "From") or _parties(headers, "Sender")
    return ParsedMessage(
        raw=raw,
        headers=headers,
        key=key,
        message_id=key_id,
        subject=(_header_text(headers, "Subject") or "").strip(),
        sender=senders[0] if senders else None,
        to=_parties(headers, "To"),
        cc=_parties(headers, "Cc"),
        bcc=_parties(headers, "Bcc"),
        date=_date(headers),
        in_reply_to=message_ids(_header_text(headers, "In-Reply-To")),
        references=message_ids(_header_text(headers, "References")),
        robot=robot_reason(headers, envelope_sender),
    )


def parse_full(raw: bytes) -> EmailMessage:
    """The whole MIME tree, for rules that need the body (vCards)."""
    message = _HEADER_PARSER.parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message
