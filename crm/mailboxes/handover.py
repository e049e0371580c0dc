"""A foreground import's lease on one mailbox (B7), asked of the serve node that holds it.

``mailcrm mailbox import`` syncs one mailbox under a node name of its own (:func:`import_node`:
``NODE/import-PID``) with a :class:`ForegroundLease`. Each :meth:`ForegroundLease.take`, in one
transaction judged by the database clock, either

* takes or renews the lease by the rule every node follows (the row is free, expired or already
  ours) and, with it, the hand-over request (``requested_by``, ``requested_until`` a lease period
  ahead), unless another import's request is alive; or
* places or renews the request alone while another node holds the row. Another import whose
  request is alive is then the one in the way.

The serve node holding the row sees the request at its next claim and hands the mailbox over
(:mod:`crm.mailboxes.leases`); until then the holder's name comes back, and the caller tries again.
:meth:`~crm.mailboxes.leases.LeaseKeeper.release_all` gives back lease and request together; a
request that is not renewed lapses by itself, so a killed import holds nothing for long.
"""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import or_, select, update

from crm.store.models import Lease

from .leases import LeaseKeeper, unasked

IMPORT_MARK = "/import-"


def import_node(node: str, pid: int) -> str:
    """The node name of a foreground import run by process ``pid`` on node ``node``."""
    return f"{node}{IMPORT_MARK}{pid}"


def is_import_node(name: str) -> bool:
    """Whether ``name`` is a foreground import's (it hands nothing over: it is waited for)."""
    return IMPORT_MARK in name


class ForegroundLease(LeaseKeeper):
    """One mailbox's lease outside any fair share, asked of its holder (a foreground import)."""

    def take(self, mailbox_id: int) -> str | None:
        """Take or renew the mailbox's lease, or ask its holder for it.

        Returns None when this node now holds it; else the name of the node in the way: another
        import whose request is alive, or the holder now asked to hand the mailbox over. Each row
        is written once a transaction: on PostgreSQL a second write would check the foreign key,
        waiting behind a capture that holds the mailbox's row.
        """
        started = time.monotonic()
        with self.db.session() as session:
            session.execute(
                self._insert(Lease)
                .values(mailbox_id=mailbox_id)
                .on_conflict_do_nothing(index_elements=[Lease.mailbox_id])
            )
            now = self._now(session)
            until = now + dt.timedelta(seconds=self.lease_seconds)
            row, unasked_row = Lease.mailbox_id == mailbox_id, unasked(self.node, now)
            free = or_(
                Lease.node.is_(None),
                Lease.node == self.node,
                Lease.expires_at.is_(None),
                Lease.expires_at <= now,
            )
            request = {"requested_by": self.node, "requested_until": until}
            taken = session.execute(
                update(Lease)
                .where(row, free, unasked_row)
                .values(node=self.node, expires_at=until, **request)
            )
            if not taken.rowcount:  # type: ignore[attr-defined]
                asked = session.execute(update(Lease).where(row, unasked_row).values(**request))
                placed: int = asked.rowcount  # type: ignore[attr-defined]
                column = Lease.node if placed else Lease.requested_by
                return session.scalar(select(column).where(row)) or "another node"
        self._held[mailbox_id] = started + self.lease_seconds
        return None
