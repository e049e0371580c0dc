"""Web CRM sessions in the database (SPEC B7): a sign-in made on one node is good on every node
sharing the database, and a restart keeps it.

The cookie carries a random 256-bit token; the ``web_sessions`` row keeps only its SHA-256, so a
leaked database or backup hands out no live session. What the viewer may do (admin, ``sees``,
CRM access) is read from the user row on every request: a demoted user loses the right at once,
a user without CRM access loses the session, and a removed user's rows go with them (ON DELETE
CASCADE). A session ends ``idle`` after its last use and ``absolute`` after sign-in, and sign-out
deletes its row.

No write per request: ``last_used_at`` moves only once it is ``touch`` (a minute) old, so the idle
expiry is exact to that minute (a session may end up to a minute before ``idle`` has passed since
its last request). Each sign-in deletes every expired row (one DELETE) and keeps at most
``per_user`` sessions per user, the least recently used dropped first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Delete, delete, or_, select
from sqlalchemy.orm import Session

from crm.store.models import User
from crm.store.models import WebSession as Row
from crm.vocab import utcnow

from .visibility import Viewer, viewer_of

MAX_TOKEN = 100  # a cookie value longer than this is no token of ours


@dataclass(frozen=True)
class Limits:
    """How long sessions live and how many a user keeps."""

    idle: dt.timedelta = dt.timedelta(hours=8)
    absolute: dt.timedelta = dt.timedelta(days=7)
    per_user: int = 20
    touch: dt.timedelta = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class WebSession:
    """One signed-in browser: its token (the cookie's, never stored), viewer and CSRF token."""

    token: str
    viewer: Viewer
    csrf: str
    started: dt.datetime
    last_used: dt.datetime

    def csrf_ok(self, given: str | None) -> bool:
        """Whether ``given`` is this session's CSRF token (compared in constant time)."""
        return bool(given) and hmac.compare_digest(self.csrf, given or "")


def token_hash(token: str) -> str:
    """What the database keeps of a token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _bulk(statement: Delete) -> Delete:
    return statement.execution_options(synchronize_session=False)


def _expired(limits: Limits, now: dt.datetime) -> ColumnElement[bool]:
    return or_(Row.last_used_at < now - limits.idle, Row.started_at < now - limits.absolute)


def start_session(session: Session, viewer: Viewer, limits: Limits) -> WebSession:
    """A new session for ``viewer``; expired ones pruned, the user's oldest beyond the bound."""
    now = utcnow()
    session.execute(_bulk(delete(Row).where(_expired(limits, now))))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    row = Row(token_hash=token_hash(token), user_id=viewer.user_id, csrf=csrf)
    row.started_at = row.last_used_at = now
    session.add(row)
    session.flush()
    newest = (
        select(Row.token_hash)
        .where(Row.user_id == viewer.user_id)
        .order_by(Row.last_used_at.desc(), Row.started_at.desc())
        .limit(limits.per_user)
    )
    dropped = delete(Row).where(Row.user_id == viewer.user_id, Row.token_hash.not_in(newest))
    session.execute(_bulk(dropped))
    return WebSession(token, viewer, csrf, now, now)


def find_session(session: Session, token: str | None, limits: Limits) -> WebSession | None:
    """The live session of ``token`` with its viewer read afresh, or None (an expired one, or
    one of a user who lost CRM access, is deleted)."""
    if not token or len(token) > MAX_TOKEN:
        return None
    query = select(Row, User).join(User, User.id == Row.user_id)
    found = session.execute(query.where(Row.token_hash == token_hash(token))).first()
    if found is None:
        return None
    row, user = found
    now = utcnow()
    if now - row.last_used_at > limits.idle or now - row.started_at > limits.absolute:
        session.delete(row)
        return None
    if not user.crm_access:
        session.delete(row)
        return None
    if now - row.last_used_at >= limits.touch:
        row.last_used_at = now
    return WebSession(token, viewer_of(user), row.csrf, row.started_at, row.last_used_at)


def end_session(session: Session, token: str | None) -> None:
    """Sign-out: the session's row is deleted (every node forgets it at once)."""
    if token and len(token) <= MAX_TOKEN:
        session.execute(_bulk(delete(Row).where(Row.token_hash == token_hash(token))))
