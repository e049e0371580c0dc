"""The web CRM (issue 18) in a real browser: Playwright driving Debian's Chromium against the
web listener, with sign-in checked by the real Postfix (Dovecot's passwords) and mail captured
by the real poller from Dovecot, where completing an activity must show as \\Seen.

Screenshots go to ``tests/artifacts/`` (git-ignored; ``MAILCRM_SCREENSHOT_DIR`` overrides).
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from crm.config import load_config
from crm.store.db import Database
from crm.store.models import Activity, ActivityBinding, Lead, Mailbox, User
from proxy.web.app import make_app
from tests.conftest import Cli
from tests.pollerkit import PASSWORD, MailEnv, message, until
from tests.servers import Dovecot, Postfix

CHROMIUM = "/usr/lib/chromium/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium missing")
playwright_api = pytest.importorskip("playwright.async_api")
ARTIFACTS = Path(os.environ.get("MAILCRM_SCREENSHOT_DIR") or Path(__file__).parent / "artifacts")
CUSTOMER = "Carla Kunde <carla@customer-firm.example>"
HOSTILE = '"<img src=x onerror=alert(1)><script>alert(2)</script>" <evil@hostile-firm.example>'
TIMEOUT = 60_000


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def web_crm(env: MailEnv, postfix: Postfix) -> AsyncIterator[str]:
    """The HTTP listener with the web CRM, sign-in checked by the test Postfix."""
    config = load_config(str(env.config_path), env.url)
    config.secret_key = env.cli.env["MAILCRM_SECRET_KEY"]
    relay = config.relay
    relay.upstream_host, relay.upstream_port, relay.upstream_tls = (
        "127.0.0.1",
        postfix.port,
        "starttls",
    )
    relay.upstream_ca_file = str(postfix.cert_path)
    db = Database(env.url)
    runner = web.AppRunner(make_app(config, db))
    await runner.setup()
    port = _port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        db.dispose()


def _shared_lead(url: str, owner: str, other: str) -> int:
    """A lead of ``owner`` that ``other`` sees (mail of other's own mailbox is bound to it) but
    may not change."""
    db = Database(url)
    try:
        with db.session() as s:
            users = {u.email: u.id for u in s.query(User)}
            box = Mailbox(address=other, kind="personal", owner_id=users[other], linked=False,
                          folders=[])  # fmt: skip
            lead = Lead(name="Shared Lead", responsible_id=users[owner])
            s.add_all([box, lead])
            s.flush()
            act = Activity(message_key=uuid.uuid4().hex, thread="t-shared", direction="incoming",
                           subject="shared", counterparts=[], mailbox_id=box.id)  # fmt: skip
            act.bindings = [ActivityBinding(entity_type="lead", entity_id=lead.id)]
            s.add(act)
            s.flush()
            return lead.id
    finally:
        db.dispose()


async def _sign_in(page: Any, base: str, email: str, password: str) -> None:
    await page.goto(f"{base}/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def env(dovecot: Dovecot, cli: Cli, tmp_path: Path) -> MailEnv:
    """A fresh Dovecot user (alice) and CRM database."""
    return MailEnv(dovecot, cli, tmp_path)


async def test_a_salesperson_works_their_leads_in_the_browser(
    env: MailEnv, postfix: Postfix, dovecot: Dovecot
) -> None:
    alice = env.link()
    env.cli.ok("user", "set", alice, "--name", "Alice")
    bob = dovecot.add_user("b" + uuid.uuid4().hex[:10], PASSWORD)
    env.cli.ok("user", "add", bob, "--name", "Bob")
    env.deliver(message(CUSTOMER, alice, "Your offer, please"))
    env.deliver(message(CUSTOMER, alice, "Second question"))
    env.deliver(message(HOSTILE, alice, "<b>bold</b> subject"))
    dialogs: list[str] = []
    async with env.poller(), web_crm(env, postfix) as base:
        await until(lambda: len(env.activities()) == 3, what="three mails captured")
        leads = {lead["name"]: lead["id"] for lead in env.leads()}
        carla = leads["Carla Kunde"]
        shared = _shared_lead(env.url, alice, bob)
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 800})
                page.set_default_timeout(TIMEOUT)
                page.on("dialog", lambda d: dialogs.append(d.message))
                # Redirect to login; wrong password.
                await page.goto(f"{base}/leads")
                assert re.search(r"/login\?next=/leads$", page.url)
                await _shot(page, "login")
                await _sign_in(page, base, alice, "wrong password")
                await page.get_by_role("alert").wait_for()
                assert "Wrong email or password." in await page.get_by_role("alert").inner_text()
                # Sign in; the dashboard; lists and search.
                await _sign_in(page, base, alice, PASSWORD)
                await page.wait_for_url(f"{base}/")
                # The figures come from the background task: htmx swaps them in when ready.
                await page.locator("#figures svg").first.wait_for()
                assert "Figures as of" in await page.locator("#figures").inner_text()
                await _shot(page, "dashboard")
                await page.goto(f"{base}/leads")
                names = await page.locator("#leads tbody td:first-child").all_inner_texts()
                assert sorted(names) == sorted([*leads, "Shared Lead"]), names
                await _shot(page, "leads")
                await page.get_by_label("Search").fill("carla")
                await page.get_by_role("button", name="Filter").click()
                await page.wait_for_url(re.compile(r"q=carla"))
                assert await page.locator("#leads tbody tr").count() == 1
                # The hostile display name is text, nothing ran.
                hostile = next(n for n in leads if "<img" in n)
                await page.goto(f"{base}/leads?q=hostile-firm")
                cell = page.locator("#leads tbody td:first-child a")
                assert await cell.inner_text() == hostile
                assert await page.locator("#leads img").count() == 0
                # The timeline of a lead with two mails; status change persists.
                await page.goto(f"{base}/leads/{carla}")
                items = page.locator("#timeline li.activity")
                assert await items.count() == 2
                subjects = await page.locator("#timeline .subject").all_inner_texts()
                assert subjects == ["Your offer, please", "Second question"]
                await _shot(page, "lead")
                await page.get_by_label("Status").select_option("qualified")
                await page.get_by_role("button", name="Save").click()
                await page.wait_for_url(re.compile(r"done="))
                await page.reload()
                assert await page.locator("#status-now").inner_text() == "qualified"
                shown = env.cli.json("lead", "show", str(carla))
                assert shown["status"] == "qualified"
                # CSRF: a POST without the token is refused.
                refused = await page.request.post(
                    f"{base}/leads/{carla}/status", form={"status": "won"}
                )
                assert refused.status == 403
                assert env.cli.json("lead", "show", str(carla))["status"] == "qualified"
                # Complete an activity: \Seen on the IMAP server.
                await page.goto(f"{base}/activities")
                first = page.locator("#activities tbody tr", has_text="Your offer, please")
                await first.get_by_role("button", name="Complete").click()
                await first.locator(".state", has_text="done").wait_for()
                await _shot(page, "activities")
                await until(lambda: any("\\Seen" in f for f in env.flags().values()),
                            what="complete -> \\Seen upstream")  # fmt: skip
                assert sum("\\Seen" in f for f in env.flags().values()) == 1
                # Convert: lands on the new contact.
                await page.goto(f"{base}/leads/{carla}")
                await page.get_by_role("button", name="Convert").click()
                await page.wait_for_url(re.compile(r"/contacts/\d+"))
                assert await page.locator("h1#name").inner_text() == "Carla Kunde"
                assert await page.locator("#timeline li.activity").count() == 2
                await _shot(page, "contact")
                # Bob: alice's records are 404, a lead he sees but does not own is 403.
                other = await browser.new_page()
                await _sign_in(other, base, bob, PASSWORD)
                await other.wait_for_url(f"{base}/")
                other.set_default_timeout(TIMEOUT)
                await other.goto(f"{base}/leads")
                assert await other.locator("#leads tbody td:first-child").all_inner_texts() == [
                    "Shared Lead"
                ]
                token = await other.locator("input[name=csrf]").first.get_attribute("value")
                gone = await other.goto(f"{base}/leads/{carla}")
                assert gone is not None and gone.status == 404
                write = await other.request.post(
                    f"{base}/leads/{shared}/status", form={"status": "won", "csrf": token or ""}
                )
                assert write.status == 403
                hidden = await other.request.post(
                    f"{base}/leads/{carla}/status", form={"status": "won", "csrf": token or ""}
                )
                assert hidden.status == 404
                # Sign-out.
                await page.get_by_role("button", name="Sign out").click()
                await page.wait_for_url(re.compile(r"/login$"))
                await page.goto(f"{base}/leads")
                assert "/login" in page.url
            finally:
                await browser.close()
    assert dialogs == []
