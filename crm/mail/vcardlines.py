"""The line-level reading of one vCard (SPEC C7): what of a card reaches vobject, and how.

``crm.vcards`` cuts vCard data into cards and builds contacts; this module turns the text of
one card into the (still escaped) values of the properties used there. It also holds the
charset decoding (``decode_text``, ``ascii_compatible``) that ``crm.vcards`` and ``crm.vcardmime``
use too. It does what vobject cannot be trusted with on mail from strangers:

* the lines of a card are read with ``getLogicalLines``/``textLineToContentLine`` instead of
  ``vobject.readOne``: once a card gets its VERSION behaviour, vobject decodes every text value
  with ``stringToTextValues(value)[0]``, which cuts it at the first unescaped comma
  ("TITLE:CEO, Founder" becomes "CEO"; vobject issues #138/#140), and it base64-decodes PHOTO
  and LOGO right away, so one bad photo fails the whole card;
* only the lines of the properties used here reach vobject, each capped in size: vobject's
  ``getLogicalLines`` copies the whole logical line for every physical line it adds, which is
  quadratic in a folded PHOTO (half a second for an 800 KB photo, some 20 s for 5 MB);
* each line is checked with a linear regex before vobject parses it: vobject's line regex
  backtracks exponentially on a line such as ``TEL;a=b;a=b;...;a=b;@:1``;
* a QUOTED-PRINTABLE value whose CHARSET is unknown or wrong, or whose encoding is spelled in
  lower case (vobject then leaves it encoded), is decoded here with the same fallbacks as a card
  (UTF-8, else the CHARSET the card declares, else windows-1252).

A line that cannot be used is dropped and logged at DEBUG; a card whose components do not nest
raises ``BrokenCard``, which ``crm.vcards`` reports as a skipped card.
"""

from __future__ import annotations

import binascii
import io
import logging
import re
from collections.abc import Iterable
from typing import Any

from vobject.base import (
    ContentLine,
    VObjectError,
    getLogicalLines,
    parseLine,
    textLineToContentLine,
)

# The logger of crm.vcards, whose part this was: operators and tests watch that one name.
log = logging.getLogger("crm.vcards")

_MAX_VALUE = 4_000  # characters of a name, e-mail, phone, ORG or TITLE value looked at
_MAX_FOLDED_CHARS = 16_384  # of one property given to vobject, continuation lines included
_MAX_FOLDED_LINES = 100  # physical lines of one property given to vobject
_WANTED = frozenset({"BEGIN", "END", "FN", "N", "EMAIL", "TEL", "ORG", "TITLE"})
_DECLARED_CHARSET = re.compile(rb"CHARSET=\"?([A-Za-z0-9_.:-]{1,40})", re.IGNORECASE)

# The part of a content line before the value, in the grammar of vobject's ``line_re`` but
# without its ambiguity (possessive quantifiers): a line this does not match is dropped before
# vobject's backtracking regex sees it.
_PARAM_VALUE = r'(?:"[^"]*+"|[^";:,]*+)'
_LINE_HEAD = re.compile(
    r"(?:[A-Za-z0-9_-]++\.)?+(?P<name>[A-Za-z0-9_-]++);?"
    rf"(?:;[A-Za-z0-9_-]++(?:[=,]{_PARAM_VALUE})*+)*+:"
)


class BrokenCard(Exception):
    """A card whose structure is unusable; the message is the reason shown to the user."""


def wanted_lines(text: str) -> str:
    """The card with only the physical lines of BEGIN, END and the properties used here.

    Lines are grouped into properties by vobject's own rules (``getLogicalLines``): a line
    starting with a space or tab continues the property, so does the line after a
    quoted-printable soft line break (a line ending in ``=`` in a property that mentions
    QUOTED-PRINTABLE), and a blank line ends it. Blank lines are kept so vobject groups the
    kept lines the same way. A kept property is cut after a bounded number of lines/characters.
    """
    kept: list[str] = []
    keep = soft_break = False
    mentions_qp = False
    lines = chars = 0
    for line in text.split("\n"):
        if not line.strip():
            kept.append("")
            keep = soft_break = False
            continue
        if soft_break or line[0] in " \t":
            mentions_qp = mentions_qp or "quoted-printable" in line.lower()
            lines, chars = lines + 1, chars + len(line)
            if keep and lines <= _MAX_FOLDED_LINES and chars <= _MAX_FOLDED_CHARS:
                kept.append(line)
            elif keep:  # cut here; a soft break at the cut must not swallow the next property
                keep = False
                kept[-1] = _cut(kept[-1])
        else:
            head = _LINE_HEAD.match(line)
            keep = head is not None and _property_name(head) in _WANTED
            mentions_qp = "quoted-printable" in line.lower()
            lines, chars = 1, len(line)
            if keep:
                kept.append(line if chars <= _MAX_FOLDED_CHARS else _cut(line))
        soft_break = mentions_qp and line.endswith("=")
    return "\n".join(kept)


