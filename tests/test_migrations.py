"""The Alembic migrations create exactly the schema of the models (``crm/store/models.py``), on
SQLite and PostgreSQL, and ``mailcrm db upgrade`` migrates a fresh database.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from crm.store.db import Database, alembic_config, in_models
from crm.store.models import Base
from tests.conftest import Cli


def schema_differences(database: Database) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match the models."""
    with database.engine.connect() as conn:
        opts = {"compare_type": True, "compare_server_default": True, "include_object": in_models}
        context = MigrationContext.configure(conn, opts=opts)
        with warnings.catch_warnings():  # PostgreSQL's txid (DATABASE_ONLY): no SQLAlchemy type
            warnings.filterwarnings("ignore", "Did not recognize type 'xid8'")
            return list(compare_metadata(context, Base.metadata))


def assert_at_head(db_url: str) -> None:
    """The database is at the newest revision with exactly the models' schema."""
    database = Database(db_url, migrate=False)
    try:
        assert database.current_revisions() == database.head_revisions()
        assert schema_differences(database) == []
    finally:
        database.dispose()


def test_migrations_create_exactly_the_models_schema(db: Database) -> None:
    assert schema_differences(db) == []
    assert db.current_revisions() == db.head_revisions()
    tables = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
    assert tables == set(Base.metadata.tables)


def test_upgrade_step_by_step_from_the_first_revision_keeps_data(db_url: str) -> None:
    database = Database(db_url, migrate=False)
    try:
        config = alembic_config(database.engine)
        revisions = list(ScriptDirectory.from_config(config).walk_revisions())
        first = revisions[-1].revision
        command.upgrade(config, first)
        with database.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO users (email, name, admin, crm_access, created_at) "
                "VALUES ('bob@example.com', 'Bob', false, true, CURRENT_TIMESTAMP)"
            )
        assert database.upgrade_if_needed() is True
        assert schema_differences(database) == []
        with database.engine.connect() as conn:
            emails = [row[0] for row in conn.exec_driver_sql("SELECT email FROM users")]
        assert emails == ["bob@example.com"]
    finally:
        database.dispose()


def test_db_upgrade_on_a_fresh_database(cli: Cli, db_url: str) -> None:
    first = cli.ok("db", "upgrade")
    assert "migrated" in first
    again = cli.ok("db", "upgrade")
    assert "is up to date" in again
    assert_at_head(db_url)
    assert cli.json("user", "list") == []


def test_processes_starting_together_on_a_new_database_all_open_it(db_url: str) -> None:
    """Several nodes (or CLI calls) reaching a new database at once: one migrates, the others
    wait for it and find the schema current; none fails (before, most runs lost one or more to
    "table already exists" or Alembic's "expected to match one row")."""
    code = "import sys; from crm.store.db import Database; Database(sys.argv[1]).dispose()"
    root = Path(__file__).parent.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, db_url], cwd=root, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], errors
    assert_at_head(db_url)


def test_the_change_log_keeps_its_rows_and_dates_them_at_the_upgrade(db_url: str) -> None:
    """0130 adds ``dav_changes.created_at``: rows logged before keep their ids (clients' sync
    tokens) and count from the upgrade; new rows get the database's time."""
    database = Database(db_url, migrate=False)
    try:
        config = alembic_config(database.engine)
        command.upgrade(config, "0120")
        with database.engine.begin() as conn:
            for n in (1, 2, 3):
                conn.exec_driver_sql(
                    f"INSERT INTO dav_changes (entity_type, entity_id) VALUES ('lead', {n})"
                )
        assert database.upgrade_if_needed() is True
        with database.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO dav_changes (entity_type, entity_id) VALUES ('lead', 9)"
            )
            rows = conn.exec_driver_sql("SELECT id, created_at FROM dav_changes ORDER BY id").all()
        assert [row[0] for row in rows] == [1, 2, 3, 4]
        assert all(row[1] is not None for row in rows)
        assert schema_differences(database) == []
    finally:
        database.dispose()
