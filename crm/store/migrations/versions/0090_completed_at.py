"""When an activity was completed, and how often its state changed (issue 16: a VTODO's
COMPLETED and SEQUENCE)

``activities.completed_at``: set whenever ``completed`` turns true (CLI, web, DAV, the server's
\\Seen), cleared when it is reopened; NULL for activities completed before this revision (the
DAV front end then falls back to the mail's date). ``activities.status_changes``: how many times
it was completed or reopened, the VTODO's SEQUENCE (a reopened to-do then never reads as the
one before its completion, which a client such as vdirsyncer would take for unchanged).

Revision ID: 0090
Revises: 0080
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0090"
down_revision = "0080"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("activities") as batch:
        batch.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("status_changes", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("activities") as batch:
        batch.drop_column("status_changes")
        batch.drop_column("completed_at")
