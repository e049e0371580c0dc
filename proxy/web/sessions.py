"""Web CRM sessions: who is signed in, kept in the database every node shares (SPEC B7).

A session is a random 256-bit token in an HttpOnly cookie; the database keeps its SHA-256, the
user, the CSRF token and its times (:mod:`crm.face.websessions`), so a sign-in made on one node
is good on the others and survives a restart, and signing out on any node ends it everywhere.
Sessions expire ``idle`` after their last use (to the minute: the last use is written at most
once a minute) and ``absolute`` after sign-in; a user keeps at most ``per_user`` of them. The
database work runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from crm.face import Database
from crm.face.visibility import Viewer
from crm.face.websessions import Limits, WebSession, end_session, find_session, start_session

__all__ = ["COOKIE", "Limits", "SessionStore", "WebSession"]
COOKIE = "mailcrm_session"
T = TypeVar("T")


class SessionStore:
    """Token -> session, in the database; every call runs in a worker thread."""

    def __init__(self, db: Database, limits: Limits | None = None) -> None:
        self.db, self.limits = db, limits or Limits()

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        def job() -> T:
            with self.db.session() as session:
                return work(session, *args)

        return await asyncio.to_thread(job)

    async def start(self, viewer: Viewer) -> WebSession:
        """A new session for ``viewer``."""
        return await self._run(start_session, viewer, self.limits)

    async def get(self, token: str | None) -> WebSession | None:
        """The live session of ``token`` with its viewer as the user row says now, or None."""
        if not token:
            return None
        return await self._run(find_session, token, self.limits)

    async def end(self, token: str | None) -> None:
        """Sign-out: the session is deleted, on every node at once."""
        if token:
            await self._run(end_session, token)
