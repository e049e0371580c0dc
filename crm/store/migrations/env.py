"""Alembic environment: runs migrations on the engine handed over by :mod:`crm.store.db`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from crm.store.models import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):  # pragma: no cover - only when alembic is run by hand
    raise RuntimeError("run migrations with `mailcrm db upgrade`")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
