"""The IMAP poller against a real Dovecot: import window, IDLE, Sent folder, flags, deletions.

Role: integration tests of SPEC C9-C12, T1 and M5 as users see them (the CLI's JSON, the
flags a mail client sees). Each test gets its own Dovecot user and CRM database.
"""

from __future__ import annotations

import asyncio
import imaplib
import logging
import re
import time
import uuid
from pathlib import Path

import pytest

from crm.capture.path import Capturer
from crm.store.db import Database
from crm.store.models import Direction
from proxy.imap import utf7
from tests.conftest import Cli
from tests.pollerkit import MailEnv, TcpProxy, message, until
from tests.servers import Dovecot, Postfix, dovecot, postfix

__all__ = ["dovecot", "postfix"]
pytestmark = pytest.mark.servers
CUSTOMER = "Carla Customer <carla@acme-industries.example>"


@pytest.fixture
def env(dovecot: Dovecot, cli: Cli, tmp_path: Path) -> MailEnv:
    """A fresh Dovecot user and CRM database (SQLite and PostgreSQL)."""
    return MailEnv(dovecot, cli, tmp_path)


async def test_initial_import_takes_only_the_window(env: MailEnv) -> None:
    for days, subject in ((10, "old one"), (6, "old two"), (1, "recent one"), (0, "today")):
        raw = message(CUSTOMER, env.address, subject, days_ago=days)
        env.deliver(raw, days_ago=days)
    env.link()
    async with env.poller():
        await until(lambda: len(env.activities()) >= 2, what="recent mail captured")
        await until(lambda: env.mailbox()["status"] == "green", what="green status")
    subjects = sorted(a["subject"] for a in env.activities())
    assert subjects == ["recent one", "today"]
    assert all(a["direction"] == "incoming" and not a["completed"] for a in env.activities())
    assert [lead["emails"] for lead in env.leads()] == [["carla@acme-industries.example"]]


async def test_new_mail_arrives_through_idle(
    env: MailEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """With an hour between checks, only IDLE can bring the new mail in; the pass it starts
    says how long after the server's notice it ended (mailcrm's part of the IDLE latency)."""
    caplog.set_level(logging.INFO, logger="proxy.imap.folder")
    env.link()
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="first pass")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        env.deliver(message(CUSTOMER, env.address, "Are you there?"))
        await until(lambda: env.activities(), timeout=60, every=0.05, what="IDLE capture")
        print(f"delivery to activity over IDLE: {time.monotonic() - started:.2f} s")
    assert [a["subject"] for a in env.activities()] == ["Are you there?"]
    [line] = [
        r.getMessage() for r in caplog.records if "after the server's notice" in r.getMessage()
    ]
    assert re.search(r"INBOX: 1 new \(1 captured, .*, \d+ ms after the server's notice$", line)


async def test_sent_folder_is_outgoing_and_deduplicated_with_the_relay_copy(env: MailEnv) -> None:
    env.link()
    offer = message(env.address, CUSTOMER, "Our offer")
    db = Database(env.url)
    try:
        relay = Capturer(db).capture(offer, env.address, Direction.OUTGOING, source="relay")
    finally:
        db.dispose()
    assert relay.action == "captured"
    env.deliver(offer, folder="Sent", seen=True)
    other = message(env.address, "Otto <otto@other-firm.example>", "Second offer")
    env.deliver(other, folder="Sent", seen=True)
    async with env.poller():
        await until(lambda: len(env.locations()) == 2, what="both Sent messages located")
    activities = env.activities()
    assert sorted(a["subject"] for a in activities) == ["Our offer", "Second offer"]
    assert {a["direction"] for a in activities} == {"outgoing"}
    assert relay.activities[0] in [a["id"] for a in activities]
    assert {folder for folder, *_ in env.locations()} == {"Sent"}


async def test_read_state_follows_both_ways(env: MailEnv) -> None:
    env.link()
    env.deliver(message(CUSTOMER, env.address, "first"))
    env.deliver(message(CUSTOMER, env.address, "second"))
    async with env.poller():
        await until(lambda: len(env.activities()) == 2, what="capture")
        assert all("\\Seen" not in f for f in env.flags().values()), "capture changed flags"
        ids = {a["subject"]: a["id"] for a in env.activities()}
        with env.imap() as conn:
            conn.uid("STORE", "1", "+FLAGS", "(\\Seen)")

        def completed() -> dict[str, bool]:
            return {a["subject"]: a["completed"] for a in env.activities()}

        await until(lambda: completed() == {"first": True, "second": False}, what="read -> done")
        env.cli.ok("activity", "complete", str(ids["second"]))
        await until(lambda: "\\Seen" in env.flags()[2], what="complete -> \\Seen upstream")
        env.cli.ok("activity", "reopen", str(ids["first"]))
        await until(lambda: "\\Seen" not in env.flags()[1], what="reopen -> unread upstream")
        with env.imap() as conn:
            conn.uid("STORE", "2", "-FLAGS", "(\\Seen)")
        await until(lambda: completed() == {"first": False, "second": False}, what="unread")


