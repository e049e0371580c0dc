"""What the web CRM (:mod:`proxy.web`) needs beyond the shared listings of :mod:`.queries`:
who signs in, the employees and statuses its forms offer, a reassignment, and the dashboard's
figures (new leads per week, open activities per employee, response times), all under the
visibility rule (SPEC V1)."""

from __future__ import annotations

import datetime as dt
import itertools
import statistics
from dataclasses import dataclass

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from crm.errors import NotFound
from crm.mail.addresses import try_normalize
from crm.mailboxes.linking import lookup_login
from crm.mailboxes.schedule import touch
from crm.store.models import Activity, ActivityBinding, Lead, Mailbox, User
from crm.vocab import Direction, EntityType, utcnow

from . import queries, views
from .admin import update_lead
from .convert import CONVERTED
from .queries import Filter, Page, activity_search
from .visibility import Viewer, viewer_of, where_activity_seen, where_seen

STATUSES = ("new", "contacted", "qualified", "won", "lost")
WEEKS = 12
RESPONSE_SAMPLE = 2000  # the latest answered mails a response-time figure is made of


def signed_in(session: Session, login: str) -> Viewer | None:
    """The viewer behind a relay login whose password the upstream accepted just now, or None
    (no such user, or no CRM access). Signing in counts as the user being active (T1)."""
    email = lookup_login(session, login).user_email or try_normalize(login)
    user = session.scalar(select(User).where(User.email == email)) if email else None
    if user is None or not user.crm_access:
        return None
    touch(user)
    return viewer_of(user)


@dataclass(frozen=True)
class Employee:
    """A user a lead can be given to."""

    id: int
    email: str
    name: str


def employees(session: Session) -> list[Employee]:
    """Users with CRM access, by address."""
    rows = session.scalars(select(User).where(User.crm_access).order_by(User.email))
    return [Employee(u.id, u.email, u.name) for u in rows]


def statuses(session: Session) -> list[str]:
    """The usual lead statuses, then any other in use (converted aside)."""
    used = session.scalars(select(Lead.status).distinct().limit(50))
    extra = sorted({s for s in used if s not in STATUSES and s != CONVERTED})
    return [*STATUSES, *extra]


def reassign(session: Session, lead_id: int, email: str, *, viewer: Viewer | None) -> None:
    """Give lead ``lead_id`` to the employee ``email`` (V1: the viewer must be allowed to)."""
    user = session.scalar(select(User).where(User.email == email, User.crm_access))
    if user is None:
        raise NotFound(f"no employee {email}")
    update_lead(session, lead_id, viewer=viewer, responsible_id=user.id)


def open_first(session: Session, wanted: Filter, *, viewer: Viewer | None) -> Page:
    """The activities ``viewer`` sees matching ``wanted``: open ones first, newest first."""
    query = activity_search(select(Activity.id), wanted.search)
    seen = where_activity_seen(viewer)
    if seen is not None:
        query = query.where(seen)
    total, capped = queries.count(session, query, wanted)
    page = query.order_by(Activity.completed, Activity.id.desc()).offset(wanted.offset)
    ids = list(session.scalars(page.limit(wanted.limit) if wanted.limit is not None else page))
    rows = {r["id"]: r for r in views.activities_json(session, ids=ids)} if ids else {}
    return Page([rows[i] for i in ids], total, capped)


@dataclass(frozen=True)
class Dashboard:
    """The dashboard's figures."""

    new_leads: list[tuple[str, int]]  # (week's Monday, count), oldest first
    open_by_employee: list[tuple[str, int]]  # (employee, open activities), most first
    response_hours: list[tuple[str, float]]  # (employee, median hours to answer), fastest first


def dashboard(session: Session, viewer: Viewer | None, now: dt.datetime | None = None) -> Dashboard:
    """The figures of what ``viewer`` sees, computed now. Counting them walks large parts of a
    big CRM (a second on 1,000,000 activities), so the web serves them from
    :class:`crm.face.figures.FigureKeeper`, which computes them off the request path."""
    return Dashboard(
        _new_leads(session, viewer, now or utcnow()),
        _open_by_employee(session, viewer),
        _responses(session, viewer),
    )


