"""The one small layer through which mailcrm reaches its database.

``Database(url)`` makes the engine (SQLite file by default, PostgreSQL for a gateway), migrates a
fresh or old schema with Alembic on first use, and hands out sessions. Nothing else in mailcrm
creates engines or runs DDL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from crm.errors import ConfigError, MailcrmError

log = logging.getLogger("crm.db")  # its name before the move (issue 17)
MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(
            f"not a database URL: {url!r} (use sqlite:///PATH or postgresql+psycopg://...)"
        ) from exc
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(engine: Engine) -> AlembicConfig:
    """Alembic configured for this package's migrations and ``engine``."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


class Database:
    """Engine + session factory for one database URL."""

    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            self.upgrade_if_needed()

    def current_revisions(self) -> set[str]:
        """The schema revisions the database is at (empty when it is new)."""
        with self.engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())

    def head_revisions(self) -> set[str]:
        """The newest revisions this version of mailcrm knows."""
        return set(ScriptDirectory.from_config(alembic_config(self.engine)).get_heads())

    def upgrade_if_needed(self) -> bool:
        """Migrate to the newest schema when behind; True when something was done."""
        try:
            if self.current_revisions() == self.head_revisions():
                return False
        except OperationalError as exc:
            raise MailcrmError(f"cannot open database {self.safe_url}: {exc.orig}") from exc
        self.upgrade()
        return True

    def upgrade(self) -> None:
        """Run every pending Alembic migration."""
        log.info("migrating database %s", self.safe_url)
        command.upgrade(alembic_config(self.engine), "heads")

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
