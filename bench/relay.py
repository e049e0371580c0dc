"""Relay speed and memory: client -> mailcrm -> Postfix against client -> Postfix, same run.

Run from the repository root, as root (the private Postfix/Dovecot of ``tests/servers.py``)::

    .venv/bin/python bench/relay.py [--seconds 10] [--connections 16] [--size 5000] [--db URL]

It prints figures and judges nothing (no assertions, no exit status for a missed target):

1. Throughput and latency, 5 KB messages over 16 concurrent connections, each logged in once
   and sending in a loop: directly to Postfix, then through the relay (capture on: every message
   is spooled and captured by the worker), alternating for ``--rounds`` rounds; messages/s, p50
   and p99 of each message's send time, the relay/direct throughput ratio (target >= 0.85, issue
   19) and the added p50/p99 latency at half load (targets: p50 < 3 ms, p99 < 10 ms), and how long
   the capture worker lagged behind. Every message carries the current date (``Date:`` made when it
   is sent), so capture files it as today's mail.
   Throughput counts a message once its work is done: each phase's messages over its sending
   time plus the time until Postfix delivered all of them (for the relay: and the worker captured
   all of them). Postfix accepts faster than its delivery agents deliver, so when a direct phase
   stops sending a fifth or so of its messages are still in Postfix's queue; the rate over the
   sending window alone counts them as done, and is printed too, with that backlog.
2. Memory: a fresh relay process gets ten 20 MB messages at once (capture on); its peak RSS
   (VmHWM) while relaying and capturing them (target < 400 MB).

The relay runs in a child process (``run_relay`` + ``run_spool_worker``, as in ``mailcrm
serve``) on a SQLite CRM by default (``--db`` for PostgreSQL); the clients are aiosmtplib. The
CPU each message costs is shown per process (this client, the relay, its capture worker, Postfix):
on a small machine the ratio is bound by CPU; it is shown for the flat-out phases and for the
paced ones (the same load both ways, so a difference is work, not contention). Postfix's part is
split by daemon (``max_use`` raised so none leaves mid-phase): the test Postfix's ``capture``
pipe(8) transport runs a shell script per recipient, several fork/execs, and that sink is most of
Postfix's CPU per message. It also shows how the relay's event loop thread
spent the flat-out phases (on a CPU, or runnable and waiting for one). ``BENCH_NO_WORKER=1``
runs the relay without the capture worker, ``BENCH_PROFILE=FILE`` writes a cProfile of the
relay's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from crm.config import load_config  # noqa: E402
from crm.spool.queue import Wakeup  # noqa: E402
from crm.spool.runner import run_spool_worker  # noqa: E402
from crm.store.db import Database  # noqa: E402
from crm.store.models import Activity  # noqa: E402
from proxy.serve import run_loop  # noqa: E402
from proxy.smtp.relay import run_relay  # noqa: E402
from proxy.smtp.tls import write_selfsigned  # noqa: E402
from tests.servers import Dovecot, Postfix  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from relayload import PASSWORD, body_of, load, make_message, paced  # noqa: E402
from relaystats import CpuMeter, LoopMeter, PostfixSplit, descendants, status_of  # noqa: E402

HOST = "127.0.0.1"
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- the relay child ----------------------------------------------------------------------------


def child(config_path: str) -> None:
    """``--child``: the relay and the spool worker until SIGTERM (what ``serve`` runs)."""
    config = load_config(config_path)
    db = Database(config.database_url)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        wakeup = Wakeup()  # as ``mailcrm serve`` shares it: the relay's deliveries wake the worker
        parts = [run_relay(config, db, stop, wakeup=wakeup), _orphaned(stop)]
        if not os.environ.get("BENCH_NO_WORKER"):
            parts.append(run_spool_worker(config, db, stop, wakeup=wakeup))
        await asyncio.gather(*parts)

    profile = os.environ.get("BENCH_PROFILE")
    if not profile:
        run_loop(main())  # the loop ``mailcrm serve`` runs on
        return
    import cProfile

    cProfile.runctx("run_loop(main())", globals(), {"main": main, "run_loop": run_loop}, profile)


async def _orphaned(stop: asyncio.Event) -> None:
    """Stop when the bench is gone (killed, or its output pipe closed): no relay left behind."""
    parent = os.getppid()
    while os.getppid() == parent and not stop.is_set():
        await asyncio.sleep(1.0)
    stop.set()


class RelayProcess:
    """A relay child on its own port and database."""

    def __init__(self, work: Path, postfix: Postfix, db_url: str, key: str, tag: str) -> None:
        self.port = free_port()
        self.db_url = db_url
        cert, keyfile = work / "relay.crt", work / "relay.key"
        if not cert.exists():
            write_selfsigned(cert, keyfile, ["localhost", HOST])
        self.ca = ssl.create_default_context(cafile=str(cert))
        config = work / f"relay-{tag}.toml"
        config.write_text(
            f'database_url = "{db_url}"\n[relay]\nhost = "{HOST}"\nport = {self.port}\n'
            f'cert_file = "{cert}"\nkey_file = "{keyfile}"\nhostname = "relay.bench"\n'
            f'upstream_host = "{HOST}"\nupstream_port = {postfix.port}\n'
            f'upstream_ca_file = "{postfix.cert_path}"\nmax_messages_per_minute = 0\n'
            f'spool_dir = "{work / ("spool-" + tag)}"\nspool_poll_interval = 0.5\n'
            f"max_message_size = {64 * MB}\n"
        )
        env = dict(os.environ, MAILCRM_SECRET_KEY=key, XDG_DATA_HOME=str(work / "xdg"))
        # Its own session, as a service has (systemd): the scheduler's autogroups (and a service's
        # cgroup) share the CPU between sessions first, so a relay in the load generator's session
        # would get half of what Postfix's session gets.
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(config)], env=env, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((HOST, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("the relay child did not start")

    def status(self, field: str) -> int:
        """A /proc/<pid>/status figure in bytes (VmRSS, VmHWM)."""
        return status_of(self.proc.pid, field)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def activities(db_url: str) -> int:
    db = Database(db_url)
    try:
        with db.session() as session:
            return int(session.scalar(select(func.count(Activity.id))) or 0)
    finally:
        db.dispose()


# --- load ---------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def show(name: str, rate: float, lat: list[float]) -> None:
    print(
        f"  {name:7} {rate:8.1f} msg/s   p50 {pct(lat, 0.5):7.2f} ms   "
        f"p99 {pct(lat, 0.99):7.2f} ms   ({len(lat)} messages)"
    )


def wait_captured(db_url: str, count: int, timeout: float = 120.0) -> float:
    """Seconds until ``count`` activities exist (or the timeout)."""
    start = time.perf_counter()
    while activities(db_url) < count and time.perf_counter() - start < timeout:
        time.sleep(0.2)
    return time.perf_counter() - start


def queued(postfix: Postfix) -> int:
    """Messages in Postfix's queue now (the last line of ``postqueue -p``: "-- 12 Kbytes in 3
    Requests.")."""
    last = postfix.queue().strip().splitlines()[-1:]
    words = last[0].split() if last else []
    return int(words[-2]) if len(words) > 2 and words[-1].startswith("Request") else 0


