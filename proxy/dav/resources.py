"""The DAV tree of one signed-in user, as xandikos resources over :mod:`crm.face.dav`.

``/dav/`` (root) -> ``/dav/users/<id>/`` (the principal, both home sets) -> ``crm/`` (address
book "CRM": ``lead-1.vcf``, ``contact-2.vcf``, ``company-3.vcf``) and ``tasks/`` (task list
"CRM activities": ``activity-4.ics``). Only the signed-in user's own principal exists; a name
that does not match these patterns is not found (no path reaches anything else).

Everything runs in a worker thread per request (:mod:`proxy.dav.app`), so the database calls
here block no event loop. The request's user, database and vCard version come in a ContextVar.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from typing import Any

from xandikos import caldav, carddav, webdav
from xandikos.icalendar import CalendarFilter, ICalendarFile
from xandikos.sync import InvalidToken

from crm.face import dav as face

from . import cards, writes
from .context import CURRENT, MAX_CARD

SYNC_PAGE = 1000  # changes answered by one sync-collection before it is truncated
NAME = re.compile(r"^(lead|contact|company)-([1-9][0-9]{0,9})\.vcf$")
TASK = re.compile(r"^activity-([1-9][0-9]{0,9})\.ics$")


def home(viewer: Any) -> str:
    return f"/users/{viewer.user_id}/"


class Undated:
    """What no CRM resource has: a creation date, a modification date, a content language
    (xandikos answers a property whose getter raises KeyError as not found). First among the
    bases, so it stands before xandikos' own getters."""

    def get_creationdate(self) -> dt.datetime:
        raise KeyError

    def get_last_modified(self) -> dt.datetime:
        raise KeyError

    def get_content_language(self) -> str:
        raise KeyError


class Item(Undated, webdav.Resource):
    """One card or task, rendered when first asked."""

    def __init__(self, content_type: str, name: str, body: bytes, book: Any = None) -> None:
        self.content_type, self.name, self.body, self.book = content_type, name, body, book

    def get_content_type(self) -> str:
        return self.content_type

    async def get_etag(self) -> str:
        return cards.etag(self.body)

    async def get_body(self) -> Iterable[bytes]:
        return [self.body]

    async def get_content_length(self) -> int:
        return len(self.body)

    def get_displayname(self) -> str:
        raise KeyError

    def get_owner(self) -> str:
        raise KeyError

    async def set_body(
        self,
        body: Iterable[bytes],
        replace_etag: str | None = None,
        remote_user: str | None = None,
        requester: str | None = None,
    ) -> str:
        return await writes.replace(self, self.book, b"".join(body))

    async def get_file(self) -> ICalendarFile:
        return ICalendarFile([self.body], self.content_type)


class Tracked(Undated, webdav.Collection):
    """A collection whose tag and sync token are the newest change of its kinds."""

    kinds: tuple[str, ...] = ()
    displayname = ""

    def _scope(self) -> str:
        viewer = CURRENT.get().viewer
        return "all" if viewer.sees_all else f"own{viewer.user_id}"

    def get_ctag(self) -> str:  # the newest change only: running transactions move no tag
        return f"urn:mailcrm:sync:{self._scope()}:{face.head(CURRENT.get().db, self.kinds)}"

    def get_sync_token(self) -> str:
        return self._token(face.position(CURRENT.get().db, self.kinds))

    def _token(self, position: face.Position) -> str:
        return f"urn:mailcrm:sync:{self._scope()}:{position}"

    def get_displayname(self) -> str:
        return self.displayname

    def get_owner(self) -> str:
        return "/dav" + home(CURRENT.get().viewer)

    def get_comment(self) -> str:
        raise KeyError

    def get_refreshrate(self) -> str:
        raise KeyError

    def get_max_resource_size(self) -> int:
        return MAX_CARD

    def _since(self, token: str | None) -> face.Position | None:
        if token is None:
            return None
        prefix = f"urn:mailcrm:sync:{self._scope()}:"
        since = face.Position.parse(token[len(prefix) :]) if token.startswith(prefix) else None
        if since is None or since.change > face.head(CURRENT.get().db, self.kinds):
            raise InvalidToken(token[:200])
        return since

    def iter_differences_since(
        self, old_token: str | None, new_token: str
    ) -> Iterator[tuple[str, Any, Any]]:
        since = self._since(old_token)
        if since is None:
            for name, item in self.members():
                yield name, None, item
            return
        req = CURRENT.get()
        try:
            touched, upto, more = face.changed(req.db, self.kinds, since, SYNC_PAGE)
        except face.Pruned:  # older than the change log: the client syncs anew (RFC 6578 3.2)
            raise InvalidToken((old_token or "")[:200]) from None
        found = dict(self.items_of(touched))
        for kind, eid in touched:
            name = self.name_of(kind, eid)
            yield name, None, found.get(name)
        if more:  # the reporter (proxy.dav.app) answers 507 and this partial token
            req.truncated = self._token(upto)

    def name_of(self, kind: str, eid: int) -> str:
        raise NotImplementedError

    def items_of(self, wanted: list[tuple[str, int]]) -> list[tuple[str, Item]]:
        raise NotImplementedError

    def get_member(self, name: str) -> webdav.Resource:
        parsed = self.parse(name)
        if parsed is None:
            raise KeyError(name)
        found = self.items_of([parsed])
        if not found:
            raise KeyError(name)
        return found[0][1]

    def parse(self, name: str) -> tuple[str, int] | None:
        raise NotImplementedError

    def subcollections(self) -> list[tuple[str, webdav.Resource]]:
        return []