def _cut(line: str) -> str:
    return line[:_MAX_FOLDED_CHARS].rstrip("=")


def _property_name(head: re.Match[str]) -> str:
    return head["name"].upper().replace("_", "-")


def card_properties(text: str) -> dict[str, list[str]]:
    """The (still escaped) values of the wanted properties of the card, by property name."""
    props: dict[str, list[str]] = {}
    open_components: list[str] = []
    for line, number in getLogicalLines(io.StringIO(text), True):
        content = _content_line(line, number)
        if content is None:
            continue
        name, value = str(content.name), str(content.value)
        if name == "BEGIN":
            open_components.append(value.strip().upper())
        elif name == "END":
            kind = value.strip().upper()
            if not open_components or open_components[-1] != kind:
                raise BrokenCard(f"END:{kind[:40]} without BEGIN:{kind[:40]}")
            open_components.pop()
        elif len(open_components) == 1:  # not inside an AGENT card or other component
            props.setdefault(name, []).append(value[:_MAX_VALUE])
    return props


def _content_line(line: str, number: int) -> Any:
    """vobject's ContentLine for a wanted property line, or None for lines to drop."""
    head = _LINE_HEAD.match(line)
    if head is None:
        log.debug("vCard line %d ignored: not a property line", number)
        return None
    if _property_name(head) not in _WANTED:
        return None
    try:
        content = textLineToContentLine(line, number)
    except VObjectError:
        log.debug("vCard line %d ignored: vobject cannot parse it", number)
        return None
    except Exception:  # vobject failed on a QUOTED-PRINTABLE value: unknown or wrong CHARSET
        if "quoted-printable" not in line[: head.end()].lower():
            log.debug("vCard line %d ignored: vobject cannot read it", number)
            return None
        content = None
    if content is None or _undecoded_qp(content):
        try:
            return _qp_content_line(line, number)
        except Exception:
            log.debug("vCard line %d ignored: undecodable quoted-printable", number)
            return None
    return content


def _undecoded_qp(content: Any) -> bool:
    """True when vobject left a quoted-printable value encoded (lower-case spelling)."""
    encodings = [str(v) for v in content.params.get("ENCODING", ())]
    singles = [str(v) for v in content.singletonparams]
    return any(v.upper() == "QUOTED-PRINTABLE" for v in encodings + singles)


def _qp_content_line(line: str, number: int) -> Any:
    """The ContentLine of a quoted-printable line vobject could not decode itself."""
    name, params, value, group = parseLine(line, number)
    charsets = [str(v) for p in params if str(p[0]).upper() == "CHARSET" for v in p[1:]]
    kept = [p for p in params if not _is_qp_param(p)]
    raw = binascii.a2b_qp(str(value).encode("utf-8"))
    text = decode_text(raw, charsets)
    return ContentLine(name, kept, text, group, encoded=True, lineNumber=number)


def _is_qp_param(param: list[Any]) -> bool:
    key = str(param[0]).upper()
    if key == "ENCODING":
        return any(str(v).upper() == "QUOTED-PRINTABLE" for v in param[1:])
    return key in ("CHARSET", "QUOTED-PRINTABLE")


def declared_charsets(block: bytes) -> list[str]:
    return list(dict.fromkeys(m.decode("ascii") for m in _DECLARED_CHARSET.findall(block)))


def decode_text(raw: bytes, declared: Iterable[str]) -> str:
    """Text from bytes: UTF-8, else a declared charset, else windows-1252, else Latin-1."""
    for charset in ("utf-8", *declared, "cp1252"):
        if not ascii_compatible(charset):
            continue
        try:
            return raw.decode(charset)
        except (LookupError, UnicodeError):
            continue
    return raw.decode("latin-1")


def ascii_compatible(charset: str) -> bool:
    """True for a known text encoding that reads the ASCII of a vCard as ASCII."""
    probe = b"BEGIN:VCARD;X=+49-1\r\n"
    try:
        return probe.decode(charset) == probe.decode("ascii")
    except (LookupError, UnicodeError, ValueError):
        return False