def settle(postfix: Postfix, timeout: float = 120.0) -> None:
    """Wait until Postfix delivered everything queued, so no phase pays for the one before."""
    deadline = time.monotonic() + timeout
    while "Mail queue is empty" not in postfix.queue() and time.monotonic() < deadline:
        time.sleep(0.2)


def throughput(
    args: argparse.Namespace, work: Path, postfix: Postfix, users: list[str], key: str
) -> None:
    db_url = args.db or f"sqlite:///{work / 'bench.db'}"
    prepare_crm(db_url, key, users)
    relay = RelayProcess(work, postfix, db_url, key, "speed")
    direct_ca = postfix.ssl_context()
    print(
        f"\n1. {args.connections} connections, {args.size} byte messages, "
        f"{args.seconds:.0f} s per measurement, capture on ({db_url.split(':')[0]})"
    )
    _, warm = asyncio.run(load(relay.port, relay.ca, users, 2.0, args.size))
    asyncio.run(load(postfix.port, direct_ca, users, 2.0, args.size))
    sent = len(warm)
    wait_captured(db_url, sent)
    results: dict[str, list[tuple[float, list[float]]]] = {"direct": [], "relay": []}
    drained: dict[str, list[float]] = {"direct": [], "relay": []}  # msg/s until all is done
    left: dict[str, list[Leftover]] = {"direct": [], "relay": []}
    meter = CpuMeter(relay.proc.pid, postfix.queue_dir / "pid" / "master.pid")
    daemons = PostfixSplit(postfix.queue_dir / "pid" / "master.pid")
    loop_meter = LoopMeter(relay.proc.pid)
    targets = (("direct", postfix.port, direct_ca), ("relay", relay.port, relay.ca))
    lag = 0.0
    for round_no in range(args.rounds):
        print(f" round {round_no + 1}: flat out")
        for name, port, ca in targets:
            settle(postfix)
            before, loop_before = meter.snapshot(), loop_meter.snapshot()
            by_daemon = daemons.snapshot()
            rate, lat = asyncio.run(load(port, ca, users, args.seconds, args.size))
            ended = time.perf_counter()
            results[name].append((rate, lat))
            if name == "relay":
                loop_meter.add(loop_before)  # the sending window only, not the wait below
                sent += len(lat)
                left[name].append(Leftover(len(lat), queued(postfix), sent - activities(db_url)))
                lag = wait_captured(db_url, sent)
            else:
                left[name].append(Leftover(len(lat), queued(postfix), 0))
            settle(postfix)  # the deliveries this phase queued are part of its cost
            drained[name].append(len(lat) / (len(lat) / rate + time.perf_counter() - ended))
            meter.add(name, before, len(lat))
            daemons.add(name, by_daemon, len(lat))
            show(name, rate, lat)
    summarize(results, drained, left)
    loop_meter.show(sum(len(lat) for _, lat in results["relay"]))
    offered = args.load * statistics.median(r for r, _ in results["relay"])
    paced_lat: dict[str, list[float]] = {"direct": [], "relay": []}
    print(
        f" paced: {offered:.1f} msg/s offered over {len(users)} connections "
        f"({args.load:.0%} of the relay's flat-out rate), same load both ways"
    )
    for _ in range(args.rounds):
        for name, port, ca in targets:
            settle(postfix)
            before, by_daemon = meter.snapshot(), daemons.snapshot()
            rate, lat = asyncio.run(paced(port, ca, users, args.seconds, args.size, offered))
            if name == "relay":
                wait_captured(db_url, sent + len(lat))
            settle(postfix)
            meter.add(f"{name}, paced", before, len(lat))
            daemons.add(f"{name}, paced", by_daemon, len(lat))
            paced_lat[name].extend(lat)
            sent += len(lat) if name == "relay" else 0
    show("direct", offered, paced_lat["direct"])
    show("relay", offered, paced_lat["relay"])
    direct_lat, relay_lat = paced_lat["direct"], paced_lat["relay"]
    print(
        f"  added latency: p50 {pct(relay_lat, 0.5) - pct(direct_lat, 0.5):+.2f} ms "
        f"(target < 3 ms), p99 {pct(relay_lat, 0.99) - pct(direct_lat, 0.99):+.2f} ms "
        "(target < 10 ms)"
    )
    lag = max(lag, wait_captured(db_url, sent))
    captured = activities(db_url)
    relay.stop()
    print(
        f"  captured {captured} of {sent} relayed messages (warm-up included); the worker "
        f"finished {lag:.1f} s after the last send"
    )
    meter.show()
    daemons.show()


