"""poller: 64-bit IMAP UIDVALIDITY, UIDs and MODSEQs

UIDVALIDITY and UIDs are unsigned 32-bit numbers and MODSEQs 63-bit ones (RFC 3501, RFC 7162):
PostgreSQL's INTEGER (signed 32-bit) cannot hold them all. SQLite's INTEGER already can; the
columns are re-declared there too so that the schema matches the models.

Revision ID: 0020
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = {
    "message_locations": ("uidvalidity", "uid"),
    "folder_states": ("uidvalidity", "last_uid", "highest_modseq"),
}


def _retype(old: sa.types.TypeEngine[int], new: sa.types.TypeEngine[int]) -> None:
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, existing_type=old, type_=new, existing_nullable=False)


def upgrade() -> None:
    _retype(sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    _retype(sa.BigInteger(), sa.Integer())
