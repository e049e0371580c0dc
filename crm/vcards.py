"""vCards in mail (SPEC C7): find the vCard parts of a message and turn their cards into contacts.

``may_contain_vcard`` looks at the top-level headers only, so most mail never has its body
parsed; ``vcard_parts`` walks a fully parsed message (nested multiparts, forwarded
``message/rfc822``) and returns the bytes of every vCard part; ``parse_vcards`` turns such bytes
(vCard 2.1, 3.0 or 4.0, any number of cards) into :class:`VCardContact` values, without
duplicates.

vobject does the vCard work: unfolding (including the quoted-printable soft line breaks of
vCard 2.1), splitting a line into group, name, parameters and value, decoding
QUOTED-PRINTABLE values with their CHARSET, and unescaping text, N and ORG values. Around it,
this module only does what vobject cannot be trusted with on mail from strangers:

* the bytes are cut into ``BEGIN:VCARD`` ... ``END:VCARD`` blocks and each block is decoded on
  its own (UTF-8, else the CHARSET the card declares, else windows-1252), because
  ``vobject.readComponents`` stops at the first broken card and loses the ones after it;
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
  lower case (vobject then leaves it encoded), is decoded here with the same fallbacks as a card.

Nothing here raises on bad input: a card that cannot be used is skipped with a short reason in
``VCardResult.errors`` and logged at INFO; the cards around it are kept.
"""

from __future__ import annotations

import binascii
import codecs
import email.message
import email.policy
import email.utils
import io
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from typing import Any

from vobject.base import (
    ContentLine,
    VObjectError,
    getLogicalLines,
    parseLine,
    textLineToContentLine,
)
from vobject.icalendar import stringToTextValues
from vobject.vcard import NAME_ORDER, Name, splitFields

log = logging.getLogger(__name__)

VCARD_TYPES = frozenset(
    {"text/vcard", "text/x-vcard", "text/directory", "application/vcard", "application/x-vcard"}
)
"""MIME types that carry vCards; any other part counts when its file name ends in ``.vcf``."""

MAX_CARDS = 10_000
"""Cards read from one part at most; the rest is skipped with one error."""

_MAX_VALUE = 4_000  # characters of a name, e-mail, phone, ORG or TITLE value looked at
_MAX_FOLDED_CHARS = 16_384  # of one property given to vobject, continuation lines included
_MAX_FOLDED_LINES = 100  # physical lines of one property given to vobject
_MAX_MIME_DEPTH = 64  # nesting of multiparts and forwarded messages walked
_WANTED = frozenset({"BEGIN", "END", "FN", "N", "EMAIL", "TEL", "ORG", "TITLE"})

# Block boundaries, on raw bytes (a UTF-8 BOM may precede each BEGIN in concatenated files).
_BEGIN = re.compile(
    rb"(?:\xef\xbb\xbf)?(?P<indent>[ \t]*)BEGIN[ \t]*:[ \t]*VCARD[ \t]*", re.IGNORECASE
)
_END = re.compile(rb"[ \t]*END[ \t]*:[ \t]*VCARD[ \t]*", re.IGNORECASE)
# vCard 2.1 AGENT with an empty value: the next BEGIN:VCARD is a card nested in this one.
_AGENT = re.compile(rb"(?:[A-Za-z0-9_-]+\.)?AGENT(?:;[^:]*)?:[ \t]*", re.IGNORECASE)
_DECLARED_CHARSET = re.compile(rb"CHARSET=\"?([A-Za-z0-9_.:-]{1,40})", re.IGNORECASE)

# The part of a content line before the value, in the grammar of vobject's ``line_re`` but
# without its ambiguity (possessive quantifiers): a line this does not match is dropped before
# vobject's backtracking regex sees it.
_PARAM_VALUE = r'(?:"[^"]*+"|[^";:,]*+)'
_LINE_HEAD = re.compile(
    r"(?:[A-Za-z0-9_-]++\.)?+(?P<name>[A-Za-z0-9_-]++);?"
    rf"(?:;[A-Za-z0-9_-]++(?:[=,]{_PARAM_VALUE})*+)*+:"
)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_PHONE_NOISE = re.compile(r"[\s().\-/]")
_UTF16_MARKS = (
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (b"B\x00E\x00G\x00I\x00N\x00", "utf-16-le"),
    (b"\x00B\x00E\x00G\x00I\x00N", "utf-16-be"),
)


@dataclass(frozen=True)
class VCardContact:
    """The contact data of one vCard."""

    name: str  # FN, else built from N, else the first e-mail's local part; never empty
    emails: tuple[str, ...]  # as in the card, de-duplicated case-insensitively, in card order
    phones: tuple[str, ...]  # TEL values as written (a ``tel:`` URI without its scheme)
    organization: str | None  # first component of ORG
    title: str | None