class AddressBook(Tracked, carddav.Addressbook):
    """The address book "CRM"."""

    kinds = face.CARD_KINDS
    displayname = "CRM"
    resource_types = [  # noqa: RUF012 (xandikos declares it an instance attribute)
        webdav.COLLECTION_RESOURCE_TYPE,
        carddav.ADDRESSBOOK_RESOURCE_TYPE,
    ]

    def get_addressbook_description(self) -> str:
        return "Leads, contacts and companies of the CRM (mailcrm)"

    def get_addressbook_color(self) -> str:
        raise KeyError

    def get_supported_address_data_types(self) -> list[tuple[str, str]]:
        return [("text/vcard", "3.0"), ("text/vcard", "4.0")]

    def get_max_image_size(self) -> int:
        return 0

    def name_of(self, kind: str, eid: int) -> str:
        return f"{kind}-{eid}.vcf"

    def parse(self, name: str) -> tuple[str, int] | None:
        match = NAME.match(name)
        return (match.group(1), int(match.group(2))) if match else None

    def _items(self, found: list[face.Card]) -> list[tuple[str, Item]]:
        version = CURRENT.get().version
        return [
            (
                self.name_of(c.kind, c.id),
                Item("text/vcard", self.name_of(c.kind, c.id), cards.vcard(c, version), self),
            )
            for c in found
        ]

    def members(self) -> list[tuple[str, webdav.Resource]]:
        req = CURRENT.get()
        return list(self._items(face.cards(req.db, req.viewer)))

    def items_of(self, wanted: list[tuple[str, int]]) -> list[tuple[str, Item]]:
        by_kind: dict[str, list[int]] = {}
        for kind, eid in wanted:
            if kind in face.CARD_KINDS:
                by_kind.setdefault(kind, []).append(eid)
        req = CURRENT.get()
        return self._items(face.cards(req.db, req.viewer, by_kind))

    async def create_member(
        self,
        name: str | None,
        contents: Iterable[bytes],
        content_type: str,
        remote_user: str | None = None,
        requester: str | None = None,
    ) -> tuple[str, str]:
        return await writes.create(self, name, b"".join(contents), content_type)

    def delete_member(
        self,
        name: str,
        etag: str | None = None,
        remote_user: str | None = None,
        requester: str | None = None,
    ) -> None:
        writes.delete(self, name)


class TaskList(Tracked, caldav.Calendar):
    """The task list "CRM activities" (VTODO only)."""

    kinds = face.TASK_KINDS
    displayname = "CRM activities"
    resource_types = [  # noqa: RUF012 (xandikos declares it an instance attribute)
        webdav.COLLECTION_RESOURCE_TYPE,
        caldav.CALENDAR_RESOURCE_TYPE,
    ]

    def get_calendar_description(self) -> str:
        return "The CRM's e-mail activities: complete one to mark its mail read (mailcrm)"

    def get_supported_calendar_components(self) -> list[str]:  # type: ignore[override]
        # xandikos annotates str; its callers iterate over component names
        return ["VTODO"]

    def get_supported_calendar_data_types(self) -> list[tuple[str, str]]:  # type: ignore[override]
        # xandikos annotates str; its callers iterate over (content type, version) pairs
        return [("text/calendar", "2.0")]

    def get_calendar_color(self) -> str:
        raise KeyError

    def get_calendar_order(self) -> str:
        raise KeyError

    def get_calendar_timezone(self) -> str:
        raise KeyError

    def get_calendar_timezone_id(self) -> str:
        raise KeyError

    def name_of(self, kind: str, eid: int) -> str:
        return f"activity-{eid}.ics"

    def parse(self, name: str) -> tuple[str, int] | None:
        match = TASK.match(name)
        return ("activity", int(match.group(1))) if match else None

    def _items(self, found: list[face.Task]) -> list[tuple[str, Item]]:
        return [
            (
                f"activity-{t.id}.ics",
                Item("text/calendar", f"activity-{t.id}.ics", cards.vtodo(t), self),
            )
            for t in found
        ]

    def members(self) -> list[tuple[str, webdav.Resource]]:
        req = CURRENT.get()
        return list(self._items(face.tasks(req.db, req.viewer)))

    def items_of(self, wanted: list[tuple[str, int]]) -> list[tuple[str, Item]]:
        ids = [eid for kind, eid in wanted if kind == "activity"]
        req = CURRENT.get()
        return self._items(face.tasks(req.db, req.viewer, ids)) if ids else []

    def calendar_query(self, create_filter_fn: Any) -> Iterator[tuple[str, webdav.Resource]]:
        wanted = create_filter_fn(CalendarFilter)
        for name, item in self.members():
            assert isinstance(item, Item)
            if wanted.check(name, ICalendarFile([item.body], "text/calendar")):
                yield name, item

    async def create_member(
        self,
        name: str | None,
        contents: Iterable[bytes],
        content_type: str,
        remote_user: str | None = None,
        requester: str | None = None,
    ) -> tuple[str, str]:
        raise webdav.ForbiddenError("new tasks come from mail: the task list takes no new ones")

    def delete_member(
        self,
        name: str,
        etag: str | None = None,
        remote_user: str | None = None,
        requester: str | None = None,
    ) -> None:
        raise webdav.ForbiddenError("an activity is deleted with its mail, not from the task list")
