"""A to-do completed in the mail client's task list reaches the mail server (issue 16, C10):
the real poller captures mail from Dovecot, the python ``caldav`` client completes the activity's
VTODO over /dav/, and the poller pushes \\Seen upstream; reopening it clears \\Seen."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from caldav.davclient import DAVClient
from sqlalchemy import select

from crm.store.db import Database
from crm.store.models import User
from tests.conftest import Cli
from tests.pollerkit import PASSWORD, MailEnv, message, until
from tests.servers import Dovecot, Postfix
from tests.test_dav import sync_report
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


def user_id(env: MailEnv, email: str) -> int:
    db = Database(env.url, migrate=False)
    try:
        with db.session() as s:
            return s.scalars(select(User.id).where(User.email == email)).one()
    finally:
        db.dispose()


async def _sync(base: str, user: str, path: str, token: str = "") -> tuple[str, set[str]]:
    """A sync-collection REPORT as a client sends it: (the new token, the member names)."""
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()}
    async with aiohttp.ClientSession() as http:
        status, text = await sync_report(http, base + path, auth, token)
    assert status == 207, text
    new_token = re.findall(r"sync-token>([^<]+)<", text)[-1]
    return new_token, set(re.findall(r"/((?:lead|contact|company|activity)-[0-9]+\.\w+)<", text))


async def test_mail_the_poller_captures_reaches_the_clients_next_sync(
    env: MailEnv, postfix: Postfix
) -> None:
    """The change log notes what capture writes (SQL Core, not the ORM hook): a client that
    synced before the mail came gets the new to-do and the new lead's card in its next sync."""
    alice = env.link()
    env.deliver(message("Carla Kunde <carla@customer-firm.example>", alice, "First offer"))
    async with env.poller(), web_crm(env, postfix) as base:
        await until(lambda: len(env.activities()) == 1, what="the first mail captured")
        home = f"/dav/users/{user_id(env, alice)}/"
        cards, first_cards = await _sync(base, alice, home + "crm/")
        tasks, first_tasks = await _sync(base, alice, home + "tasks/")
        assert len(first_tasks) == 1 and any(n.startswith("lead-") for n in first_cards)
        env.deliver(message("Dan Dorn <dan@other-firm.example>", alice, "Second offer"))
        env.deliver(message("Carla Kunde <carla@customer-firm.example>", alice, "Re: First"))
        env.deliver(message("Eve Free <eve@gmail.com>", alice, "No company"))  # B5: lead alone
        await until(lambda: len(env.activities()) == 4, what="three more mails captured")
        _, new_tasks = await _sync(base, alice, home + "tasks/", tasks)
        _, new_cards = await _sync(base, alice, home + "crm/", cards)
    ids = {a["subject"]: a["id"] for a in env.activities()}
    news = ("Second offer", "Re: First", "No company")
    assert new_tasks == {f"activity-{ids[subject]}.ics" for subject in news}
    for address in ("dan@other-firm.example", "eve@gmail.com"):
        [lead] = [lead for lead in env.leads() if address in lead["emails"]]
        assert f"lead-{lead['id']}.vcf" in new_cards
