"""CardDAV sync cost (issue 16) for a user who sees many cards: the first full sync
(sync-collection with every card's body), an unchanged re-sync and a re-sync after one change,
timed as a client on loopback sees them, with the process's peak RSS.

    .venv/bin/python bench/dav.py [--cards 10000] [--db URL]

Without ``--db`` a SQLite file in a temporary folder. The user sees ``own``: they are responsible
for every lead (one company per ten leads, so the address book holds cards + cards/10). Sign-in
is taken as done (the upstream SMTP check is cached for two minutes in the real server); the
client runs in the same process, so the peak RSS is an upper bound of the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
from aiohttp.test_utils import TestServer
from sqlalchemy import insert, update

from crm.config import Config
from crm.face import Database
from crm.face.visibility import Viewer, viewer_for
from crm.store.models import Company, EntityEmail, Lead, User
from crm.vocab import utcnow
from proxy.dav import app as dav
from proxy.web.app import make_app

CHUNK = 5_000
REPORT = (
    '<?xml version="1.0"?><d:sync-collection xmlns:d="DAV:" '
    'xmlns:c="urn:ietf:params:xml:ns:carddav"><d:sync-token>{token}</d:sync-token>'
    "<d:sync-level>1</d:sync-level><d:prop><d:getetag/>{data}</d:prop></d:sync-collection>"
)


def fill(db: Database, cards: int) -> None:
    """One ``own`` user responsible for ``cards`` leads at ``cards // 10`` companies."""
    now = utcnow()
    with db.session() as s:
        user = {"email": "u1@co.test", "name": "U1", "admin": False, "crm_access": True}
        s.execute(insert(User), [{**user, "sees": "own", "created_at": now}])
        s.execute(insert(Company), [
            {"name": f"Company {i}", "domain": f"c{i}.test", "created_at": now}
            for i in range(1, cards // 10 + 1)
        ])  # fmt: skip
    for start in range(0, cards, CHUNK):
        ids = range(start + 1, min(cards, start + CHUNK) + 1)
        with db.session() as s:
            s.execute(insert(Lead), [
                {"id": i, "name": f"Lead {i}", "status": "new", "company_id": (i - 1) // 10 + 1,
                 "responsible_id": 1, "phones": [f"+1 555 {i}"], "changed_by_person": False,
                 "created_at": now, "updated_at": now} for i in ids
            ])  # fmt: skip
            s.execute(insert(EntityEmail), [
                {"address": f"l{i}@c{(i - 1) // 10 + 1}.test", "entity_type": "lead",
                 "entity_id": i, "position": 0} for i in ids
            ])  # fmt: skip


class Signed:
    """Sign-in taken as done for the bench's user."""

    def __init__(self, viewer: Viewer) -> None:
        self.v = viewer

    async def viewer(self, client: Any, header: Any) -> Viewer:
        return self.v


async def _sync(
    http: aiohttp.ClientSession, url: str, token: str, bodies: bool
) -> tuple[float, str]:
    data = "<c:address-data/>" if bodies else ""
    started = time.perf_counter()
    async with http.request(
        "REPORT",
        url,
        data=REPORT.format(token=token, data=data),
        headers={"Content-Type": "application/xml", "Authorization": "Basic eDp4"},
    ) as r:
        text = await r.text()
        assert r.status == 207, text[:300]
    return (time.perf_counter() - started) * 1000, text


def _token(text: str) -> str:
    return str(re.findall(r"sync-token>([^<]+)<", text)[-1])


async def run(url: str, cards: int) -> None:
    db = Database(url)
    started = time.perf_counter()
    fill(db, cards)
    print(
        f"filled {cards} leads + {cards // 10} companies in {time.perf_counter() - started:.1f} s"
    )
    viewer = viewer_for(db, "u1@co.test")
    assert viewer is not None
    app = make_app(Config(database_url=url), db)
    app[dav.SIGNIN] = cast(Any, Signed(viewer))  # sign-in taken as done
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    book = f"http://127.0.0.1:{server.port}/dav/users/{viewer.user_id}/crm/"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        async with aiohttp.ClientSession() as http:
            ms, text = await _sync(http, book, "", True)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            found = text.count("BEGIN:VCARD")
            size = len(text) / 1e6
            print(f"first full sync: {found} cards, {size:.1f} MB, {ms:.0f} ms; "
                  f"peak RSS {rss // 1024} MB (before it {rss_before // 1024} MB)")  # fmt: skip
            token = _token(text)
            times = [(await _sync(http, book, token, True))[0] for _ in range(20)]
            _ms, again = await _sync(http, book, token, True)
            assert "BEGIN:VCARD" not in again
            print(f"unchanged re-sync: median {statistics.median(times):.1f} ms, "
                  f"worst {max(times):.1f} ms over 20, {len(again)} bytes")  # fmt: skip
            with db.session() as s:
                s.execute(update(Lead).where(Lead.id == cards // 2).values(name="Changed"))
                s.add(EntityEmail(address="changed@c.test", entity_type="lead",
                                  entity_id=cards // 2, position=1))  # fmt: skip
            ms, one = await _sync(http, book, token, True)
            print(f"changed-one re-sync: {one.count('BEGIN:VCARD')} card, {ms:.1f} ms")
    finally:
        await server.close()
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        asyncio.run(run(url, args.cards))


if __name__ == "__main__":
    main()