def summarize(
    results: dict[str, list[tuple[float, list[float]]]],
    drained: dict[str, list[float]],
    left: dict[str, list[Leftover]],
) -> None:
    direct_rate = statistics.median(r for r, _ in results["direct"])
    relay_rate = statistics.median(r for r, _ in results["relay"])
    direct_lat = [x for _, lat in results["direct"] for x in lat]
    relay_lat = [x for _, lat in results["relay"] for x in lat]
    print(
        " flat out, all rounds (messages/s while sending; latency here is queueing at saturation)"
    )
    show("direct", direct_rate, direct_lat)
    show("relay", relay_rate, relay_lat)
    direct_done, relay_done = (statistics.median(drained[k]) for k in ("direct", "relay"))
    print(
        f"  throughput relay/direct: {relay_done / direct_done:.2f}  (target >= 0.85): "
        f"messages delivered (and captured) per second, direct {direct_done:.1f}, relay "
        f"{relay_done:.1f} (each phase's messages over its sending time plus the time until "
        f"Postfix's queue was empty and, for the relay, every message captured)"
    )
    print(
        f"  sending window only: {relay_rate / direct_rate:.2f}; when the clients stopped, "
        f"{backlog(left['direct'], 'queued')} of the direct phases' messages were still in "
        f"Postfix's queue, {backlog(left['relay'], 'queued')} of the relay phases' "
        f"({backlog(left['relay'], 'uncaptured')} not captured yet)"
    )


class Leftover(NamedTuple):
    """What a flat-out phase left undone when its clients stopped."""

    sent: int
    queued: int  # still in Postfix's queue
    uncaptured: int  # relayed but not captured yet (0 for the direct phases)


def backlog(phases: list[Leftover], field: str) -> str:
    """Left over at the end of the sending windows, as a share of the messages sent."""
    sent = sum(p.sent for p in phases) or 1
    return f"{sum(getattr(p, field) for p in phases) / sent:.0%}"


