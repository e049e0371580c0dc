"""Shared fixtures: a fresh CRM database per test (SQLite file and PostgreSQL schema), the CLI
run in-process, and builders for raw messages."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from crm.store.db import Database
from tests.servers import dovecot, postfix

__all__ = ["dovecot", "postfix"]  # one Dovecot and one Postfix for the whole session

PG_ADMIN_URL = os.environ.get(
    "MAILCRM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DATA = Path(__file__).parent / "data"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The relay's tests run on uvloop, the loop ``mailcrm serve`` runs them on (where it is
    installed); the others on asyncio's own loop. The two order a connection's events
    differently, and the relay's connection handling has depended on that order.
    ``MAILCRM_TEST_LOOP=uvloop`` runs every test on uvloop, ``=asyncio`` none."""
    choice = os.environ.get("MAILCRM_TEST_LOOP", "")
    wanted = choice == "uvloop" or (choice != "asyncio" and item.path.name.startswith("test_relay"))
    try:
        import uvloop
    except ImportError:
        wanted = False
    if wanted:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    return f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'crm.db'}"
        return
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # pragma: no cover - only without the server
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}")
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database URL, for tests that need only one engine."""
    return f"sqlite:///{tmp_path / 'crm.db'}"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """The migrated database behind ``db_url``."""
    database = Database(db_url)
    yield database
    database.dispose()


class Cli:
    """Runs ``mailcrm`` in-process against one database, like a script would."""

    def __init__(self, db_url: str, home: Path) -> None:
        self.env = {
            "MAILCRM_DATABASE_URL": db_url,
            "MAILCRM_SECRET_KEY": Fernet.generate_key().decode(),
            "XDG_DATA_HOME": str(home),
        }
        self.runner = CliRunner()

    def run(self, *args: str, input: str | bytes | None = None) -> Any:
        """Run and return the click Result (exit_code, stdout, stderr)."""
        from cli import app

        return self.runner.invoke(app, list(args), input=input, env=self.env)

    def ok(self, *args: str, input: str | bytes | None = None) -> str:
        """Run, insist on exit 0, return stdout."""
        result = self.run(*args, input=input)
        assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
        return str(result.stdout)

    def json(self, *args: str, input: str | bytes | None = None) -> Any:
        """Run with --json and parse stdout (which must be only JSON)."""
        return json.loads(self.ok(*args, "--json", input=input))


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Cli:
    """The CLI on a fresh database (SQLite and PostgreSQL)."""
    return Cli(db_url, tmp_path / "home")


@pytest.fixture
def sqlite_cli(sqlite_url: str, tmp_path: Path) -> Cli:
    """The CLI on a fresh SQLite database only."""
    return Cli(sqlite_url, tmp_path / "home")
