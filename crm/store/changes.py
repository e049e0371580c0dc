"""The change log of the DAV collections: every flush that adds, changes or deletes a lead,
contact, company, activity, address or binding writes which records it touched into
``dav_changes``, in the same transaction (so a change and its log row commit or roll back
together).

Visibility follows bindings and companies, so a change also logs what a reader may now see
or no longer see: a binding logs its activity and its entity, a lead or contact its company.
Bulk SQL statements bypass this hook; the two the CRM runs (``lead convert`` moving bindings,
deletions dropping a lead's addresses) go with ORM changes of the same records.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from .models import Activity, ActivityBinding, Company, Contact, DavChange, EntityEmail, Lead

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


def install() -> None:
    """Log changes from every session (idempotent)."""
    if not event.contains(Session, "after_flush", _log):
        event.listen(Session, "after_flush", _log)


install()
