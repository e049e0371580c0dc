"""When a mailbox is checked (SPEC T1-T3, M4), and what counts as its owner being active.

* :func:`touch_owner` is the one way a front end says "this user just used mailcrm with their
  own credentials" (a relay login, the owner's password given to the CLI, an import run for
  their mailbox); it writes ``users.last_active_at`` at most once a minute.
* :func:`watch` is the pure policy the poller follows (:mod:`proxy.imap.schedule` adds IDLE):
  T3 a mailbox whose link is off, or that nobody can use, is ``off``; T1 a personal mailbox is
  checked every ``active_interval_s`` while its owner is active (``active``), once a day
  (``daily``) otherwise; T2/M4 a company mailbox at its own ``interval``.
* :func:`schedule_json` shows it (``mailbox show --json``, the status page).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.config import PollerConfig
from crm.store.models import Mailbox, User
from crm.vocab import MailboxKind, utcnow

TOUCH_EVERY = dt.timedelta(minutes=1)
COMPANY_DEFAULT_S = 600


@dataclass(frozen=True)
class Watch:
    """How one mailbox is checked: ``mode`` (active, daily, interval, off), every how long."""

    mode: str
    interval_s: int
    reason: str

    @property
    def check(self) -> bool:
        """T3: False when the mailbox is not checked at all."""
        return self.mode != "off"


@dataclass(frozen=True)
class WatchInputs:
    """What the policy needs of a mailbox (a row or the poller's snapshot)."""

    linked: bool
    company: bool
    owner_ok: bool
    owner_active_at: dt.datetime | None
    linked_at: dt.datetime | None
    interval_s: int | None


def touch_owner(session: Session, email: str) -> None:
    """T1: the user ``email`` used mailcrm with their own credentials just now."""
    user = session.scalar(select(User).where(User.email == email))
    if user is not None:
        touch(user)


def touch(user: User) -> None:
    """T1 for a loaded user row (written at most once a minute: logins are frequent)."""
    now = utcnow()
    if user.last_active_at is None or now - user.last_active_at > TOUCH_EVERY:
        user.last_active_at = now


def owner_active(box: WatchInputs, now: dt.datetime, config: PollerConfig) -> bool:
    """T1: the owner used mailcrm (or linked the mailbox) within ``active_window_hours``."""
    window = dt.timedelta(hours=config.active_window_hours)
    seen = [t for t in (box.owner_active_at, box.linked_at) if t is not None]
    return any(now - t <= window for t in seen)


def watch(box: WatchInputs, now: dt.datetime, config: PollerConfig) -> Watch:
    """The check schedule of ``box`` at ``now``."""
    if not box.linked:
        return Watch("off", 0, "link to CRM is off")
    if box.company:
        return Watch("interval", box.interval_s or COMPANY_DEFAULT_S, "company mailbox")
    if not box.owner_ok:
        return Watch("off", 0, "no owner with CRM access uses this mailbox")
    if owner_active(box, now, config):
        return Watch("active", config.active_interval_s, "owner active")
    return Watch("daily", config.idle_interval_s, "owner inactive")


def inputs_of(box: Mailbox) -> WatchInputs:
    """The policy's view of a mailbox row."""
    owner = box.owner
    return WatchInputs(
        linked=box.linked,
        company=box.kind == MailboxKind.COMPANY,
        owner_ok=owner is not None and owner.crm_access,
        owner_active_at=owner.last_active_at if owner is not None else None,
        linked_at=box.linked_at,
        interval_s=box.interval_s,
    )


def schedule_json(box: Mailbox, config: PollerConfig, now: dt.datetime | None = None) -> Any:
    """schedule: mode, next_check (ISO 8601 UTC; null when off), owner_last_active, interval_s,
    reason."""
    now = now or utcnow()
    plan = watch(inputs_of(box), now, config)
    next_check: dt.datetime | None = None  # in the past: due, checked as soon as a node can
    if plan.check and box.last_check_at is not None:
        next_check = box.last_check_at + dt.timedelta(seconds=plan.interval_s)
    elif plan.check:
        next_check = box.linked_at or box.created_at
    owner = box.owner
    return {
        "mode": plan.mode,
        "next_check": _iso(next_check),
        "owner_last_active": _iso(owner.last_active_at if owner else None),
        "interval_s": plan.interval_s or None,
        "reason": plan.reason,
    }


def _iso(when: dt.datetime | None) -> str | None:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds") if when else None
