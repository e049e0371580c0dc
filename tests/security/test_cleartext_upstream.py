"""No password to an upstream server in clear (issue 13, item 7).

``mailbox add/set`` refuses ``--smtp-tls none`` for a host off this machine, and the relay
refuses a login whose upstream is such a host (here the company's ``relay.upstream_host``):
the client gets ``454 4.7.0``, and a listener standing in for that upstream on this host's own
non-loopback address hears no AUTH. ``relay.allow_plaintext_upstream = true`` allows it.
(The IMAP poller already refuses plaintext IMAP off loopback, in ``proxy/imap/client.py``.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import Cli
from tests.relaykit import PASSWORD, running
from tests.servers import Postfix

pytestmark = pytest.mark.servers


def own_address() -> str:
    """This host's address off loopback (no packet is sent), or skip."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("no non-loopback IPv4 address")
        address = str(sock.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("no non-loopback IPv4 address")
    return address


class Listener:
    """A plaintext SMTP server that offers AUTH and writes down every line it hears."""

    def __init__(self) -> None:
        self.heard: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 upstream ESMTP\r\n")
        while line := await reader.readline():
            self.heard.append(line)
            if line.upper().startswith(b"EHLO"):
                writer.write(b"250-upstream\r\n250 AUTH PLAIN LOGIN\r\n")
            elif line.upper().startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"535 5.7.8 no\r\n")
        writer.close()

    async def start(self, host: str) -> int:
        self.server = await asyncio.start_server(self._serve, host, 0)
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    found = Listener()
    yield found
    if found.server is not None:
        found.server.close()


@pytest.mark.parametrize("allowed", [False, True])
async def test_relay_sends_no_password_in_clear_off_loopback(
    cli: Cli,
    db_url: str,
    tmp_path: Path,
    postfix: Postfix,
    listener: Listener,
    caplog: pytest.LogCaptureFixture,
    allowed: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    host = own_address()
    port = await listener.start(host)
    async with running(
        cli,
        db_url,
        tmp_path,
        postfix,
        upstream_host=host,
        upstream_port=port,
        upstream_tls="none",
        allow_plaintext_upstream=allowed,
    ) as env:
        alice = env.user("alice")
        smtp = env.client()
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as caught:
            await smtp.login(alice, PASSWORD)
        await smtp.quit()
    auths = [line for line in listener.heard if line.upper().startswith(b"AUTH")]
    if allowed:  # the admin said so: the password goes, and the stand-in refuses it
        assert auths and caught.value.code == 535
        return
    assert caught.value.code == 454 and caught.value.message.startswith("4.7.0")
    assert "not reached over TLS" in caught.value.message
    assert auths == []  # what it heard is the relay's capability probe: EHLO, QUIT
    assert [line.split()[0].upper() for line in listener.heard] in ([], [b"EHLO", b"QUIT"])
    assert any(
        "has no TLS" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
    )  # said at start, for the company's upstream
    assert any(
        f"{alice}: upstream {host}:{port} (none) has no TLS" in r.getMessage()
        for r in caplog.records
    )


def test_mailbox_add_and_set_refuse_plaintext_smtp_off_loopback(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    cli = sqlite_cli
    cli.ok("user", "add", "ann@example.test")
    refused = cli.run(
        "mailbox",
        "add",
        "ann@example.test",
        "--owner",
        "ann@example.test",
        "--smtp-host",
        "smtp.example.test",
        "--smtp-tls",
        "none",
    )
    assert refused.exit_code != 0 and "in clear" in refused.output
    assert cli.json("mailbox", "list") == []
    cli.ok(
        "mailbox",
        "add",
        "ann@example.test",
        "--owner",
        "ann@example.test",
        "--smtp-host",
        "smtp.example.test",
        "--smtp-tls",
        "starttls",
    )
    refused = cli.run("mailbox", "set", "ann@example.test", "--smtp-tls", "none")
    assert refused.exit_code != 0 and "in clear" in refused.output
    assert cli.json("mailbox", "show", "ann@example.test")["connection"]["smtp_tls"] == "starttls"
    cli.ok("mailbox", "set", "ann@example.test", "--smtp-host", "127.0.0.1", "--smtp-tls", "none")
    cli.ok("mailbox", "set", "ann@example.test", "--smtp-host", "localhost")  # loopback: fine

    config = tmp_path / "allow.toml"
    config.write_text("[relay]\nallow_plaintext_upstream = true\n")
    cli.env["MAILCRM_CONFIG"] = str(config)
    cli.ok("mailbox", "set", "ann@example.test", "--smtp-host", "smtp.example.test")
    assert cli.json("mailbox", "show", "ann@example.test")["connection"]["smtp_tls"] == "none"
