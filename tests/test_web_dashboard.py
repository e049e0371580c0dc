"""The web dashboard's figures (issue 18: every page under 100 ms): a background task of the web
app computes them and a request only reads them; before the first computation the page shows a
placeholder that htmx reloads; an ``own`` user's figures follow the visibility rule exactly."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from crm.face import Database
from crm.face import figures as keeper_module
from crm.face import web as face_web
from crm.face.figures import FigureKeeper
from crm.face.visibility import Viewer
from crm.store.models import Activity, Lead, Mailbox, User
from proxy.web.app import make_app
from proxy.web.figures import KEEPER
from proxy.web.sessions import COOKIE, SessionStore
from tests.test_http import node_config, wait_listening

ANN, BOB = "ann@ourco.example", "bob@ourco.example"
WAIT = 60.0


def _fill(db: Database) -> tuple[Viewer, Viewer]:
    """Ann: 2 leads, 2 open mails; Bob: 1 lead, 3 open mails and 1 done. Both see ``own``."""
    with db.session() as s:
        ann = User(email=ANN, name="Ann", crm_access=True, sees="own")
        bob = User(email=BOB, name="Bob", crm_access=True, sees="own")
        s.add_all([ann, bob])
        s.flush()
        boxes = {}
        for user in (ann, bob):
            boxes[user.email] = Mailbox(address=user.email, kind="personal", owner_id=user.id)
        owners = (("A1", ann), ("A2", ann), ("B1", bob))
        leads = [Lead(name=n, responsible_id=u.id) for n, u in owners]
        s.add_all([*boxes.values(), *leads])
        s.flush()
        for who, done in ((ANN, False), (ANN, False), (BOB, False), (BOB, False), (BOB, False),
                          (BOB, True)):  # fmt: skip
            s.add(Activity(message_key=uuid.uuid4().hex, thread=uuid.uuid4().hex,
                           direction="incoming", subject="hi", counterparts=[],
                           mailbox_id=boxes[who].id, completed=done))  # fmt: skip
        return Viewer(ann.id, ANN, False, False), Viewer(bob.id, BOB, False, False)


def _compute_due(db: Database, keeper: FigureKeeper) -> None:
    for viewer in keeper.due():
        with db.session() as s:
            keeper.refresh(s, viewer)


def test_the_keeper_serves_each_view_its_own_exact_figures(db: Database) -> None:
    ann, bob = _fill(db)
    clock = [1000.0]
    keeper = FigureKeeper(every=60, recent=900, forget_after=3600, clock=lambda: clock[0])
    assert keeper.read(ann) is None  # nothing computed yet: the page shows the placeholder
    assert keeper.waiting()
    assert keeper.due() == [ann]  # nobody looked at the ``all`` view: it is not computed
    _compute_due(db, keeper)
    assert not keeper.waiting() and keeper.due() == []
    mine = keeper.read(ann)
    assert mine is not None
    assert mine.figures.open_by_employee == [(ANN, 2)]
    assert sum(n for _, n in mine.figures.new_leads) == 2
    boss = Viewer(99, "boss@ourco.example", True, True)
    assert keeper.read(boss) is None  # the ``all`` view is computed once someone looks
    _compute_due(db, keeper)
    everyone = keeper.read(boss)
    assert everyone is not None
    assert everyone.figures.open_by_employee == [(BOB, 3), (ANN, 2)]
    assert sum(n for _, n in everyone.figures.new_leads) == 3
    assert keeper.read(None) is everyone  # every ``all`` viewer shares one view
    assert keeper.read(bob) is None  # Bob's view is his own, not computed yet
    _compute_due(db, keeper)
    theirs = keeper.read(bob)
    assert theirs is not None and theirs.figures.open_by_employee == [(BOB, 3)]
    # A minute on, the views asked for lately are due again; Ann stops looking: after `recent`
    # hers is no longer recomputed, after `forget_after` it is dropped.
    clock[0] += 61
    assert keeper.due() == [ann, None, bob]  # in the order they were first asked for
    _compute_due(db, keeper)
    keeper.read(bob)
    clock[0] += 901
    assert keeper.due() == []
    clock[0] += 3600
    keeper.due()
    assert keeper.read(ann) is None


def test_the_keeper_is_bounded(db: Database) -> None:
    keeper = FigureKeeper(max_views=3)
    viewers = [Viewer(i, f"u{i}@ourco.example", False, False) for i in range(1, 6)]
    for viewer in viewers:
        keeper.read(viewer)
    assert keeper.due() == viewers[2:]  # the latest three


class Gate:
    """Stands in for the computation: waits until opened, fails once, counts what ran."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real, self.opened, self.calls, self.finished = real, threading.Event(), 0, 0

    def __call__(self, session: Any, viewer: Viewer | None) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("database away")  # the task must survive it
        assert self.opened.wait(WAIT)
        figures = self.real(session, viewer)
        self.finished += 1
        return figures


async def _until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = await check() if asyncio.iscoroutinefunction(check) else check()
        if found:
            return found
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


async def test_no_request_computes_the_figures(
    db: Database, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann, _ = _fill(db)
    gate = Gate(face_web.dashboard)
    monkeypatch.setattr(keeper_module, "dashboard", gate)
    config = node_config(db_url)
    sessions = SessionStore(db)
    token = (await sessions.start(ann)).token
    runner = web.AppRunner(make_app(config, db, sessions), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config.http.port).start()
    await wait_listening(config.http.port)
    base = f"http://127.0.0.1:{config.http.port}"
    try:
        async with aiohttp.ClientSession(cookies={COOKIE: token}) as client:

            async def get(path: str) -> str:
                async with client.get(base + path) as response:
                    assert response.status == 200
                    return await response.text()

            # The computation is stuck: the page answers at once with the placeholder.
            started = time.monotonic()
            page = await get("/")
            assert time.monotonic() - started < 10
            assert 'hx-get="/dashboard/figures"' in page and 'hx-trigger="every 2s"' in page
            assert "Counting the figures" in page and "<svg" not in page
            assert "<script>" not in page  # CSP: no inline script
            await _until(lambda: gate.calls >= 2, "the task to retry after a failure")
            assert "<svg" not in await get("/dashboard/figures")
            gate.opened.set()

            async def charts() -> bool:
                return "<svg" in await get("/dashboard/figures")

            await _until(charts, "the figures")
            page = await get("/")
            assert "Figures as of" in page and " UTC" in page and "hx-get" not in page
            assert ANN in page and BOB not in page  # an own user sees only their own figures
    finally:
        await asyncio.wait_for(runner.cleanup(), WAIT)
    assert gate.finished == gate.calls - 1  # nothing left computing once the app stopped


async def test_stopping_the_app_waits_for_a_computation_under_way(
    db: Database, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(face_web.dashboard)
    gate.calls = 1  # no failure this time
    monkeypatch.setattr(keeper_module, "dashboard", gate)
    app = make_app(node_config(db_url), db)
    app[KEEPER].read(None)  # someone looks at the ``all`` view
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()  # the task starts and computes the `all` view
    await _until(lambda: gate.calls >= 2, "the computation to start")
    asyncio.get_running_loop().call_later(0.5, gate.opened.set)
    await asyncio.wait_for(runner.cleanup(), WAIT)
    assert gate.finished == 1
