"""The change log of the DAV collections: every flush that adds, changes or deletes a lead,
contact, company, activity, address or binding writes which records it touched into
``dav_changes``, in the same transaction (so a change and its log row commit or roll back
together).

Visibility follows bindings and companies, so a change also logs what a reader may now see
or no longer see: a binding logs its activity and its entity, a lead or contact its company.
Bulk SQL statements bypass this hook; the two the CRM runs (``lead convert`` moving bindings,
deletions dropping a lead's addresses) go with ORM changes of the same records. Capture writes
with SQL Core (its hot path) and logs what it wrote itself, with :func:`log_rows` in the same
transaction.

Some changes alter who sees records they do not touch: a lead's new responsible takes the
company-mailbox activities bound to it (and the cards bound to those), a mailbox's new owner or
kind (or its deletion) moves all its activities and their cards. Before such a flush,
:func:`_log_moves` logs those records with one ``INSERT ... SELECT`` (however many there are), so
both the old and the new reader's next sync brings them. A user's ``sees`` is part of their sync
tokens (:mod:`proxy.dav.resources`): changing it invalidates them and the client resyncs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Select, event, insert, inspect, literal, select, union_all
from sqlalchemy.orm import Session

from .models import (
    Activity,
    ActivityBinding,
    Company,
    Contact,
    DavChange,
    EntityEmail,
    Lead,
    Mailbox,
)

Touched = set[tuple[str, int]]


def _of(obj: Any, touched: Touched) -> None:
    if isinstance(obj, Lead | Contact):
        kind = "lead" if isinstance(obj, Lead) else "contact"
        touched.add((kind, obj.id))
        if obj.company_id is not None:
            touched.add(("company", obj.company_id))
    elif isinstance(obj, Company):
        touched.add(("company", obj.id))
    elif isinstance(obj, Activity):
        touched.add(("activity", obj.id))
    elif isinstance(obj, EntityEmail):
        touched.add((obj.entity_type, obj.entity_id))
    elif isinstance(obj, ActivityBinding):
        touched.add(("activity", obj.activity_id))
        touched.add((obj.entity_type, obj.entity_id))


def log_rows(conn: Connection, touched: Iterable[tuple[str, int | None]]) -> None:
    """Log records written with SQL Core, which the flush hook cannot see: one INSERT."""
    known = sorted({(kind, eid) for kind, eid in touched if eid is not None})
    if known:
        conn.execute(insert(DavChange), [{"entity_type": k, "entity_id": e} for k, e in known])


def _log(session: Session, _context: Any) -> None:
    touched: Touched = set()
    for obj in session.new | session.deleted:
        _of(obj, touched)
    for obj in session.dirty:
        if session.is_modified(obj, include_collections=False):
            _of(obj, touched)
    rows = [
        {"entity_type": kind, "entity_id": eid} for kind, eid in sorted(touched) if eid is not None
    ]
    if rows:
        session.connection().execute(insert(DavChange), rows)


def _changed(obj: Any, *names: str) -> bool:
    state = inspect(obj)
    return any(state.attrs[name].history.has_changes() for name in names)


def _moves(session: Session) -> tuple[set[int], set[int]]:
    """(mailboxes whose activities change reader, leads whose responsible changes)."""
    boxes = {obj.id for obj in session.deleted if isinstance(obj, Mailbox)}
    leads: set[int] = set()
    for obj in session.dirty:
        if isinstance(obj, Mailbox) and _changed(obj, "owner_id", "owner", "kind"):
            boxes.add(obj.id)
        elif isinstance(obj, Lead) and _changed(obj, "responsible_id"):
            leads.add(obj.id)
    return boxes, leads


def _moved(boxes: set[int], leads: set[int]) -> Select[Any]:
    """The activities that change reader, their bound cards, and those cards' companies."""
    acts = (
        select(Activity.id)
        .where(Activity.mailbox_id.in_(boxes or [-1]))
        .union(
            select(ActivityBinding.activity_id).where(
                ActivityBinding.entity_type == "lead", ActivityBinding.entity_id.in_(leads or [-1])
            )
        )
        .subquery()
    )
    bound = select(ActivityBinding.entity_type, ActivityBinding.entity_id).where(
        ActivityBinding.activity_id.in_(select(acts.c[0]))
    )
    parts: list[Any] = [select(literal("activity"), acts.c[0]), bound]
    for kind, model in (("lead", Lead), ("contact", Contact)):
        ids = bound.where(ActivityBinding.entity_type == kind).with_only_columns(
            ActivityBinding.entity_id
        )
        parts.append(
            select(literal("company"), model.company_id).where(
                model.id.in_(ids), model.company_id.is_not(None)
            )
        )
    return select(union_all(*parts).subquery())


def _log_moves(session: Session, _context: Any, _instances: Any) -> None:
    boxes, leads = _moves(session)
    if boxes or leads:
        moved = _moved(boxes, leads)
        session.connection().execute(
            insert(DavChange).from_select(["entity_type", "entity_id"], moved)
        )


def install() -> None:
    """Log changes from every session (idempotent)."""
    if not event.contains(Session, "after_flush", _log):
        event.listen(Session, "after_flush", _log)
    if not event.contains(Session, "before_flush", _log_moves):
        event.listen(Session, "before_flush", _log_moves)


install()
