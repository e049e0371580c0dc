"""Helpers for the cluster test: ``mailcrm serve`` nodes as processes, and what they leave behind.

Role: test support for ``tests/test_cluster.py``. :class:`Node` writes one node's config file
(own name, relay, HTTP and spool directory; short lease and poller timers) and runs ``mailcrm -v
--config FILE serve`` as a child process with JSON logs in its own file, and with
``PGAPPNAME`` set to its name so PostgreSQL knows which node wrote what. :func:`install_audit`
adds a test-only table and triggers to the test schema that record, with that name and the
database clock, every activity inserted and every spool entry leaving ``pending``.
:data:`TIMED_LOG` gives the test Dovecot microsecond log timestamps, and
:func:`imap_sessions` reads every IMAP session (login to disconnect) per user from its log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from crm.store.db import Database

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
Session = tuple[float, float | None]  # (login, disconnect or None while open), epoch seconds


#: ``Dovecot(extra_config=TIMED_LOG)`` logs with microseconds: the order of sessions is exact.
TIMED_LOG = 'log_timestamp = "%Y-%m-%d %H:%M:%S.%{usecs} "\n'


_LOGIN = re.compile(r"^(\S+ \S+) imap-login: Info: Login: user=<([^>]+)>.*session=<([^>]+)>")
_END = re.compile(r"^(\S+ \S+) imap\(([^)]+)\)<\d+><([^>]+)>: Info: Disconnected")


def _epoch(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()  # local time


def imap_sessions(log: str) -> dict[str, list[Session]]:
    """user -> its IMAP sessions (login time, disconnect time or None), by login time."""
    logins: dict[str, tuple[str, float]] = {}
    ends: dict[str, float] = {}
    for line in log.splitlines():
        if found := _LOGIN.match(line):
            logins[found[3]] = (found[2], _epoch(found[1]))
        elif found := _END.match(line):
            ends[found[3]] = _epoch(found[1])
    sessions: dict[str, list[Session]] = {}
    for session_id, (user, start) in logins.items():
        sessions.setdefault(user, []).append((start, ends.get(session_id)))
    return {user: sorted(spans) for user, spans in sessions.items()}


def overlaps(spans: list[Session]) -> list[tuple[Session, Session]]:
    """Pairs of sessions of one user that were open at the same time."""
    found = []
    for before, after in itertools.pairwise(spans):
        if before[1] is None or before[1] > after[0]:
            found.append((before, after))
    return found


# --- PostgreSQL: who wrote what, when ---------------------------------------------------------

AUDIT_SQL = """
CREATE TABLE cluster_audit (
    id bigserial PRIMARY KEY, kind text NOT NULL, row_id bigint NOT NULL, mailbox_id bigint,
    node text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION cluster_audit_activity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cluster_audit (kind, row_id, mailbox_id, node)
    VALUES ('activity', NEW.id, NEW.mailbox_id, current_setting('application_name'));
    RETURN NULL;
END $$;
CREATE FUNCTION cluster_audit_spool() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cluster_audit (kind, row_id, node)
    VALUES ('spool', NEW.id, current_setting('application_name'));
    RETURN NULL;
END $$;
CREATE TRIGGER cluster_audit_activity AFTER INSERT ON activities
    FOR EACH ROW EXECUTE FUNCTION cluster_audit_activity();
CREATE TRIGGER cluster_audit_spool AFTER UPDATE ON spool
    FOR EACH ROW WHEN (OLD.state = 'pending' AND NEW.state <> 'pending')
    EXECUTE FUNCTION cluster_audit_spool();
"""


def install_audit(db: Database) -> None:
    """The audit table and triggers (test schema only; dropped with it)."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql(AUDIT_SQL)


def audit(db: Database, kind: str) -> list[tuple[int, int | None, str]]:
    """(row id, mailbox id, node) of every committed event of ``kind``, in order."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT row_id, mailbox_id, node FROM cluster_audit WHERE kind = :k ORDER BY id"),
            {"k": kind},
        )
        return [(int(r), m, str(n)) for r, m, n in rows]


def writers(db: Database, message_ids: list[str]) -> set[str]:
    """The nodes that inserted the activities of these messages."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT DISTINCT c.node FROM cluster_audit c JOIN activities a ON a.id = c.row_id"
                " WHERE c.kind = 'activity' AND a.message_id = ANY(:ids)"
            ),
            {"ids": message_ids},
        )
        return {str(node) for (node,) in rows}


