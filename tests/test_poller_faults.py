"""Messages the poller skipped on a fault, per mailbox (SPEC B6, issue 13 item 3).

Role: what an admin sees when one mailbox has poisoned mail: a real Dovecot mailbox gets a
message capture fails on between good ones (and a mailing list's mail the rules leave out, which
is normal and not counted); after the pass the mailbox shows 1 skipped with its reason and time
in ``mailbox show`` (text and JSON), ``mailcrm status`` (text and JSON) and the web status page
signed in as an admin, the good mail is captured, and a restarted poller counts nothing twice.
Below, with the poller's batch alone: the count moves in the transaction of the checkpoint (a
batch whose checkpoint fails counts nothing; on SQLite a fault in the batch's first slice waits
for its last), a reason is stored escaped and cut, and a failing count never fails capture.
SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

import crm.mailboxes.faults
from crm.capture.path import Capturer
from crm.face import admin
from crm.face.views import mailbox_json
from crm.mailboxes import sync
from crm.store.db import Database
from crm.store.models import Direction
from crm.store.secrets import SecretBox
from proxy.imap.importer import store_batch
from proxy.imap.parse import FetchRecord
from proxy.imap.plan import FolderPlan, MailboxPlan
from tests.conftest import Cli
from tests.pollerkit import MailEnv, message, until
from tests.security.test_hostile_mime import CUSTOMER, poison
from tests.servers import Dovecot, dovecot
from tests.test_http import node_config, start_http
from tests.test_status_page import Rows

__all__ = ["dovecot"]
REASON = "capture error: RecursionError"
NEWSLETTER = "Deals Weekly <news@deals.example>"
ME = "me@example.com"


def _wide(cli: Cli, *args: str) -> str:
    """The command's text output on a terminal wide enough not to fold its tables."""
    from cli import app

    result = cli.runner.invoke(app, list(args), env={**cli.env, "COLUMNS": "400"})
    assert result.exit_code == 0, (args, result.stdout, result.exception)
    return str(result.stdout)


async def _status_page_row(env: MailEnv) -> tuple[str, str]:
    """The mailbox's row on the web status page, signed in as an admin: (faults cell, row)."""
    db = Database(env.url, migrate=False)
    try:
        async for get in start_http(node_config(env.url), db):
            status, page = await get("/status")
            assert status == 200
    finally:
        db.dispose()
    rows = Rows()
    rows.feed(page)
    start = page.index(f'data-mailbox="{env.address}"')
    cell = page[page.index('<td class="faults">', start) :]
    return cell[: cell.index("</td>")], rows.rows[env.address][1]


