"""Prometheus metrics (B6): counters that relay, poller and capture bump; gauges from the database.

Counters live in this process and are moved by one-line calls where things happen::

    metrics.relayed()                 # a message the upstream accepted through the relay
    metrics.captured()                # a message that became an activity
    metrics.skipped("robot: mailing list")   # a message that created nothing, and why
    metrics.upstream_error("imap")    # a failed upstream connection, login or command

The spool worker captures in a child process: its counts travel to the parent, which serves
``/metrics``, with each round's result (:func:`take_counts` there, :func:`add_counts` here).

Gauges (spool depth and age, per-mailbox sync age and status, leases per node) are computed from
the database when ``/metrics`` is scraped, by :class:`DatabaseCollector`, so every node shows the
same cluster-wide picture; the copies waiting in this node's file spool (journal segments and
spool files) are counted too. While the database is down ``mailcrm_database_up`` is 0 and the
gauges read from it are left out; the rest is served as always. :func:`registry` puts it all
(and the process's CPU and memory) together.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import lazyload

from crm.face.views import mailbox_status
from crm.spool.files import FileSpool
from crm.store.db import Database
from crm.store.models import Lease, Mailbox, SpoolEntry, utcnow

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R", bound="_Outcome")
MAX_REASONS = 40  # distinct skip-reason labels kept; later new ones count as "other"

RELAYED = Counter(
    "mailcrm_messages_relayed",
    "Messages the upstream server accepted through the relay.",
    registry=None,
)
CAPTURED = Counter(
    "mailcrm_messages_captured", "Messages captured as CRM activities.", registry=None
)
DUPLICATES = Counter(
    "mailcrm_messages_duplicate",
    "Messages seen again and not captured twice (C9).",
    registry=None,
)
SKIPPED = Counter(
    "mailcrm_messages_skipped",
    "Messages that created nothing, by reason.",
    ["reason"],
    registry=None,
)
UPSTREAM_ERRORS = Counter(
    "mailcrm_upstream_errors",
    "Failed upstream connections, logins or commands, by kind.",
    ["kind"],
    registry=None,
)
COUNTERS = (RELAYED, CAPTURED, DUPLICATES, SKIPPED, UPSTREAM_ERRORS)
_reasons: set[str] = set()
Counts = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, labels) -> value
_taken: Counts = {}  # what take_counts reported so far


def relayed(count: int = 1) -> None:
    """``count`` messages were accepted by the upstream through the relay."""
    RELAYED.inc(count)


def captured(count: int = 1) -> None:
    """``count`` messages became activities."""
    CAPTURED.inc(count)


def duplicate(count: int = 1) -> None:
    """``count`` messages had been captured already."""
    DUPLICATES.inc(count)


def skipped(reason: str | None) -> None:
    """A message created nothing; ``reason`` is the capture reason (free text is folded)."""
    SKIPPED.labels(reason=reason_label(reason)).inc()


def upstream_error(kind: str) -> None:
    """An upstream failure of ``kind`` (e.g. ``smtp``, ``imap``, ``auth``, ``tls``, ``timeout``)."""
    UPSTREAM_ERRORS.labels(kind=_slug(kind) or "other").inc()


def _values() -> Counts:
    values: Counts = {}
    for counter in COUNTERS:
        for family in counter.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def take_counts() -> Counts:
    """What this process's counters moved by since the last call (for a parent to add)."""
    values = _values()
    moved = {key: value - _taken.get(key, 0.0) for key, value in values.items()}
    _taken.update(values)
    return {key: value for key, value in moved.items() if value > 0}


def add_counts(counts: Counts) -> None:
    """Add what another process counted (its :func:`take_counts`) to this one's counters."""
    by_name = {f"{f.name}_total": c for c in COUNTERS for f in c.describe()}
    for (name, labels), value in counts.items():
        counter = by_name.get(name)
        if counter is None or value <= 0:
            continue
        if counter is SKIPPED:
            SKIPPED.labels(reason=_capped(dict(labels).get("reason", "unknown"))).inc(value)
        elif labels:
            counter.labels(**dict(labels)).inc(value)
        else:
            counter.inc(value)


def reason_label(reason: str | None) -> str:
    """A short, bounded label for a skip reason: ``robot: mailing list`` -> ``robot_mailing_list``,
    ``excluded address: a@x.com`` -> ``excluded_address`` (addresses never become labels)."""
    text = (reason or "unknown").strip().lower()
    head, _, rest = text.partition(":")
    return _capped(_slug(f"{head} {rest}" if head == "robot" else head) or "unknown")


