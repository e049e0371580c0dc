"""Web CRM sessions in the shared database (SPEC B7): a sign-in on one node is good on another
(two ``mailcrm serve`` processes, and two web apps, on one SQLite file and on PostgreSQL), a
restart keeps it, sign-out on one node ends it on the other, the token is not stored in clear,
idle and absolute expiry, the CSRF check, the bound per user, and a removed or demoted user
losing what the session gave. Sign-in is checked by the real Postfix against Dovecot's passwords.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import select, update

from crm.face.visibility import Viewer
from crm.store.db import Database
from crm.store.models import Node as NodeRow
from crm.store.models import User, WebSession, utcnow
from proxy.web.app import make_app
from proxy.web.sessions import COOKIE, SessionStore
from tests.clusterkit import HOST, Node, started_nodes, until
from tests.conftest import Cli
from tests.pollerkit import PASSWORD
from tests.servers import Dovecot, Postfix
from tests.test_http import node_config, wait_listening

__all__ = ["started_nodes"]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
Answer = tuple[int, str, str]  # status, Location, body


class Browser:
    """One browser: its session cookie, sent to whichever node it asks (redirects not
    followed)."""

    def __init__(self, token: str = "") -> None:
        self.token = token

    async def call(self, base: str, method: str, path: str, form: Any = None) -> Answer:
        cookies = {COOKIE: self.token} if self.token else {}
        async with (
            aiohttp.ClientSession(cookies=cookies) as client,
            client.request(method, base + path, data=form, allow_redirects=False) as response,
        ):
            return response.status, response.headers.get("Location", ""), await response.text()

    async def sign_in(self, base: str, email: str, password: str) -> int:
        form = {"email": email, "password": password, "next": "/leads"}
        cookies = {COOKIE: self.token} if self.token else {}
        async with (
            aiohttp.ClientSession(cookies=cookies) as client,
            client.post(base + "/login", data=form, allow_redirects=False) as response,
        ):
            if (cookie := response.cookies.get(COOKIE)) is not None:
                self.token = cookie.value
            return response.status

    async def csrf(self, base: str) -> str:
        """The CSRF token the pages of ``base`` give this session."""
        status, _, page = await self.call(base, "GET", "/leads")
        assert status == 200, (status, page[:300])
        found = CSRF.search(page)
        assert found, page[:500]
        return found[1]


def rows(db: Database) -> list[WebSession]:
    with db.session() as session:
        return list(session.scalars(select(WebSession).order_by(WebSession.started_at)))


def set_times(db: Database, token: str, **times: dt.datetime) -> None:
    """As if time had passed: the session's started_at / last_used_at moved back."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    with db.session() as session:
        session.execute(update(WebSession).where(WebSession.token_hash == digest).values(**times))


def relay_to(postfix: Postfix) -> dict[str, Any]:
    return {
        "upstream_host": HOST,
        "upstream_port": postfix.port,
        "upstream_tls": "starttls",
        "upstream_ca_file": str(postfix.cert_path),
    }


def employee(dovecot: Dovecot, cli: Cli, *flags: str) -> str:
    address = dovecot.add_user("w" + uuid.uuid4().hex[:10], PASSWORD)
    cli.ok("user", "add", address, "--name", "Employee", *flags)
    return address


def serve_node(name: str, tmp: Path, db_url: str, cli: Cli, postfix: Postfix) -> Node:
    """A ``mailcrm serve`` node with only its web listener (sign-in checked by the Postfix)."""
    settings = {"relay": {"enabled": False, **relay_to(postfix)}, "poller": {"enabled": False}}
    env = {"MAILCRM_DATABASE_URL": db_url, "MAILCRM_SECRET_KEY": cli.env["MAILCRM_SECRET_KEY"]}
    return Node(name, tmp / name, settings, env)


def start(node: Node) -> str:
    node.start()
    until(lambda: node._answers(node.http_port), 60, f"{node.name}'s HTTP listener")
    return f"http://{HOST}:{node.http_port}"