# --- the nodes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


_LEASES = re.compile(r"node \S+: \d+ mailboxes \(\+(\d+), -(\d+)\)")
_BAD = ("error", "critical")


@dataclass
class Node:
    """One ``mailcrm serve`` process of the cluster."""

    name: str
    home: Path
    settings: dict[str, dict[str, Any]]
    env: dict[str, str]
    relay_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    family: set[int] = field(default_factory=set)  # its processes, for the cleanup

    @property
    def log(self) -> Path:
        return self.home / "node.log"

    def config(self) -> Path:
        """Its config file: the shared settings plus its own name, ports and spool."""
        sections = {key: dict(values) for key, values in self.settings.items()}
        sections.setdefault("cluster", {})["node_name"] = self.name
        sections.setdefault("relay", {}).update(
            host=HOST, port=self.relay_port, spool_dir=str(self.home / "spool")
        )
        sections["http"] = {"host": HOST, "port": self.http_port}
        path = self.home / "mailcrm.toml"
        path.write_text('log_format = "json"\n' + _toml(sections), encoding="utf-8")
        return path

    def start(self) -> None:
        """``mailcrm -v --config FILE serve``, its log in :attr:`log`."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.env,
            "PGAPPNAME": self.name,
            "MAILCRM_NODE_NAME": self.name,
            "MAILCRM_LOG_FORMAT": "json",
            "XDG_DATA_HOME": str(self.home / "data"),
        }
        env.pop("MAILCRM_CONFIG", None)
        command = [
            sys.executable,
            "-c",
            "import cli; cli.main()",
            "-v",
            "--config",
            str(self.config()),
            "serve",
        ]
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=sink)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until its relay and HTTP listeners answer."""
        until(lambda: self._answers(self.relay_port), timeout, f"{self.name}'s relay")
        until(lambda: self._answers(self.http_port), timeout, f"{self.name}'s HTTP listener")

    def _answers(self, port: int) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"{self.name} exited:\n{self.log_tail()}"
        with socket.socket() as sock:
            return sock.connect_ex((HOST, port)) == 0

    def kill(self) -> None:
        """SIGKILL to the node's own process: no release, no goodbye (its children live on)."""
        assert self.proc is not None
        self.family |= _descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, as an admin stops it; its exit code."""
        assert self.proc is not None
        self.family |= _descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def survivors(self) -> set[int]:
        """Processes it started that are still running after it ended."""
        return {pid for pid in self.family if _alive(pid)}

    def cleanup(self) -> None:
        """Kill whatever of it still runs (by pid), whatever the test's outcome."""
        if self.proc is not None and self.proc.poll() is None:
            self.family |= _descendants(self.proc.pid)
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.survivors():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def entries(self) -> list[dict[str, Any]]:
        """Its JSON log entries (other lines, e.g. a child's traceback, are skipped)."""
        found = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    found.append(entry)
        return found

    def lease_changes(self) -> list[tuple[int, int]]:
        """(gained, lost) of every change of its leases, from its log."""
        found = []
        for entry in self.entries():
            if entry.get("logger") == "crm.leases" and (
                change := _LEASES.match(str(entry.get("message")))
            ):
                found.append((int(change[1]), int(change[2])))
        return found

    def errors(self) -> list[str]:
        """Its error-level log messages."""
        return [str(e.get("message")) for e in self.entries() if e.get("level") in _BAD]

    def log_tail(self, lines: int = 30) -> str:
        text_ = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text_.splitlines()[-lines:])


@pytest.fixture
def started_nodes() -> Iterator[list[Node]]:
    """The nodes a test starts (append them); every one of their processes ends with the test."""
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        node.cleanup()


def until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting ({timeout:.0f} s) for {what}; last: {result!r}")
        time.sleep(every)
