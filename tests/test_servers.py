"""The real Dovecot/Postfix test servers (tests/servers.py) work the way clients see them.

IMAP over plain, STARTTLS and IMAPS; capabilities and special-use folders; direct Maildir
delivery; SMTP submission with STARTTLS + AUTH delivering into Dovecot over LMTP; refusals
(wrong password, unknown local recipient, no AUTH, too big); capture of external mail; and
that a second, independent pair of servers can run and stop beside the session's pair.
"""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import uuid
from email.message import EmailMessage

import pytest

from tests.servers import Dovecot, Postfix

# The session fixtures ``dovecot`` and ``postfix`` live in tests/servers.py.
pytest_plugins = ["tests.servers"]
pytestmark = pytest.mark.servers

PASSWORD = "s3cret: with spaces & colons"


def _new_user(server: Dovecot | Postfix, prefix: str = "user") -> str:
    return server.add_user(f"{prefix}-{uuid.uuid4().hex[:8]}", PASSWORD)


def _message(sender: str, to: str, subject: str, body: str = "Hello there.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.test>"
    msg.set_content(body)
    return msg.as_bytes()


def _submit(postfix: Postfix, user: str) -> smtplib.SMTP:
    """An SMTP session that did EHLO, STARTTLS and AUTH as ``user``."""
    smtp = smtplib.SMTP(postfix.host, postfix.port, timeout=30)
    smtp.starttls(context=postfix.ssl_context())
    smtp.login(user, PASSWORD)
    return smtp


def _imap_login(dovecot: Dovecot, user: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    imap.login(user, PASSWORD)
    return imap


# ------------------------------------------------------------------------- IMAP


def test_imap_plain_login_and_capabilities(dovecot: Dovecot) -> None:
    user = _new_user(dovecot)
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        assert "STARTTLS" in imap.capabilities
        assert imap.login(user, PASSWORD)[0] == "OK"
        typ, data = imap.capability()
        assert typ == "OK"
        caps = set(data[0].split()) if isinstance(data[0], bytes) else set()
        assert {b"IDLE", b"CONDSTORE", b"QRESYNC", b"SPECIAL-USE", b"MOVE"} <= caps
    finally:
        imap.logout()


def test_imap_bare_name_logs_in_with_default_domain(dovecot: Dovecot) -> None:
    user = _new_user(dovecot)
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        typ, _ = imap.login(user.split("@")[0], PASSWORD)
        assert typ == "OK"
    finally:
        imap.logout()


def test_imap_starttls(dovecot: Dovecot) -> None:
    user = _new_user(dovecot)
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        imap.starttls(ssl_context=dovecot.ssl_context())
        assert isinstance(imap.sock, ssl.SSLSocket)
        typ, _ = imap.login(user, PASSWORD)
        assert typ == "OK"
    finally:
        imap.logout()


def test_imaps_with_strict_verification(dovecot: Dovecot) -> None:
    user = _new_user(dovecot)
    context = ssl.create_default_context(cafile=str(dovecot.cert_path))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    imap = imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=context, timeout=30)
    try:
        typ, _ = imap.login(user, PASSWORD)
        assert typ == "OK"
    finally:
        imap.logout()


def test_imaps_rejects_untrusting_client(dovecot: Dovecot) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            dovecot.host, dovecot.imaps_port, ssl_context=ssl.create_default_context(), timeout=30
        )


def test_imap_wrong_password_fails(dovecot: Dovecot) -> None:
    user = _new_user(dovecot)
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(user, "wrong")
    finally:
        imap.shutdown()


def test_list_shows_sent_special_use(dovecot: Dovecot) -> None:
    user = _new_user(dovecot)
    imap = _imap_login(dovecot, user)
    try:
        typ, lines = imap.list()
        assert typ == "OK"
        listing = [line for line in lines if isinstance(line, bytes)]
        assert any(b"\\Sent" in line and line.endswith(b" Sent") for line in listing), listing
        assert any(line.endswith(b" INBOX") for line in listing), listing
        typ, lines = imap.lsub()
        assert any(isinstance(line, bytes) and line.endswith(b" Sent") for line in lines)
    finally:
        imap.logout()