@pytest.mark.servers
async def test_a_mailbox_shows_the_message_it_skipped_on_a_fault(
    dovecot: Dovecot, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = MailEnv(dovecot, cli, tmp_path)
    env.deliver(message(CUSTOMER, env.address, "before"))
    env.deliver(poison(monkeypatch))
    env.deliver(message(NEWSLETTER, env.address, "deals", extra="List-Id: <deals.example>\r\n"))
    env.deliver(message(CUSTOMER, env.address, "after"))
    env.link("--since", "all")
    assert env.mailbox()["faults"] == {"skipped": 0, "last_reason": None, "last_at": None}
    started = dt.datetime.now(dt.UTC)
    async with env.poller():
        await until(lambda: env.checkpoints().get("INBOX", (0, 0))[1] == 4, what="checkpoint")
        await until(lambda: env.mailbox()["status"] == "green", what="green")
    assert sorted(a["subject"] for a in env.activities()) == ["after", "before"]

    faults = env.mailbox()["faults"]
    assert (faults["skipped"], faults["last_reason"]) == (1, REASON)  # the newsletter: a rule
    assert started <= dt.datetime.fromisoformat(faults["last_at"]) <= dt.datetime.now(dt.UTC)
    [box] = [
        b
        for b in (await asyncio.to_thread(cli.json, "status"))["mailboxes"]
        if b["address"] == env.address
    ]
    assert box["faults"] == faults
    shown = f"1, last: {REASON} at {faults['last_at']}"
    status = await asyncio.to_thread(_wide, cli, "status")  # it runs an event loop of its own
    assert shown in next(line for line in status.splitlines() if env.address in line)
    assert (
        f"faults: skipped=1, last_reason={REASON}, last_at={faults['last_at']}"
        in _wide(cli, "mailbox", "show", env.address).splitlines()
    )

    cell, row = await _status_page_row(env)
    assert '<b class="fault-count">1</b>' in cell and f"last: {REASON}" in row
    assert faults["last_at"] in row

    # A restarted poller goes on past the checkpoint: new mail is captured, nothing counted again.
    env.deliver(message(CUSTOMER, env.address, "later"))
    async with env.poller():
        await until(lambda: len(env.activities()) == 3, what="later mail captured")
    assert env.mailbox()["faults"] == faults


# --- the poller's batch alone --------------------------------------------------------------------


def _mailbox(db: Database) -> tuple[int, MailboxPlan]:
    with db.session() as s:
        admin.add_user(s, ME)
        settings = admin.MailboxSettings(password="x", since="all")
        box = admin.add_mailbox(s, SecretBox(Fernet.generate_key()), ME, ME, settings)
        box_id = box.id
    plan = MailboxPlan(
        id=box_id, address=ME, kind="personal", linked=True, owner_ok=True, owner_active_at=None,
        linked_at=None, since="all", folders=(), interval_s=None, endpoint=None, smtp=None,
        problem=None,
    )  # fmt: skip
    return box_id, plan


def _faults(db: Database) -> dict[str, Any]:
    with db.session() as s:
        shown: dict[str, Any] = mailbox_json(admin.get_mailbox(s, ME))["faults"]
    return shown


def _records(uids: range, bad: dict[int, bytes]) -> list[FetchRecord]:
    """Good mail at ``uids``, but at the UIDs of ``bad``."""
    return [
        FetchRecord(seq=uid, uid=uid, body=bad[uid] if uid in bad else message(
            f"S{uid} <s{uid}@client{uid}.example>", ME, f"m{uid}"))
        for uid in uids
    ]  # fmt: skip


INBOX = FolderPlan("INBOX", Direction.INCOMING)


def test_the_count_moves_with_the_checkpoint_once(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 messages (on SQLite two transactions of 16 and 4), the unreadable one among the first
    16: a checkpoint that cannot move takes the count back with it; done again, it counts once."""
    box_id, plan = _mailbox(db)
    records = _records(range(1, 21), {2: b"\r\n\r\nno headers at all"})

    def refused(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the checkpoint could not move")

    monkeypatch.setattr(crm.mailboxes.faults, "save_checkpoint_in", refused)
    with pytest.raises(RuntimeError):
        store_batch(Capturer(db), plan, INBOX, 5, records, 20)
    assert _faults(db) == {"skipped": 0, "last_reason": None, "last_at": None}
    monkeypatch.setattr(crm.mailboxes.faults, "save_checkpoint_in", sync.save_checkpoint_in)
    stats = store_batch(Capturer(db), plan, INBOX, 5, records, 20)
    assert (stats.skipped, stats.captured + stats.duplicate) == (1, 19)
    assert sync.load_checkpoint(db, box_id, "INBOX") == sync.Checkpoint(5, 20, 0)
    faults = _faults(db)
    assert (faults["skipped"], faults["last_reason"]) == (1, "no headers: not an RFC 5322 message")
    store_batch(Capturer(db), plan, INBOX, 5, _records(range(21, 23), {21: b""}), 22)
    assert _faults(db)["skipped"] == 2 and _faults(db)["last_reason"] == "empty message"


def test_a_reason_is_stored_escaped_and_cut(db: Database) -> None:
    box_id, _ = _mailbox(db)

    class Fault:
        fault, reason = True, "cannot store: \x1b[31m<red>\r\n" + "x" * 500

    with db.engine.begin() as conn:
        assert crm.mailboxes.faults.record_in(conn, box_id, [Fault()]) == 1
    reason = _faults(db)["last_reason"]
    assert reason.startswith("cannot store: \\x1b[31m<red>\\r\\nxxx") and len(reason) == 200


class _Refused:
    """An UPDATE the database refuses (a table it does not have), in place of the count's."""

    def __init__(self, *args: object) -> None:
        pass

    def where(self, *args: object) -> _Refused:
        return self

    def values(self, *args: object) -> Any:
        return text("UPDATE no_such_table SET skipped_faults = 1")


def test_a_count_the_database_refuses_loses_the_count_not_the_capture(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    box_id, plan = _mailbox(db)
    monkeypatch.setattr(crm.mailboxes.faults, "update", _Refused)
    stats = store_batch(Capturer(db), plan, INBOX, 5, _records(range(1, 4), {2: b""}), 3)
    assert (stats.captured, stats.skipped) == (2, 1)
    assert sync.load_checkpoint(db, box_id, "INBOX") == sync.Checkpoint(5, 3, 0)
    assert len(sync.recorded(db, box_id, "INBOX", 5, [1, 2, 3])) == 2
    assert _faults(db)["skipped"] == 0
    [lost] = [r for r in caplog.records if "count of 1 skipped messages" in r.getMessage()]
    assert lost.levelno == logging.WARNING and "no_such_table" in lost.getMessage()