@dataclass(frozen=True)
class VCardResult:
    """The contacts found in vCard data, and why the cards that gave none were skipped."""

    contacts: tuple[VCardContact, ...]
    errors: tuple[str, ...]  # e.g. "card 2: no name and no e-mail"


class _BrokenCard(Exception):
    """A card whose structure is unusable; the message is the reason shown to the user."""


# ----------------------------------------------------------------------------- parse_vcards


def parse_vcards(data: bytes | str) -> VCardResult:
    """Contacts from vCard data (2.1, 3.0 or 4.0; one or many cards); never raises.

    A card with neither a name nor an e-mail address, or that is broken (e.g. never closed by
    END:VCARD), is skipped with a reason; the other cards are still read. Cards that describe
    the same person (same name and a shared e-mail, or same name and one has no e-mail, or a
    shared e-mail and a name that was only made up from that address) become one contact.
    """
    try:
        return _parse(data)
    except Exception as exc:  # last line of defence: a vCard never fails a capture
        reason = f"unreadable vCard data ({type(exc).__name__})"
        log.info("vCard skipped: %s", reason, exc_info=True)
        return VCardResult((), (reason,))


def _parse(data: bytes | str) -> VCardResult:
    merger = _Merger()
    errors: list[str] = []
    number = 0
    for number, block in enumerate(_blocks(_as_bytes(data)), start=1):
        if number > MAX_CARDS:
            errors.append(f"cards after card {MAX_CARDS} skipped: too many in one part")
            log.info("vCard skipped: %s", errors[-1])
            break
        reason = "no END:VCARD" if block is None else None
        if block is not None:
            try:
                card = _card(block)
            except _BrokenCard as exc:
                reason = str(exc)
            except Exception as exc:  # vobject may raise anything on odd input
                reason = f"unreadable ({type(exc).__name__})"
            else:
                if card is None:
                    reason = "no name and no e-mail"
                else:
                    merger.add(*card)
        if reason is not None:
            errors.append(f"card {number}: {reason}")
            log.info("vCard skipped: %s", errors[-1])
    if number == 0:
        errors.append("no BEGIN:VCARD found")
        log.info("vCard skipped: %s", errors[-1])
    return VCardResult(tuple(merger.contacts), tuple(errors))


def _as_bytes(data: bytes | str) -> bytes:
    """The data as bytes in an ASCII-compatible encoding (UTF-16 files are re-encoded)."""
    if isinstance(data, str):
        return data.encode("utf-8", "replace")
    raw = bytes(data)
    head = raw[:4096]
    for mark, codec in _UTF16_MARKS:
        if head.startswith(mark) or (len(mark) > 2 and mark in head):
            return raw.decode(codec, "replace").encode("utf-8")
    return raw


def _blocks(raw: bytes) -> Iterator[bytes | None]:
    """Each ``BEGIN:VCARD`` ... ``END:VCARD`` block, ``None`` for one never closed.

    Text outside the blocks is ignored. A BEGIN:VCARD inside an open block starts a new card
    (the open one is reported as not closed), except right after an empty AGENT property.
    """
    lines: list[bytes] | None = None
    depth = 0
    indent = b""  # a card pasted with an indent (quoted text) has it on every line
    for line in raw.splitlines():
        if indent and line.startswith(indent):
            line = line[len(indent) :]
        begin = _BEGIN.fullmatch(line)
        if begin is not None:
            if lines is not None and lines and _AGENT.fullmatch(lines[-1]):
                depth += 1
                lines.append(b"BEGIN:VCARD")
                continue
            if lines is not None:
                yield None
            lines, depth = [b"BEGIN:VCARD"], 1
            indent = begin["indent"]
        elif lines is not None:
            if _END.fullmatch(line):
                lines.append(b"END:VCARD")
                depth -= 1
                if depth == 0:
                    yield b"\n".join(lines)
                    lines = None
            else:
                lines.append(line)
    if lines is not None:
        yield None


def _card(block: bytes) -> tuple[VCardContact, bool] | None:
    """The contact of one card and whether its name was made up from an e-mail address."""
    props = _properties(_wanted_lines(_decode(block, _declared_charsets(block))))
    emails = _unique(filter(None, map(_email, props.get("EMAIL", ()))), str.casefold)
    phones = _unique(filter(None, map(_phone, props.get("TEL", ()))), _phone_key)
    name = _first(_clean(_text(value)) for value in props.get("FN", ())) or _first(
        map(_structured_name, props.get("N", ()))
    )
    from_address = not name and bool(emails)
    if from_address:
        name = _clean(emails[0].rsplit("@", 1)[0])
    if not name:
        return None
    organization = _first(map(_organization, props.get("ORG", ()))) or None
    title = _first(_clean(_text(value)) for value in props.get("TITLE", ())) or None
    return VCardContact(name, emails, phones, organization, title), from_address


