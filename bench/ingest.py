"""IMAP ingest speed: a whole INBOX from a real Dovecot into the CRM through the poller.

Run from the repository root, as root (the test Dovecot drops privileges)::

    .venv/bin/python bench/ingest.py [--messages 10000] [--large 50000] [--idle 40]

It prints figures and never judges them. One run, over the same deterministic corpus
(:mod:`corpus`: about 4 KiB per message, attachments, vCards, replies, lists), measures:

(a) the stdlib parser alone: ``BytesParser(policy=policy.default).parsebytes`` over every message,
    one process; run right before the import (d) and right after it, and the import's rate is
    compared with each (the machine's load drifts);
(b) ``mbsync`` (isync) syncing the INBOX from the same Dovecot to a Maildir;
(c) the capture path alone: ``Capturer.capture`` of every message, no IMAP (the breakdown);
(d) the poller: ``run_poller`` importing the INBOX into a fresh SQLite CRM, messages/s from the
    start of its process (imports, login and SELECT included) to the last checkpoint, and its
    peak RSS; then, with the poller in IDLE, ``--idle`` messages delivered one by one:
    delivery-to-activity latency p50/p95/max;
(e) the same import of a ``--large`` INBOX, for its peak RSS.

Every measured phase runs in its own subprocess, so each peak RSS (VmHWM) is that phase's own.
Rates are given by wall clock (the targets) and by the phase's own CPU time (user + system; for
(d) the poller process's, Dovecot's excluded), which is steadier on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
# The CRM, the corpus and the test servers are imported where they are used: the poller's own
# process (phase d/e) then loads what ``mailcrm serve`` loads, not this script's tooling.
if TYPE_CHECKING:
    from tests.servers import Dovecot

PASSWORD = "bench password"
Result = dict[str, Any]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int | str = "self") -> int:
    """VmHWM of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def incoming(count: int, seed: int = 7) -> Iterator[bytes]:
    """``count`` incoming messages of the shared corpus, generated 5,000 at a time."""
    import corpus

    left = count
    while left > 0:
        for sample in corpus.generate(5000, seed).samples:
            if sample.direction == "incoming" and left > 0:
                left -= 1
                yield sample.raw
        seed += 1


def seed_crm(url: str, address: str, key: bytes, port: int = 993) -> None:
    """A fresh CRM: the corpus's employees and the linked personal mailbox (all time)."""
    import corpus

    from crm.face.admin import MailboxSettings, add_mailbox, add_user
    from crm.store.db import Database
    from crm.store.secrets import SecretBox

    db = Database(url)
    with db.session() as s:
        for email, name in corpus.EMPLOYEES:
            add_user(s, email, name)
        settings = MailboxSettings(
            imap_host="127.0.0.1", imap_port=port, imap_tls="ssl", password=PASSWORD,
            since="all", folders=["INBOX"],
        )  # fmt: skip
        add_mailbox(s, SecretBox(key), address, address, settings)
    db.dispose()


# -------------------------------------------------------------------------------- phases


def phase_parse(path: Path) -> Result:
    """(a) every message through the stdlib parser, in this process."""
    raws: list[bytes] = pickle.loads(path.read_bytes())
    parser = BytesParser(policy=policy.default)
    started, cpu = time.perf_counter(), time.process_time()
    for raw in raws:
        parser.parsebytes(raw)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"messages": len(raws), "wall": wall, "cpu": cpu, "rss_peak_kib": peak_rss_kib()}


def phase_capture(path: Path, url: str, address: str, key: str) -> Result:
    """(c) every message through ``Capturer.capture``, no IMAP."""
    from crm.capture.path import Capturer
    from crm.store.db import Database
    from crm.store.models import Direction

    raws: list[bytes] = pickle.loads(path.read_bytes())
    seed_crm(url, address, key.encode())
    capturer = Capturer(Database(url))
    started, cpu = time.perf_counter(), time.process_time()
    actions: dict[str, int] = {}
    for raw in raws:
        action = capturer.capture(raw, address, Direction.INCOMING).action
        actions[action] = actions.get(action, 0) + 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"messages": len(raws), "wall": wall, "cpu": cpu, "rss_peak_kib": peak_rss_kib(),
            **actions}  # fmt: skip


def phase_poll(config_path: str, url: str) -> None:
    """(d)/(e) the poller alone until SIGTERM (started by :func:`run_import`)."""
    from crm.config import load_config
    from crm.store.db import Database
    from proxy.serve import serve

    config = load_config(config_path, url)
    components = (("poller", "proxy.imap.poller:run_poller"),)
    timer = os.environ.get("MAILCRM_BENCH_PROFILE_TIMER", "wall")
    with profiled(os.environ.get("MAILCRM_BENCH_PROFILE"), timer == "cpu"):
        asyncio.run(serve(config, Database(config.database_url), components=components))


