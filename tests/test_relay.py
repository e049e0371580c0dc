"""The SMTP relay against the real test Postfix: what a mail client and the CRM's users see.

Each test runs the relay in-process (random port, own certificate) in front of the session's
Postfix + Dovecot, on a fresh CRM database (SQLite and PostgreSQL); clients are aiosmtplib.
Assertions are on SMTP replies, the message in the recipient's mailbox, and the CRM as the CLI
shows it.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from crm.store.models import SpoolEntry
from tests.conftest import Cli
from tests.relaykit import PASSWORD, RelayEnv, eventually, lf, message, running
from tests.servers import Postfix

pytestmark = pytest.mark.servers


@pytest.fixture
async def env(cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix) -> AsyncIterator[RelayEnv]:
    async with running(cli, db_url, tmp_path, postfix) as started:
        yield started


def external(name: str = "client") -> str:
    """An address outside the test domain: Postfix keeps its mail in the capture Maildir."""
    tag = uuid.uuid4().hex[:8]
    return f"{name}{tag}@customer-{tag}.example"


async def test_plain_message_is_relayed_and_captured(env: RelayEnv) -> None:
    alice, colleague, customer = env.user("alice"), env.user("bob"), external()
    raw = message(f"Alice <{alice}>", f"{customer}, {colleague}", "Offer 1", msgid=False)
    smtp = await env.login(alice)
    errors, reply = await smtp.sendmail(alice, [customer, colleague], raw)
    await smtp.quit()
    assert errors == {} and reply.startswith("2.0.0 Ok: ") and " queued as " in reply

    got = (await env.delivered(customer))[0]
    assert lf(raw) in lf(got)  # the message as sent, after the Message-ID the relay added
    assert got.index(b"Message-ID: <") < got.index(b"From: Alice")
    assert lf(raw) in lf((await env.delivered(colleague))[0])

    activity = (await eventually(lambda: env.cli.json("activities", "list")))[0]
    assert activity["direction"] == "outgoing" and activity["subject"] == "Offer 1"
    assert activity["mailbox"] == alice
    assert f"Message-ID: <{activity['message_id']}>".encode() in got
    leads = env.cli.json("leads", "list")
    assert [lead["emails"] for lead in leads] == [[customer]]  # the colleague is an employee
    assert activity["bindings"] == [{"type": "lead", "id": leads[0]["id"]}]
    box = env.cli.json("mailbox", "show", alice)
    assert box["linked"] is True and box["kind"] == "personal" and box["owner"] == alice


async def test_multipart_message_arrives_intact(env: RelayEnv) -> None:
    alice, customer = env.user("alice"), external()
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = alice, customer, "Quote with attachment"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@client.example>"
    msg["Date"] = email.utils.formatdate()
    msg.set_content("Plain part.\n\n.a line starting with a dot\n")
    msg.add_alternative("<p>HTML part</p>", subtype="html")
    msg.add_attachment(
        bytes(range(256)) * 40, maintype="application", subtype="pdf", filename="quote.pdf"
    )
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    smtp = await env.login(alice)
    await smtp.sendmail(alice, [customer], raw)
    await smtp.quit()

    got = (await env.delivered(customer))[0]
    assert lf(raw) in lf(got)
    assert base64.b64encode(bytes(range(256)) * 40)[:76] in got
    activity = (await eventually(lambda: env.cli.json("activities", "list")))[0]
    assert activity["subject"] == "Quote with attachment"
    assert f"<{activity['message_id']}>" == msg["Message-ID"]


async def test_large_message_arrives_intact(env: RelayEnv) -> None:
    """Past the relay's memory limit (1 MB) the message waits on disk; the upstream, which offers
    CHUNKING, gets it after DATA instead of as one BDAT: the same bytes either way."""
    alice, customer = env.user("alice"), external()
    lines = [f"{'.' if i % 50 == 0 else ''}line {i} {'z' * 60}\r\n" for i in range(24_000)]
    raw = message(alice, customer, "A large report", body="".join(lines))
    assert len(raw) > 1_500_000
    smtp = await env.login(alice)
    errors, reply = await smtp.sendmail(alice, [customer], raw)
    await smtp.quit()
    assert errors == {} and " queued as " in reply
    got = (await env.delivered(customer))[0]
    assert lf(raw) in lf(got)
    activity = (await eventually(lambda: env.cli.json("activities", "list")))[0]
    assert activity["subject"] == "A large report"


async def test_8bit_and_smtputf8_mail(env: RelayEnv) -> None:
    alice = env.user("alice")
    tag = uuid.uuid4().hex[:8]
    customer = f"jürgen{tag}@kunde-{tag}.example"
    raw = (
        f"From: Zoë <{alice}>\r\nTo: Jürgen Groß <{customer}>\r\n"
        f"Subject: Grüße aus Köln ✓\r\nMessage-ID: <{tag}@client.example>\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nSchöne Grüße — ñ 你好\r\n"
    ).encode()
    smtp = await env.login(alice)
    assert smtp.supports_extension("smtputf8") and smtp.supports_extension("8bitmime")
    errors, reply = await smtp.sendmail(
        alice, [customer], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
    )
    await smtp.quit()
    assert errors == {} and reply.startswith("2.0.0")

    got = (await env.delivered(customer))[0]
    assert lf(raw) in lf(got)
    activity = (await eventually(lambda: env.cli.json("activities", "list")))[0]
    assert activity["subject"] == "Grüße aus Köln ✓"
    assert [lead["emails"] for lead in env.cli.json("leads", "list")] == [[customer]]


async def test_bcc_recipients_get_the_mail_and_count(env: RelayEnv) -> None:
    alice, to, bcc = env.user("alice"), external("to"), external("bcc")
    raw = message(alice, to, "With a blind copy")  # the client keeps Bcc out of the headers
    smtp = await env.login(alice)
    await smtp.sendmail(alice, [to, bcc], raw)
    await smtp.quit()

    assert lf(raw) in lf((await env.delivered(to))[0])
    blind = (await env.delivered(bcc))[0]
    assert lf(raw) in lf(blind) and bcc.encode() not in blind.split(b"\n\n", 1)[1]
    activities = await eventually(env.activities)
    assert set(activities[0].counterparts) == {to, bcc}
    emails = sorted(e for lead in env.cli.json("leads", "list") for e in lead["emails"])
    assert emails == sorted([to, bcc])


async def test_upstream_refusing_one_recipient(env: RelayEnv) -> None:
    alice, good = env.user("alice"), external()
    nobody = f"nobody{uuid.uuid4().hex[:8]}@{env.dovecot.domain}"
    smtp = await env.login(alice)
    errors, reply = await smtp.sendmail(alice, [nobody, good], message(alice, good, "Two"))
    assert reply.startswith("2.0.0")
    refused = errors[nobody]
    assert refused.code == 550
    assert "5.1.1" in refused.message and "User unknown" in refused.message  # Postfix's words
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
        await smtp.sendmail(alice, [nobody], message(alice, nobody, "Only bad"))
    assert caught.value.recipients[0].code == 550
    await smtp.quit()

    await env.delivered(good)
    assert env.postfix.delivered(nobody) == []
    activities = await eventually(env.activities)
    assert len(activities) == 1 and activities[0].counterparts == [good]
    assert [e.envelope_to for e in env.spool_entries()] == [[good]]


async def test_wrong_password_gets_535(env: RelayEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    alice = env.user("alice")
    smtp = env.client()
    await smtp.connect()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
        await smtp.login(alice, "not the password")
    assert caught.value.code == 535 and "5.7.8" in caught.value.message
    nobody = f"nobody{uuid.uuid4().hex[:6]}@{env.dovecot.domain}"
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await smtp.login(nobody, PASSWORD)
    await smtp.quit()
    assert env.cli.json("mailbox", "list") == []  # a failed login links nothing
    lines = [
        r.getMessage()
        for r in caplog.records
        if alice in r.getMessage() or nobody in r.getMessage()
    ]
    # one line per refused AUTH command: client, login, why
    assert lines and all(line.startswith("relay: failed AUTH from 127.0.0.1:") for line in lines)
    for who in (alice, nobody):
        mine = [line for line in lines if who in line]
        assert mine and all(f" as {who}: refused by " in line and ": 535 " in line for line in mine)
    assert not any("not the password" in r.getMessage() for r in caplog.records)


async def test_one_wrong_password_is_one_failed_login_upstream(env: RelayEnv) -> None:
    """The relay checks a password with one mechanism: aiosmtplib's login() went on to LOGIN
    after PLAIN's 535, so the upstream counted every wrong try twice against the user."""
    alice = env.user("alice")
    before = env.postfix.log().count("authentication failed")
    smtp = env.client()
    await smtp.connect()
    await smtp.ehlo()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
        await smtp.auth_plain(alice, "not the password")  # one AUTH command from the client
    await smtp.quit()
    assert caught.value.code == 535
    failed = await eventually(
        lambda: env.postfix.log().count("authentication failed") - before or None
    )
    assert failed == 1, env.postfix.log()[-2000:]


