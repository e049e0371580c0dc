"""C11 for the poller: messages gone from the IMAP server, and what goes with them.

Role: the deletion rule of SPEC C11, one transaction per call. A message's location is dropped;
its activity is deleted when it is a received mail, not answered (in the CRM or by ``\\Answered``
upstream), and held by no other location (the same mail in another folder or mailbox keeps it);
then each lead bound to the deleted activity is deleted too when no person ever changed it and
no other activity is bound to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from crm.store.db import Database
from crm.store.models import Activity, ActivityBinding, EntityEmail, Lead, MessageLocation

from .sync import INCOMING, here


@dataclass
class Removed:
    """What a deletion pass removed from the CRM (C11)."""

    locations: int = 0
    activities: list[int] = field(default_factory=list)
    leads: list[int] = field(default_factory=list)


def forget_vanished(
    db: Database, mailbox_id: int, folder: str, uidvalidity: int, uids: Sequence[int]
) -> Removed:
    """C11: messages gone from the server; their unanswered received activities go too."""
    if not uids:
        return Removed()
    with db.session() as s:
        locs = list(
            s.scalars(
                select(MessageLocation).where(
                    *here(mailbox_id, folder, uidvalidity), MessageLocation.uid.in_(list(uids))
                )
            )
        )
        return _forget(s, locs)


def forget_stale(db: Database, mailbox_id: int, folder: str, uidvalidity: int) -> Removed:
    """After a UIDVALIDITY change: locations of the old one that were not re-mapped are gone."""
    with db.session() as s:
        locs = list(
            s.scalars(
                select(MessageLocation).where(
                    MessageLocation.mailbox_id == mailbox_id,
                    MessageLocation.folder == folder,
                    MessageLocation.uidvalidity != uidvalidity,
                )
            )
        )
        return _forget(s, locs)


def _forget(s: Session, locs: list[MessageLocation]) -> Removed:
    removed = Removed(locations=len(locs))
    activity_ids = {loc.activity_id for loc in locs if loc.activity_id is not None}
    for loc in locs:
        s.delete(loc)
    s.flush()
    for activity_id in sorted(activity_ids):
        leads = _delete_activity_if_orphan(s, activity_id)
        if leads is None:
            continue
        removed.activities.append(activity_id)
        removed.leads += [lead for lead in leads if _delete_lead_if_untouched(s, lead)]
    return removed


def _delete_activity_if_orphan(s: Session, activity_id: int) -> list[int] | None:
    """Delete an unanswered received activity no other location holds; its lead ids, or None."""
    activity = s.get(Activity, activity_id)
    if activity is None or activity.direction != INCOMING or activity.answered:
        return None
    elsewhere = s.scalar(
        select(MessageLocation.id).where(MessageLocation.activity_id == activity_id).limit(1)
    )
    if elsewhere is not None:
        return None
    leads = [b.entity_id for b in activity.bindings if b.entity_type == "lead"]
    s.delete(activity)
    s.flush()
    return leads


def _delete_lead_if_untouched(s: Session, lead_id: int) -> bool:
    """C11: a lead never changed by a person and bound to no other activity is deleted."""
    lead = s.get(Lead, lead_id)
    if lead is None or lead.changed_by_person:
        return False
    other = s.scalar(
        select(ActivityBinding.activity_id)
        .where(ActivityBinding.entity_type == "lead", ActivityBinding.entity_id == lead_id)
        .limit(1)
    )
    if other is not None:
        return False
    s.execute(
        delete(EntityEmail).where(
            EntityEmail.entity_type == "lead", EntityEmail.entity_id == lead_id
        )
    )
    s.delete(lead)
    s.flush()
    return True
