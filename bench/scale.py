"""Scale figures for the company-wide gateway (issue 5, B6/B7), printed, never asserted.

    .venv/bin/python bench/scale.py [--mailboxes 1000] [--nodes 3] [--lease 5] [--db URL]
        [--phases claims,cluster,http,idle] [--idle-mailboxes 1000] [--burst 100]
        [--idle-seconds 40] [--idle-db sqlite|pg] [--tls ssl|none] [--ca system|private]

On the PostgreSQL of the tests (a private schema, dropped afterwards) it measures:
- lease claims over N mailboxes by one node: the first claim and the p50/p95 of renewals;
- N node processes: time until the mailboxes are spread within one, then SIGKILL one node and
  time until the survivors hold all of them again (the contract: within two lease periods);
- the HTTP listener with N mailboxes: p50/p95 of ``/metrics`` and of the status page.
The ``idle`` phase (:mod:`idlescale`, also runnable alone; needs root for the test Dovecot): one
node (``mailcrm serve``) holding ``--idle-mailboxes`` linked mailboxes in IDLE on a real Dovecot,
on a SQLite CRM (``--idle-db pg``: a private schema at ``--db``): its peak RSS and CPU while idle
(targets < 600 MB, < 5 % of a core) against the same node with 0 mailboxes, then ``--burst``
mailboxes receiving one message each at once: delivery-to-activity p50/p95/max (target p95 < 3 s).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import idlescale
from sqlalchemy import create_engine, text

from crm.config import Config
from crm.mailboxes.leases import LeaseKeeper, lease_owners
from crm.store.db import Database
from crm.store.models import Mailbox, utcnow
from proxy.web import run_http

PG = os.environ.get("MAILCRM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1000:.1f} ms, p95 {pct(values, 95) * 1000:.1f} ms"


def fill(db: Database, count: int) -> None:
    now = utcnow()
    with db.session() as session:
        session.add_all(
            Mailbox(
                address=f"box{i}@bench.example",
                kind="company",
                linked=True,
                last_check_at=now,
                last_ok_at=None if i % 10 == 0 else now,
                last_error="login failed: wrong password" if i % 10 == 0 else None,
            )
            for i in range(count)
        )


def bench_claims(db: Database, rounds: int = 20) -> None:
    keeper = LeaseKeeper(db, "bench-solo", 30)
    started = time.perf_counter()
    held = keeper.claim()
    first = time.perf_counter() - started
    renewals = []
    for _ in range(rounds):
        started = time.perf_counter()
        keeper.claim()
        renewals.append(time.perf_counter() - started)
    keeper.release_all()
    print(
        f"claim by one node: first {first * 1000:.0f} ms for {len(held)} mailboxes; "
        f"renewal {ms(renewals)}"
    )


def node(url: str, name: str, lease: float, path: str) -> None:
    """A node process: claims every lease/3 and writes how many mailboxes it holds."""
    keeper = LeaseKeeper(Database(url, migrate=False), name, lease)
    while True:
        try:
            count = len(keeper.claim())
        except Exception:
            count = len(keeper.owned())
        Path(path).write_text(str(count), encoding="ascii")
        time.sleep(keeper.renew_interval)


def counts(paths: list[Path]) -> list[int]:
    found = []
    for path in paths:
        try:
            found.append(int(path.read_text(encoding="ascii") or 0))
        except (OSError, ValueError):
            found.append(0)
    return found


def until(check: Callable[[], bool], timeout: float) -> float | None:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.05)
    return time.monotonic() - started


def bench_cluster(url: str, db: Database, total: int, nodes: int, lease: float, tmp: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    paths = [tmp / f"node{i}.count" for i in range(nodes)]
    procs = [
        ctx.Process(target=node, args=(url, f"bench-{i}", lease, str(p)), daemon=True)
        for i, p in enumerate(paths)
    ]
    started = time.monotonic()
    for proc in procs:
        proc.start()

    def spread(alive: list[int]) -> bool:
        now = [counts(paths)[i] for i in alive]
        owners = lease_owners(db)
        return sum(now) == total and max(now) - min(now) <= 1 and len(owners) == total

    everyone = list(range(nodes))
    took = until(lambda: spread(everyone), 30 * lease)
    print(
        f"{nodes} nodes, {total} mailboxes, lease {lease:.0f} s: spread within one after "
        f"{time.monotonic() - started:.1f} s from start"
        if took is not None
        else f"{nodes} nodes: no even spread within {30 * lease:.0f} s: {counts(paths)}"
    )
    procs[0].kill()
    survivors = everyone[1:]
    took = until(lambda: sum(counts(paths)[i] for i in survivors) == total, 10 * lease)
    shown = f"{took:.1f} s ({took / lease:.2f} lease periods)" if took is not None else "never"
    print(
        f"SIGKILL of one node: survivors hold all {total} after {shown}; "
        f"spread {[counts(paths)[i] for i in survivors]}"
    )
    for proc in procs:
        proc.kill()
        proc.join(10)


async def bench_http(db: Database, total: int, rounds: int = 20) -> None:
    config = Config(database_url=db.url)
    config.http.port, config.relay.enabled = 18025 + os.getpid() % 1000, False
    stop = asyncio.Event()
    task = asyncio.create_task(run_http(config, db, stop))
    await asyncio.sleep(0.5)
    base = f"http://127.0.0.1:{config.http.port}"
    async with aiohttp.ClientSession() as session:
        for path in ("/metrics", "/"):
            times, size = [], 0
            for _ in range(rounds):
                started = time.perf_counter()
                async with session.get(base + path) as response:
                    size = len(await response.read())
                times.append(time.perf_counter() - started)
            print(f"GET {path} with {total} mailboxes: {ms(times)}, {size / 1024:.0f} KiB")
    stop.set()
    await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--db", default=PG, help="PostgreSQL URL (a private schema is used)")
    parser.add_argument("--phases", default="claims,cluster,http,idle")
    parser.add_argument("--idle-db", choices=("sqlite", "pg"), default="sqlite")
    idlescale.add_arguments(parser)
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if phases - {"idle"}:
        leases(args, phases)
    if "idle" in phases:
        idlescale.run(idlescale.options(args, args.db if args.idle_db == "pg" else "sqlite"))


def leases(args: argparse.Namespace, phases: set[str]) -> None:
    """The lease and HTTP phases, on a private schema of the PostgreSQL at ``--db``."""
    schema = "bench_" + uuid.uuid4().hex[:10]
    admin = create_engine(args.db, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in args.db else "?"
    url = f"{args.db}{sep}options=-csearch_path%3D{schema}"
    tmp = Path(tempfile.mkdtemp(prefix="mailcrm-scale-"))
    db = Database(url)
    try:
        fill(db, args.mailboxes)
        if "claims" in phases:
            bench_claims(db)
        if "cluster" in phases:
            bench_cluster(url, db, args.mailboxes, args.nodes, args.lease, tmp)
        if "http" in phases:
            asyncio.run(bench_http(db, args.mailboxes))
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
