"""T1/T2 made visible: ``mailbox show --json`` and the status page tell each mailbox's check
schedule, and every authenticated use of mailcrm by the owner (the relay, their password given
to the CLI, an import of their mailbox) counts as the owner being active.

Role: CLI-driven tests; the import runs against the real Dovecot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from crm.config import Config
from crm.store.db import Database
from crm.store.models import Mailbox, User, utcnow
from proxy.web.page import render
from proxy.web.status import gather
from tests.conftest import Cli
from tests.pollerkit import MailEnv
from tests.servers import Dovecot

BOB = "bob@example.com"


def age(url: str, email: str, days: float = 2) -> None:
    """The owner last used mailcrm, and linked the mailbox, ``days`` ago."""
    then = utcnow() - dt.timedelta(days=days)
    db = Database(url, migrate=False)
    try:
        with db.session() as s:
            s.execute(update(User).where(User.email == email).values(last_active_at=then))
            s.execute(update(Mailbox).values(linked_at=then))
    finally:
        db.dispose()


def schedule(cli: Cli, address: str) -> dict[str, Any]:
    found: dict[str, Any] = cli.json("mailbox", "show", address)["schedule"]
    return found


def test_schedules_of_company_personal_and_unlinked_mailboxes(cli: Cli) -> None:
    cli.ok("user", "add", BOB)
    cli.ok("mailbox", "add", "sales@example.com", "--company", "--interval", "5m")
    sales = schedule(cli, "sales@example.com")
    assert (sales["mode"], sales["interval_s"]) == ("interval", 300)
    assert sales["next_check"] is not None

    cli.ok("mailbox", "add", BOB, "--owner", BOB, "--preset", "gmail", "--password-stdin",
           input="pw\n")  # fmt: skip
    bob = schedule(cli, BOB)
    assert bob["mode"] == "active" and bob["owner_last_active"] is not None
    age(cli.env["MAILCRM_DATABASE_URL"], BOB)
    assert schedule(cli, BOB)["mode"] == "daily"
    cli.ok("mailbox", "set", BOB, "--password-stdin", input="pw\n")
    assert schedule(cli, BOB)["mode"] == "active", "the owner's password given to the CLI counts"

    cli.ok("mailbox", "set", BOB, "--no-link")
    off = schedule(cli, BOB)
    assert (off["mode"], off["next_check"]) == ("off", None)


def test_status_page_shows_the_schedule(cli: Cli, db_url: str) -> None:
    cli.ok("mailbox", "add", "sales@example.com", "--company", "--interval", "1h")
    config = Config(database_url=db_url)
    config.http.enabled = False
    db = Database(db_url)
    try:
        snap = asyncio.run(gather(config, db))
    finally:
        db.dispose()
    (box,) = snap.mailboxes
    assert box["schedule"]["mode"] == "interval"
    assert "interval, next " in render(snap)


@pytest.mark.servers
def test_an_import_of_the_owners_mailbox_counts_as_the_owner_active(
    dovecot: Dovecot, cli: Cli, tmp_path: Path
) -> None:
    env = MailEnv(dovecot, cli, tmp_path)
    env.link()
    age(env.url, env.address)
    assert schedule(cli, env.address)["mode"] == "daily"
    cli.ok("mailbox", "import", env.address)
    assert schedule(cli, env.address)["mode"] == "active"
