"""Raw RFC 5322 bytes to the facts the capture rules need, parsing headers first.

Only the top-level headers are parsed (stdlib ``email`` with ``policy.default``); the body is
walked later, and only when a rule needs it (vCards). Broken headers never raise: an address
header that cannot be parsed is read leniently, a bad date becomes ``None``; a message the
parser fails on is a :class:`MessageParseError` (``unreadable message``), never another error.

The header section is read up to :data:`MAX_HEADER_BYTES`, with the bounded policy of
:mod:`crm.mimebounds` (each value cut before it is decoded); the full MIME tree, for the rules
that need it, is :func:`crm.mimebounds.parse_full` (re-exported here), bounded in depth and parts.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from crm.errors import MessageParseError

from .addresses import try_normalize
from .mimebounds import MAX_DECODED_HEADER, MAX_HEADER_VALUE, POLICY, parse_headers
from .mimebounds import parse_full as parse_full  # re-exported: the MIME tree of a message
from .robots import robot_reason

_DEFAULT_FACTORY: Any = POLICY.header_factory
_SURROGATES = re.compile("[\udc80-\udcff]")
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_YEAR = re.compile(r"[A-Za-z]{3}\s+(\d{4})\b")
_MSGID = re.compile(r"<([^<>\s]+)>")
_HEADER_END = re.compile(rb"\r?\n\r?\n")  # an empty line: where the header section ends
_ORIGINAL_ID_HEADERS = ("X-Microsoft-Original-Message-ID", "X-Google-Original-Message-ID")
MAX_HEADER_BYTES = 4 * 1024 * 1024
_HEADER_SCAN = MAX_HEADER_BYTES + 64 * 1024  # how far to look for the end of the header section
MAX_PARSED_HEADER = MAX_HEADER_VALUE
MAX_PARSED_ADDRESSES = 16 * 1024
MAX_ADDRESSES = 1000
MAX_ID_LENGTH = 900
MAX_IDS = 100


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
    header_id: str | None
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


def _raw_values(headers: EmailMessage, name: str) -> list[str]:
    """The raw values of one header, from an index built once per message."""
    index: dict[str, list[str]] | None = vars(headers).get("_mailcrm_index")
    if index is None:
        index = {}
        for key, value in headers.raw_items():
            index.setdefault(key.lower(), []).append(str(value))
        vars(headers)["_mailcrm_index"] = index
    return [_unescape(v) for v in index.get(name.lower(), ())]


def _unescape(value: str) -> str:
    """Raw 8-bit header bytes (kept as surrogates by the parser) as UTF-8, else Windows-1252."""
    if not _SURROGATES.search(value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _decoded(headers: EmailMessage, name: str, value: str) -> Any:
    """The policy.default header object for a raw value, parsed only up to a sane size."""
    return headers.policy.header_factory(name, value[:MAX_DECODED_HEADER])  # type: ignore[attr-defined]


def clean_text(value: str) -> str:
    """Text fit for any database: bytes an unknown charset left undecoded read as Windows-1252,
    no NUL or other control characters but tab and newline, no lone surrogates."""
    value = _unescape(value)
    if _UNSAFE.search(value):
        value = _UNSAFE.sub("\ufffd", value)
    return value


def _header_text(headers: EmailMessage, name: str) -> str | None:
    values = _raw_values(headers, name)
    if not values:
        return None
    try:
        return clean_text(str(_decoded(headers, name, values[0])))
    except Exception:  # a header policy.default cannot decode: keep the raw text
        return clean_text(values[0][:MAX_PARSED_HEADER])


def message_ids(value: str | None) -> tuple[str, ...]:
    """Every ``<id>`` in a Message-ID, In-Reply-To or References value, without brackets."""
    if not value:
        return ()
    found = _MSGID.findall(value)
    if not found and value.strip() and " " not in value.strip():
        found = [value.strip().strip("<>")]
    if len(found) > MAX_IDS:  # a References chain: its root and the latest ids are what count
        found = found[:1] + found[-(MAX_IDS - 1) :]
    return tuple(f[:MAX_ID_LENGTH] for f in found)


def _address_pairs(headers: EmailMessage, name: str, value: str) -> list[tuple[str, str]]:
    if len(value) > MAX_PARSED_ADDRESSES:  # a giant header: the fast lenient parser, capped
        return getaddresses([value[:MAX_PARSED_HEADER]])[:MAX_ADDRESSES]
    return list(_parsed_addresses(name, value))


@functools.lru_cache(maxsize=8192)
def _parsed_addresses(name: str, value: str) -> tuple[tuple[str, str], ...]:
    """policy.default's reading of an address header; correspondents repeat, so it is cached."""
    try:
        header = _DEFAULT_FACTORY(name, value)
        return tuple((a.display_name, a.addr_spec) for a in header.addresses)
    except Exception:  # policy.default could not parse it: read it leniently
        return tuple(getaddresses([value]))