@contextlib.contextmanager
def profiled(path: str | None, cpu: bool = False) -> Iterator[None]:
    """cProfile every thread of this process (the event loop and the database threads) while
    inside, when ``path`` is given; their stats summed into ``path`` (``--profile``). ``cpu``:
    each thread's own CPU time (``--profile-timer cpu``), where wall time would also count what a
    thread waits for the GIL (a SQLite call that released it shows the other threads' work)."""
    if not path:
        yield
        return
    import cProfile
    import threading

    profiles: list[cProfile.Profile] = []

    def start(*_: object) -> None:  # a new thread's first call: it gets its own profiler
        profile = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
        profiles.append(profile)
        profile.enable()

    threading.setprofile(start)
    start()
    try:
        yield
    finally:
        threading.setprofile(None)
        for profile in profiles:
            profile.disable()
        import pstats

        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            with contextlib.suppress(TypeError):  # a thread that never ran a call
                stats.add(profile)
        stats.dump_stats(path)


def _child(*args: str) -> Result:
    """Run a phase of this script in a fresh process; its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"phase {args[:2]} failed:\n{done.stderr[-3000:]}")
    result: Result = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- the run


class Bench:
    """One Dovecot, one work directory, the corpus."""

    def __init__(self, work: Path, dovecot: Dovecot) -> None:
        from cryptography.fernet import Fernet

        self.work = work
        self.dovecot = dovecot
        self.key = Fernet.generate_key().decode()

    def mailbox(self, name: str, raws: Iterable[bytes]) -> str:
        """A Dovecot user with ``raws`` in its INBOX (Maildir files, in order)."""
        address = self.dovecot.add_user(name, PASSWORD)
        for raw in raws:
            self.dovecot.deliver(name, raw)
        return address

    def config(self, name: str) -> Path:
        path = self.work / f"{name}.toml"
        path.write_text(
            f'[poller]\nca_file = "{self.dovecot.cert_path}"\nactive_interval_s = 3600\n'
            "push_check_s = 5\n\n[cluster]\nlease_seconds = 30\n"
        )
        return path

    def mbsync(self, address: str) -> Result:
        """(b) mbsync pulls the INBOX into an empty Maildir."""
        rc = self.work / "mbsyncrc"
        target = self.work / "mbsync-maildir"
        target.mkdir()
        rc.write_text(
            f"IMAPAccount bench\nHost localhost\nPort {self.dovecot.imaps_port}\nUser {address}\n"
            f'Pass "{PASSWORD}"\nSSLType IMAPS\nCertificateFile {self.dovecot.cert_path}\n\n'
            "IMAPStore remote\nAccount bench\n\n"
            f"MaildirStore local\nPath {target}/\nInbox {target}/INBOX\n\n"
            "Channel inbox\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Near\n"
            "Sync Pull\nSyncState *\n"
        )
        started, cpu = time.perf_counter(), _children_cpu()
        subprocess.run(["mbsync", "-q", "-c", str(rc), "inbox"], check=True)
        wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
        count = len(list((target / "INBOX" / "cur").iterdir())) + len(
            list((target / "INBOX" / "new").iterdir())
        )
        return {"messages": count, "wall": wall, "cpu": cpu}

    def run_import(
        self, name: str, count: int, idle: int, meanwhile: Callable[[], None] | None = None
    ) -> Result:
        """(d)/(e) the poller imports the INBOX; then, with the poller in IDLE, ``meanwhile`` is
        called and the IDLE latency is measured over ``idle`` messages."""
        url = f"sqlite:///{self.work / name}.db"
        address = self.dovecot.address(name)
        seed_crm(url, address, self.key.encode(), self.dovecot.imaps_port)
        env = {**os.environ, "MAILCRM_SECRET_KEY": self.key, "XDG_DATA_HOME": str(self.work)}
        command = [sys.executable, __file__, "--phase", "poll", str(self.config(name)), url]
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        try:
            db = sqlite3.connect(str(self.work / f"{name}.db"), timeout=30)
            while _last_uid(db) < count:
                if child.poll() is not None:
                    raise SystemExit(f"the poller exited with {child.returncode}")
                error = db.execute("SELECT last_error FROM mailboxes").fetchone()[0]
                if error and time.perf_counter() - started > 30:
                    raise SystemExit(f"the poller reports: {error}")
                time.sleep(0.05)
            wall = time.perf_counter() - started
            result: Result = {"messages": count, "wall": wall, "cpu": cpu_seconds(child.pid)}
            result["actions"] = _actions(db)
            result["rss_peak_kib"] = peak_rss_kib(child.pid)
            if meanwhile is not None:
                meanwhile()
            if idle:
                result["idle_latency_s"] = self.idle_latency(name, db, idle)
            return result
        finally:
            child.terminate()
            child.wait(60)

    def idle_latency(self, name: str, db: sqlite3.Connection, count: int) -> list[float]:
        """Deliver ``count`` messages one by one; seconds until each one's location exists."""
        time.sleep(2.0)  # the poller is in IDLE by now
        found = []
        for raw in incoming(count, seed=99):
            before = _locations(db)
            started = time.perf_counter()
            self.dovecot.deliver(name, raw)
            while _locations(db) == before:
                time.sleep(0.005)
            found.append(time.perf_counter() - started)
            time.sleep(0.2)
        return found


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _last_uid(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT last_uid FROM folder_states WHERE folder = 'INBOX'").fetchone()
    return int(row[0]) if row else 0


def _locations(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM message_locations").fetchone()[0])


def _actions(db: sqlite3.Connection) -> Result:
    activities = db.execute("SELECT count(*) FROM activities").fetchone()[0]
    return {"activities": activities, "locations": _locations(db)}


def _rate(result: Result, by: str = "wall") -> float:
    return float(result["messages"] / result[by]) if result.get(by) else 0.0


def report(results: dict[str, Result], idle: list[float]) -> None:
    """Print the figures of one run: rates by wall clock, and by the phase's own CPU time."""
    for name, result in results.items():
        rss = result.get("rss_peak_kib")
        memory = f", peak RSS {rss / 1024:.0f} MB" if rss else ""
        print(
            f"{name:<28} {result['messages']:>6} messages {result['wall']:8.1f} s "
            f"{_rate(result):8.0f} msg/s, CPU {result.get('cpu', 0):6.1f} s "
            f"{_rate(result, 'cpu'):6.0f} msg/s{memory}"
        )
    poll = results["poller import (d)"]
    parses = [r for name, r in results.items() if name.startswith("parser alone")]
    for by, words in (("wall", "by wall clock (target >= 0.6)"), ("cpu", "by CPU time")):
        ratios = [_rate(poll, by) / _rate(parse, by) for parse in parses]
        each = " and ".join(f"{r:.2f}" for r in ratios)
        print(f"import / parser-alone rate {words}: {statistics.mean(ratios):.2f} ({each})")
    if "capture alone (c)" in results:
        capture = results["capture alone (c)"]
        print(f"import / capture-alone rate: {_rate(poll) / _rate(capture):.2f}")
    large = results.get("poller import, large (e)")
    if large:
        growth = large["rss_peak_kib"] / poll["rss_peak_kib"] - 1
        print(f"peak RSS growth {poll['messages']} -> {large['messages']}: {growth:+.1%}"
              " (target <= +10 %, both < 200 MB)")  # fmt: skip
    if idle:
        ordered = sorted(idle)
        p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
        print(
            f"IDLE delivery -> activity over {len(idle)} messages: p50 "
            f"{statistics.median(idle):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s"
            " (target p95 < 2 s)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=50_000, help="0 to skip")
    parser.add_argument("--idle", type=int, default=40, help="IDLE latency samples")
    parser.add_argument("--no-capture", action="store_true", help="skip phase (c)")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile the poller's process in (d), all its threads, into FILE",
    )
    parser.add_argument(
        "--profile-timer",
        choices=("wall", "cpu"),
        default="wall",
        help="what --profile counts: wall time, or each thread's own CPU time",
    )
    parser.add_argument("--phase", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["MAILCRM_BENCH_PROFILE"] = str(Path(args.profile).resolve())
        os.environ["MAILCRM_BENCH_PROFILE_TIMER"] = args.profile_timer
    if args.phase:
        _phase(args.phase)
        return
    import corpus

    from tests.servers import Dovecot

    with (
        tempfile.TemporaryDirectory(prefix="mailcrm-ingest-") as tmp,
        Dovecot(corpus.OUR_DOMAIN) as dovecot,
    ):
        work = Path(tmp)
        bench = Bench(work, dovecot)
        raws = list(incoming(args.messages))
        (work / "corpus.pickle").write_bytes(pickle.dumps(raws))
        address = bench.mailbox("anna.berg", raws)
        results: dict[str, Result] = {"mbsync (b)": bench.mbsync(address)}
        if not args.no_capture:
            url = f"sqlite:///{work / 'capture.db'}"
            results["capture alone (c)"] = _child(
                "--phase", "capture", str(work / "corpus.pickle"), url, address, bench.key
            )
        parse = ("--phase", "parse", str(work / "corpus.pickle"))
        results["parser alone (a)"] = _child(*parse)  # right before the import, and right after

        def parse_again() -> None:
            results["parser alone, after (a)"] = _child(*parse)

        poll = bench.run_import("anna.berg", len(raws), args.idle, parse_again)
        idle = poll.pop("idle_latency_s", [])
        results = {**results, "poller import (d)": poll}
        if args.large:
            bench.mailbox("ben.okafor", incoming(args.large, seed=1000))
            results["poller import, large (e)"] = bench.run_import("ben.okafor", args.large, 0)
        print(json.dumps({"results": results, "idle": idle}, default=str), file=sys.stderr)
        report(results, idle)


def _phase(args: list[str]) -> None:
    name, rest = args[0], args[1:]
    if name == "poll":
        phase_poll(*rest)
        return
    phases: dict[str, Callable[..., Result]] = {"parse": phase_parse, "capture": phase_capture}
    phase = phases[name]
    print(json.dumps(phase(Path(rest[0]), *rest[1:])))


if __name__ == "__main__":
    main()
