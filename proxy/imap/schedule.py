"""When a mailbox is checked (SPEC T1-T3, M4): :mod:`crm.mailboxes.schedule`'s policy, plus IDLE.

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
from crm.face.poller import schedule

from .plan import MailboxPlan


@dataclass(frozen=True)
class Mode:
    """How one mailbox is watched right now."""

    check: bool
    interval_s: float
    idle: bool
    reason: str


def mode_for(plan: MailboxPlan, now: dt.datetime, config: PollerConfig) -> Mode:
    """The watch mode of ``plan`` at ``now``: the policy of
    :func:`crm.mailboxes.schedule.watch`, and IDLE
    for a mailbox checked often (not a ``daily`` one)."""
    inputs = schedule.WatchInputs(
        linked=plan.linked,
        company=plan.is_company,
        owner_ok=plan.owner_ok,
        owner_active_at=plan.owner_active_at,
        linked_at=plan.linked_at,
        interval_s=plan.interval_s,
    )
    watch = schedule.watch(inputs, now, config)
    if not watch.check:
        return Mode(False, 0, False, watch.reason)
    return Mode(True, watch.interval_s, config.idle and watch.mode != "daily", watch.reason)
