"""The status page in a real browser (B6, M5): headless Chromium from Debian renders it, takes a
screenshot and dumps the DOM; a red mailbox shows red with its reason, a green one green.

Set ``MAILCRM_SCREENSHOT_DIR`` to keep the screenshot for a look; otherwise it goes to tmp_path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from crm.store.db import Database
from crm.store.models import Activity, EntityEmail, Lead, Mailbox, utcnow
from proxy.web.sessions import COOKIE, SessionStore

from .test_http import add_box, admin_viewer, node_config, start_http

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install-browser.sh)"
)
RED_BOX, GREEN_BOX = "anna@ourco.example", "sales@ourco.example"
WRONG_PASSWORD = "login failed: wrong password"


class Rows(HTMLParser):
    """The ``<tr data-mailbox>`` rows of a page: address -> (classes, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[set[str], str]] = {}
        self._current: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and found.get("data-mailbox"):
            self._current = found["data-mailbox"]
            self._classes = set((found.get("class") or "").split())
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._current:
            self.rows[self._current] = (self._classes, " ".join(self._text))
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current and data.strip():
            self._text.append(data.strip())


async def chromium(url: str, profile: Path, *args: str) -> bytes:
    """Run headless Chromium on ``url``; its stdout."""
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1200,900",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("chromium did not finish within 120 s")
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


def fill(db: Database) -> None:
    now = utcnow()
    add_box(db, RED_BOX, last_error=WRONG_PASSWORD, last_check_at=now)
    add_box(db, GREEN_BOX, last_ok_at=now, last_check_at=now)
    add_box(db, "old@ourco.example", linked=False)
    with db.session() as session:
        lead = Lead(name="Ann Buyer <&>")
        session.add(lead)
        session.flush()
        session.add(
            EntityEmail(address="ann@client.example", entity_type="lead", entity_id=lead.id)
        )
        box = session.query(Mailbox).filter_by(address=GREEN_BOX).one()
        session.add(
            Activity(
                message_key="k1",
                thread="k1",
                direction="incoming",
                subject="Prices for 2025",
                mailbox_id=box.id,
                counterparts=["ann@client.example"],
            )
        )
        session.add(Lead(name="Last week", created_at=now - dt.timedelta(days=8)))


async def _signed_in_page(url: str, token: str, shot: Path) -> str:
    """The page's DOM in Chromium (Playwright) with a signed-in session cookie; a screenshot."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 900})
            await context.add_cookies([{"name": COOKIE, "value": token, "url": url}])
            page = await context.new_page()
            await page.goto(url)
            await page.screenshot(path=str(shot), full_page=True)
            return str(await page.content())
        finally:
            await browser.close()


async def test_a_red_mailbox_shows_red_with_its_reason(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    fill(db)
    shots = Path(os.environ.get("MAILCRM_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / f"status-{db.engine.dialect.name}.png"
    config = node_config(db_url)
    sessions = SessionStore(db)
    token = (await sessions.start(admin_viewer(db))).token
    async for _ in start_http(config, db, sessions):
        url = f"http://127.0.0.1:{config.http.port}/status"
        dom = await _signed_in_page(url, token, shot)

    rows = Rows()
    rows.feed(dom)
    classes, text = rows.rows[RED_BOX]
    assert "red" in classes and "green" not in classes
    assert WRONG_PASSWORD in text
    classes, text = rows.rows[GREEN_BOX]
    assert "green" in classes and "last check worked" in text
    classes, text = rows.rows["old@ourco.example"]
    assert "red" in classes and "link to CRM is off" in text
    assert 'id="leads-today">1<' in dom and 'id="activities-today">1<' in dom
    assert "Ann Buyer &lt;&amp;&gt;" in dom and "Prices for 2025" in dom
    assert "Last week" not in dom
    assert shot.stat().st_size > 10_000 and shot.read_bytes().startswith(b"\x89PNG")
