"""Client writes, from xandikos' PUT and DELETE into :mod:`crm.face.davwrite`: every payload is
read and checked before anything is written; refusals are 400 (broken data), 415 (not a vCard
or iCalendar), 403 (not the user's record) or 404."""

from __future__ import annotations

from typing import Any

from xandikos import webdav

from crm.errors import InvalidInput, NotFound, PermissionDenied
from crm.face import davwrite

from . import cards
from .context import CURRENT, MAX_CARD

CARD_TYPES = ("text/vcard", "text/x-vcard", "text/directory")
TASK_TYPES = ("text/calendar",)


def _checked(body: bytes, content_type: str, allowed: tuple[str, ...]) -> None:
    base = (content_type or "").split(";", 1)[0].strip().lower()
    if base and base not in allowed and base != "application/octet-stream":
        raise webdav.UnsupportedMediaType(base[:100])
    if len(body) > MAX_CARD:
        raise webdav.BadRequestError(f"the object is larger than {MAX_CARD} bytes")


def _run(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except PermissionDenied as exc:
        raise webdav.ForbiddenError(str(exc)) from exc
    except (InvalidInput, NotFound) as exc:
        raise webdav.BadRequestError(str(exc)) from exc


def _fields(body: bytes) -> cards.CardFields:
    try:
        return cards.read_card(body)
    except cards.InvalidPayload as exc:
        raise webdav.BadRequestError(str(exc)) from exc


async def create(book: Any, name: str | None, body: bytes, content_type: str) -> tuple[str, str]:
    """PUT of a new card: a new contact (the name the client chose is replaced by ours). A PUT
    to one of the CRM's own names the user does not see is a write outside their cards: 403."""
    if name is not None and book.parse(name) is not None:
        raise webdav.ForbiddenError(f"{name[:100]} is not yours to write")
    _checked(body, content_type, CARD_TYPES)
    fields = _fields(body)
    req = CURRENT.get()
    cid = _run(
        davwrite.create_contact,
        req.db,
        req.viewer,
        fields.name,
        fields.emails,
        fields.phones,
        fields.org,
        fields.title,
    )
    return _answer(book, [("contact", cid)], body, f"contact-{cid}.vcf")


def _answer(book: Any, wanted: list[tuple[str, int]], sent: bytes, name: str) -> tuple[str, str]:
    found = book.items_of(wanted)
    stored = found[0][1].body if found else b""
    CURRENT.get().put_identical.append(stored == sent)
    return name, cards.etag(stored)


async def replace(item: Any, book: Any, body: bytes) -> str:
    """PUT over an existing card or task."""
    req = CURRENT.get()
    if item.content_type == "text/calendar":
        _checked(body, "text/calendar", TASK_TYPES)
        try:
            done = cards.read_todo_status(body)
        except cards.InvalidPayload as exc:
            raise webdav.BadRequestError(str(exc)) from exc
        aid = int(item.name.split("-", 1)[1].split(".", 1)[0])
        _run(davwrite.set_task, req.db, req.viewer, aid, done)
        return _answer(book, [("activity", aid)], body, item.name)[1]
    _checked(body, "text/vcard", CARD_TYPES)
    fields = _fields(body)
    kind, eid = book.parse(item.name) or ("", 0)
    _run(
        davwrite.update_card,
        req.db,
        req.viewer,
        kind,
        eid,
        fields.name,
        fields.emails,
        fields.phones,
        fields.org,
        fields.title,
    )
    return _answer(book, [(kind, eid)], body, item.name)[1]


def delete(book: Any, name: str) -> None:
    """DELETE of a card."""
    parsed = book.parse(name)
    if parsed is None:
        raise webdav.ForbiddenError("no such card")
    req = CURRENT.get()
    _run(davwrite.delete_card, req.db, req.viewer, parsed[0], parsed[1])
