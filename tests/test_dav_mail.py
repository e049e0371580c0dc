"""A to-do completed in the mail client's task list reaches the mail server (issue 16, C10):
the real poller captures mail from Dovecot, the python ``caldav`` client completes the activity's
VTODO over /dav/, and the poller pushes \\Seen upstream; reopening it clears \\Seen."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from caldav.davclient import DAVClient

from tests.conftest import Cli
from tests.pollerkit import PASSWORD, MailEnv, message, until
from tests.servers import Dovecot, Postfix
from tests.test_web_crm import web_crm

pytestmark = pytest.mark.asyncio


@pytest.fixture
def env(dovecot: Dovecot, cli: Cli, tmp_path: Path) -> MailEnv:
    return MailEnv(dovecot, cli, tmp_path)


def _task_list(base: str, user: str) -> Any:
    client = DAVClient(url=base + "/dav/", username=user, password=PASSWORD)
    principal = client.principal()  # type: ignore[no-untyped-call]  # caldav: unannotated
    [tasks] = [c for c in principal.calendars() if c.get_display_name() == "CRM activities"]
    return tasks


def _set_status(base: str, user: str, subject: str, old: str, new: str) -> str:
    """Edit the to-do as a client does (fetch, change STATUS, PUT back); its new text."""
    tasks = _task_list(base, user)
    [todo] = [t for t in tasks.todos(include_completed=True) if f"SUMMARY:{subject}" in t.data]
    assert f"STATUS:{old}" in todo.data, todo.data
    todo.data = todo.data.replace(f"STATUS:{old}", f"STATUS:{new}")
    todo.save()
    [again] = [t for t in tasks.todos(include_completed=True) if f"SUMMARY:{subject}" in t.data]
    return str(again.data)


def _seen(env: MailEnv) -> int:
    return sum("\\Seen" in f for f in env.flags().values())


async def test_completing_a_todo_marks_the_mail_seen_on_the_server(
    env: MailEnv, postfix: Postfix
) -> None:
    alice = env.link()
    env.deliver(message("Carla Kunde <carla@customer-firm.example>", alice, "Offer please"))
    env.deliver(message("Dan Dorn <dan@other-firm.example>", alice, "Another " + uuid.uuid4().hex))
    async with env.poller(), web_crm(env, postfix) as base:
        await until(lambda: len(env.activities()) == 2, what="two mails captured")
        assert _seen(env) == 0
        done = await asyncio.to_thread(_set_status, base, alice, "Offer please",
                                       "NEEDS-ACTION", "COMPLETED")  # fmt: skip
        assert "STATUS:COMPLETED" in done and "\r\nCOMPLETED:" in done.replace("\n", "\r\n")
        [act] = [a for a in env.activities() if a["subject"] == "Offer please"]
        assert act["completed"] is True
        await until(lambda: _seen(env) == 1, what="DAV completion -> \\Seen upstream")
        reopened = await asyncio.to_thread(_set_status, base, alice, "Offer please",
                                           "COMPLETED", "NEEDS-ACTION")  # fmt: skip
        assert "STATUS:NEEDS-ACTION" in reopened and "COMPLETED:" not in reopened
        await until(lambda: _seen(env) == 0, what="DAV reopening -> \\Seen removed upstream")
        assert not [a for a in env.activities() if a["completed"]]
