"""What the admin is told is really missing (issue 14): a mailbox without its password, a folder
the server does not have, and what ``--since all`` on a linked mailbox does to older mail.

Role: CLI-driven tests (in-process, as a script runs mailcrm), against a real Dovecot where the
server has to be asked; the status page read over real HTTP.
"""

from __future__ import annotations

import asyncio
import json

from crm.store.db import Database
from tests.conftest import Cli
from tests.test_http import node_config, start_http

INFO = "info@example.com"
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
