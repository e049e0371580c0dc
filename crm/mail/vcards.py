"""vCards in mail (SPEC C7): find the vCard parts of a message and turn their cards into contacts.

``parse_vcards`` turns the bytes of a vCard part (vCard 2.1, 3.0 or 4.0, any number of cards)
into :class:`VCardContact` values, without duplicates. Finding those parts in a message is
``crm.vcardmime`` (``may_contain_vcard``, ``vcard_parts``, re-exported here); reading the lines
of one card is ``crm.vcardlines``.

vobject does the vCard work: unfolding (including the quoted-printable soft line breaks of
vCard 2.1), splitting a line into group, name, parameters and value, decoding
QUOTED-PRINTABLE values with their CHARSET, and unescaping text, N and ORG values. Around it,
``crm.vcardlines`` guards what of a card reaches vobject (see its docstring), and this module
cuts the bytes into ``BEGIN:VCARD`` ... ``END:VCARD`` blocks and decodes each block on its own
(UTF-8, else the CHARSET the card declares, else windows-1252), because
``vobject.readComponents`` stops at the first broken card and loses the ones after it.

Nothing here raises on bad input: a card that cannot be used is skipped with a short reason in
``VCardResult.errors`` and logged at INFO; the cards around it are kept.
"""

from __future__ import annotations

import codecs
import email.utils
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from vobject.icalendar import stringToTextValues
from vobject.vcard import NAME_ORDER, Name, splitFields

from .vcardlines import BrokenCard, card_properties, declared_charsets, decode_text, wanted_lines
from .vcardmime import VCARD_TYPES, may_contain_vcard, vcard_parts

__all__ = [
    "MAX_CARDS",
    "VCARD_TYPES",
    "VCardContact",
    "VCardResult",
    "may_contain_vcard",
    "parse_vcards",
    "vcard_parts",
]

log = logging.getLogger("crm.vcards")  # its name before the move (issue 17)

MAX_CARDS = 10_000
"""Cards read from one part at most; the rest is skipped with one error."""

# Block boundaries, on raw bytes (a UTF-8 BOM may precede each BEGIN in concatenated files).
_BEGIN = re.compile(
    rb"(?:\xef\xbb\xbf)?(?P<indent>[ \t]*)BEGIN[ \t]*:[ \t]*VCARD[ \t]*", re.IGNORECASE
)
_END = re.compile(rb"[ \t]*END[ \t]*:[ \t]*VCARD[ \t]*", re.IGNORECASE)
# vCard 2.1 AGENT with an empty value: the next BEGIN:VCARD is a card nested in this one.
_AGENT = re.compile(rb"(?:[A-Za-z0-9_-]+\.)?AGENT(?:;[^:]*)?:[ \t]*", re.IGNORECASE)
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
    unread: int = 0  # cards not read: the contacts had reached ``max_contacts``


def parse_vcards(data: bytes | str, max_contacts: int | None = None) -> VCardResult:
    """Contacts from vCard data (2.1, 3.0 or 4.0; one or many cards); never raises.

    Once ``max_contacts`` contacts are found, the cards after are counted (``unread``), not read.

    A card with neither a name nor an e-mail address, or that is broken (e.g. never closed by
    END:VCARD), is skipped with a reason; the other cards are still read. Cards that describe
    the same person (same name and a shared e-mail, or same name and one has no e-mail, or a
    shared e-mail and a name that was only made up from that address) become one contact.
    """
    try:
        return _parse(data, max_contacts)
    except Exception as exc:  # last line of defence: a vCard never fails a capture
        reason = f"unreadable vCard data ({type(exc).__name__})"
        log.info("vCard skipped: %s", reason, exc_info=True)
        return VCardResult((), (reason,))


def _parse(data: bytes | str, max_contacts: int | None) -> VCardResult:
    merger = _Merger()
    errors: list[str] = []
    number = unread = 0
    blocks = _blocks(_as_bytes(data))
    for number, block in enumerate(blocks, start=1):
        if max_contacts is not None and len(merger.contacts) >= max_contacts:
            unread = 1 + sum(1 for _ in blocks)
            errors.append(f"{unread} cards from card {number} on skipped: {max_contacts} contacts")
            log.info("vCard skipped: %s", errors[-1])
            break
        if number > MAX_CARDS:
            errors.append(f"cards after card {MAX_CARDS} skipped: too many in one part")
            log.info("vCard skipped: %s", errors[-1])
            break
        reason = "no END:VCARD" if block is None else None
        if block is not None:
            try:
                card = _card(block)
            except BrokenCard as exc:
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
    return VCardResult(tuple(merger.contacts), tuple(errors), unread)


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
    props = card_properties(wanted_lines(decode_text(block, declared_charsets(block))))
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


# Values (vobject's unescaping; commas are kept, see crm/mail/vcardlines.py's docstring)


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
