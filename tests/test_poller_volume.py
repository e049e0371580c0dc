"""The poller with many messages: kill -9 during a 2,000-message import, a 5,000-message folder.

Role: integration tests of B1 for the poller (a crash at any point: nothing missed, nothing
doubled) and of the bounded chunks that keep aioimaplib's parser (issue #118) and memory safe.
SQLite only: the database engine is not what these tests are about.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from crm.store.db import Database
from crm.store.models import Activity, MessageLocation
from tests.conftest import Cli
from tests.pollerkit import MailEnv, message, until
from tests.servers import Dovecot, dovecot

__all__ = ["dovecot"]
pytestmark = pytest.mark.servers


@pytest.fixture
def env(dovecot: Dovecot, sqlite_cli: Cli, tmp_path: Path) -> MailEnv:
    """A fresh Dovecot user and SQLite CRM database."""
    return MailEnv(dovecot, sqlite_cli, tmp_path)


def _fill(env: MailEnv, count: int, folder: str = "INBOX") -> None:
    for n in range(count):
        sender = f"Client {n % 97} <client{n % 97}@firm{n % 13}.example>"
        env.deliver(message(sender, env.address, f"request {n}", body=f"n={n}\r\n" * 20), folder)


def _completed(env: MailEnv) -> int:
    db = Database(env.url, migrate=False)
    try:
        with db.session() as s:
            query = select(func.count()).select_from(Activity).where(Activity.completed)
            return int(s.scalar(query) or 0)
    finally:
        db.dispose()


def _duplicates(env: MailEnv) -> int:
    db = Database(env.url, migrate=False)
    try:
        with db.session() as s:
            per_uid = (
                select(MessageLocation.uid, func.count().label("n"))
                .group_by(MessageLocation.folder, MessageLocation.uid)
                .subquery()
            )
            return int(s.scalar(select(func.count()).where(per_uid.c.n > 1)) or 0)
    finally:
        db.dispose()


async def test_kill_during_import_then_restart_gives_every_message_once(
    env: MailEnv, tmp_path: Path
) -> None:
    env.link("--since", "all")
    _fill(env, 2000)
    log = tmp_path / "poller.log"
    first = env.spawn(log)
    try:
        await until(lambda: env.count() >= 300, timeout=120, every=0.02, what="import under way")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    killed_at = env.count()
    assert 300 <= killed_at < 2000, f"kill came too late ({killed_at} captured)"
    second = env.spawn(log)
    try:
        await until(
            lambda: env.count() == 2000 and env.checkpoints().get("INBOX", (0, 0))[1] == 2000,
            timeout=300,
            what="import finished after the restart",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert env.count(MessageLocation) == 2000
    assert _duplicates(env) == 0
    subjects = {a["subject"] for a in env.activities()}
    assert subjects == {f"request {n}" for n in range(2000)}


async def test_five_thousand_messages_synced_and_flag_scanned(env: MailEnv) -> None:
    env.link("--since", "all", "--folders", "INBOX")
    _fill(env, 5000)
    async with env.poller():
        await until(lambda: env.count() == 5000, timeout=600, what="5,000 captured")
        with env.imap() as conn:
            conn.uid("STORE", "1:3000", "+FLAGS.SILENT", "(\\Seen)")
        await until(lambda: _completed(env) == 3000, timeout=300, what="QRESYNC flag scan")
        # the scan may be the first pass's own: its status is recorded when that pass ends
        await until(lambda: env.mailbox()["status"] == "green", what="status green")
    env.write_config(use_qresync=False)
    async with env.poller():
        await until(lambda: env.mailbox()["last_error"] is None, what="connected again")
        with env.imap() as conn:
            conn.uid("STORE", "3001:4000", "+FLAGS.SILENT", "(\\Seen)")
            conn.uid("STORE", "4901:5000", "+FLAGS.SILENT", "(\\Deleted)")
            conn.expunge()
        await until(
            lambda: _completed(env) == 4000 and env.count() == 4900,
            timeout=300,
            what="full flag scan",
        )
        assert env.mailbox()["status"] == "green"
    assert env.count(MessageLocation) == 4900
