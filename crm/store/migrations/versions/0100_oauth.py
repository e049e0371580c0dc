"""OAuth2 mailboxes (issue 15): mailboxes.auth and .oauth_provider, oauth_providers,
mailbox_oauth (sealed refresh/access tokens, their times, the refusal, the app password hash)

Revision ID: 0100
Revises: 0090
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0100"
down_revision = "0090"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailboxes") as batch:
        batch.add_column(
            sa.Column("auth", sa.String(length=10), nullable=False, server_default="password")
        )
        batch.add_column(sa.Column("oauth_provider", sa.String(length=40), nullable=True))
    op.create_table(
        "oauth_providers",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("authorize_url", sa.String(length=2000), nullable=False),
        sa.Column("token_url", sa.String(length=2000), nullable=False),
        sa.Column("device_url", sa.String(length=2000), nullable=True),
        sa.Column("client_id", sa.String(length=500), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_oauth_providers")),
    )
    op.create_table(
        "mailbox_oauth",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("refresh", sa.LargeBinary(), nullable=True),
        sa.Column("access", sa.LargeBinary(), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshes", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Text(), nullable=True),
        sa.Column("app_password", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_mailbox_oauth_mailbox_id_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("mailbox_id", name=op.f("pk_mailbox_oauth")),
    )


def downgrade() -> None:
    op.drop_table("mailbox_oauth")
    op.drop_table("oauth_providers")
    with op.batch_alter_table("mailboxes") as batch:
        batch.drop_column("oauth_provider")
        batch.drop_column("auth")
