"""The one small layer through which mailcrm reaches its database.

``Database(url)`` makes the engine (SQLite file by default, PostgreSQL for a gateway), migrates a
fresh or old schema with Alembic on first use, and hands out sessions. Nothing else in mailcrm
creates engines or runs DDL.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from crm.errors import ConfigError, MailcrmError

from . import changes as changes  # every session logs DAV changes (crm/store/changes.py)

log = logging.getLogger("crm.db")  # its name before the move (issue 17)
MIGRATIONS = Path(__file__).parent / "migrations"


BUSY_TIMEOUT_MS = 30000
# PostgreSQL advisory lock key held while migrating: nodes started together on a new database
# take turns instead of running the same migrations at once (one of them would fail).
MIGRATION_LOCK_KEY = zlib.crc32(b"mailcrm migrations")


# Columns and indexes a migration adds on one engine only, which the models do not name (the
# schema check, tests/test_migrations.py, leaves them out): PostgreSQL's transaction of each DAV
# change (migration 0140).
DATABASE_ONLY = {"dav_changes.txid", "ix_dav_changes_txid"}


def in_models(obj: Any, name: str | None, type_: str, reflected: bool, _other: Any) -> bool:
    """Alembic's ``include_object`` for comparing the models with a database: all but
    :data:`DATABASE_ONLY`."""
    table = getattr(getattr(obj, "table", None), "name", None)
    full = f"{table}.{name}" if type_ == "column" else str(name)
    return not (reflected and full in DATABASE_ONLY)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def _private_file(path: Path) -> None:
    """Create the SQLite file (and its directory, when new) for its owner only: 0600 in 0700.

    SQLite gives its -wal, -shm and -journal files the mode of the database file. An existing
    file keeps its mode (an admin may have shared it on purpose).
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


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
        if parsed.database and parsed.database != ":memory:" and not parsed.query.get("mode"):
            _private_file(Path(parsed.database))
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


def url_has_password(url: str) -> bool:
    """True when the database URL carries a password (a bad URL has none to show)."""
    try:
        return bool(make_url(url).password)
    except (ArgumentError, ValueError):
        return False


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
        """Migrate to the newest schema when behind; True when something was done.

        Processes that find the schema behind at the same moment (several nodes or CLI calls
        on a new database) migrate one at a time: each looks again once it holds the lock, so
        only the first one migrates and the others find the schema current.
        """
        try:
            if self.current_revisions() == self.head_revisions():
                return False
            with self._migration_lock():
                if self.current_revisions() == self.head_revisions():
                    return False
                self._upgrade()
        except OperationalError as exc:
            raise MailcrmError(f"cannot open database {self.safe_url}: {exc.orig}") from exc
        return True

    def upgrade(self) -> None:
        """Run every pending Alembic migration (one process at a time)."""
        with self._migration_lock():
            self._upgrade()

    def _upgrade(self) -> None:
        log.info("migrating database %s", self.safe_url)
        command.upgrade(alembic_config(self.engine), "heads")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """Hold the lock that lets one process at a time migrate this database.

        PostgreSQL: a session advisory lock on a connection of its own. SQLite file: an
        exclusive ``flock`` on a file beside the database (never on the database file itself:
        closing another descriptor of it would drop SQLite's own locks). In-memory SQLite
        belongs to one process and needs none.
        """
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                    conn.commit()
            return
        database = self.engine.url.database
        if not database or database == ":memory:" or self.engine.url.query.get("mode"):
            yield
            return
        fd = os.open(f"{database}-migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def check_writable(self, wait: float) -> None:
        """Raise unless the database takes a write now (for health checks; nothing is kept).

        SQLite: a write in a transaction that is rolled back, waiting at most ``wait`` seconds
        for the write lock (a file opened read-only or locked by another writer fails; such a
        connection is dropped so the next one opens afresh). PostgreSQL: a query, and the
        server must not be read-only (a standby, ``default_transaction_read_only``).
        """
        with self.engine.connect() as conn:
            if self.engine.dialect.name != "sqlite":
                if conn.execute(text("SHOW transaction_read_only")).scalar() == "on":
                    raise MailcrmError("database is read-only")
                conn.rollback()
                return
            conn.exec_driver_sql(f"PRAGMA busy_timeout={int(wait * 1000)}")
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                conn.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
            except OperationalError:
                conn.invalidate()
                raise
            finally:
                if not conn.invalidated:
                    conn.exec_driver_sql("ROLLBACK")
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    @property
    def single_writer(self) -> bool:
        """True for SQLite: one writer at a time, so more writing threads gain nothing."""
        return self.engine.dialect.name == "sqlite"

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