def _capped(label: str) -> str:
    if label not in _reasons and len(_reasons) >= MAX_REASONS:
        return "other"
    _reasons.add(label)
    return label


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48]


class _Outcome(Protocol):
    action: str
    reason: str | None


def counted(capture: Callable[P, R]) -> Callable[P, R]:
    """Decorate a capture function: count its results as captured, duplicate or skipped."""

    @wraps(capture)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        result = capture(*args, **kwargs)
        if result.action == "captured":
            captured()
        elif result.action == "duplicate":
            duplicate()
        else:
            skipped(result.reason)
        return result

    return wrapper


class _Counters(Collector):
    """This process's counters, for a registry of its own."""

    def collect(self) -> Iterator[Metric]:
        for counter in COUNTERS:
            yield from counter.collect()


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time, and the spool files waiting on this node."""

    def __init__(self, db: Database, spool: Path | None = None) -> None:
        self.db = db
        self.files = FileSpool(spool) if spool is not None else None

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        in_files, born = self.files.waiting() if self.files else (0, None)
        yield _gauge(
            "mailcrm_spool_file_depth",
            "Capture copies waiting in this node's file spool (journal and files).",
            in_files,
        )
        try:
            depth, oldest, boxes, leases = self._read(now)
        except Exception as exc:  # down, dropped, refusing: the scrape goes on without it
            log.warning("metrics: database unreachable: %s", str(exc).splitlines()[0][:200])
            yield _gauge("mailcrm_database_up", _UP_HELP, 0.0)
            return
        yield _gauge("mailcrm_database_up", _UP_HELP, 1.0)
        yield _gauge(
            "mailcrm_spool_depth",
            "Messages waiting for capture: spool table and this node's spool files.",
            depth + in_files,
        )
        if born is not None:
            file_oldest = dt.datetime.fromtimestamp(born, dt.UTC)
            oldest = file_oldest if oldest is None else min(_aware(oldest), file_oldest)
        yield _gauge(
            "mailcrm_spool_oldest_age_seconds",
            "Age of the oldest message waiting in the spool (0 when empty).",
            _age(now, oldest) if oldest is not None else 0.0,
        )
        yield from _mailbox_gauges(boxes, now)
        held = GaugeMetricFamily(
            "mailcrm_node_leases", "Mailboxes leased to each node.", labels=["node"]
        )
        for node, count in leases:
            held.add_metric([str(node)], count)
        yield held

    def _read(self, now: dt.datetime) -> tuple[int, dt.datetime | None, list[Mailbox], Any]:
        with self.db.session() as session:
            depth, oldest = session.execute(
                select(func.count(), func.min(SpoolEntry.created_at)).where(
                    SpoolEntry.state == "pending"
                )
            ).one()
            boxes = list(
                session.scalars(
                    select(Mailbox)
                    .options(lazyload(Mailbox.owner), lazyload(Mailbox.queue))
                    .order_by(Mailbox.address)
                )
            )
            leases = session.execute(
                select(Lease.node, func.count())
                .where(Lease.node.is_not(None), Lease.expires_at > now)
                .group_by(Lease.node)
            ).all()
        return int(depth), oldest, boxes, leases


_UP_HELP = "1 when this node reads its database; 0: down, database gauges left out."


def _mailbox_gauges(boxes: list[Mailbox], now: dt.datetime) -> Iterator[Metric]:
    age = GaugeMetricFamily(
        "mailcrm_mailbox_sync_age_seconds",
        "Seconds since the last successful check of each linked mailbox (+Inf: never).",
        labels=["mailbox"],
    )
    up = GaugeMetricFamily(
        "mailcrm_mailbox_up", "1 when the mailbox is green (M5), 0 when red.", labels=["mailbox"]
    )
    for box in boxes:
        up.add_metric([box.address], 1.0 if mailbox_status(box)[0] == "green" else 0.0)
        if box.linked:
            synced = _age(now, box.last_ok_at) if box.last_ok_at else math.inf
            age.add_metric([box.address], synced)
    yield age
    yield up


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _aware(then: dt.datetime) -> dt.datetime:
    return then.replace(tzinfo=dt.UTC) if then.tzinfo is None else then


def _age(now: dt.datetime, then: dt.datetime) -> float:
    return max(0.0, (now - _aware(then)).total_seconds())


def registry(db: Database, process: bool = True, spool: Path | None = None) -> CollectorRegistry:
    """A registry with the counters, the database gauges (and ``spool``'s files) and
    (optionally) process metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Counters())
    reg.register(DatabaseCollector(db, spool))
    if process:
        ProcessCollector(registry=reg)
    return reg
