"""CardDAV and CalDAV for mail clients (issue 16): the address book "CRM" and the task list
"CRM activities", mounted on the web listener (:func:`proxy.dav.app.mount`)."""

from .app import mount as mount

__all__ = ["mount"]
