"""When an activity was completed (issue 16: a completed VTODO's COMPLETED)

``activities.completed_at``: set whenever ``completed`` turns true (CLI, web, DAV, the server's
\\Seen), cleared when it is reopened; NULL for activities completed before this revision (the
DAV front end then falls back to the mail's date).

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


def downgrade() -> None:
    with op.batch_alter_table("activities") as batch:
        batch.drop_column("completed_at")