async def test_deleted_mail_takes_its_activity_and_untouched_lead(env: MailEnv) -> None:
    env.link()
    senders = {
        "gone": "Gina <gina@gone-co.example>",
        "edited": "Eddie <eddie@edited-co.example>",
        "busy": "Bea <bea@busy-co.example>",
        "answered": "Andy <andy@answered-co.example>",
    }
    for subject, sender in senders.items():
        env.deliver(message(sender, env.address, subject))
    env.deliver(message(senders["busy"], env.address, "busy again"))
    async with env.poller():
        await until(lambda: len(env.activities()) == 5, what="capture")
        leads = {lead["emails"][0].split("@")[0]: lead["id"] for lead in env.leads()}
        env.cli.ok("lead", "update", str(leads["eddie"]), "--status", "contacted")
        with env.imap() as conn:
            conn.uid("STORE", "4", "+FLAGS", "(\\Answered)")
        await until(
            lambda: [a["answered"] for a in env.activities() if a["answered"]] == [True],
            what="\\Answered synced",
        )
        with env.imap() as conn:
            conn.uid("STORE", "1:4", "+FLAGS", "(\\Deleted)")
            conn.expunge()
        await until(lambda: len(env.activities()) == 2, what="deletions synced")
    assert sorted(a["subject"] for a in env.activities()) == ["answered", "busy again"]
    assert sorted(lead["emails"][0] for lead in env.leads()) == [
        "andy@answered-co.example",
        "bea@busy-co.example",
        "eddie@edited-co.example",
    ]
    assert len(env.locations()) == 1


