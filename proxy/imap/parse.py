"""Parsing of the IMAP responses aioimaplib returns, and the sequence sets we send.

aioimaplib hands back a command's untagged lines without their ``* `` (and, for SEARCH, without
the command name), literals as separate ``bytearray`` items, and the tagged status text last.
These functions turn that into typed values; none of them raises on odd server output: what
cannot be read is left out (and the caller treats a missing UID as unknown, never as deleted,
unless the command was asked about exactly that UID).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from . import utf7

_FETCH_START = re.compile(rb"^(\d+) FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_MODSEQ = re.compile(rb"\bMODSEQ \((\d+)\)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_INTERNALDATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_LITERAL_ITEM = re.compile(rb"BODY\[([^\]]*)\](?:<\d+>)? \{(\d+)\+?\}$")
_CODE = re.compile(rb"\[([A-Z-]+)(?: ([^\]]*))?\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS")
_LIST = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delim>NIL|"(?:\\.|[^"\\])*") ?(?P<name>.*)$')
_VANISHED = re.compile(rb"^VANISHED (?:\(EARLIER\) )?([0-9:,*]+)")


@dataclass
class FetchRecord:
    """One message of a FETCH response."""

    seq: int
    uid: int | None = None
    flags: frozenset[str] = frozenset()
    has_flags: bool = False
    modseq: int | None = None
    size: int | None = None
    internaldate: dt.datetime | None = None
    body: bytes | None = None
    header: bytes | None = None
    text: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def seen(self) -> bool:
        """The message carries ``\\Seen``."""
        return "\\seen" in self.flags

    @property
    def answered(self) -> bool:
        """The message carries ``\\Answered``."""
        return "\\answered" in self.flags


@dataclass(frozen=True)
class SelectInfo:
    """What SELECT tells about a folder."""

    exists: int = 0
    uidvalidity: int = 0
    uidnext: int = 0
    highest_modseq: int = 0
    read_only: bool = False


@dataclass(frozen=True)
class ListEntry:
    """One LIST line: attributes (lower-cased), hierarchy delimiter, readable and wire names."""

    attributes: frozenset[str]
    delimiter: str | None
    name: str
    wire: str

    @property
    def selectable(self) -> bool:
        """False for ``\\Noselect`` / ``\\NonExistent`` entries."""
        return not self.attributes & {"\\noselect", "\\nonexistent"}


def compact(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1:3,7,9:10"`` (sorted, duplicates dropped)."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = -1
    for uid in ordered:
        if uid == prev + 1:
            prev = uid
            continue
        if start >= 0:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start >= 0:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def quote(text: str) -> str:
    """A folder name (already in modified UTF-7) as an IMAP quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flags(text: bytes) -> frozenset[str]:
    return frozenset(f.lower() for f in text.decode("ascii", "replace").split())


def _finish(record: FetchRecord) -> FetchRecord:
    text = bytes(record.text)
    if match := _UID.search(text):
        record.uid = int(match.group(1))
    if match := _FLAGS.search(text):
        record.flags, record.has_flags = _flags(match.group(1)), True
    if match := _MODSEQ.search(text):
        record.modseq = int(match.group(1))
    if match := _SIZE.search(text):
        record.size = int(match.group(1))
    if match := _INTERNALDATE.search(text):
        record.internaldate = parse_internaldate(match.group(1))
    record.text = bytearray()
    return record


def parse_internaldate(value: bytes) -> dt.datetime | None:
    """``"17-Jul-1996 02:44:25 -0700"`` (RFC 3501 date-time; the day may be space-padded)."""
    try:
        text = value.decode("ascii").strip()
        return dt.datetime.strptime(text, "%d-%b-%Y %H:%M:%S %z")
    except (UnicodeDecodeError, ValueError):
        return None


def parse_fetch(lines: Sequence[bytes | bytearray]) -> list[FetchRecord]:
    """The FETCH records of a response's untagged lines (the tagged text must be left out)."""
    records: list[FetchRecord] = []
    current: FetchRecord | None = None
    pending: str | None = None
    for line in lines:
        if isinstance(line, bytearray):
            if current is not None and pending is not None:
                setattr(current, pending, bytes(line))
            pending = None
            continue
        if start := _FETCH_START.match(line):
            if current is not None:
                records.append(_finish(current))
            current = FetchRecord(seq=int(start.group(1)))
        if current is None:
            continue
        current.text += line + b" "
        literal = _LITERAL_ITEM.search(line)
        pending = None if literal is None else ("body" if not literal.group(1) else "header")
    if current is not None:
        records.append(_finish(current))
    return records


def parse_select(lines: Sequence[bytes | bytearray]) -> SelectInfo:
    """EXISTS, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and read-only state of a SELECT."""
    values = {"exists": 0, "uidvalidity": 0, "uidnext": 0, "highest_modseq": 0}
    read_only = False
    for line in lines:
        if not isinstance(line, bytes):
            continue
        if match := _EXISTS.match(line):
            values["exists"] = int(match.group(1))
        for code, arg in _CODE.findall(line):
            name = {b"UIDVALIDITY": "uidvalidity", b"UIDNEXT": "uidnext"}.get(code)
            name = name or ("highest_modseq" if code == b"HIGHESTMODSEQ" else None)
            if name and arg.strip().isdigit():
                values[name] = int(arg)
            read_only = read_only or code == b"READ-ONLY"
    return SelectInfo(read_only=read_only, **values)


def parse_search(lines: Sequence[bytes | bytearray]) -> list[int]:
    """The numbers of SEARCH results (a trailing ``(MODSEQ n)`` is ignored)."""
    found: list[int] = []
    for line in lines[:-1]:
        if isinstance(line, bytes):
            text = line.split(b"(", 1)[0]
            found.extend(int(t) for t in text.split() if t.isdigit())
    return found


def parse_vanished(line: bytes) -> list[tuple[int, int]]:
    """The UID ranges of a ``VANISHED [(EARLIER)] set`` line (without ``* ``), else [].

    Ranges, not UIDs: ``1:4000000000`` is one short line, and must stay one small value.
    """
    match = _VANISHED.match(line)
    if not match:
        return []
    ranges: list[tuple[int, int]] = []
    for part in match.group(1).decode("ascii").split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and (not high or high.isdigit()):
            first, last = int(low), int(high or low)
            ranges.append((min(first, last), max(first, last)))
    return ranges


def _unquote(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_list(lines: Sequence[bytes | bytearray]) -> list[ListEntry]:
    """LIST (or LSUB) entries; names given as literals are read from the next item."""
    entries: list[ListEntry] = []
    items = list(lines)
    for index, line in enumerate(items):
        if not isinstance(line, bytes) or not (match := _LIST.match(line)):
            continue
        name_raw = match.group("name")
        if re.fullmatch(rb"\{\d+\+?\}", name_raw) and index + 1 < len(items):
            name_raw = bytes(items[index + 1])
        else:
            name_raw = _unquote(name_raw).encode("utf-8")
        delim = match.group("delim")
        wire = name_raw.decode("utf-8", "replace")
        entries.append(
            ListEntry(
                attributes=_flags(match.group("flags")),
                delimiter=None if delim == b"NIL" else _unquote(delim),
                name=utf7.decode(wire),
                wire=wire,
            )
        )
    return entries


def status_text(lines: Sequence[bytes | bytearray]) -> str:
    """The server's words for a tagged response (its last line), for messages to people."""
    if not lines:
        return ""
    last = lines[-1]
    return bytes(last).decode("utf-8", "replace").strip()
