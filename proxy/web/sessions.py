"""Web CRM sessions: who is signed in, kept in this node's memory.

Memory, not the database: a session is a random 256-bit token in an HttpOnly cookie mapped to a
user and a CSRF token; keeping it in memory costs no table, no migration and no write per
request, and a restart only asks people to sign in again. Several nodes behind one address need
sticky sessions (or sign in per node) until sessions move to the database. The store is bounded
(``MAX_SESSIONS``, the oldest dropped first), every session expires ``idle`` seconds after its
last use and ``absolute`` seconds after sign-in, and signing out forgets it at once.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from crm.face.visibility import Viewer

COOKIE = "mailcrm_session"
MAX_SESSIONS = 10_000
IDLE = 8 * 3600.0
ABSOLUTE = 7 * 24 * 3600.0


@dataclass
class WebSession:
    """One signed-in browser."""

    token: str
    viewer: Viewer
    csrf: str
    started: float
    last_used: float

    def csrf_ok(self, given: str | None) -> bool:
        """Whether ``given`` is this session's CSRF token (compared in constant time)."""
        return bool(given) and hmac.compare_digest(self.csrf, given or "")


class SessionStore:
    """Token -> session, bounded, with idle and absolute expiry."""

    def __init__(
        self, *, idle: float = IDLE, absolute: float = ABSOLUTE, max_sessions: int = MAX_SESSIONS
    ) -> None:
        self.idle, self.absolute, self.max_sessions = idle, absolute, max_sessions
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()

    def start(self, viewer: Viewer) -> WebSession:
        """A new session for ``viewer``."""
        now = time.monotonic()
        session = WebSession(secrets.token_urlsafe(32), viewer, secrets.token_urlsafe(32), now, now)
        self._sessions[session.token] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, token: str | None) -> WebSession | None:
        """The live session of ``token`` (its use extends the idle time), or None."""
        if not token or len(token) > 100:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_used > self.idle or now - session.started > self.absolute:
            del self._sessions[token]
            return None
        session.last_used = now
        self._sessions.move_to_end(token)
        return session

    def end(self, token: str | None) -> None:
        """Sign-out: forget the session."""
        if token:
            self._sessions.pop(token, None)

    def __len__(self) -> int:
        return len(self._sessions)
