"""Per-mailbox count of messages the poller skipped on a fault (SPEC B6, issue 13 item 3)

``mailboxes.skipped_faults``: how many messages of the mailbox the poller (or a foreground
import) skipped because capturing them failed (an unreadable message, a value the database
refused, an error while capturing it), not those the rules leave out (robots, exclusions...);
``last_fault`` and ``last_fault_at``: the last such reason and when. Written in the transaction
that moves the folder's checkpoint past the message.

Revision ID: 0110
Revises: 0100
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0110"
down_revision = "0100"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailboxes") as batch:
        batch.add_column(
            sa.Column("skipped_faults", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("last_fault", sa.Text(), nullable=True))
        batch.add_column(sa.Column("last_fault_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailboxes") as batch:
        batch.drop_column("last_fault_at")
        batch.drop_column("last_fault")
        batch.drop_column("skipped_faults")
