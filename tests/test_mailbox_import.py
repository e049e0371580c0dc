"""``mailcrm mailbox import`` against a real Dovecot: window, summary, interrupt and resume.

Role: integration tests of the foreground import (issue 5) as an operator meets it: the CLI in
process for finished runs, a real ``mailcrm`` process for SIGINT. Counts come from the database,
never from timing. The hand-over with a running serve node: ``tests/test_import_handoff.py``.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from crm.mailboxes.leases import lease_owners
from crm.store.db import Database
from crm.store.models import Direction, Mailbox, MessageLocation
from proxy.imap.importer import ImportStats
from proxy.imap.importview import LineView
from proxy.imap.plan import FolderPlan, MailboxPlan
from proxy.imap.summary import ImportSummary
from tests.conftest import Cli
from tests.pollerkit import ROOT, MailEnv, message
from tests.servers import Dovecot, dovecot

__all__ = ["dovecot"]
pytestmark = pytest.mark.servers
CUSTOMER = "Carla Customer <carla@acme-industries.example>"


@pytest.fixture
def env(dovecot: Dovecot, cli: Cli, tmp_path: Path) -> MailEnv:
    """A fresh Dovecot user and CRM database (SQLite and PostgreSQL)."""
    return MailEnv(dovecot, cli, tmp_path)


def wait_for(check: Callable[[], Any], timeout: float = 120.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}: last value {last!r}")


def fill(env: MailEnv, count: int, folder: str = "INBOX", days_ago: float = 0) -> None:
    """``count`` distinct messages from customers (INBOX) or to them (Sent)."""
    for n in range(count):
        other = f"Client {n % 41} <client{n % 41}@firm{n % 7}.example>"
        sender, to = (env.address, other) if folder == "Sent" else (other, env.address)
        raw = message(sender, to, f"{folder} {days_ago} {n}", days_ago=days_ago)
        env.deliver(raw, folder, days_ago=days_ago)


def per_uid(env: MailEnv) -> dict[tuple[str, int], int]:
    """(folder, uid) -> how many locations record it."""
    db = Database(env.url, migrate=False)
    try:
        with db.session() as s:
            rows = s.execute(
                select(MessageLocation.folder, MessageLocation.uid, func.count()).group_by(
                    MessageLocation.folder, MessageLocation.uid
                )
            ).all()
        return {(folder, uid): n for folder, uid, n in rows}
    finally:
        db.dispose()


def mailbox_id(env: MailEnv) -> int:
    db = Database(env.url, migrate=False)
    try:
        with db.session() as s:
            return int(s.scalar(select(Mailbox.id).where(Mailbox.address == env.address)) or 0)
    finally:
        db.dispose()


def owners(env: MailEnv) -> dict[int, str]:
    """Mailbox id -> the node holding its lease."""
    db = Database(env.url, migrate=False)
    try:
        return lease_owners(db)
    finally:
        db.dispose()


def spawn(env: MailEnv, *args: str, out: Path, err: Path) -> subprocess.Popen[bytes]:
    """A real ``mailcrm`` process, its stdout and stderr into files."""
    code = "import cli; cli.main()"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            env={**os.environ, **env.cli.env},
            stdout=stdout,
            stderr=stderr,
        )


def test_since_all_imports_the_whole_mailbox_and_stores_the_window(env: MailEnv) -> None:
    env.link()
    fill(env, 150, days_ago=40)
    fill(env, 100)
    fill(env, 50, "Sent", days_ago=20)
    result = env.cli.run("mailbox", "import", env.address, "--since", "all")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "300 imported, 0 duplicates, 0 skipped" in result.stdout
    assert "300 messages to import (INBOX 250, Sent 50)" in result.stderr
    assert env.count() == 300
    assert set(per_uid(env).values()) == {1} and len(per_uid(env)) == 300
    assert {f: uid for f, (_, uid) in env.checkpoints().items()} == {"INBOX": 250, "Sent": 50}
    shown = env.mailbox()
    assert shown["settings"]["since"] == "all" and shown["status"] == "green"
    assert owners(env) == {}
    again = env.cli.json("mailbox", "import", env.address, "--since", "all")
    assert (again["imported"], again["duplicates"], again["skipped"]) == (0, 0, 0)
    assert [f["name"] for f in again["folders"]] == ["INBOX", "Sent"]
    assert env.count() == 300


def test_default_window_then_a_wider_one_brings_the_older_mail(env: MailEnv) -> None:
    env.link()
    fill(env, 20, days_ago=30)
    fill(env, 4, days_ago=3.5)  # searched (SINCE a day early), then skipped by C12
    fill(env, 10)
    first = env.cli.json("mailbox", "import", env.address)
    assert (first["since"], first["imported"], first["skipped"]) == ("3d", 10, 4)
    assert env.count() == 10 and env.mailbox()["settings"]["since"] == "3d"
    fill(env, 5)
    wider = env.cli.json("mailbox", "import", env.address, "--since", "all")
    assert (wider["imported"], wider["skipped"]) == (29, 0), "older mail, skipped mail, new mail"
    assert env.count() == 39 and set(per_uid(env).values()) == {1}
    assert env.checkpoints()["INBOX"][1] == 39
    assert env.mailbox()["settings"]["since"] == "all"


def test_window_forms(env: MailEnv) -> None:
    env.link("--since", "all")
    bad = env.cli.run("mailbox", "import", env.address, "--since", "7d")
    assert bad.exit_code == 2, "a bad choice is a usage error (issue 14)"
    assert "--since': must be one of 3d, all, not '7d'" in bad.stderr
    assert env.checkpoints() == {} and env.mailbox()["settings"]["since"] == "all"
    fill(env, 3, days_ago=30)
    fill(env, 2)
    narrow = env.cli.json("mailbox", "import", env.address, "--since", "3d")
    assert (narrow["since"], narrow["imported"]) == ("3d", 2)
    assert env.mailbox()["settings"]["since"] == "3d"


def test_interrupt_then_resume_gives_every_message_once(env: MailEnv, tmp_path: Path) -> None:
    env.link()
    fill(env, 1200, days_ago=10)
    out, log = tmp_path / "out", tmp_path / "err"
    first = spawn(env, "mailbox", "import", env.address, "--since", "all", out=out, err=log)
    try:
        wait_for(lambda: env.count() >= 100, what="import under way")
        assert "/import-" in owners(env)[mailbox_id(env)]
        first.send_signal(signal.SIGINT)
        assert first.wait(60) == 130, log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
    stopped_at = env.count()
    assert 100 <= stopped_at < 1200, f"interrupt came too late ({stopped_at} stored)"
    text = log.read_text()
    assert f"import of {env.address} interrupted (SIGINT)" in text
    assert f"{stopped_at} imported" in text, text
    assert f"run `mailcrm mailbox import {env.address} --since all` to resume" in text
    assert "Traceback" not in text and out.read_text() == ""
    assert text.splitlines()[-1].startswith("mailcrm: import of")
    assert owners(env) == {}
    second = env.cli.json("mailbox", "import", env.address, "--since", "all")
    assert second["imported"] == 1200 - stopped_at
    assert env.count() == 1200
    assert set(per_uid(env).values()) == {1} and len(per_uid(env)) == 1200


def test_unknown_address_and_unlinked_mailbox(env: MailEnv) -> None:
    unknown = env.cli.run("mailbox", "import", "nobody@example.org")
    assert unknown.exit_code == 1
    assert unknown.stderr == "mailcrm: no mailbox nobody@example.org\n"
    env.link("--no-link")
    unlinked = env.cli.run("mailbox", "import", env.address)
    assert unlinked.exit_code == 1 and "link to CRM is off" in unlinked.stderr


def test_wrong_password_is_one_line_and_captures_nothing(env: MailEnv) -> None:
    env.link(password="not the password")
    fill(env, 3)
    result = env.cli.run("mailbox", "import", env.address, "--since", "all")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "login" in result.stderr and "failed" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert env.count() == 0
    assert env.mailbox()["status"] == "red"


def test_progress_total_follows_the_importer_and_ends_full() -> None:
    lines = io.StringIO()
    view = LineView("a@example.com", lines)
    view.plan({"INBOX": 100, "Sent": 10})
    view.begin("INBOX")
    view.event("found", 120)  # mail arrived after the count
    assert (view.total, view.completed) == (130, 0)
    view.event("done", 60)
    view.event("done", 58)
    view.end("INBOX")  # two expunged meanwhile
    view.begin("Sent")
    view.event("done", 10)
    view.end("Sent")
    assert (view.total, view.completed) == (128, 128)
    text = lines.getvalue().splitlines()
    assert text[0] == "a@example.com: 110 messages to import (INBOX 100, Sent 10)"
    assert text[-1].startswith("a@example.com: 128/128 (")


def test_summary_lines_and_exit_codes() -> None:
    folders = [FolderPlan("INBOX", Direction.INCOMING), FolderPlan("Sent", Direction.OUTGOING)]
    stats = {"INBOX": ImportStats(captured=7, duplicate=1, skipped=2)}
    plan = MailboxPlan(
        1, "a@example.com", "company", True, True, None, None, "all", (), None, None, None, None
    )
    done = ImportSummary.of(plan, folders, stats)
    assert done.exit_code == 0
    assert done.done_line() == (
        "a@example.com: 7 imported, 1 duplicates, 2 skipped (INBOX 7, Sent 0; window all)"
    )
    assert done.as_json()["folders"][1] == {
        "name": "Sent", "direction": "outgoing", "imported": 0, "duplicates": 0, "skipped": 0
    }  # fmt: skip
    term = ImportSummary.of(plan, folders, stats, interrupted="SIGTERM")
    assert term.exit_code == 143 and "run `again` to resume" in term.stop_line("again")
    failed = ImportSummary.of(plan, folders, {}, failure="IMAP login failed")
    assert (failed.exit_code, failed.stop_line("x")) == (
        1, "import of a@example.com stopped: IMAP login failed"
    )  # fmt: skip
