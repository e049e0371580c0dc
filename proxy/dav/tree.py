"""The top of the DAV tree: ``/dav/`` (root), the signed-in user's principal (which is both
home sets) and the backend mapping a path to a resource; the collections are
:mod:`proxy.dav.resources`."""

from __future__ import annotations

from typing import Any

from xandikos import webdav

from .context import CURRENT
from .resources import AddressBook, TaskList, Undated, home


class Home(Undated, webdav.Principal):
    """The signed-in user's principal, which is also both home sets."""

    resource_types = [  # noqa: RUF012 (xandikos declares it an instance attribute)
        webdav.COLLECTION_RESOURCE_TYPE,
        webdav.PRINCIPAL_RESOURCE_TYPE,
    ]

    def __init__(self, viewer: Any) -> None:
        self.path = "/dav" + home(viewer)
        self.email = viewer.email

    def get_displayname(self) -> str:
        return str(self.email)

    def get_principal_url(self) -> str:
        return self.path

    def get_addressbook_home_set(self) -> list[str]:
        return [self.path]

    def get_calendar_home_set(self) -> list[str]:
        return [self.path]

    def get_calendar_user_address_set(self) -> list[str]:
        return [f"mailto:{self.email}"]

    def get_principal_address(self) -> str:
        raise KeyError

    def members(self) -> list[tuple[str, webdav.Resource]]:
        return [("crm/", AddressBook()), ("tasks/", TaskList())]

    def get_member(self, name: str) -> webdav.Resource:
        return dict(self.members())[name.rstrip("/") + "/"]

    def get_owner(self) -> str:
        return self.path

    def get_etag(self) -> Any:
        raise KeyError


class Root(Undated, webdav.Collection):
    """``/dav/``: points at the user's principal."""

    resource_types = [webdav.COLLECTION_RESOURCE_TYPE]  # noqa: RUF012 (an instance attribute in xandikos)

    def members(self) -> list[tuple[str, webdav.Resource]]:
        return []

    def get_displayname(self) -> str:
        return "mailcrm"

    def get_owner(self) -> str:
        raise KeyError

    def get_ctag(self) -> str:
        raise KeyError

    def get_sync_token(self) -> str:
        raise KeyError


class Backend(webdav.Backend):
    """Path -> resource for the request's user."""

    def get_resource(self, relpath: str) -> webdav.Resource | None:
        viewer = CURRENT.get().viewer
        parts = [p for p in relpath.split("/") if p]
        if not parts:
            return Root()
        mine = home(viewer).strip("/").split("/")
        if parts[:2] != mine:
            return None
        resource: webdav.Resource = Home(viewer)
        for part in parts[2:4]:
            try:
                resource = resource.get_member(part)  # type: ignore[attr-defined]
            except (KeyError, AttributeError):
                return None
        return resource if len(parts) <= 4 else None

    def get_principal_collection_set(self) -> list[str]:
        return ["/dav/users/"]
