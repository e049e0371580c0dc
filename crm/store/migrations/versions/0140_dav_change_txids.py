"""On PostgreSQL, each DAV change row names the transaction that wrote it (sync tokens, SPEC B8)

``dav_changes.txid`` (``xid8``, set by ``pg_current_xact_id()``). Change ids come from a sequence
and become visible when their transaction commits, not in id order: a change whose transaction
took a lower id but committed after a client synced would never reach that client. A sync token
on PostgreSQL therefore also carries the oldest transaction still running when it was made
(``pg_snapshot_xmin``); the next sync sends the changes after the token's id and those of any
transaction from then on (``txid >= xmin``), indexed. SQLite has one writer at a time and needs
none of it: the column is PostgreSQL's only, so the models do not name it
(``crm.store.db.DATABASE_ONLY``).

Revision ID: 0140
Revises: 0130
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0140"
down_revision = "0130"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE dav_changes ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id()")
    op.create_index("ix_dav_changes_txid", "dav_changes", ["txid"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_dav_changes_txid", "dav_changes")
    op.drop_column("dav_changes", "txid")
