"""The payloads of the DAV collections, built and read with vobject: a CRM card as vCard 3.0
(the default: Apple needs it) or 4.0, an activity as an iCalendar VTODO, and what the CRM keeps
of a card a client sends (name, addresses, telephones, organisation, title).

UIDs are stable: ``mailcrm-<kind>-<id>``. A company is an organisation card (``KIND:org`` in
4.0, ``X-ABShowAs:COMPANY`` in 3.0); a lead's card says it is one in CATEGORIES.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import vobject
from dateutil.tz import tzutc  # type: ignore[import-untyped]  # no stubs; vobject writes Z only for tzutc

from crm.face.dav import Card, Task

PRODID = "-//mailcrm//DAV//EN"
MAX_LIST = 50  # addresses or telephones kept from one card


class InvalidPayload(ValueError):
    """A vCard or iCalendar object the CRM cannot take, with the reason."""


def uid(kind: str, record_id: int) -> str:
    return f"mailcrm-{kind}-{record_id}"


def etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def vcard(card: Card, version: str = "3.0") -> bytes:
    """The card as vCard ``version`` (3.0 or 4.0), CRLF lines."""
    v = vobject.vCard()
    v.add("version").value = version
    v.add("uid").value = uid(card.kind, card.id)
    v.add("fn").value = card.name or "(no name)"
    if card.kind == "company":
        v.add("n").value = vobject.vcard.Name(family=card.name or "")
        v.add("org").value = [card.name or ""]
        if version == "4.0":
            v.add("kind").value = "org"
        else:
            v.add("x-abshowas").value = "COMPANY"
    else:
        family, _, given = (card.name or "").rpartition(" ")
        v.add("n").value = vobject.vcard.Name(family=family or given, given=given if family else "")
        if card.org:
            v.add("org").value = [card.org]
        if card.title:
            v.add("title").value = card.title
    for address in card.emails:
        v.add("email").value = address
    for phone in card.phones:
        v.add("tel").value = phone
    if card.kind == "lead":
        v.add("categories").value = ["Lead", f"Lead: {card.status or 'new'}"]
    return str(v.serialize()).encode("utf-8")


def vtodo(task: Task) -> bytes:
    """The activity as a VCALENDAR with one VTODO."""
    cal = vobject.iCalendar()
    cal.add("prodid").value = PRODID
    todo = cal.add("vtodo")
    todo.add("uid").value = uid("activity", task.id)
    when = _date(task.date)
    todo.add("dtstamp").value = when
    todo.add("created").value = when
    todo.add("summary").value = task.subject or "(no subject)"
    who = ", ".join(task.counterparts) or task.sender or ""
    way = "to" if task.direction == "outgoing" else "from"
    todo.add("description").value = f"{task.direction} e-mail {way} {who}".strip()
    todo.add("status").value = "COMPLETED" if task.completed else "NEEDS-ACTION"
    if task.thread and task.thread != task.message_id:
        todo.add("related-to").value = task.thread
    return str(cal.serialize()).encode("utf-8")


def _date(text: str | None) -> dt.datetime:
    if text:
        try:
            return dt.datetime.fromisoformat(text).astimezone(dt.UTC).replace(tzinfo=tzutc())
        except ValueError:
            pass
    return dt.datetime(1970, 1, 1, tzinfo=tzutc())


@dataclass(frozen=True)
class CardFields:
    """What the CRM keeps of a client's card."""

    name: str
    emails: tuple[str, ...]
    phones: tuple[str, ...]
    org: str | None
    title: str | None


def _one(text: bytes, kind: str) -> vobject.base.Component:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayload(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        found = list(vobject.readComponents(decoded, validate=False))
    except Exception as exc:  # vobject raises several kinds for broken text
        raise InvalidPayload(f"not a valid {kind}: {str(exc)[:200]}") from exc
    if len(found) != 1:
        raise InvalidPayload(f"expected one {kind} object, found {len(found)}")
    return found[0]


def read_card(text: bytes) -> CardFields:
    """The fields of one vCard (3.0 or 4.0), or :class:`InvalidPayload`."""
    card = _one(text, "vCard")
    if card.name != "VCARD":
        raise InvalidPayload(f"expected a VCARD, found {card.name[:40]}")
    contents = card.contents
    name = str(contents["fn"][0].value).strip() if "fn" in contents else ""
    if not name and "n" in contents:
        n = contents["n"][0].value
        name = f"{getattr(n, 'given', '')} {getattr(n, 'family', '')}".strip()
    if not name:
        raise InvalidPayload("the card has no name (FN)")
    emails = tuple(str(e.value).strip() for e in contents.get("email", [])[:MAX_LIST])
    phones = tuple(str(t.value).strip()[:64] for t in contents.get("tel", [])[:MAX_LIST])
    org = None
    if "org" in contents:
        value = contents["org"][0].value
        org = (value[0] if isinstance(value, list) and value else str(value)).strip() or None
    title = str(contents["title"][0].value).strip()[:200] if "title" in contents else None
    return CardFields(
        name[:200],
        tuple(e for e in emails if e),
        tuple(p for p in phones if p),
        org[:200] if org else None,
        title or None,
    )


def read_todo_status(text: bytes) -> bool:
    """Whether the VTODO a client sent is completed, or :class:`InvalidPayload`."""
    cal = _one(text, "iCalendar")
    todos = cal.contents.get("vtodo", []) if cal.name == "VCALENDAR" else []
    if len(todos) != 1:
        raise InvalidPayload("expected a VCALENDAR with one VTODO")
    status = todos[0].contents.get("status")
    done = bool(status and str(status[0].value).upper() == "COMPLETED")
    return done or "completed" in todos[0].contents