async def test_a_sign_in_on_one_serve_node_holds_on_the_other_and_through_a_restart(
    db_url: str,
    cli: Cli,
    dovecot: Dovecot,
    postfix: Postfix,
    tmp_path: Path,
    started_nodes: list[Node],
) -> None:
    alice = employee(dovecot, cli)
    a, b = (serve_node(name, tmp_path, db_url, cli, postfix) for name in ("node-a", "node-b"))
    started_nodes += [a, b]
    node_a, node_b = start(a), start(b)
    browser = Browser()
    assert await browser.sign_in(node_a, alice, PASSWORD) == 303
    status, _, page = await browser.call(node_b, "GET", "/leads")
    assert status == 200 and alice in page, "node-b knows the sign-in made on node-a"
    csrf = await browser.csrf(node_b)
    assert csrf == await browser.csrf(node_a)
    # The table keeps the token's SHA-256, never the token.
    db = Database(db_url)
    try:
        [row] = rows(db)
        assert row.token_hash == hashlib.sha256(browser.token.encode()).hexdigest()
        stored = " ".join(str(value) for value in vars(row).values())
        assert browser.token not in stored
        # No valid CSRF token, no change: on either node.
        for form in ({}, {"csrf": "x" * len(csrf)}):
            status, _, body = await browser.call(node_b, "POST", "/logout", form)
            assert status == 403 and "CSRF" in body
        # node-a restarts: the session holds.
        a.terminate()
        node_a = start(a)
        status, _, page = await browser.call(node_a, "GET", "/leads")
        assert status == 200 and alice in page
        # Sign-out on node-b ends it on node-a too.
        status, location, _ = await browser.call(node_b, "POST", "/logout", {"csrf": csrf})
        assert (status, location) == (303, "/login")
        status, location, _ = await browser.call(node_a, "GET", "/leads")
        assert (status, location) == (303, "/login?next=/leads")
        assert rows(db) == []
    finally:
        db.dispose()
    assert not a.errors() and not b.errors(), a.log_tail() + b.log_tail()


@asynccontextmanager
async def two_apps(db_url: str, postfix: Postfix) -> AsyncIterator[tuple[str, str]]:
    """Two web apps (two nodes: each its own engine) on one database, in this process."""
    runners, dbs, bases = [], [], []
    try:
        for _ in range(2):
            config = node_config(db_url)
            for key, value in relay_to(postfix).items():
                setattr(config.relay, key, value)
            db = Database(db_url)
            dbs.append(db)
            runner = web.AppRunner(make_app(config, db), handle_signals=False)
            runners.append(runner)
            await runner.setup()
            await web.TCPSite(runner, HOST, config.http.port).start()
            await wait_listening(config.http.port)
            bases.append(f"http://{HOST}:{config.http.port}")
        yield bases[0], bases[1]
    finally:
        for runner in runners:
            await runner.cleanup()
        for db in dbs:
            db.dispose()


async def test_idle_and_absolute_expiry_and_no_write_per_request(
    db: Database, db_url: str, cli: Cli, dovecot: Dovecot, postfix: Postfix
) -> None:
    alice = employee(dovecot, cli)
    async with two_apps(db_url, postfix) as (one, two):
        browser = Browser()
        assert await browser.sign_in(one, alice, PASSWORD) == 303
        [before] = rows(db)
        for _ in range(3):
            assert (await browser.call(two, "GET", "/leads"))[0] == 200
        [after] = rows(db)
        assert after.last_used_at == before.last_used_at, "a request within the minute: no write"
        # Last used two minutes ago: a request writes the time of use.
        set_times(db, browser.token, last_used_at=utcnow() - dt.timedelta(minutes=2))
        assert (await browser.call(two, "GET", "/leads"))[0] == 200
        [touched] = rows(db)
        assert utcnow() - touched.last_used_at < dt.timedelta(seconds=30)
        # Unused for 8 hours: signed out, on both nodes, and the row is gone.
        set_times(db, browser.token, last_used_at=utcnow() - dt.timedelta(hours=8, minutes=1))
        assert (await browser.call(one, "GET", "/leads"))[:2] == (303, "/login?next=/leads")
        assert (await browser.call(two, "GET", "/leads"))[:2] == (303, "/login?next=/leads")
        assert rows(db) == []
        # In use all along, but signed in more than 7 days ago: signed out.
        assert await browser.sign_in(two, alice, PASSWORD) == 303
        week = utcnow() - dt.timedelta(days=7, minutes=1)
        set_times(db, browser.token, started_at=week, last_used_at=utcnow())
        assert (await browser.call(one, "GET", "/leads"))[:2] == (303, "/login?next=/leads")
        assert rows(db) == []


