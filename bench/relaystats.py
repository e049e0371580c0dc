"""Process figures for ``bench/relay.py`` from /proc: CPU per process tree, peak memory.

Role: bench support. :class:`CpuMeter` splits the CPU a message costs between the bench client
(this process), the relay, the relay's capture worker process and Postfix (master, its reaped
children and its live ones); :class:`PostfixSplit` the Postfix part by daemon (smtpd, cleanup,
qmgr, the pipe(8) agent with the delivery command it runs...); :class:`LoopMeter` how the relay's
event loop thread spent a phase.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def descendants(root: int) -> list[int]:
    """Live processes below ``root``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(parents.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def status_of(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in bytes (VmRSS, VmHWM); 0 when gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _clock(fields: list[str], first: int, last: int) -> float:
    """CPU seconds from /proc/<pid>/stat fields (after the name): 11-12 the process's own user
    and system time, 13-14 those of its reaped children."""
    return sum(int(f) for f in fields[first:last]) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds of a process, its reaped children and its live descendants."""
    return sum(_clock(_stat(pid), 11, 15) for pid in [root, *descendants(root)])


def own_cpu(pid: int) -> float:
    return _clock(_stat(pid), 11, 13)


class _PerPhase:
    """CPU seconds by part, summed per named phase with its message count (``snapshot`` says
    what the parts are)."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = {}

    def snapshot(self) -> dict[str, float]:
        raise NotImplementedError

    def add(self, name: str, before: dict[str, float], messages: int) -> None:
        after = self.snapshot()
        bucket = self.totals.setdefault(name, {"messages": 0.0})
        bucket["messages"] += messages
        for key, value in after.items():
            bucket[key] = bucket.get(key, 0.0) + value - before.get(key, 0.0)


class CpuMeter(_PerPhase):
    """CPU per message of the bench client, the relay, its capture worker and Postfix."""

    def __init__(self, relay_pid: int, postfix_pid_file: Path) -> None:
        super().__init__()
        self.relay_pid, self.postfix_pid_file = relay_pid, postfix_pid_file

    def snapshot(self) -> dict[str, float]:
        relay_pid = self.relay_pid
        relay_tree = tree_cpu(relay_pid)
        master = int(self.postfix_pid_file.read_text().split()[0])
        usage = os.times()
        return {
            "client": usage.user + usage.system,
            "relay": own_cpu(relay_pid),
            "capture": relay_tree - own_cpu(relay_pid),
            "postfix": tree_cpu(master),
        }

    def show(self) -> None:
        for name, bucket in self.totals.items():
            n = bucket.pop("messages") or 1
            parts = ", ".join(f"{k} {v / n * 1000:.1f}" for k, v in bucket.items())
            print(
                f"  CPU ms per message, {name}: {parts}, total "
                f"{sum(bucket.values()) / n * 1000:.1f}"
            )


def postfix_daemons(master: int) -> dict[str, float]:
    """CPU seconds of Postfix by daemon name: each live child of ``master`` with the children it
    reaped (for pipe(8): the delivery commands it ran), ``master`` itself, and ``exited`` for the
    daemons master reaped (a daemon leaves after ``max_use`` requests; the bench raises it so that
    none leaves during a phase and the split stays by name)."""
    fields = _stat(master)
    split = {"master": _clock(fields, 11, 13), "exited": _clock(fields, 13, 15)} if fields else {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not (child := _stat(int(entry.name))):
            continue
        if int(child[1]) != master:
            continue
        try:
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        split[name] = split.get(name, 0.0) + _clock(child, 11, 15)
    return split


class PostfixSplit(_PerPhase):
    """Postfix's CPU per message by daemon, per phase."""

    def __init__(self, postfix_pid_file: Path) -> None:
        super().__init__()
        self.postfix_pid_file = postfix_pid_file

    def snapshot(self) -> dict[str, float]:
        return postfix_daemons(int(self.postfix_pid_file.read_text().split()[0]))

    def show(self) -> None:
        for name, bucket in self.totals.items():
            n = bucket.pop("messages") or 1
            big = sorted(((v, k) for k, v in bucket.items() if v / n >= 0.00005), reverse=True)
            parts = ", ".join(f"{k} {v / n * 1000:.2f}" for v, k in big)
            print(f"  Postfix CPU ms per message by daemon, {name}: {parts}")


class LoopMeter:
    """Where the relay's event loop thread spent a phase: on a CPU, or runnable but waiting for
    one (``/proc/<pid>/task/<pid>/schedstat``: the scheduler's own run and wait times, and how
    many times the thread was put on a CPU). Each wait stalls every connection of the loop."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/task/{pid}/schedstat")
        self.run = self.wait = self.wall = 0.0
        self.slices = 0

    def snapshot(self) -> tuple[float, float, int, float]:
        try:
            run, wait, slices = (int(f) for f in self.path.read_text().split()[:3])
        except (OSError, ValueError):
            run = wait = slices = 0
        return run / 1e9, wait / 1e9, slices, time.monotonic()

    def add(self, before: tuple[float, float, int, float]) -> None:
        run, wait, slices, now = self.snapshot()
        self.run += run - before[0]
        self.wait += wait - before[1]
        self.slices += slices - before[2]
        self.wall += now - before[3]

    def show(self, messages: int) -> None:
        if not self.wall or not self.slices:
            print("  relay event loop: no scheduler statistics here (/proc/<pid>/schedstat)")
            return
        print(
            f"  relay event loop, flat out: on a CPU {self.run / self.wall:.0%} of the time, "
            f"runnable but waiting for one {self.wait / self.wall:.0%} "
            f"({self.wait / self.slices * 1000:.2f} ms per wake-up, "
            f"{self.slices / max(messages, 1):.1f} wake-ups per message)"
        )