async def test_no_auth_gets_530(env: RelayEnv) -> None:
    alice, customer = env.user("alice"), external()
    smtp = env.client()
    await smtp.connect()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        await smtp.mail(alice)
    assert caught.value.code == 530 and caught.value.message.startswith("5.7.0")
    reply = await smtp.execute_command(b"RCPT", f"TO:<{customer}>".encode())
    assert reply.code == 530 and reply.message.startswith("5.7.0")
    assert (await smtp.execute_command(b"DATA")).code == 530
    await smtp.quit()


async def test_plaintext_auth_is_refused(env: RelayEnv) -> None:
    alice = env.user("alice")
    smtp = env.client(start_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    assert smtp.supports_extension("starttls") and not smtp.supports_extension("auth")
    token = base64.b64encode(f"\0{alice}\0{PASSWORD}".encode()).decode()
    reply = await smtp.execute_command(b"AUTH", b"PLAIN", token.encode())
    assert reply.code == 538 and "5.7.11" in reply.message
    await smtp.quit()


async def test_plaintext_auth_allowed_on_loopback_when_configured(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(
        cli, db_url, tmp_path, postfix, allow_plaintext_auth_on_loopback=True
    ) as env:
        alice, customer = env.user("alice"), external()
        smtp = env.client(start_tls=False)
        await smtp.connect()
        await smtp.login(alice, PASSWORD)
        await smtp.sendmail(alice, [customer], message(alice, customer, "Plain loopback"))
        await smtp.quit()
        await env.delivered(customer)


async def test_spoofed_sender_gets_553(env: RelayEnv) -> None:
    alice, bob, customer = env.user("alice"), env.user("bob"), external()
    smtp = await env.login(alice)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        await smtp.sendmail(bob, [customer], message(bob, customer, "Spoof"))
    assert caught.value.code == 553 and caught.value.message.startswith("5.7.1")
    await smtp.sendmail(alice.upper(), [customer], message(alice, customer, "Own, any case"))
    await smtp.quit()
    assert len(await env.delivered(customer)) == 1
    assert [a.subject for a in await eventually(env.activities)] == ["Own, any case"]


async def test_oversize_gets_552(cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix) -> None:
    async with running(cli, db_url, tmp_path, postfix, max_message_size=20_000) as env:
        alice, customer = env.user("alice"), external()
        smtp = await env.login(alice)
        assert smtp.esmtp_extensions["size"] == "20000"
        big = message(alice, customer, "Too big", body=("y" * 70 + "\r\n") * 400)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as declared:
            await smtp.sendmail(alice, [customer], big)  # aiosmtplib declares SIZE=
        assert declared.value.code == 552
        await smtp.mail(alice)  # undeclared: refused after the data
        await smtp.rcpt(customer)
        with pytest.raises(aiosmtplib.SMTPDataError) as undeclared:
            await smtp.data(big)
        assert undeclared.value.code == 552 and "5.3.4" in undeclared.value.message
        await smtp.sendmail(alice, [customer], message(alice, customer, "Small"))
        await smtp.quit()
        got = await env.delivered(customer)
        assert len(got) == 1 and b"Subject: Small" in got[0]
        assert [a.subject for a in await eventually(env.activities)] == ["Small"]


async def test_ehlo_mirrors_the_upstream(env: RelayEnv) -> None:
    smtp = env.client(start_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    ext = smtp.esmtp_extensions
    assert "auth" not in ext and "starttls" in ext
    await smtp.starttls()
    await smtp.ehlo()
    ext = smtp.esmtp_extensions
    assert ext["size"] == str(env.postfix.message_size_limit)  # Postfix's limit is lower
    assert {"8bitmime", "smtputf8"} <= set(ext)
    assert set(ext["auth"].split()) == {"PLAIN", "LOGIN"}
    await smtp.quit()


async def test_outlook_auth_parameter_and_long_lines(env: RelayEnv) -> None:
    alice, customer = env.user("alice"), external()
    body = "".join(f"{i:04d}" + "z" * 990 + "\r\n" for i in range(30))  # 996 octets a line
    raw = message(alice, customer, "Long lines", body=body)
    smtp = await env.login(alice)
    reply = await smtp.execute_command(b"MAIL", f"FROM:<{alice}>".encode(), b"AUTH=<>")
    assert reply.code == 250
    await smtp.rcpt(customer)
    await smtp.data(raw)
    await smtp.quit()
    assert lf(raw) in lf((await env.delivered(customer))[0])


async def test_implicit_tls_listener(
    cli: Cli, db_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(cli, db_url, tmp_path, postfix, tls_port=0) as env:
        alice, customer = env.user("alice"), external()
        smtp = env.client(port=env.relay.ports[1], start_tls=False, use_tls=True)
        await smtp.connect()
        await smtp.ehlo()
        assert "starttls" not in smtp.esmtp_extensions and "auth" in smtp.esmtp_extensions
        await smtp.login(alice, PASSWORD)
        await smtp.sendmail(alice, [customer], message(alice, customer, "Over TLS"))
        await smtp.quit()
        await env.delivered(customer)


async def test_added_message_id_dedups_the_sent_copy(env: RelayEnv, tmp_path: Path) -> None:
    alice, customer = env.user("alice"), external()
    smtp = await env.login(alice)
    await smtp.sendmail(alice, [customer], message(alice, customer, "No id", msgid=False))
    await smtp.quit()
    got = (await env.delivered(customer))[0]
    await eventually(env.activities)
    sent_copy = tmp_path / "sent.eml"
    sent_copy.write_bytes(got)
    result = env.cli.json("capture", str(sent_copy), "--mailbox", alice, "--direction", "out")
    assert result[0]["action"] == "duplicate"
    assert len(env.cli.json("activities", "list")) == 1


async def test_relay_login_links_the_users_own_mailbox(env: RelayEnv) -> None:
    alice = env.user("alice")
    env.cli.ok(
        "mailbox",
        "add",
        alice,
        "--owner",
        alice,
        "--smtp-host",
        env.postfix.host,
        "--smtp-port",
        str(env.config.relay.upstream_port),
    )
    assert env.cli.json("mailbox", "show", alice)["linked"] is False  # the admin cannot link it
    smtp = await env.login(alice)
    await smtp.quit()
    assert env.cli.json("mailbox", "show", alice)["linked"] is True
    with env.db.session() as session:
        from crm.store.models import Mailbox, User

        box = session.scalar(select(Mailbox).where(Mailbox.address == alice))
        user = session.scalar(select(User).where(User.email == alice))
        assert box is not None and box.secret is not None and PASSWORD.encode() not in box.secret
        assert user is not None and user.last_active_at is not None


async def test_user_without_crm_access_relays_but_links_nothing(env: RelayEnv) -> None:
    carol, customer = env.user("carol", crm=False), external()
    smtp = await env.login(carol)
    await smtp.sendmail(carol, [customer], message(carol, customer, "From a non-CRM user"))
    await smtp.quit()
    await env.delivered(customer)
    assert env.cli.json("mailbox", "list") == []
    assert env.spool_entries() == [] and env.activities() == []


async def test_mail_only_to_colleagues_or_excluded_creates_nothing(env: RelayEnv) -> None:
    alice, bob, lawyer = env.user("alice"), env.user("bob"), external("lawyer")
    env.cli.ok("exclude", "add", "@" + lawyer.split("@")[1])
    smtp = await env.login(alice)
    await smtp.sendmail(alice, [bob], message(alice, bob, "Internal"))
    await smtp.sendmail(alice, [lawyer], message(alice, lawyer, "Privileged"))
    await smtp.quit()
    await env.delivered(bob)
    await env.delivered(lawyer)

    def settled() -> list[SpoolEntry] | None:
        done = [e for e in env.spool_entries() if e.state != "pending"]
        return done if len(done) == 2 else None

    entries = await eventually(settled)
    assert {e.state for e in entries} == {"skipped"}  # captured nothing, with a reason
    assert env.cli.json("activities", "list") == [] and env.cli.json("leads", "list") == []
