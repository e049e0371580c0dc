"""Capture speed: generated mail through ``Capturer.capture`` into SQLite CRMs of two sizes.

Run from the repository root::

    .venv/bin/python bench/capture.py [--messages 10000] [--contacts 1000,100000] [--no-profile]

It prints figures and never judges them: there are no assertions and no exit status for a missed
target. One run measures, over the same deterministic corpus (:mod:`corpus`, seeded):

(a)  the stdlib parser alone, ``BytesParser(policy=policy.default).parsebytes(raw)`` (a full
     parse of every message), the yardstick of issue 2;
(a') ``crm.message.parse_message``, the header-only parse of the capture path, without a database
     (for the breakdown: how much of a capture is parsing);
(b), (c) ``Capturer.capture`` of every message into a fresh SQLite CRM seeded with each
     ``--contacts`` size (default 1,000 and 100,000 contacts, four per company, plus users, two
     mailboxes and a few exclusions; seeded with bulk Core inserts, not timed as capture).

It prints messages per second by wall clock and by CPU time (the CPU figure is steadier on a busy
machine), the ratios of issue 2 (largest/smallest CRM >= 0.8, capture/parser-alone >= 0.6), the
peak RSS of every phase, and the captured/duplicate/skipped counts with the skip reasons. Every
phase runs in its own single-threaded subprocess, one after the other, so each peak RSS is that
phase's own (VmHWM, ``ru_maxrss`` where there is no /proc). Finally the capture into the largest
CRM runs once more under cProfile; the top functions go to ``bench/results/capture-profile.txt``
(not committed) and the top 15 by cumulative time are printed.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pickle
import platform
import pstats
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import corpus
from cryptography.fernet import Fernet
from sqlalchemy import func, insert, select

from crm.capture.path import Capturer, CaptureResult
from crm.face.admin import MailboxSettings, add_exclusion, add_mailbox, add_user
from crm.mail.message import parse_message
from crm.store.db import Database
from crm.store.models import Activity, Company, Contact, Direction, EntityEmail, Lead, utcnow
from crm.store.secrets import SecretBox

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PROFILE_FILE = RESULTS / "capture-profile.txt"
TARGET_SIZE_RATIO = 0.8
TARGET_PARSER_RATIO = 0.6
CHUNK = 10_000
Result = dict[str, Any]


# ------------------------------------------------------------------------------ measuring


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kib() -> int:
    """The peak resident set of this process, in KiB."""
    peak = _proc_status_kib("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss


def rss_kib() -> int:
    """The current resident set of this process, in KiB (the peak where unknown)."""
    return _proc_status_kib("VmRSS") or peak_rss_kib()


class Clock:
    """Wall and CPU time of one timed loop."""

    def __enter__(self) -> Clock:
        self.wall = -time.perf_counter()
        self.cpu = -time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall += time.perf_counter()
        self.cpu += time.process_time()


def _timing(samples: int, clock: Clock, loaded_kib: int) -> Result:
    return {
        "messages": samples,
        "wall": clock.wall,
        "cpu": clock.cpu,
        "rss_loaded_kib": loaded_kib,
        "rss_peak_kib": peak_rss_kib(),
    }


def load(path: Path) -> list[corpus.Sample]:
    """The corpus written by the ``generate`` phase."""
    with path.open("rb") as handle:
        samples: list[corpus.Sample] = pickle.load(handle)
    return samples


# ---------------------------------------------------------------------------------- phases


def phase_generate(path: Path, messages: int, seed: int, known: int) -> Result:
    """Generate the corpus once and store it for the other phases."""
    with Clock() as clock:
        generated = corpus.generate(messages, seed, known)
    with path.open("wb") as handle:
        pickle.dump(generated.samples, handle, protocol=pickle.HIGHEST_PROTOCOL)
    smallest, mean, largest = generated.sizes()
    return {
        "seconds": clock.wall,
        "mix": generated.mix(),
        "sizes": [smallest, mean, largest],
        "bytes": sum(len(s.raw) for s in generated.samples),
    }


def phase_parse(path: Path) -> Result:
    """(a) The stdlib parser alone: a full parse of every message."""
    samples = load(path)
    parser = BytesParser(policy=policy.default)
    loaded = rss_kib()
    with Clock() as clock:
        for sample in samples:
            parser.parsebytes(sample.raw)
    return _timing(len(samples), clock, loaded)


def phase_headers(path: Path) -> Result:
    """(a') The capture path's own parse (``crm.message.parse_message``), no database."""
    samples = load(path)
    loaded = rss_kib()
    with Clock() as clock:
        for sample in samples:
            parse_message(sample.raw)
    return _timing(len(samples), clock, loaded)


def seed_crm(url: str, contacts: int) -> Result:
    """A fresh CRM: users, mailboxes, exclusions, then ``contacts`` contacts by bulk insert."""
    with Clock() as clock:
        db = Database(url)
        secrets = SecretBox(Fernet.generate_key())
        with db.session() as session:
            for address, name in corpus.EMPLOYEES:
                add_user(session, address, name)
            owner = corpus.EMPLOYEES[0][0]
            personal = MailboxSettings(password="bench", since="all")
            add_mailbox(session, secrets, corpus.PERSONAL_MAILBOX, owner, personal)
            shared = MailboxSettings(since="all", queue=list(corpus.QUEUE))
            add_mailbox(session, secrets, corpus.COMPANY_MAILBOX, None, shared)
            for entry, mailbox in corpus.EXCLUSIONS:
                add_exclusion(session, entry, mailbox)
        now = utcnow()
        people = [corpus.contact(i) for i in range(contacts)]
        companies = max(p.company for p in people if p.company is not None) + 1
        with db.engine.begin() as conn:
            for start in range(0, companies, CHUNK):
                conn.execute(
                    insert(Company),
                    [
                        {"id": j + 1, "name": name, "domain": domain, "created_at": now}
                        for j in range(start, min(companies, start + CHUNK))
                        for name, domain in [corpus.company(j)]
                    ],
                )
            for start in range(0, contacts, CHUNK):
                chunk = people[start : start + CHUNK]
                conn.execute(
                    insert(Contact),
                    [
                        {
                            "id": p.index + 1,
                            "name": p.name,
                            "phones": [],
                            "title": None,
                            "company_id": None if p.company is None else p.company + 1,
                            "created_at": now,
                        }
                        for p in chunk
                    ],
                )
                conn.execute(
                    insert(EntityEmail),
                    [
                        {
                            "address": address,
                            "entity_type": "contact",
                            "entity_id": p.index + 1,
                            "position": position,
                        }
                        for p in chunk
                        for position, address in enumerate(p.addresses)
                    ],
                )
        db.dispose()
    return {"seconds": clock.wall, "companies": companies, "contacts": contacts}


def _reason_class(reason: str | None) -> str:
    """A skip reason without the address or date it names."""
    text = reason or "?"
    return text if text.startswith("robot") else text.split(":", 1)[0]


def phase_capture(path: Path, workdir: Path, contacts: int, profile: Path | None) -> Result:
    """(b), (c) Every message through ``Capturer.capture`` into a freshly seeded CRM."""
    samples = load(path)
    label = f"{contacts}" + ("-profiled" if profile else "")
    url = f"sqlite:///{workdir / f'crm-{label}.db'}"
    seeded = seed_crm(url, contacts)
    db = Database(url)
    capturer = Capturer(db)
    directions = [Direction(s.direction) for s in samples]
    results: list[CaptureResult] = []
    profiler = cProfile.Profile() if profile else None
    loaded = rss_kib()
    with Clock() as clock:
        if profiler is not None:
            profiler.enable()
        for number, (sample, direction) in enumerate(zip(samples, directions, strict=True)):
            results.append(
                capturer.capture(
                    sample.raw, sample.mailbox, direction, source=f"#{number}", seen=sample.seen
                )
            )
        if profiler is not None:
            profiler.disable()
    timing = _timing(len(samples), clock, loaded)
    actions = Counter(r.action for r in results)
    reasons = Counter(_reason_class(r.reason) for r in results if r.action == "skipped")
    created = {
        "leads": sum(len(r.created.leads) for r in results),
        "contacts": sum(len(r.created.contacts) for r in results),
        "companies": sum(len(r.created.companies) for r in results),
    }
    with db.session() as session:
        rows = {
            "activities": session.scalar(select(func.count()).select_from(Activity)),
            "leads": session.scalar(select(func.count()).select_from(Lead)),
            "contacts": session.scalar(select(func.count()).select_from(Contact)),
            "companies": session.scalar(select(func.count()).select_from(Company)),
        }
    db.dispose()
    result: Result = {
        **timing,
        "seed": seeded,
        "actions": dict(actions.most_common()),
        "reasons": dict(reasons.most_common()),
        "created": created,
        "rows": rows,
    }
    if profiler is not None and profile is not None:
        result["profile"] = write_profile(profiler, profile, len(samples), contacts)
    return result


# --------------------------------------------------------------------------------- profile


def _short(file_name: str) -> str:
    for prefix in (str(ROOT / ".venv") + "/lib/python3.11/site-packages/", str(ROOT) + "/"):
        if file_name.startswith(prefix):
            return file_name[len(prefix) :]
    return re.sub(r".*/lib/python3\.\d+/", "", file_name)


def write_profile(profiler: cProfile.Profile, target: Path, messages: int, contacts: int) -> Result:
    """Write the top functions (cumulative, then own time); return the cumulative top 15."""
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = vars(stats)["stats"]
    top = sorted(table.items(), key=lambda item: item[1][3], reverse=True)[:15]
    summary = [
        {
            "function": f"{_short(file)}:{line}({name})",
            "calls": calls,
            "tottime": own,
            "cumtime": cumulative,
            "ms_per_message": 1000 * cumulative / messages,
        }
        for (file, line, name), (_, calls, own, cumulative, _callers) in top
    ]
    text.write(
        f"cProfile of Capturer.capture over {messages} messages into a CRM of {contacts} "
        f"contacts (SQLite)\n{time.strftime('%Y-%m-%d %H:%M:%S')}, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}\n"
        f"Timings under cProfile are inflated; compare functions with each other only.\n\n"
        "== top 15 by cumulative time ==\n"
    )
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(15)
    text.write("\n== top 25 by own time ==\n")
    stats.sort_stats(pstats.SortKey.TIME).print_stats(25)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text.getvalue(), encoding="utf-8")
    return {"file": str(target), "top": summary}


# ---------------------------------------------------------------------------------- driver


def run_phase(args: Sequence[str]) -> Result:
    """Run one phase in a fresh interpreter; its last line of output is its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result: Result = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _rate(result: Result, key: str) -> float:
    return float(result["messages"]) / float(result[key])


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def _share(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in counts.items())


def _row(label: str, result: Result, extra: str = "") -> str:
    return (
        f"  {label:<34}{_rate(result, 'wall'):>9,.0f}{_rate(result, 'cpu'):>10,.0f}"
        f"{result['wall']:>9.1f} s   {_mib(result['rss_loaded_kib']):>8} -> "
        f"{_mib(result['rss_peak_kib']):>8}{extra}"
    )


def _ratio(name: str, numerator: Result, denominator: Result, target: float) -> str:
    wall = _rate(numerator, "wall") / _rate(denominator, "wall")
    cpu = _rate(numerator, "cpu") / _rate(denominator, "cpu")
    return f"  {name:<44} {wall:5.2f} wall   {cpu:5.2f} cpu   (target >= {target})"


def core_hash() -> str:
    """A short hash of the mailcrm modules this process has imported, as they are on disk now."""
    digest = hashlib.sha256()
    files = {
        str(module.__file__)
        for name, module in list(sys.modules.items())
        if (name == "crm" or name.startswith("crm.")) and getattr(module, "__file__", None)
    }
    for file in sorted(files):
        digest.update(file.encode() + b"\0" + Path(file).read_bytes())
    return digest.hexdigest()[:12]


def core_version() -> str:
    """The git commit, with a note when crm/ differs from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "crm"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    return commit + (" (crm/ has uncommitted changes)" if dirty else "")


def _size_label(contacts: int) -> str:
    return f"{contacts // 1000}k" if contacts >= 1000 and contacts % 1000 == 0 else str(contacts)


def drive(options: argparse.Namespace) -> None:
    """Run every phase in its own subprocess and print the figures."""
    sizes: list[int] = options.contacts
    messages: int = options.messages
    print(
        f"mailcrm capture bench: {messages:,} messages, seed {options.seed}, CRMs of "
        f"{', '.join(f'{s:,}' for s in sizes)} contacts (SQLite {sqlite3.sqlite_version}), "
        f"Python {platform.python_version()}, single-threaded, one phase per subprocess"
    )
    print(f"  code: git {core_version()}, capture-path modules hash {core_hash()}")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  load average at start: {load_before:.2f} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="mailcrm-bench-") as temp:
        work = Path(temp)
        data = str(work / "corpus.pickle")
        common = ["--corpus", data, "--workdir", temp]
        generated = run_phase(
            [
                "--phase",
                "generate",
                *common,
                "--messages",
                str(messages),
                "--seed",
                str(options.seed),
                "--known",
                str(min(sizes)),
            ]
        )
        smallest, mean, largest = generated["sizes"]
        mix = generated["mix"]
        print(
            f"\ncorpus: {messages:,} messages, {generated['bytes'] / 2**20:.1f} MiB, "
            f"{smallest:,}-{largest:,} bytes (mean {mean:,.0f}), generated in "
            f"{generated['seconds']:.1f} s\n"
            f"  kinds:      {_share(mix['kind'])}\n"
            f"  correspondents: {_share(mix['sender'])}\n"
            f"  direction:  {_share(mix['direction'])}\n"
            f"  mailbox:    {_share(mix['mailbox'])}",
            flush=True,
        )
        parsed = run_phase(["--phase", "parse", *common])
        headers = run_phase(["--phase", "headers", *common])
        captures = {
            size: run_phase(["--phase", "capture", *common, "--contacts", str(size)])
            for size in sizes
        }
        profiled = (
            run_phase(["--phase", "capture", *common, "--contacts", str(max(sizes)), "--profiled"])
            if options.profile
            else None
        )
    print(
        "\nrates                                msg/s     msg/s      wall   RSS loaded -> peak\n"
        "                                      wall       CPU"
    )
    print(_row("(a)  stdlib parser alone (full)", parsed))
    print(_row("(a') crm.message.parse_message", headers))
    for index, size in enumerate(sizes):
        result = captures[size]
        letter = "bcdefgh"[index]
        seed = result["seed"]
        print(
            _row(
                f"({letter})  capture, {size:,} contacts",
                result,
                f"   (seeded {seed['contacts']:,} contacts, {seed['companies']:,} companies "
                f"in {seed['seconds']:.1f} s)",
            )
        )
    first, last = captures[sizes[0]], captures[sizes[-1]]
    print("\nratios")
    if len(sizes) > 1:
        print(
            _ratio(
                f"capture {_size_label(sizes[-1])} / {_size_label(sizes[0])}",
                last,
                first,
                TARGET_SIZE_RATIO,
            )
        )
    for size in sizes:
        print(
            _ratio(
                f"capture {_size_label(size)} / parser alone",
                captures[size],
                parsed,
                TARGET_PARSER_RATIO,
            )
        )
    print(
        _ratio("parse_message / parser alone", headers, parsed, 1.0).replace(
            "(target >= 1.0)", "(for the breakdown)"
        )
    )
    print("\nwhat the captures did")
    for size in sizes:
        result = captures[size]
        actions = ", ".join(f"{name} {n:,}" for name, n in result["actions"].items())
        created = ", ".join(f"{name} {n:,}" for name, n in result["created"].items())
        print(f"  {size:,} contacts: {actions}; created {created}")
        reasons = "; ".join(f"{name} {n:,}" for name, n in result["reasons"].items())
        print(f"    skipped because: {reasons}")
        rows = ", ".join(f"{name} {n:,}" for name, n in result["rows"].items())
        print(f"    rows after: {rows}")
    if profiled is not None:
        profile = profiled["profile"]
        print(
            f"\nprofile: capture into the {max(sizes):,}-contact CRM under cProfile "
            f"({_rate(profiled, 'wall'):,.0f} msg/s while profiled), written to "
            f"{Path(profile['file']).relative_to(ROOT)}\n"
            "  top 15 by cumulative time            calls    own s  cumul. s  ms/msg"
        )
        for entry in profile["top"]:
            print(
                f"  {entry['calls']:>8,} {entry['tottime']:>8.2f} {entry['cumtime']:>9.2f} "
                f"{entry['ms_per_message']:>7.2f}  {entry['function']}"
            )
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at end: {load_after:.2f} (wall figures suffer when it exceeds 1)")
    phases = {"(a')": headers, **{f"capture {s:,}": captures[s] for s in sizes}}
    if profiled is not None:
        phases["profile"] = profiled
    seen = {result["code"] for result in phases.values()}
    if len(seen) > 1:
        which = ", ".join(f"{name} {result['code']}" for name, result in phases.items())
        print(f"WARNING: crm changed during the run; phases imported different code: {which}")
    else:
        print(f"every phase imported the same capture-path code (hash {seen.pop()})")


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 8:
        raise argparse.ArgumentTypeError("give contact counts of at least 8, like 1000,100000")
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line; run one phase (internal) or the whole bench."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000, help="messages to generate")
    parser.add_argument(
        "--contacts", type=_sizes, default=[1_000, 100_000], help="CRM sizes, comma-separated"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the message generator")
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip the cProfile run"
    )
    internal = parser.add_argument_group("internal (one phase in a subprocess)")
    internal.add_argument("--phase", choices=("generate", "parse", "headers", "capture"))
    internal.add_argument("--corpus", type=Path)
    internal.add_argument("--workdir", type=Path)
    internal.add_argument("--known", type=int, default=1_000)
    internal.add_argument("--profiled", action="store_true")
    options = parser.parse_args(argv)
    if options.phase is None:
        drive(options)
        return
    data: Path = options.corpus
    code = core_hash()  # crm was imported just before: this is (all but surely) the code measured
    if options.phase == "generate":
        result = phase_generate(data, options.messages, options.seed, options.known)
    elif options.phase == "parse":
        result = phase_parse(data)
    elif options.phase == "headers":
        result = phase_headers(data)
    else:
        contacts = options.contacts[0]
        profile = PROFILE_FILE if options.profiled else None
        result = phase_capture(data, options.workdir, contacts, profile)
    print(json.dumps({**result, "code": code}))


if __name__ == "__main__":
    main()