def _parties(headers: EmailMessage, name: str) -> tuple[Party, ...]:
    pairs: list[tuple[str, str]] = []
    for value in _raw_values(headers, name):
        pairs.extend(_address_pairs(headers, name, value))
    parties: dict[str, Party] = {}
    for display, spec in pairs[:MAX_ADDRESSES]:
        address = try_normalize(spec) if spec else None
        if address and address not in parties:
            parties[address] = Party(address, clean_text(display or "").strip())
    return tuple(parties.values())


def _date(headers: EmailMessage) -> dt.datetime | None:
    values = _raw_values(headers, "Date")
    if not values:
        return None
    try:
        when = parsedate_to_datetime(" ".join(values[0].split()))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    year = _YEAR.search(values[0])
    if when.year < 1970 or (year and int(year[1]) < 1970):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def content_key(raw: bytes, headers: EmailMessage) -> str:
    """A stable hash for a message that has no Message-ID (C9): a few headers and the body."""
    digest = hashlib.sha256()
    for name in ("From", "To", "Cc", "Date", "Subject"):
        for value in _raw_values(headers, name):
            digest.update(" ".join(value.split()).encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    split = re.search(rb"\r?\n\r?\n", raw)
    body = raw[split.end() :] if split else b""
    digest.update(b"\n".join(line.rstrip() for line in body.splitlines()).rstrip())
    return "sha256:" + digest.hexdigest()[:40]


def _plain(values: list[str]) -> str | None:
    """The first value as text, unfolded; encoded words and 8-bit text go through policy.default."""
    return clean_text(" ".join(values[0][:MAX_PARSED_HEADER].split())) if values else None


def _header_block(raw: bytes) -> bytes:
    """The header section up to its empty line (the parser would only carry the body along)."""
    end = _HEADER_END.search(raw, 0, _HEADER_SCAN)
    return raw[: end.end() if end else _HEADER_SCAN]


def parse_message(raw: bytes, envelope_sender: str | None = None) -> ParsedMessage:
    """Parse the headers of ``raw``; raises MessageParseError when it is not a message at all."""
    if not isinstance(raw, bytes | bytearray) or not raw.strip():
        raise MessageParseError("empty message")
    raw = bytes(raw)
    try:
        return _parse(raw, envelope_sender)
    except MessageParseError:
        raise
    except Exception as exc:  # the parser or a header decoder failed: this message only
        raise MessageParseError(f"unreadable message: {type(exc).__name__}") from exc


def _parse(raw: bytes, envelope_sender: str | None) -> ParsedMessage:
    headers = parse_headers(_header_block(raw))
    if not headers.keys():
        raise MessageParseError("no headers: not an RFC 5322 message")
    own_id = next(iter(message_ids(_plain(_raw_values(headers, "Message-ID")))), None)
    original = None
    for name in _ORIGINAL_ID_HEADERS:
        original = original or next(iter(message_ids(_plain(_raw_values(headers, name)))), None)
    key_id = original or own_id
    key = "mid:" + key_id[:190] if key_id else content_key(raw, headers)
    senders = _parties(headers, "From") or _parties(headers, "Sender")
    return ParsedMessage(
        raw=raw,
        headers=headers,
        key=key,
        message_id=key_id,
        header_id=own_id if own_id != key_id else None,
        subject=(_subject(headers) or "").strip(),
        sender=senders[0] if senders else None,
        to=_parties(headers, "To"),
        cc=_parties(headers, "Cc"),
        bcc=_parties(headers, "Bcc"),
        date=_date(headers),
        in_reply_to=message_ids(_plain(_raw_values(headers, "In-Reply-To"))),
        references=message_ids(_plain(_raw_values(headers, "References"))),
        robot=robot_reason(headers, envelope_sender),
    )


def _subject(headers: EmailMessage) -> str | None:
    values = _raw_values(headers, "Subject")
    if values and "=?" not in values[0]:
        return _plain(values)  # nothing to decode: skip the header registry
    return _header_text(headers, "Subject")
