"""C12 as a user meets it: the import window is for the history found at linking, never for
live mail (sent through the relay, or arriving after linking), whatever its Date header says;
``mailcrm capture`` of an old archive says how many it left out for the window.

Role: integration tests against the real Postfix/Dovecot (relay, poller) and the CLI.
"""

from __future__ import annotations

import asyncio
import email.utils
import mailbox
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.pollerkit import MailEnv, message, until
from tests.relaykit import eventually, running
from tests.servers import Dovecot, Postfix

pytestmark = pytest.mark.servers
CUSTOMER = "Carla Customer <carla@acme-industries.example>"
OLD = email.utils.formatdate(time.time() - 10 * 86400)


def dated(raw: bytes, date: str) -> bytes:
    """``raw`` with its Date header replaced."""
    return re.sub(rb"Date: [^\r\n]*", f"Date: {date}".encode(), raw, count=1)


async def test_old_dated_mail_sent_through_the_relay_now_is_captured(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(cli, db_url, tmp_path, postfix) as env:
        alice = env.user("alice")
        draft = message(alice, "Otto <otto@oldclock-firm.example>", "Draft from last week")
        raw = dated(draft, OLD)
        smtp = await env.login(alice)  # links alice's mailbox now
        await smtp.sendmail(alice, ["otto@oldclock-firm.example"], raw)
        await smtp.quit()
        await env.delivered("otto@oldclock-firm.example")
        found = await eventually(lambda: cli.json("activities", "list"))
    assert [a["subject"] for a in found] == ["Draft from last week"]


async def test_window_takes_history_but_never_mail_arriving_after_linking(
    dovecot: Dovecot, cli: Cli, tmp_path: Path
) -> None:
    env = MailEnv(dovecot, cli, tmp_path, active_interval_s=2)  # IDLE, or the next check
    # History arrived before linking (INTERNALDATE a minute back: mail of the very second of
    # linking counts as live, as it may have come after it)
    env.deliver(dated(message(CUSTOMER, env.address, "Old history"), OLD), days_ago=10)
    env.deliver(message(CUSTOMER, env.address, "Recent history"), days_ago=60 / 86400)
    env.link()
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="first pass")
        await until(lambda: len(env.activities()) == 1, what="history captured")
        await asyncio.sleep(0.3)  # as in test_poller: into IDLE first
        env.deliver(dated(message(CUSTOMER, env.address, "Late delivery"), OLD))
        await until(lambda: len(env.activities()) == 2, what="late delivery captured")
    assert sorted(a["subject"] for a in env.activities()) == ["Late delivery", "Recent history"]


def test_capture_of_an_old_archive_says_how_many_the_window_left_out(
    cli: Cli, tmp_path: Path
) -> None:
    cli.ok("user", "add", "bob@example.com")
    cli.ok("mailbox", "add", "sales@example.com", "--company")
    archive = mailbox.mbox(tmp_path / "old.mbox")
    archive.add(dated(message(CUSTOMER, "sales@example.com", "Old one"), OLD))
    archive.add(message(CUSTOMER, "sales@example.com", "New one"))
    archive.close()
    text = cli.ok("capture", "--mailbox", "sales@example.com", "--direction", "in",
                  str(tmp_path / "old.mbox"))  # fmt: skip
    last = text.strip().splitlines()[-1]
    assert last.startswith("1 captured, 0 duplicate, 1 skipped")
    assert "1 of them before the import window" in last and "--since all" in last
    again = cli.json("capture", "--mailbox", "sales@example.com", "--direction", "in",
                     "--since", "all", str(tmp_path / "old.mbox"))  # fmt: skip
    assert [r["action"] for r in again] == ["captured", "duplicate"]
