"""What the admin is told is really missing (issue 14): a mailbox without its password, a folder
the server does not have, and what ``--since all`` on a linked mailbox does to older mail.

Role: CLI-driven tests (in-process, as a script runs mailcrm), against a real Dovecot where the
server has to be asked; the status page read over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import update

from crm.store.db import Database
from crm.store.models import Mailbox
from tests.conftest import Cli
from tests.pollerkit import PASSWORD, MailEnv, message, until
from tests.servers import Dovecot, dovecot
from tests.test_http import node_config, start_http

__all__ = ["dovecot"]

INFO = "info@example.com"
CUSTOMER = "Carla Customer <carla@acme-industries.example>"
LOCAL = ("--imap-host", "127.0.0.1", "--smtp-host", "127.0.0.1", "--smtp-tls", "starttls")


async def status_page(url: str) -> tuple[str, str]:
    """``/status.json`` and ``/`` of an HTTP listener on the database."""
    db = Database(url)
    try:
        async for get in start_http(node_config(url), db):
            _, body = await get("/status.json")
            _, page = await get("/")
    finally:
        db.dispose()
    return body, page


def test_a_missing_password_is_named_in_check_and_on_the_status_page(
    sqlite_cli: Cli, sqlite_url: str
) -> None:
    sqlite_cli.ok("mailbox", "add", INFO, "--company", *LOCAL)
    box = sqlite_cli.json("mailbox", "show", INFO)
    assert box["status"] == "red" and box["status_reason"].startswith("no password stored")
    body, page = asyncio.run(status_page(sqlite_url))
    [shown] = json.loads(body)["mailboxes"]
    assert shown["status_reason"] == f"no password stored (mailbox set {INFO} --password-stdin)"
    assert f"no password stored (mailbox set {INFO} --password-stdin)" in page
    checked = sqlite_cli.run("mailbox", "check", INFO)
    assert checked.exit_code == 1
    assert "SMTP: no password stored" in checked.stdout
    assert "not configured" not in checked.stdout
    assert "IMAP: no password stored" in checked.stdout
    assert checked.stderr.count("no password stored") == 1
    report = json.loads(sqlite_cli.run("mailbox", "check", INFO, "--json").stdout)
    assert report["smtp"].startswith("no password stored") and not report["ok"]


def test_folders_without_a_password_are_checked_later(sqlite_cli: Cli) -> None:
    text = sqlite_cli.ok("mailbox", "add", INFO, "--company", *LOCAL, "--folders", "INBOX,Archiv")
    assert "folders INBOX, Archiv not checked (no password stored" in text
    assert f"mailcrm mailbox check {INFO}" in text
    assert sqlite_cli.json("mailbox", "show", INFO)["settings"]["folders"] == ["INBOX", "Archiv"]


@pytest.fixture
def env(dovecot: Dovecot, cli: Cli, tmp_path: Path) -> MailEnv:
    """A fresh Dovecot user and CRM database (SQLite and PostgreSQL)."""
    return MailEnv(dovecot, cli, tmp_path)


def _folder(env: MailEnv, command: str, name: str) -> None:
    with env.imap(folder="") as conn:
        typ, data = getattr(conn, command)(name)
        assert typ == "OK", data


def _forget_status(env: MailEnv) -> None:
    db = Database(env.url)
    try:
        with db.session() as s:
            s.execute(update(Mailbox).values(last_error=None, last_check_at=None, last_ok_at=None))
    finally:
        db.dispose()


@pytest.mark.servers
async def test_a_folder_the_server_does_not_have_is_named_at_add_set_check_and_polling(
    env: MailEnv,
) -> None:
    cli = env.cli
    run = asyncio.to_thread
    await run(cli.ok, "user", "add", env.address)
    add = ("mailbox", "add", env.address, "--owner", env.address, "--imap-host", "127.0.0.1",
           "--imap-port", str(env.dovecot.imaps_port), "--password-stdin")  # fmt: skip
    refused = await run(cli.run, *add, "--folders", "INBOX,Nope", input=PASSWORD + "\n")
    assert refused.exit_code == 1, refused.stdout
    assert "folder Nope not on the server" in refused.stderr
    assert (await run(cli.run, "mailbox", "show", env.address)).exit_code == 1, "nothing added"
    _folder(env, "create", "Archive")
    text = await run(cli.ok, *add, "--folders", "INBOX,Archive", input=PASSWORD + "\n")
    assert "folders INBOX, Archive found on the server" in text
    refused = await run(cli.run, "mailbox", "set", env.address, "--folders", "Archive,Gone")
    assert refused.exit_code == 1 and "folder Gone not on the server" in refused.stderr
    assert env.mailbox()["settings"]["folders"] == ["INBOX", "Archive"]
    _folder(env, "delete", "Archive")
    checked = await run(cli.run, "mailbox", "check", env.address)
    assert checked.exit_code == 1 and "folder Archive not on the server" in checked.stderr
    assert env.mailbox()["status_reason"] == "folder Archive not on the server"
    _forget_status(env)  # the check's verdict forgotten: the next one is the poller's own
    assert env.mailbox()["status_reason"] == "not checked yet"
    async with env.poller():
        await until(
            lambda: env.mailbox()["status_reason"] == "folder Archive not on the server",
            what="the poller's verdict",
        )


@pytest.mark.servers
async def test_since_all_on_a_polled_mailbox_says_the_import_brings_the_older_mail(
    env: MailEnv,
) -> None:
    env.deliver(message(CUSTOMER, env.address, "ten days old", days_ago=10), days_ago=10)
    env.deliver(message(CUSTOMER, env.address, "today"))
    await asyncio.to_thread(env.link)
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="first pass")
    assert [a["subject"] for a in env.activities()] == ["today"]
    text = await asyncio.to_thread(env.cli.ok, "mailbox", "set", env.address, "--since", "all")
    assert "the older mail it passed over is imported by " in text
    assert f"`mailcrm mailbox import {env.address}`" in text
    done = await asyncio.to_thread(env.cli.json, "mailbox", "import", env.address)
    assert (done["since"], done["imported"]) == ("all", 1)
    assert sorted(a["subject"] for a in env.activities()) == ["ten days old", "today"]
    again = await asyncio.to_thread(env.cli.ok, "mailbox", "set", env.address, "--since", "all")
    assert "import" not in again, "the same window again: nothing to say"


def test_status_json_of_the_cli_names_no_node(sqlite_cli: Cli, sqlite_url: str) -> None:
    status = sqlite_cli.json("status")
    assert status["node"] is None, "the CLI process is no node of the cluster"
    assert status["nodes"] == []
    body, page = asyncio.run(status_page(sqlite_url))
    assert json.loads(body)["node"] == "node-test", "a serve node's own page names it"
    assert "node <b>node-test</b>" in page
