"""Indexes for the web CRM's pages on a large CRM (issue 18's speed)

``leads.company_id`` and ``contacts.company_id`` (the visibility rule's probe from a company to
its people, and a company's page), ``leads.created_at`` (the dashboard's new leads per week),
and ``activities (completed, id DESC)`` (/activities: open ones first, newest first, read off the
index instead of sorting the table).

Revision ID: 0080
Revises: 0070
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0080"
down_revision = "0070"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_leads_company_id", "leads", ["company_id"])
    op.create_index("ix_leads_created_at", "leads", ["created_at"])
    op.create_index("ix_contacts_company_id", "contacts", ["company_id"])
    op.create_index("ix_activities_open_first", "activities", ["completed", sa.text("id DESC")])


def downgrade() -> None:
    op.drop_index("ix_activities_open_first", table_name="activities")
    op.drop_index("ix_contacts_company_id", table_name="contacts")
    op.drop_index("ix_leads_created_at", table_name="leads")
    op.drop_index("ix_leads_company_id", table_name="leads")