async def test_a_removed_or_demoted_user_loses_what_the_session_gave(
    db: Database, db_url: str, cli: Cli, dovecot: Dovecot, postfix: Postfix
) -> None:
    boss, bob = employee(dovecot, cli, "--admin"), employee(dovecot, cli)
    with db.session() as session:
        session.add(NodeRow(name="node-elsewhere"))
    async with two_apps(db_url, postfix) as (one, two):
        boss_browser, bob_browser = Browser(), Browser()
        assert await boss_browser.sign_in(one, boss, PASSWORD) == 303
        assert await bob_browser.sign_in(one, bob, PASSWORD) == 303
        status, _, body = await boss_browser.call(two, "GET", "/status.json")
        assert status == 200 and "node-elsewhere" in body
        cli.ok("user", "set", boss, "--no-admin", "--sees", "own")
        status, _, body = await boss_browser.call(two, "GET", "/status.json")
        assert status == 200 and "node-elsewhere" not in body, "no longer an admin: no nodes"
        cli.ok("user", "set", boss, "--no-crm")
        assert (await boss_browser.call(two, "GET", "/leads"))[:2] == (303, "/login?next=/leads")
        cli.ok("user", "remove", bob)
        assert [row.user_id for row in rows(db)] == [], "bob's session went with bob"
        assert (await bob_browser.call(two, "GET", "/leads"))[:2] == (303, "/login?next=/leads")


async def test_each_user_keeps_a_bounded_number_of_sessions_and_sign_in_prunes(
    db: Database, db_url: str, cli: Cli, dovecot: Dovecot, postfix: Postfix
) -> None:
    ann, bob = employee(dovecot, cli), employee(dovecot, cli)
    with db.session() as session:
        ids = {u.email: u.id for u in session.scalars(select(User))}
    store = SessionStore(db)
    viewer = Viewer(ids[ann], ann, admin=False, sees_all=False)
    first = await store.start(viewer)
    set_times(db, first.token, last_used_at=utcnow() - dt.timedelta(minutes=5))
    later = [await store.start(viewer) for _ in range(store.limits.per_user)]
    bob_old = await store.start(Viewer(ids[bob], bob, admin=False, sees_all=False))
    set_times(db, bob_old.token, last_used_at=utcnow() - dt.timedelta(hours=9))
    async with two_apps(db_url, postfix) as (one, two):
        assert (await Browser(first.token).call(two, "GET", "/leads"))[0] == 303, "dropped"
        assert (await Browser(later[0].token).call(two, "GET", "/leads"))[0] == 200
        assert (await Browser(later[-1].token).call(one, "GET", "/leads"))[0] == 200
        assert await Browser().sign_in(one, ann, PASSWORD) == 303
    kept = rows(db)
    assert len(kept) == store.limits.per_user, "ann's least recently used one dropped"
    assert {row.user_id for row in kept} == {ids[ann]}, "bob's expired session pruned"


async def test_pages_answer_503_while_the_database_is_unreachable(tmp_path: Path) -> None:
    down = Database(
        "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2", migrate=False
    )
    config = node_config("unused")
    runner = web.AppRunner(make_app(config, down), handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, config.http.port).start()
        await wait_listening(config.http.port)
        status, _, body = await Browser("t" * 43).call(
            f"http://{HOST}:{config.http.port}", "GET", "/leads"
        )
    finally:
        await runner.cleanup()
        down.dispose()
    assert status == 503 and "database cannot be reached" in body


async def test_signing_in_again_ends_the_session_the_browser_had(
    db: Database, db_url: str, cli: Cli, dovecot: Dovecot, postfix: Postfix
) -> None:
    """A new sign-in replaces the browser's session (another user's, on a shared computer, or
    one an attacker planted): the old token is dead at once, on every node, and its row gone."""
    ann, bob = employee(dovecot, cli), employee(dovecot, cli)
    async with two_apps(db_url, postfix) as (one, two):
        browser = Browser()
        assert await browser.sign_in(one, ann, PASSWORD) == 303
        old = browser.token
        assert await browser.sign_in(two, bob, PASSWORD) == 303
        assert browser.token != old
        assert (await Browser(old).call(one, "GET", "/leads"))[:2] == (303, "/login?next=/leads")
        assert (await browser.call(one, "GET", "/leads"))[0] == 200
        assert [row.user_id for row in rows(db)] == [user_id(db, bob)]


def user_id(db: Database, email: str) -> int:
    with db.session() as session:
        return session.scalars(select(User.id).where(User.email == email)).one()
