"""users.sees, contacts.created_by_id: the visibility rule (SPEC V1)

``users.sees`` is ``own`` or ``all``; existing admins see everything. ``contacts.created_by_id``
is the person who made a contact (a conversion, a web or DAV write), so they keep seeing it.
Indexes on ``leads.responsible_id`` and ``contacts.created_by_id`` keep the rule's queries fast.

Revision ID: 0050
Revises: 0040
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0050"
down_revision = "0040"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("sees", sa.String(length=8), nullable=False, server_default="own")
        )
    op.execute(sa.text("UPDATE users SET sees = 'all' WHERE admin"))
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("created_by_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_contacts_created_by_id_users",
            "users",
            ["created_by_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index("ix_contacts_created_by_id", ["created_by_id"])
    op.create_index("ix_leads_responsible_id", "leads", ["responsible_id"])


def downgrade() -> None:
    op.drop_index("ix_leads_responsible_id", table_name="leads")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_index("ix_contacts_created_by_id")
        batch.drop_constraint("fk_contacts_created_by_id_users", type_="foreignkey")
        batch.drop_column("created_by_id")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("sees")
