"""What the status page and the metrics endpoint (:mod:`proxy.web`) and the poller's gauges read:
the metrics registry, who holds which mailbox's lease, whether the database answers, and the
database's part of the status page (:func:`read_status`, plain data)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from crm import metrics as metrics
from crm.config import PollerConfig
from crm.mailboxes.leases import lease_owners as lease_owners
from crm.mailboxes.schedule import schedule_json
from crm.store.db import Database
from crm.store.models import Activity, EntityEmail, Lead, Mailbox, Node
from crm.vocab import utcnow

from .views import iso, mailbox_json

LIST_LIMIT = 10


@dataclass(frozen=True)
class NodeState:
    """A gateway node: alive (seen within two lease periods), seconds since it was last seen,
    and how many mailboxes it holds."""

    name: str
    alive: bool
    silent_s: float
    mailboxes: int


@dataclass
class StatusData:
    """What the status page shows of the database."""

    mailboxes: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[NodeState] = field(default_factory=list)
    leads_today: int = 0
    activities_today: int = 0
    recent_leads: list[dict[str, Any]] = field(default_factory=list)
    recent_activities: list[dict[str, Any]] = field(default_factory=list)


def ping(db: Database) -> None:
    """One round trip to the database (the health check); raises when it does not answer."""
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def read_status(
    db: Database, lease_seconds: float, since: dt.datetime, poller: PollerConfig
) -> StatusData:
    """The database's part of the status page: mailboxes with their schedule (T1) and the node
    holding each, the nodes (alive while seen within two lease periods), and the CRM work
    created since ``since``."""
    owners = lease_owners(db)
    data = StatusData()
    now = utcnow()
    with db.session() as session:
        for box in session.scalars(select(Mailbox).order_by(Mailbox.address)).unique():
            row = mailbox_json(box)
            row["schedule"] = schedule_json(box, poller, now)
            row["node"] = owners.get(box.id)
            data.mailboxes.append(row)
        data.nodes = _nodes(session, now, lease_seconds, owners)
        data.leads_today = _created_since(session, Lead, since)
        data.activities_today = _created_since(session, Activity, since)
        data.recent_leads = _recent_leads(session, since)
        data.recent_activities = _recent_activities(session, since)
    return data


def _nodes(
    session: Session, now: dt.datetime, lease: float, owners: dict[int, str]
) -> list[NodeState]:
    nodes = []
    for node in session.scalars(select(Node).order_by(Node.name)):
        silent = (now - node.last_seen).total_seconds()
        held = sum(1 for owner in owners.values() if owner == node.name)
        nodes.append(NodeState(node.name, silent <= lease * 2, silent, held))
    return nodes


def _created_since(session: Session, model: type[Lead | Activity], since: dt.datetime) -> int:
    query = select(func.count()).select_from(model).where(model.created_at >= since)
    return int(session.scalar(query) or 0)


def _recent_leads(session: Session, since: dt.datetime) -> list[dict[str, Any]]:
    leads = list(
        session.scalars(
            select(Lead).where(Lead.created_at >= since).order_by(Lead.id.desc()).limit(LIST_LIMIT)
        )
    )
    emails: dict[int, str] = {}
    rows = session.execute(
        select(EntityEmail.entity_id, EntityEmail.address)
        .where(EntityEmail.entity_type == "lead", EntityEmail.entity_id.in_([x.id for x in leads]))
        .order_by(EntityEmail.position.desc())
    )
    for lead_id, address in rows:
        emails[lead_id] = address
    return [
        {
            "id": x.id,
            "name": x.name,
            "email": emails.get(x.id),
            "status": x.status,
            "created_at": iso(x.created_at),
        }
        for x in leads
    ]


def _recent_activities(session: Session, since: dt.datetime) -> list[dict[str, Any]]:
    boxes = {i: a for i, a in session.execute(select(Mailbox.id, Mailbox.address))}
    query = (
        select(Activity)
        .where(Activity.created_at >= since)
        .order_by(Activity.id.desc())
        .limit(LIST_LIMIT)
    )
    return [
        {
            "id": a.id,
            "direction": a.direction,
            "subject": a.subject,
            "mailbox": boxes.get(a.mailbox_id) if a.mailbox_id else None,
            "counterparts": list(a.counterparts),
            "completed": a.completed,
            "created_at": iso(a.created_at),
        }
        for a in session.scalars(query)
    ]
