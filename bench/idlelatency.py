"""Delivery -> activity under IDLE, split into the server's part and mailcrm's (issue 19).

Run from the repository root, as root (the test Dovecot drops privileges)::

    .venv/bin/python bench/idlelatency.py [--messages 40] [--db sqlite|postgresql]

A private Dovecot (``tests/servers.py``) gets one user; a fresh CRM (a SQLite file, or a fresh
PostgreSQL database on 127.0.0.1:5432) links its INBOX; the poller runs in its own process as
``mailcrm serve`` runs it and waits in IDLE. Then ``--messages`` messages are delivered one by one
(into the Maildir, as a local delivery agent does). It prints p50/p95/max of

* delivery -> activity committed: what a user sees (the CRM polled every 2 ms);
* the server's notice -> the pass ended: mailcrm's part, from the poller's own log line (the
  ``* N EXISTS`` in IDLE, DONE, the pass over the new UIDs, capture, commit, checkpoint, flags);
* the rest: the server's part, from the delivery to its notice. Dovecot 2.3 holds every IDLE
  notification back ``NOTIFY_DELAY_MSECS`` = 500 ms after the file-system event (a constant in
  its ``src/lib-storage/mailbox-watch.c``); nothing a client does shortens it.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingest import ROOT, Bench, incoming, seed_crm
from sqlalchemy import create_engine, text

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_BENCH = "mailcrm_bench_idle"
LOCATIONS = "SELECT count(*) FROM message_locations"
NOTICE = re.compile(r"(\d+) ms after the server's notice")
USER = "anna.berg"  # one of the corpus's employees, the mailbox's owner


def database(kind: str, work: Path) -> str:
    """A fresh CRM database URL: a SQLite file, or a new PostgreSQL database."""
    if kind == "sqlite":
        return f"sqlite:///{work / 'idle.db'}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {PG_BENCH} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {PG_BENCH}"))
    admin.dispose()
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_BENCH}"


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.0f} ms, p95 {p95 * 1000:6.0f} ms, "
        f"max {ordered[-1] * 1000:6.0f} ms"
    )


def measure(bench: Bench, url: str, count: int) -> dict[str, list[float]]:
    """Deliver ``count`` messages one by one to a mailbox the poller watches in IDLE."""
    address = bench.mailbox(USER, [])
    seed_crm(url, address, bench.key.encode(), bench.dovecot.imaps_port)
    engine = create_engine(url)
    env = {"MAILCRM_SECRET_KEY": bench.key, "XDG_DATA_HOME": str(bench.work), "PATH": "/usr/bin"}
    command = [sys.executable, __file__, "--poll", str(bench.config(USER)), url]
    log = bench.work / "poller.log"
    with log.open("wb") as sink:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stderr=sink)
    total = []
    try:
        _wait(lambda: _scalar(engine, "SELECT count(*) FROM folder_states") > 0, child)
        time.sleep(2.0)  # the pass is over and the poller is in IDLE
        for n, raw in enumerate(incoming(count, seed=99), start=1):
            started = time.perf_counter()
            bench.dovecot.deliver(USER, raw)
            _wait(lambda n=n: _scalar(engine, LOCATIONS) >= n, child)
            total.append(time.perf_counter() - started)
            time.sleep(0.3)  # back into IDLE
    finally:
        child.terminate()
        child.wait(60)
        engine.dispose()
    ours = [int(ms) / 1000 for ms in NOTICE.findall(log.read_text(errors="replace"))]
    if len(ours) != count:
        raise SystemExit(f"{len(ours)} IDLE passes logged for {count} messages; see {log}")
    server = [t - o for t, o in zip(total, ours, strict=True)]
    return {"ours": ours, "total": total, "server": server}


def _scalar(engine: object, query: str) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(text(query)).scalar_one())


def _wait(check: object, child: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if child.poll() is not None:
            raise SystemExit(f"the poller exited with {child.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.002)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--poll", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poll:  # the poller's process: its log at INFO on stderr, as `mailcrm serve` has it
        from ingest import phase_poll

        from crm.logs import configure

        configure("text", logging.INFO)
        phase_poll(*args.poll)
        return
    sys.path.insert(0, str(ROOT))
    import corpus

    from tests.servers import Dovecot

    with (
        tempfile.TemporaryDirectory(prefix="mailcrm-idle-") as tmp,
        Dovecot(corpus.OUR_DOMAIN) as dovecot,
    ):
        bench = Bench(Path(tmp), dovecot)
        found = measure(bench, database(args.db, Path(tmp)), args.messages)
    print(f"IDLE latency over {args.messages} messages, CRM on {args.db}:")
    print(f"  delivery -> activity committed (what users see) {percentiles(found['total'])}")
    print(f"  server's notice -> pass ended (mailcrm's part)  {percentiles(found['ours'])}")
    print(f"  the rest (the server's part, at least)          {percentiles(found['server'])}")


if __name__ == "__main__":
    main()
