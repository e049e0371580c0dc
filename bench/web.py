"""Server time per web CRM page (issue 18) on a large CRM: bulk-inserted leads and activities,
then each page's face call timed as an ``own`` user and as an ``all`` user (the HTML rendering
adds about a millisecond; this times the database work the page waits for).

    .venv/bin/python bench/web.py [--leads 100000] [--activities 1000000] [--db URL]

Without ``--db`` a SQLite file in a temporary folder; a ``--db`` that already holds users is
reused as it is (fill once, time before and after a change). Listings count as the web does
(capped at ``COUNT_CAP``); the dashboard's figures are timed as the web's background task
computes them and as a request serves them (read from the keeper, charts drawn). Prints one
line per page: median and worst of 5 runs in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from crm.face import Database, queries
from crm.face import web as face
from crm.face.figures import FigureKeeper
from crm.face.visibility import Viewer, viewer_for
from crm.store.models import Activity, ActivityBinding, Company, EntityEmail, Lead, Mailbox, User
from crm.vocab import utcnow
from proxy.web.charts import bars
from proxy.web.crmpages import COUNT_CAP, PAGE

USERS, CHUNK = 20, 20_000


def fill(db: Database, leads: int, activities: int) -> None:
    """``leads`` leads over USERS users, ``activities`` mails over their mailboxes."""
    now = utcnow()
    with db.session() as s:
        s.execute(insert(User), [
            {"email": f"u{i}@co.test", "name": f"U{i}", "admin": i == 0, "crm_access": True,
             "sees": "all" if i == 0 else "own", "created_at": now} for i in range(USERS)
        ])  # fmt: skip
        s.execute(insert(Mailbox), [
            {"address": f"u{i}@co.test", "kind": "personal", "owner_id": i + 1, "linked": True,
             "folders": [], "created_at": now} for i in range(USERS)
        ])  # fmt: skip
        s.execute(insert(Company), [
            {"name": f"Company {i}", "domain": f"c{i}.test", "created_at": now}
            for i in range(1, leads // 10 + 1)
        ])  # fmt: skip
    for start in range(0, leads, CHUNK):
        ids = range(start + 1, min(leads, start + CHUNK) + 1)
        with db.session() as s:
            s.execute(insert(Lead), [
                {"id": i, "name": f"Lead {i}", "status": "new", "company_id": i // 10 + 1
                 if i // 10 + 1 <= leads // 10 else None, "responsible_id": i % USERS + 1,
                 "changed_by_person": False, "created_at": now, "updated_at": now} for i in ids
            ])  # fmt: skip
            s.execute(insert(EntityEmail), [
                {"address": f"l{i}@c{i // 10}.test", "entity_type": "lead", "entity_id": i,
                 "position": 0} for i in ids
            ])  # fmt: skip
    for start in range(0, activities, CHUNK):
        ids = range(start + 1, min(activities, start + CHUNK) + 1)
        with db.session() as s:
            s.execute(insert(Activity), [
                {"id": i, "message_key": f"k{i}", "thread": f"t{i}", "direction": "incoming",
                 "subject": f"Mail {i}", "counterparts": [], "mailbox_id": i % leads % USERS + 1,
                 "completed": i % 3 == 0, "answered": False, "sent_at": now, "created_at": now}
                for i in ids
            ])  # fmt: skip
            s.execute(insert(ActivityBinding), [
                {"activity_id": i, "entity_type": "lead", "entity_id": i % leads + 1} for i in ids
            ])  # fmt: skip


def timed(work: Callable[[], Any], runs: int = 5) -> tuple[float, float]:
    """Median and worst milliseconds of ``runs`` runs."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def pages_for(
    viewer: Viewer | None, page: queries.Filter, keeper: FigureKeeper
) -> dict[str, Callable[[Any], Any]]:
    """Each page's face call for ``viewer`` (the dashboard's figures are computed by the web's
    background task, timed on its own line, and read by the request)."""
    keeper.read(viewer)  # the view is wanted, as after a first request
    return {
        "/leads": lambda s: queries.leads(s, page, viewer=viewer),
        "/leads?q=lead 4242": lambda s: queries.leads(
            s, queries.Filter("lead 4242", 50, cap=page.cap), viewer=viewer
        ),
        "/leads/ID": lambda s: queries.lead(s, 5 * 20 + 6, viewer=viewer),
        "/contacts": lambda s: queries.contacts(s, page, viewer=viewer),
        "/companies": lambda s: queries.companies(s, page, viewer=viewer),
        "/activities": lambda s: face.open_first(s, page, viewer=viewer),
        "(dashboard task)": lambda s: keeper.refresh(s, viewer),
        "/ (dashboard)": lambda s: _served(keeper, viewer),
    }


def _served(keeper: FigureKeeper, viewer: Viewer | None) -> None:
    """What the dashboard request does: read the kept figures, draw the charts."""
    kept = keeper.read(viewer)
    assert kept is not None, "the background computation runs first"
    data = kept.figures
    bars([(w, float(n)) for w, n in data.new_leads])
    bars([(e, float(n)) for e, n in data.open_by_employee])
    bars(data.response_hours, " h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--activities", type=int, default=1_000_000)
    parser.add_argument("--db")
    args = parser.parse_args()
    url = args.db or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    db = Database(url)
    started = time.perf_counter()
    with db.session() as s:
        filled = s.scalar(select(func.count()).select_from(User)) or 0
    if not filled:
        fill(db, args.leads, args.activities)
    took = time.perf_counter() - started
    print(("reused" if filled else "filled") + f" {args.leads} leads, {args.activities} "
          f"activities in {took:.0f} s ({db.engine.dialect.name})")  # fmt: skip
    page = queries.Filter(None, PAGE, 0, cap=COUNT_CAP)
    for email in ("u0@co.test", "u5@co.test"):
        viewer = viewer_for(db, email)
        who = "all" if viewer and viewer.sees_all else "own"
        pages = pages_for(viewer, page, FigureKeeper())
        for name, call in pages.items():

            def run(call: Callable[[Any], Any] = call) -> None:
                with db.session() as s:
                    call(s)

            median, worst = timed(run)
            print(f"{who:4} {name:22} median {median:8.1f} ms   worst {worst:8.1f} ms")
    db.dispose()


if __name__ == "__main__":
    main()