def _monday(when: dt.datetime) -> dt.date:
    day = when.date()
    return day - dt.timedelta(days=day.weekday())


def _new_leads(session: Session, viewer: Viewer | None, now: dt.datetime) -> list[tuple[str, int]]:
    """Leads made in each of the last WEEKS weeks, counted in SQL (one pass over the
    ``leads.created_at`` index range)."""
    first = _monday(now) - dt.timedelta(weeks=WEEKS - 1)
    weeks = [first + dt.timedelta(weeks=i) for i in range(WEEKS + 1)]
    starts = [dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) for day in weeks]
    buckets = [
        func.coalesce(
            func.sum(case((and_(Lead.created_at >= a, Lead.created_at < b), 1), else_=0)), 0
        )
        for a, b in itertools.pairwise(starts)
    ]
    query = select(*buckets).where(Lead.created_at >= starts[0], Lead.created_at < starts[-1])
    seen = where_seen(viewer, EntityType.LEAD)
    if seen is not None:
        query = query.where(seen)
    row = session.execute(query).one()
    return [(week.isoformat(), int(n)) for week, n in zip(weeks, row, strict=False)]


def _open_by_employee(session: Session, viewer: Viewer | None) -> list[tuple[str, int]]:
    """Open activities by who works them: the personal mailbox's owner, else the responsible
    of a bound lead (company mailboxes)."""
    seen = where_activity_seen(viewer)
    own = (
        select(User.email, func.count(Activity.id))
        .join(Mailbox, Mailbox.id == Activity.mailbox_id)
        .join(User, User.id == Mailbox.owner_id)
        .where(~Activity.completed)
    )
    shared = (
        select(User.email, func.count(func.distinct(Activity.id)))
        .join(Mailbox, Mailbox.id == Activity.mailbox_id)
        .join(ActivityBinding, ActivityBinding.activity_id == Activity.id)
        .join(
            Lead, (ActivityBinding.entity_type == "lead") & (Lead.id == ActivityBinding.entity_id)
        )
        .join(User, User.id == Lead.responsible_id)
        .where(~Activity.completed, Mailbox.owner_id.is_(None))
    )
    totals: dict[str, int] = {}
    for query in (own, shared):
        if seen is not None:
            query = query.where(seen)
        for email, count in session.execute(query.group_by(User.email)):
            totals[email] = totals.get(email, 0) + int(count)
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def _responses(session: Session, viewer: Viewer | None) -> list[tuple[str, float]]:
    """Median hours from an incoming mail to the first outgoing one in its thread, by the
    sending mailbox's owner, over the latest answered incoming mails."""
    query = (
        select(Activity.thread, Activity.sent_at)
        .where(Activity.direction == Direction.INCOMING.value, Activity.answered)
        .where(Activity.sent_at.is_not(None))
        .order_by(Activity.id.desc())
        .limit(RESPONSE_SAMPLE)
    )
    seen = where_activity_seen(viewer)
    if seen is not None:
        query = query.where(seen)
    asked: dict[str, dt.datetime] = {t: at for t, at in session.execute(query) if at is not None}
    if not asked:
        return []
    replies = (
        select(Activity.thread, Activity.sent_at, User.email)
        .join(Mailbox, Mailbox.id == Activity.mailbox_id)
        .join(User, User.id == Mailbox.owner_id)
        .where(Activity.direction == Direction.OUTGOING.value, Activity.thread.in_(list(asked)))
    )
    first: dict[str, tuple[dt.datetime, str]] = {}
    for thread, at, email in session.execute(replies):
        if (
            at is not None
            and at >= asked[thread]
            and (thread not in first or at < first[thread][0])
        ):
            first[thread] = (at, email)
    hours: dict[str, list[float]] = {}
    for thread, (at, email) in first.items():
        hours.setdefault(email, []).append((at - asked[thread]).total_seconds() / 3600)
    medians = [(email, round(statistics.median(v), 1)) for email, v in hours.items()]
    return sorted(medians, key=lambda kv: (kv[1], kv[0]))
