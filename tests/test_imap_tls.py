"""TLS of the poller's connections: shared SSL contexts (and their checks) per CA file and mode,
and small receive buffers that still carry a large message intact (against the real Dovecot).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import uuid
from pathlib import Path

import pytest

from crm.errors import UpstreamError
from proxy.imap import tlsconn
from proxy.imap.client import Endpoint, ImapClient
from tests.servers import Dovecot, _make_cert


def _endpoint(ca_file: Path | None = None, insecure: bool = False, host: str = "a") -> Endpoint:
    return Endpoint(host, 993, "ssl", "login", "pw", str(ca_file) if ca_file else None, insecure)


def test_one_context_per_ca_file_and_mode(tmp_path: Path) -> None:
    cert, _ = _make_cert(tmp_path, "test CA", [])
    first = _endpoint(cert, host="imap1.example.com").ssl_context()
    assert _endpoint(cert, host="imap2.example.com").ssl_context() is first
    assert first.check_hostname and first.verify_mode == ssl.CERT_REQUIRED
    loose = _endpoint(cert, insecure=True).ssl_context()
    assert loose is not first
    assert not loose.check_hostname and loose.verify_mode == ssl.CERT_NONE
    system = _endpoint().ssl_context()
    assert system is _endpoint(host="b").ssl_context() and system is not first
    assert system.check_hostname and system.verify_mode == ssl.CERT_REQUIRED


def test_a_changed_ca_file_is_loaded_again(tmp_path: Path) -> None:
    cert, _ = _make_cert(tmp_path, "old CA", [])
    before = _endpoint(cert).ssl_context()
    assert [c["subject"] for c in before.get_ca_certs()] == [((("commonName", "old CA"),),)]
    (tmp_path / "new").mkdir()
    fresh, _ = _make_cert(tmp_path / "new", "new CA", [])
    fresh.replace(cert)
    os.utime(cert, ns=(1, 1))  # another mtime, whatever the clock's resolution
    after = _endpoint(cert).ssl_context()
    assert after is not before
    assert [c["subject"] for c in after.get_ca_certs()] == [((("commonName", "new CA"),),)]


def test_an_unreadable_ca_file_fails_like_before(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        _endpoint(tmp_path / "missing.pem").ssl_context()


@pytest.mark.servers
@pytest.mark.parametrize("tls", ["ssl", "starttls"])
async def test_tls_reads_through_a_small_buffer(dovecot: Dovecot, tls: str) -> None:
    login = dovecot.add_user("t" + uuid.uuid4().hex[:10], "pw")
    body = b"".join(
        b"line %06d of a long message, with some text to fill it up\r\n" % i for i in range(40_000)
    )  # 2.5 MB: many TLS records, many reads
    raw = b"From: a@example.org\r\nSubject: big\r\nMessage-ID: <big@x>\r\n\r\n" + body
    dovecot.deliver(login, raw)
    port = dovecot.imaps_port if tls == "ssl" else dovecot.imap_port
    client = ImapClient(Endpoint("127.0.0.1", port, tls, login, "pw", str(dovecot.cert_path)), 10)
    try:
        await client.connect()
        await client.login()
        assert client.protocol is not None
        ssl_protocol = getattr(client.protocol.transport, "_ssl_protocol", None)
        assert ssl_protocol is not None and len(ssl_protocol._ssl_buffer) == tlsconn.READ_BUFFER
        await client.select("INBOX")
        records = await client.uid_fetch([1], "(UID BODY.PEEK[])")
        assert [bytes(r.body or b"") for r in records] == [raw]
    finally:
        await client.logout()


@pytest.mark.parametrize("tls", ["ssl", "starttls"])
async def test_a_server_silent_in_the_handshake_times_out_and_is_hung_up_on(tls: str) -> None:
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if tls == "starttls":
            writer.write(b"* OK hi\r\n")
            while (line := await reader.readline()) and b"STARTTLS" not in line:
                tag = line.split()[0]
                writer.write(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n%s OK done\r\n" % tag)
            writer.write(line.split(b" ")[0] + b" OK begin TLS\r\n")
        await reader.read()  # the ClientHello, then EOF once the client gives up
        closed.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = ImapClient(Endpoint("127.0.0.1", port, tls, "login", "pw"), 0.5)
    try:
        with pytest.raises(UpstreamError, match="timed out"):
            await client.connect()
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        client.abort()
        server.close()
