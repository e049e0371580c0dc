"""leases.requested_by, leases.requested_until: a foreground import asks for a mailbox (B7)

``mailcrm mailbox import`` marks the lease row of the mailbox it wants; the serve node holding it
stops renewing it and hands it over, and takes none back while the request is alive.

Revision ID: 0040
Revises: 0030
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0040"
down_revision = "0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("requested_by", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("requested_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("requested_until")
        batch.drop_column("requested_by")