def _wanted_lines(text: str) -> str:
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


def _properties(text: str) -> dict[str, list[str]]:
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
                raise _BrokenCard(f"END:{kind[:40]} without BEGIN:{kind[:40]}")
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
    return ContentLine(name, kept, _decode(raw, charsets), group, encoded=True, lineNumber=number)


def _is_qp_param(param: list[Any]) -> bool:
    key = str(param[0]).upper()
    if key == "ENCODING":
        return any(str(v).upper() == "QUOTED-PRINTABLE" for v in param[1:])
    return key in ("CHARSET", "QUOTED-PRINTABLE")


def _declared_charsets(block: bytes) -> list[str]:
    return list(dict.fromkeys(m.decode("ascii") for m in _DECLARED_CHARSET.findall(block)))


def _decode(raw: bytes, declared: Iterable[str]) -> str:
    """Text from bytes: UTF-8, else a declared charset, else windows-1252, else Latin-1."""
    for charset in ("utf-8", *declared, "cp1252"):
        if not _ascii_compatible(charset):
            continue
        try:
            return raw.decode(charset)
        except (LookupError, UnicodeError):
            continue
    return raw.decode("latin-1")


def _ascii_compatible(charset: str) -> bool:
    """True for a known text encoding that reads the ASCII of a vCard as ASCII."""
    probe = b"BEGIN:VCARD;X=+49-1\r\n"
    try:
        return probe.decode(charset) == probe.decode("ascii")
    except (LookupError, UnicodeError, ValueError):
        return False


# Values (vobject's unescaping; commas are kept, see the module docstring)


def _text(value: str) -> str:
    """A text value unescaped (``\\,`` ``\\;`` ``\\n`` ``\\\\``), unescaped commas kept."""
    return ",".join(str(part) for part in stringToTextValues(value))


def _clean(text: str) -> str:
    return " ".join(text.split())


def _structured_name(value: str) -> str:
    """ "Dr. Kenji Nakamura" from ``N:Nakamura;Kenji;;Dr.;`` (vobject's Name order)."""
    fields = splitFields(value)
    return _clean(str(Name(**dict(zip(NAME_ORDER, fields, strict=False)))))


def _organization(value: str) -> str:
    first = stringToTextValues(value, listSeparator=";", charList=";")[0]
    return _clean(_text(str(first)))


def _email(value: str) -> str | None:
    text = _text(value).strip()
    if text[:7].lower() == "mailto:":
        text = text[7:].strip()
    if _EMAIL.fullmatch(text):
        return text
    address = email.utils.parseaddr(text)[1]  # "Jane Doe <jane@example.com>"
    return address if _EMAIL.fullmatch(address) else None


def _phone(value: str) -> str | None:
    text = _text(value).strip()
    if text[:4].lower() == "tel:":  # vCard 4.0 TEL;VALUE=uri:tel:+1-555-555-0100;ext=102
        number, *params = text[4:].split(";")
        ext = next((p[4:] for p in params if p[:4].lower() == "ext="), "")
        text = number.strip() + (f" ext. {ext.strip()}" if ext.strip() else "")
    return text or None


def _phone_key(phone: str) -> str:
    return _PHONE_NOISE.sub("", phone).casefold()


