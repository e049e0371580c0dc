"""Who sees and changes what (SPEC V1): the face of the visibility rule every front end applies.

A :class:`Viewer` is a signed-in user with CRM access; ``None`` in a face function's ``viewer``
keyword means the admin CLI, which sees everything. The rule itself (SQL) lives in
:mod:`crm.store.visibility`; the ``*_in`` functions here take an open session, so the face's
listings and writes check it in their own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from crm.errors import InvalidAddress, NotFound, PermissionDenied
from crm.mail.addresses import normalize_address
from crm.store import visibility as rule
from crm.store.db import Database
from crm.store.models import Activity, User
from crm.vocab import EntityType

SEES = ("own", "all")


@dataclass(frozen=True)
class Viewer:
    """A signed-in user with CRM access."""

    user_id: int
    email: str
    admin: bool
    sees_all: bool  # users.sees == "all"


def viewer_of(user: User) -> Viewer:
    """The viewer for a user row."""
    return Viewer(user.id, user.email, user.admin, user.sees == "all")


def viewer_in(session: Session, email: str) -> Viewer | None:
    """:func:`viewer_for` in an open session."""
    try:
        address = normalize_address(email)
    except InvalidAddress:
        return None
    user = session.scalar(select(User).where(User.email == address))
    if user is None or not user.crm_access:
        return None
    return viewer_of(user)


def viewer_for(db: Database, email: str) -> Viewer | None:
    """The signed-in user, or None when no such user or the user has no CRM access."""
    with db.session() as session:
        return viewer_in(session, email)


def where_seen(viewer: Viewer | None, kind: EntityType) -> ColumnElement[bool] | None:
    """The SQL condition limiting ``kind`` to what ``viewer`` sees (None: no limit)."""
    if viewer is None or viewer.sees_all:
        return None
    return rule.condition(kind, viewer.user_id)


def where_activity_seen(viewer: Viewer | None) -> ColumnElement[bool] | None:
    """The SQL condition limiting activities to what ``viewer`` sees (None: no limit)."""
    if viewer is None or viewer.sees_all:
        return None
    return rule.activity_condition(viewer.user_id)


def _exists(session: Session, model: Any, entity_id: int, cond: ColumnElement[bool] | None) -> bool:
    query = select(model.id).where(model.id == entity_id)
    if cond is not None:
        query = query.where(cond)
    return session.scalar(query.limit(1)) is not None


def can_see_in(session: Session, viewer: Viewer | None, kind: EntityType, entity_id: int) -> bool:
    """:func:`can_see` in an open session (False also when there is no such record)."""
    return _exists(session, rule.MODELS[kind], entity_id, where_seen(viewer, kind))


def can_see_activity_in(session: Session, viewer: Viewer | None, activity_id: int) -> bool:
    """:func:`can_see_activity` in an open session."""
    return _exists(session, Activity, activity_id, where_activity_seen(viewer))


def can_change_in(
    session: Session, viewer: Viewer | None, kind: EntityType, entity_id: int
) -> bool:
    """:func:`can_change` in an open session."""
    if viewer is None or viewer.sees_all:
        return _exists(session, rule.MODELS[kind], entity_id, None)
    cond = rule.change_condition(kind, viewer.user_id)
    return _exists(session, rule.MODELS[kind], entity_id, cond)


def can_see(db: Database, viewer: Viewer, kind: EntityType, entity_id: int) -> bool:
    """Whether ``viewer`` may see the lead, contact or company ``entity_id``."""
    with db.session() as session:
        return can_see_in(session, viewer, kind, entity_id)


def can_see_activity(db: Database, viewer: Viewer, activity_id: int) -> bool:
    """Whether ``viewer`` may see activity ``activity_id``."""
    with db.session() as session:
        return can_see_activity_in(session, viewer, activity_id)


def can_change(db: Database, viewer: Viewer, kind: EntityType, entity_id: int) -> bool:
    """Whether ``viewer`` may change the record: an ``own`` user only what they own (the leads
    they are responsible for, the contacts they created); ``all``: everything."""
    with db.session() as session:
        return can_change_in(session, viewer, kind, entity_id)


def require_change(
    session: Session, viewer: Viewer | None, kind: EntityType, entity_id: int
) -> None:
    """NotFound when the viewer cannot see the record, PermissionDenied when they see it but may
    not change it (the web answers 404 and 403)."""
    if not can_see_in(session, viewer, kind, entity_id):
        raise NotFound(f"no {kind.value} {entity_id}")
    if not can_change_in(session, viewer, kind, entity_id):
        raise PermissionDenied(f"{kind.value} {entity_id} is not yours to change")


def require_activity(session: Session, viewer: Viewer | None, activity_id: int) -> None:
    """NotFound unless the viewer sees the activity (what they see of their mail, they may
    complete)."""
    if not can_see_activity_in(session, viewer, activity_id):
        raise NotFound(f"no activity {activity_id}")
