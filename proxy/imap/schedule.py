"""When a mailbox is checked (SPEC T1-T3, M4): pure policy, no I/O.

* T3: a mailbox whose link is off, or that nobody can use (a personal mailbox without an owner
  with CRM access), is not checked at all.
* T1: a personal mailbox is checked every ``active_interval_s`` (10 min) while its owner is
  active (used the relay or the CLI, or linked the mailbox, within ``active_window_hours``),
  once a day (``idle_interval_s``) otherwise.
* T2/M4: a company mailbox is checked at its own interval (10 min when none is set).
* Real time: where the server offers IDLE, a mailbox that is checked often (active owner, or
  a company mailbox) also waits in IDLE between checks; the interval stays the fallback.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from crm.config import PollerConfig

from .plan import MailboxPlan

COMPANY_DEFAULT_S = 600


@dataclass(frozen=True)
class Mode:
    """How one mailbox is watched right now."""

    check: bool
    interval_s: float
    idle: bool
    reason: str


def owner_active(plan: MailboxPlan, now: dt.datetime, config: PollerConfig) -> bool:
    """T1: the owner used the relay or the CLI (or linked the mailbox) recently."""
    window = dt.timedelta(hours=config.active_window_hours)
    seen = [t for t in (plan.owner_active_at, plan.linked_at) if t is not None]
    return any(now - t <= window for t in seen)


def mode_for(plan: MailboxPlan, now: dt.datetime, config: PollerConfig) -> Mode:
    """The watch mode of ``plan`` at ``now``."""
    if not plan.linked:
        return Mode(False, 0, False, "link to CRM is off")
    if plan.is_company:
        interval = plan.interval_s or COMPANY_DEFAULT_S
        return Mode(True, interval, config.idle, "company mailbox")
    if not plan.owner_ok:
        return Mode(False, 0, False, "no owner with CRM access uses this mailbox")
    if owner_active(plan, now, config):
        return Mode(True, config.active_interval_s, config.idle, "owner active")
    return Mode(True, config.idle_interval_s, False, "owner inactive")