# --- memory -------------------------------------------------------------------------------------


async def big_sends(port: int, ca: ssl.SSLContext, users: list[str], size: int) -> list[float]:
    async def one(i: int, user: str) -> float:
        smtp = aiosmtplib.SMTP(
            hostname=HOST, port=port, start_tls=True, tls_context=ca, timeout=300
        )
        await smtp.connect()
        await smtp.login(user, PASSWORD)
        raw = make_message(user, f"big{i}@client-big.example", f"Big {i}", body_of(size, i))
        start = time.perf_counter()
        await smtp.sendmail(user, [f"big{i}@client-big.example"], raw)
        await smtp.quit()
        return time.perf_counter() - start

    return await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))


def memory(
    args: argparse.Namespace, work: Path, postfix: Postfix, users: list[str], key: str
) -> None:
    db_url = f"sqlite:///{work / 'bench-big.db'}" if not args.db else args.db
    if not args.db:
        prepare_crm(db_url, key, users)
    before = activities(db_url)
    relay = RelayProcess(work, postfix, db_url, key, "memory")
    idle = relay.status("VmRSS")
    print(f"\n2. ten {args.big_mb} MB messages at once through a fresh relay (capture on)")
    peak = [0]
    stop = [False]

    async def sample() -> None:
        while not stop[0]:
            peak[0] = max(peak[0], relay.status("VmRSS"))
            await asyncio.sleep(0.02)

    async def run() -> list[float]:
        sampler = asyncio.create_task(sample())
        times = await big_sends(relay.port, relay.ca, users[:10], args.big_mb * MB)
        deadline = time.monotonic() + 180
        while activities(db_url) - before < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stop[0] = True
        await sampler
        return times

    direct = asyncio.run(
        big_sends(postfix.port, postfix.ssl_context(), users[:10], args.big_mb * MB)
    )
    times = asyncio.run(run())
    hwm = relay.status("VmHWM")
    worker_hwm = max((status_of(pid, "VmHWM") for pid in descendants(relay.proc.pid)), default=0)
    captured = activities(db_url) - before
    relay.stop()
    print(
        f"  relay RSS idle {idle / MB:.0f} MB, peak {max(hwm, peak[0]) / MB:.0f} MB "
        f"(VmHWM; target < 400 MB); its capture worker process peaked at "
        f"{worker_hwm / MB:.0f} MB"
    )
    print(
        f"  send time per message: {min(times):.2f}-{max(times):.2f} s through the relay, "
        f"{min(direct):.2f}-{max(direct):.2f} s directly; captured {captured} of 10"
    )


# --- set-up -------------------------------------------------------------------------------------


def prepare_crm(db_url: str, key: str, users: list[str]) -> None:
    """The bench's users in a new CRM: the capture counts assume no activities before."""
    from crm.errors import AlreadyExists
    from crm.face import admin

    db = Database(db_url)
    try:
        with db.session() as session:
            for user in users:
                admin.add_user(session, user)
    except AlreadyExists as exc:
        raise SystemExit(f"bench: --db needs an empty database ({exc})") from None
    finally:
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--big-mb", type=int, default=20)
    parser.add_argument(
        "--db", help="CRM database URL, of an empty database (default: a fresh SQLite file)"
    )
    parser.add_argument(
        "--load",
        type=float,
        default=0.5,
        help="paced phase: offered rate as a share of the relay's flat-out rate",
    )
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.child:
        child(args.child)
        return
    run(args)


def keep_daemons(postfix: Postfix) -> None:
    """No Postfix daemon leaves during a phase (``max_use``), so its CPU stays by daemon name."""
    conf = str(postfix.config_dir)
    subprocess.run(["postconf", "-c", conf, "-e", "max_use = 1000000"], check=True)
    subprocess.run(["postfix", "-c", conf, "reload"], check=True, capture_output=True)


def run(args: argparse.Namespace) -> None:
    key = Fernet.generate_key().decode()
    with (
        tempfile.TemporaryDirectory(prefix="mailcrm-bench-relay-") as tmp,
        Dovecot() as dovecot,
        Postfix(dovecot, message_size_limit=64 * MB) as postfix,
    ):
        work = Path(tmp)
        keep_daemons(postfix)
        users = [dovecot.add_user(f"bench{i}", PASSWORD) for i in range(args.connections)]
        print(
            f"mailcrm relay bench: Postfix {postfix.host}:{postfix.port}, "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        )
        throughput(args, work, postfix, users, key)
        if not args.skip_memory:
            memory(args, work, postfix, users, key)


if __name__ == "__main__":
    main()