def test_qresync_can_be_enabled(dovecot: Dovecot) -> None:
    user = _new_user(dovecot)
    dovecot.deliver(user, _message("a@ext.org", user, "one"))
    imap = _imap_login(dovecot, user)
    try:
        assert imap.enable("QRESYNC")[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
        _, modseq = imap.response("HIGHESTMODSEQ")
        assert modseq and modseq[0] is not None and int(modseq[0]) > 0
    finally:
        imap.logout()


def test_idle_reports_mail_delivered_over_smtp(dovecot: Dovecot, postfix: Postfix) -> None:
    user = _new_user(postfix)
    imap = _imap_login(dovecot, user)
    try:
        assert imap.select("INBOX") == ("OK", [b"0"])
        imap.send(b"I1 IDLE\r\n")
        assert imap.readline().startswith(b"+")
        with _submit(postfix, user) as smtp:
            smtp.sendmail(user, [user], _message(user, user, "wake up"))
        line = imap.readline()
        while b"EXISTS" not in line and line:
            line = imap.readline()
        assert line.strip() == b"* 1 EXISTS"
        imap.send(b"DONE\r\n")
        while not line.startswith(b"I1 "):
            line = imap.readline()
        assert line.startswith(b"I1 OK")
    finally:
        imap.logout()


def test_add_user_works_immediately_while_running(dovecot: Dovecot) -> None:
    for _ in range(3):  # several in a row, within the same second
        user = _new_user(dovecot, "fresh")
        imap = _imap_login(dovecot, user)
        imap.logout()
    # Changing a password takes effect at once, too.
    dovecot.add_user(user, "changed")
    imap = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
    try:
        typ, _ = imap.login(user, "changed")
        assert typ == "OK"
    finally:
        imap.logout()


def test_direct_maildir_delivery_is_visible_over_imap(dovecot: Dovecot) -> None:
    user = _new_user(dovecot)
    dovecot.deliver(user, _message("a@ext.org", user, "unread one"))
    dovecot.deliver(user, _message("b@ext.org", user, "read one"), seen=True)
    dovecot.deliver(user, _message(user, "c@ext.org", "my sent one"), folder="Sent", seen=True)
    dovecot.deliver(user, _message("d@ext.org", user, "archived"), folder="Archive/2024")
    assert dovecot.maildir_for(user, "Sent").is_dir()
    imap = _imap_login(dovecot, user)
    try:
        assert imap.select("INBOX") == ("OK", [b"2"])
        assert imap.search(None, "UNSEEN") == ("OK", [b"1"])
        _, fetched = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        text = b"".join(part[1] for part in fetched if isinstance(part, tuple))
        assert b"unread one" in text and b"read one" in text
        assert imap.select("Sent") == ("OK", [b"1"])
        _, flags = imap.fetch("1", "(FLAGS)")
        assert isinstance(flags[0], bytes) and b"\\Seen" in flags[0]
        assert imap.select('"Archive/2024"') == ("OK", [b"1"])
    finally:
        imap.logout()
    assert len(dovecot.messages(user)) == 2


# ------------------------------------------------------------------------- SMTP


def test_ehlo_advertises_submission_extensions(postfix: Postfix) -> None:
    smtp = smtplib.SMTP(postfix.host, postfix.port, timeout=30)
    try:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth"), "AUTH must need TLS first"
        for ext in ("8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
            assert smtp.has_extn(ext), ext
        assert smtp.esmtp_features["size"] == str(postfix.message_size_limit)
        smtp.starttls(context=postfix.ssl_context())
        smtp.ehlo()
        assert {"PLAIN", "LOGIN"} <= set(smtp.esmtp_features["auth"].split())
    finally:
        smtp.quit()


def test_submission_delivers_to_local_inbox(postfix: Postfix, dovecot: Dovecot) -> None:
    sender = _new_user(postfix, "sender")
    rcpt = _new_user(postfix, "rcpt")
    subject = f"hello {uuid.uuid4().hex}"
    with _submit(postfix, sender) as smtp:
        refused = smtp.sendmail(sender, [rcpt], _message(sender, rcpt, subject, "Grüße\n"))
    assert refused == {}
    delivered = postfix.wait_for_delivery(rcpt, 1)
    assert subject.encode() in delivered[0]
    assert f"Delivered-To: {rcpt}".encode() in delivered[0]
    imap = _imap_login(dovecot, rcpt)
    try:
        imap.select("INBOX")
        typ, data = imap.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK" and data[0] == b"1"
    finally:
        imap.logout()


def test_wrong_password_is_535(postfix: Postfix) -> None:
    user = _new_user(postfix)
    smtp = smtplib.SMTP(postfix.host, postfix.port, timeout=30)
    try:
        smtp.starttls(context=postfix.ssl_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            smtp.login(user, "not the password")
        assert info.value.smtp_code == 535
    finally:
        smtp.quit()


def test_unknown_local_recipient_is_550_at_rcpt(postfix: Postfix) -> None:
    user = _new_user(postfix)
    with _submit(postfix, user) as smtp:
        smtp.mail(user)
        code, reply = smtp.rcpt(f"nobody-{uuid.uuid4().hex[:6]}@{postfix.domain}")
        assert code == 550
        assert reply.startswith(b"5.1.1")
        smtp.rset()


def test_user_added_while_running_can_receive(postfix: Postfix) -> None:
    sender = _new_user(postfix)
    with _submit(postfix, sender) as smtp:
        smtp.mail(sender)
        late = f"late-{uuid.uuid4().hex[:8]}@{postfix.domain}"
        assert smtp.rcpt(late)[0] == 550
        smtp.rset()
    postfix.add_user(late, PASSWORD)
    with _submit(postfix, sender) as smtp:
        assert smtp.sendmail(sender, [late], _message(sender, late, "welcome")) == {}
    assert len(postfix.wait_for_delivery(late, 1)) == 1


def test_external_recipients_are_captured(postfix: Postfix) -> None:
    sender = _new_user(postfix)
    to = f"Someone.{uuid.uuid4().hex[:6]}@Elsewhere.example.org"
    bcc = f"hidden-{uuid.uuid4().hex[:6]}@other.example.net"
    subject = f"external {uuid.uuid4().hex}"
    with _submit(postfix, sender) as smtp:
        assert smtp.sendmail(sender, [to, bcc], _message(sender, to, subject)) == {}
    for rcpt in (to, bcc):
        (message,) = postfix.wait_for_delivery(rcpt, 1)
        assert subject.encode() in message
        assert f"delivered-to: {rcpt}".lower().encode() in message.lower()
        assert postfix.capture_maildir(rcpt).is_dir()
    assert postfix.delivered(f"nobody@{uuid.uuid4().hex[:6]}.example.org") == []


def test_smtputf8_recipient_is_captured(postfix: Postfix) -> None:
    sender = _new_user(postfix)
    rcpt = f"jörg-{uuid.uuid4().hex[:6]}@beispiel.example.org"
    with _submit(postfix, sender) as smtp:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = rcpt
        msg["Subject"] = "Grüße"
        msg.set_content("Hallo Jörg\n")
        assert smtp.send_message(msg) == {}
    (message,) = postfix.wait_for_delivery(rcpt, 1)
    assert "Hallo Jörg".encode() in message or b"Hallo J=C3=B6rg" in message


def test_sending_requires_auth(postfix: Postfix) -> None:
    user = _new_user(postfix)
    smtp = smtplib.SMTP(postfix.host, postfix.port, timeout=30)
    try:
        smtp.starttls(context=postfix.ssl_context())
        smtp.ehlo()
        smtp.mail("someone@elsewhere.example.org")
        code, _ = smtp.rcpt("x@elsewhere.example.org")
        assert code == 554
        code, _ = smtp.rcpt(user)
        assert code == 554
    finally:
        smtp.quit()


def test_size_limit_is_enforced(postfix: Postfix) -> None:
    user = _new_user(postfix)
    with _submit(postfix, user) as smtp:
        code, reply = smtp.mail(user, [f"SIZE={postfix.message_size_limit + 1}"])
        assert code == 552, reply
        smtp.rset()


# ------------------------------------------------------------------------- isolation


def test_second_pair_runs_beside_the_session_pair(dovecot: Dovecot, postfix: Postfix) -> None:
    with (
        Dovecot(domain="second.test") as other_dovecot,
        Postfix(other_dovecot, message_size_limit=100_000) as other_postfix,
    ):
        assert {other_dovecot.imap_port, other_dovecot.imaps_port}.isdisjoint(
            {dovecot.imap_port, dovecot.imaps_port, postfix.port}
        )
        assert other_postfix.port not in (dovecot.imap_port, dovecot.imaps_port, postfix.port)
        assert other_dovecot.base_dir != dovecot.base_dir
        sender = other_postfix.add_user("sender", PASSWORD)
        rcpt = other_postfix.add_user("rcpt", PASSWORD)
        with _submit(other_postfix, sender) as smtp:
            assert smtp.esmtp_features["size"] == "100000"
            smtp.sendmail(sender, [rcpt, "out@example.org"], _message(sender, rcpt, "second"))
        assert len(other_postfix.wait_for_delivery(rcpt)) == 1
        assert len(other_postfix.wait_for_delivery("out@example.org")) == 1
        assert postfix.delivered("out@example.org") == []
        other_base = other_dovecot.base_dir, other_postfix.base_dir
    assert not other_dovecot.running and not other_postfix.running
    assert not any(path.exists() for path in other_base)
    # The session pair was not affected by stopping the second one.
    user = _new_user(postfix)
    with _submit(postfix, user) as smtp:
        smtp.sendmail(user, [user], _message(user, user, "still here"))
    assert len(postfix.wait_for_delivery(user)) == 1


def test_virtual_delivery_accepts_smtputf8_for_local_users(dovecot: Dovecot) -> None:
    # On the default LMTP route Postfix bounces this (Dovecot 2.3 LMTP lacks SMTPUTF8).
    with Postfix(dovecot, local_delivery="virtual") as direct:
        user = _new_user(direct, "utf8")
        msg = EmailMessage()
        msg["From"] = "Jörg <jörg@beispiel.example.org>"
        msg["To"] = user
        msg["Subject"] = "Grüße aus Köln"
        msg.set_content("Hallo\n")
        with _submit(direct, user) as smtp:
            smtp.send_message(msg, from_addr="jörg@beispiel.example.org", to_addrs=[user])
        (message,) = direct.wait_for_delivery(user, 1)
        assert "Grüße aus Köln".encode() in message
        imap = _imap_login(dovecot, user)
        try:
            assert imap.select("INBOX") == ("OK", [b"1"])
        finally:
            imap.logout()
