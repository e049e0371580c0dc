"""leads.phones and dav_changes: what the CardDAV/CalDAV front end needs (issue 16)

``leads.phones``: a lead's telephone numbers, edited from an address book like a contact's.
``dav_changes``: one row per change of a lead, contact, company or activity, written in the
transaction that makes the change (:mod:`crm.store.changes`). Its ids are the sync tokens and
collection tags of the DAV collections: "what changed since token N" is a range scan on the key.
Rows hold no data, only which record changed; deleted records leave their row (the tombstone).

Revision ID: 0070
Revises: 0040
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0070"
down_revision = "0050"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("phones", sa.JSON(), nullable=True))
    op.execute("UPDATE leads SET phones = '[]'")
    with op.batch_alter_table("leads") as batch:
        batch.alter_column("phones", existing_type=sa.JSON(), nullable=False)
    op.create_table(
        "dav_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entity_type", sa.String(length=10), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dav_changes"),
    )
    op.create_index("ix_dav_changes_kind", "dav_changes", ["entity_type", "id"])


def downgrade() -> None:
    op.drop_index("ix_dav_changes_kind", table_name="dav_changes")
    op.drop_table("dav_changes")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("phones")