async def test_uidvalidity_change_remaps_instead_of_reimporting(
    env: MailEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.imap")
    raws = [message(CUSTOMER, env.address, f"project {n}") for n in range(4)]
    with env.imap("") as conn:
        conn.create("Projects")
    env.link("--folders", "INBOX,Projects")  # the server has the folder: add asks it
    with env.imap("") as conn:
        for raw in raws:
            conn.append("Projects", "", imaplib.Time2Internaldate(time.time()), raw)
    async with env.poller():
        await until(lambda: len(env.activities()) == 4, what="first import")
    before = {a["subject"]: a["id"] for a in env.activities()}
    validity = env.checkpoints()["Projects"][0]
    with env.imap("") as conn:
        conn.delete("Projects")
        conn.create("Projects")
        for raw in [*raws[:3], message(CUSTOMER, env.address, "project new")]:
            conn.append("Projects", "", imaplib.Time2Internaldate(time.time()), raw)
    async with env.poller():
        await until(
            lambda: (
                env.checkpoints()["Projects"][0] != validity
                and len(env.locations()) == 4
                and all(v != validity for _, v, _, _ in env.locations())
            ),
            what="re-mapped",
        )
    after = {a["subject"]: a["id"] for a in env.activities()}
    assert after == {**{k: before[k] for k in ("project 0", "project 1", "project 2")},
                     "project new": after["project new"]}  # fmt: skip
    assert after["project new"] > max(before.values())
    assert any("3 re-mapped" in r.getMessage() for r in caplog.records), "not re-mapped"


async def test_wrong_password_shows_red_with_the_reason(env: MailEnv) -> None:
    env.link(password="not the password")
    env.deliver(message(CUSTOMER, env.address, "unseen by the CRM"))
    async with env.poller():
        # "red, not checked yet" comes first: wait for the login's own verdict
        await until(lambda: "login" in (env.mailbox()["status_reason"] or ""), what="login error")
    status = (await asyncio.to_thread(env.cli.json, "status"))["mailboxes"][0]
    assert status["status"] == "red"
    assert "login" in status["status_reason"] and "failed" in status["status_reason"]
    assert status["last_check"] and status["last_error"] == status["status_reason"]
    listed = env.cli.json("mailbox", "list")[0]
    assert (listed["status"], listed["last_ok"]) == ("red", None)
    assert env.activities() == []


async def test_server_closing_the_connection_mid_idle(env: MailEnv) -> None:
    """The server says BYE and hangs up during IDLE (aioimaplib issue #110): reconnect, go on."""
    async with TcpProxy(env.dovecot.imap_port) as proxy:
        env.link("--imap-port", str(proxy.port), "--imap-tls", "none")
        async with env.poller():
            await until(lambda: env.mailbox()["status"] == "green", what="first pass")
            await until(lambda: proxy.open == 1, what="connection in IDLE")
            await asyncio.sleep(0.3)
            proxy.drop(b"* BYE Server shutting down.\r\n")
            env.deliver(message(CUSTOMER, env.address, "after the BYE"))
            await until(lambda: env.activities(), what="capture after reconnecting")
            await until(lambda: env.mailbox()["status"] == "green", what="green again")
        assert proxy.accepted >= 2


async def test_server_going_silent_is_detected_by_the_watchdog(env: MailEnv) -> None:
    """A connection that stops answering (no FIN) is dropped at the next IDLE renewal."""
    env.write_config(idle_renew_s=1, timeout_s=2)
    async with TcpProxy(env.dovecot.imaps_port) as proxy:
        env.link("--imap-port", str(proxy.port))
        async with env.poller():
            await until(lambda: env.mailbox()["status"] == "green", what="first pass")
            proxy.frozen = True
            await until(lambda: env.mailbox()["status"] == "red", what="watchdog fired")
            proxy.frozen = False
            env.deliver(message(CUSTOMER, env.address, "after the silence"))
            await until(lambda: env.activities(), what="capture after reconnecting")
            await until(lambda: env.mailbox()["status"] == "green", what="green again")
        assert proxy.accepted >= 2


def test_check_verifies_imap_and_smtp_and_collects_nothing(env: MailEnv, postfix: Postfix) -> None:
    env.extra_cas = [postfix.cert_path]
    env.write_config()
    smtp = ("--smtp-host", "127.0.0.1", "--smtp-port", str(postfix.port), "--smtp-tls", "starttls")
    env.link(*smtp)
    env.deliver(message(CUSTOMER, env.address, "must stay unread"))
    shown = env.cli.ok("mailbox", "check", env.address)
    assert "IMAP: ok" in shown and "SMTP: ok" in shown
    assert "INBOX (incoming)" in shown and "Sent (outgoing)" in shown
    report = env.cli.json("mailbox", "check", env.address)
    assert report["ok"] and report["problems"] == []
    assert {"IDLE", "QRESYNC"} <= set(report["capabilities"])
    assert env.activities() == [] and env.checkpoints() == {} and env.locations() == []
    assert all("\\Seen" not in f for f in env.flags().values())
    assert env.mailbox()["status"] == "green"
    env.cli.ok("mailbox", "set", env.address, "--password-stdin", input="wrong\n")
    failed = env.cli.run("mailbox", "check", env.address)
    assert failed.exit_code == 1
    assert failed.stderr.count("\n") == 1 and "login" in failed.stderr
    assert env.mailbox()["status"] == "red"


async def test_a_broken_server_never_delays_another_mailbox(env: MailEnv, dovecot: Dovecot) -> None:
    """One mailbox's server accepts connections and never answers; the other works meanwhile."""
    env.write_config(timeout_s=3600)
    tarpit = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = tarpit.sockets[0].getsockname()[1]
    try:
        stuck = dovecot.address("u" + uuid.uuid4().hex[:10])
        env.link()
        env.cli.ok("user", "add", stuck)
        env.cli.ok(
            "mailbox", "add", stuck, "--owner", stuck, "--imap-host", "127.0.0.1",
            "--imap-port", str(port), "--imap-tls", "ssl", "--password-stdin", input="pw\n",
        )  # fmt: skip
        env.deliver(message(CUSTOMER, env.address, "for the working mailbox"))
        async with env.poller():
            await until(lambda: env.activities(), what="the working mailbox's capture")
            await asyncio.sleep(0.5)
            env.deliver(message(CUSTOMER, env.address, "second, over IDLE"))
            await until(lambda: len(env.activities()) == 2, what="IDLE capture")
            boxes = {b["address"]: b for b in env.cli.json("mailbox", "list")}
            assert boxes[env.address]["status"] == "green"
            assert boxes[stuck]["last_check"] is None
    finally:
        tarpit.close()


async def test_folders_with_non_ascii_names(env: MailEnv) -> None:
    folder = "Verträge/Größe 2026"
    wire = utf7.encode(folder)
    assert wire == "Vertr&AOQ-ge/Gr&APYA3w-e 2026"
    with env.imap("") as conn:
        assert conn.create(f'"{wire}"')[0] == "OK"
    env.link("--folders", f"INBOX,{folder}")  # the server has the folder: add asks it
    with env.imap("") as conn:
        raw = message(CUSTOMER, env.address, "im Unterordner")
        stamp = imaplib.Time2Internaldate(time.time())
        assert conn.append(f'"{wire}"', "", stamp, raw)[0] == "OK"
    async with env.poller():
        await until(lambda: env.activities(), what="capture from the UTF-7 folder")
        await until(lambda: env.mailbox()["status"] == "green", what="green")
    assert {loc[0] for loc in env.locations()} == {folder}
    assert env.mailbox()["last_error"] is None


async def test_without_idle_the_schedule_checks_and_pushes_wake_it(env: MailEnv) -> None:
    """A server without IDLE (here: IDLE switched off) is checked on the schedule (T1)."""
    env.write_config(idle=False, active_interval_s=2)
    env.link()
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="first check")
        env.deliver(message(CUSTOMER, env.address, "found by the next check"))
        await until(lambda: env.activities(), what="scheduled check")
        env.write_config(idle=False, active_interval_s=3600)
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="first check")
        env.cli.ok("activity", "complete", str(env.activities()[0]["id"]))
        await until(lambda: "\\Seen" in env.flags()[1], what="push between checks")
