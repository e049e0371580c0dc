"""What one DAV request carries into the worker thread that answers it: the database, the
signed-in viewer, the vCard version asked for, and whether a PUT's card was stored as sent."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from crm.face import Database
from crm.face.visibility import Viewer

MAX_CARD = 1024 * 1024  # bytes of one card or task a client may send


@dataclass
class Request:
    """What one request's resources need."""

    db: Database
    viewer: Viewer
    version: str = "3.0"
    put_identical: list[bool] = field(default_factory=list)


CURRENT: contextvars.ContextVar[Request] = contextvars.ContextVar("dav_request")
