"""The DAV change log's rows carry when they were written (SPEC B8: pruned to a retention)

``dav_changes.created_at``: set by the database (``CURRENT_TIMESTAMP``) on every insert, the ORM's
and the bulk ``INSERT ... SELECT`` of moves alike; rows already there get the time of this
migration, so a first prune deletes nothing until they are ``change_log_days`` old. An index on
it finds the newest row older than the retention in one lookup.

Revision ID: 0130
Revises: 0120
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0130"
down_revision = "0120"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite cannot ADD COLUMN with a non-constant default: the table is copied (the copy takes
    # it); PostgreSQL adds it in place, every row getting the one time of the ALTER
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("dav_changes", recreate="always" if sqlite else "auto") as batch:
        batch.add_column(
            sa.Column(
                "created_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.text("CURRENT_TIMESTAMP"),
            )
        )
        batch.create_index("ix_dav_changes_created_at", ["created_at"])


def downgrade() -> None:
    with op.batch_alter_table("dav_changes", recreate="always") as batch:
        batch.drop_index("ix_dav_changes_created_at")
        batch.drop_column("created_at")
