"""activities.alt_message_id: the rewritten Message-ID of a copy (B3 threads through it)

Exchange and Gmail give the Sent copy of a message a new Message-ID and keep the original in
X-Microsoft-Original-Message-ID / X-Google-Original-Message-ID; replies quote the new one.

Revision ID: 0030
Revises: 0020
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("activities") as batch:
        batch.add_column(sa.Column("alt_message_id", sa.String(length=998), nullable=True))
        batch.create_index("ix_activities_alt_message_id", ["alt_message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("activities") as batch:
        batch.drop_index("ix_activities_alt_message_id")
        batch.drop_column("alt_message_id")