def _unique(values: Iterable[str], key: Callable[[str], str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for value in values:
        seen.setdefault(key(value), value)
    return tuple(seen.values())


def _first(values: Iterable[str]) -> str:
    return next((value for value in values if value), "")


class _Merger:
    """Collects contacts, folding a card into an earlier one when both describe one person."""

    def __init__(self) -> None:
        self.contacts: list[VCardContact] = []
        self._made_up: list[bool] = []  # the name was made up from an e-mail address
        self._by_email: dict[str, int] = {}
        self._by_name: dict[str, list[int]] = {}

    def add(self, contact: VCardContact, made_up_name: bool) -> None:
        index = self._match(contact, made_up_name)
        if index is None:
            index = len(self.contacts)
            self.contacts.append(contact)
            self._made_up.append(made_up_name)
        else:
            old = self.contacts[index]
            keep_old_name = made_up_name or not self._made_up[index]
            self.contacts[index] = VCardContact(
                name=old.name if keep_old_name else contact.name,
                emails=_unique(old.emails + contact.emails, str.casefold),
                phones=_unique(old.phones + contact.phones, _phone_key),
                organization=old.organization or contact.organization,
                title=old.title or contact.title,
            )
            self._made_up[index] = self._made_up[index] and made_up_name
            log.debug("vCard of %s merged into an earlier card", contact.name)
        merged = self.contacts[index]
        for address in merged.emails:
            self._by_email.setdefault(address.casefold(), index)
        names = self._by_name.setdefault(merged.name.casefold(), [])
        if index not in names:
            names.append(index)

    def _match(self, contact: VCardContact, made_up_name: bool) -> int | None:
        name = contact.name.casefold()
        for address in contact.emails:
            index = self._by_email.get(address.casefold())
            if index is not None and (
                made_up_name or self._made_up[index] or self.contacts[index].name.casefold() == name
            ):
                return index
        for index in self._by_name.get(name, ()):
            if not contact.emails or not self.contacts[index].emails:
                return index
        return None


# ----------------------------------------------------------------------------- MIME


def may_contain_vcard(message: email.message.EmailMessage) -> bool:
    """Whether a message's top-level headers say its body may hold a vCard.

    True for multipart and message types, the vCard types and a ``.vcf`` file name (Content-Type
    ``name=`` or Content-Disposition ``filename=``); False for a plain text or HTML body. Works
    on a headers-only parse, so most mail never has its body parsed. Broken headers give True.
    """
    try:
        content_type = message.get_content_type()
        if content_type.startswith(("multipart/", "message/")) or content_type in VCARD_TYPES:
            return True
        return _vcf_name(message)
    except Exception:
        return True


def vcard_parts(message: email.message.EmailMessage) -> list[bytes]:
    """The bytes of every vCard part of a fully parsed message, in message order.

    Looks into nested multiparts and forwarded messages (``message/rfc822``, also when the
    forwarding client base64-encoded it). Transfer encodings are undone; a part declaring a
    non-UTF-8 charset is re-encoded to UTF-8. Parts that cannot be read are skipped.
    """
    found: list[bytes] = []
    stack: list[tuple[email.message.Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        try:
            children = _children(part)
            if children is not None:
                if depth < _MAX_MIME_DEPTH:
                    stack.extend((child, depth + 1) for child in reversed(children))
            elif _is_vcard_part(part):
                payload = _vcard_payload(part)
                if payload is not None:
                    found.append(payload)
        except Exception as exc:
            log.info("MIME part skipped while looking for vCards: %s", type(exc).__name__)
    return found


def _children(part: email.message.Message) -> list[email.message.Message] | None:
    """The sub-parts of a multipart or forwarded message; None for a leaf part."""
    if part.get_content_maintype() == "message" and part.get_content_subtype() in (
        "rfc822",
        "global",
    ):
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding in ("base64", "quoted-printable") or not part.is_multipart():
            inner = _reparse_message(part, encoding)
            return [inner] if inner is not None else []
    if not part.is_multipart():
        return None
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    return [p for p in payload if isinstance(p, email.message.Message)]


def _reparse_message(part: email.message.Message, encoding: str) -> email.message.Message | None:
    """The forwarded message of a ``message/*`` part whose body the parser did not read."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the parser read the encoded text as a message: undo that
        if len(payload) != 1 or not isinstance(payload[0], email.message.Message):
            return None
        inner = payload[0]
        text = inner.get_payload() if not inner.keys() else inner.as_string()
        if not isinstance(text, str):
            return None
        carrier = email.message.Message()
        carrier["Content-Transfer-Encoding"] = encoding
        carrier.set_payload(text)
        raw = carrier.get_payload(decode=True)
    else:
        raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes) or not raw.strip():
        return None
    return BytesParser(policy=email.policy.default).parsebytes(raw)


def _is_vcard_part(part: email.message.Message) -> bool:
    return part.get_content_type() in VCARD_TYPES or _vcf_name(part)


def _vcf_name(part: email.message.Message) -> bool:
    filename = part.get_filename()
    return isinstance(filename, str) and filename.strip().lower().endswith(".vcf")


def _vcard_payload(part: email.message.Message) -> bytes | None:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes) or not data.strip():
        return None
    charset = part.get_content_charset()
    if not charset or charset in ("utf-8", "utf8", "us-ascii") or not _ascii_compatible(charset):
        return data
    try:
        data.decode("utf-8")
        return data  # declared wrongly, or only ASCII: parse_vcards reads UTF-8 first anyway
    except UnicodeDecodeError:
        pass
    try:
        return data.decode(charset).encode("utf-8")
    except (LookupError, UnicodeError):
        return data
