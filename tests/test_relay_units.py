"""The relay's pieces on their own: DATA reading, buffers, replies, EHLO mirroring, AUTH decoding,
limits, the database gate and the certificate writer. No mail servers needed."""

from __future__ import annotations

import base64
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import MISSING, AuthResult
from cryptography import x509

from crm.config import RelayConfig
from crm.errors import ConfigError
from proxy.smtp import auth as smtpauth
from proxy.smtp.databuf import DataResult, MessageBuffer, read_data, stuff, unstuff
from proxy.smtp.dbgate import DbGate, DbUnavailable
from proxy.smtp.relay import RateLimiter
from proxy.smtp.session import mail_options, mirror
from proxy.smtp.tls import relay_context, relay_hostname, write_selfsigned
from proxy.smtp.values import Caps, Reply
from tests.conftest import Cli


class PieceReader:
    """A stream that hands out exactly the given pieces, one per read (to test every split)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    async def read(self, _size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


async def _read(
    pieces: list[bytes], limit: int | None = None, spill_at: int = 1 << 20
) -> tuple[DataResult, bytes, MessageBuffer]:
    reader = PieceReader(pieces)
    buffer = MessageBuffer(spill_at=spill_at)
    result, rest = await read_data(reader, buffer, limit)  # type: ignore[arg-type]
    return result, rest + b"".join(reader.pieces), buffer


@pytest.mark.parametrize("spill_at", [1 << 20, 8])
@pytest.mark.parametrize("split", [1, 2, 3, 4, 5, 7, 64])
async def test_read_data_finds_the_end_across_any_split(split: int, spill_at: int) -> None:
    raw = b"Subject: x\r\n\r\n.hidden dot\r\nline\r\n..\r\n"
    wire = stuff(raw) + b".\r\nQUIT\r\n"
    pieces = [wire[i : i + split] for i in range(0, len(wire), split)]
    result, rest, buffer = await _read(pieces, spill_at=spill_at)
    assert result is DataResult.OK and buffer.spilled == (spill_at == 8)
    assert buffer.raw() == raw and rest == b"QUIT\r\n"
    buffer.close()


async def test_read_data_empty_message_and_pipelined_rest() -> None:
    result, rest, buffer = await _read([b".\r\nRSET\r\n"])
    assert result is DataResult.OK and buffer.size == 0 and rest == b"RSET\r\n"


async def test_read_data_over_the_limit_is_read_to_the_end() -> None:
    result, rest, _ = await _read([b"x" * 100 + b"\r\n", b"y" * 100 + b"\r\n.\r\n"], limit=150)
    assert result is DataResult.TOO_BIG and rest == b""
    result, _, _ = await _read([b"z" * 200 + b"\r\n.\r\n"], limit=150)  # one single chunk
    assert result is DataResult.TOO_BIG


async def test_read_data_client_gone() -> None:
    with pytest.raises(ConnectionResetError):
        await _read([b"partial\r\n"])


async def test_large_message_spills_to_disk_and_reads_back(tmp_path: Path) -> None:
    raw = b"Subject: big\r\n\r\n" + b"".join(b".%06d line\r\n" % i for i in range(20_000))
    wire = stuff(raw) + b".\r\n"
    pieces = [wire[i : i + 4096] for i in range(0, len(wire), 4096)]
    result, _, buffer = await _read(pieces, spill_at=10_000)
    assert result is DataResult.OK and buffer.spilled
    assert buffer.ensure_message_id("example.com") is not None
    assert buffer.raw().startswith(b"Message-ID: <") and buffer.raw().endswith(raw)
    streamed = b"".join([bytes(c) async for c in buffer.chunks(1000)])
    assert streamed == buffer.prefix + stuff(raw)
    buffer.close()


def test_message_id_kept_when_present() -> None:
    buffer = MessageBuffer()
    buffer.append(b"From: a@x\r\nmessage-ID:  <1@x>\r\n\r\nMessage-ID: in the body\r\n")
    assert buffer.ensure_message_id("x") is None and buffer.prefix == b""
    other = MessageBuffer()
    other.append(b"From: a@x\r\n\r\nMessage-ID: <only in the body@x>\r\n")
    assert other.ensure_message_id("x.example") is not None
    assert other.prefix.endswith(b"@x.example>\r\n")


def test_unstuff_inverts_stuff() -> None:
    for raw in (b"", b".\r\n", b"a\r\n.b\r\n..c\r\n", b"\r\n.\r\n"):
        assert unstuff(stuff(raw)) == raw


def test_reply_lines_keep_multiline_and_drop_controls() -> None:
    assert Reply(250, "2.0.0 Ok: queued as X").line() == "250 2.0.0 Ok: queued as X"
    assert Reply(550, "5.1.1 one\n5.1.1 two").line() == "550-5.1.1 one\r\n550 5.1.1 two"
    assert "\r" not in Reply(554, "bad\rinjected").line()


def test_caps_from_extensions() -> None:
    caps = Caps.from_extensions({"size": "1000", "8bitmime": "", "smtputf8": ""})
    assert caps == Caps(size=1000, eightbit=True, smtputf8=True)
    assert Caps.from_extensions({}).size is None
    assert Caps.from_extensions({"size": ""}).size == 0


def test_ehlo_mirror_drops_what_upstream_lacks() -> None:
    lines = [
        "250-relay",
        "250-SIZE 52428800",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-AUTH LOGIN PLAIN",
        "250 HELP",
    ]
    assert mirror(lines, Caps(size=1000), 1000) == [
        "250-relay",
        "250-SIZE 1000",
        "250-AUTH LOGIN PLAIN",
        "250 HELP",
    ]
    assert mirror(lines, Caps(eightbit=True, smtputf8=True), 5) == [
        "250-relay",
        "250-SIZE 5",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-AUTH LOGIN PLAIN",
        "250 HELP",
    ]


def test_mail_options_forward_or_refuse() -> None:
    full = Caps(size=1000, eightbit=True, smtputf8=True)
    assert mail_options(["SIZE=10", "BODY=8BITMIME", "SMTPUTF8"], full) == (
        ["SIZE=10", "BODY=8BITMIME", "SMTPUTF8"],
        None,
    )
    assert mail_options(["SIZE=2000"], full)[1] is not None
    assert mail_options(["SIZE=10", "BODY=7BIT"], Caps()) == ([], None)
    assert (mail_options(["BODY=8BITMIME"], Caps())[1] or "").startswith("555")
    assert (mail_options(["SMTPUTF8"], Caps(eightbit=True))[1] or "").startswith("555")


def test_rate_limiter_is_per_user() -> None:
    limiter = RateLimiter(2)
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    assert limiter.allow("b")
    assert all(RateLimiter(0).allow("a") for _ in range(100))


class FakeServer:
    """Stands in for aiosmtpd's SMTP in AUTH exchanges: scripted answers to 334 challenges."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.challenges: list[str] = []

    async def challenge_auth(self, text: str) -> Any:
        self.challenges.append(text)
        return self.answers.pop(0)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _ok(login: str, password: str) -> AuthResult:
    return AuthResult(success=True, auth_data=(login, password))


async def test_auth_plain_initial_response_and_challenge() -> None:
    result = await smtpauth.auth_plain(FakeServer(), ["PLAIN", _b64("\0bob@x\0pä ss")], _ok)
    assert result.success and result.auth_data == ("bob@x", "pä ss")
    server = FakeServer(b"authz\0bob@x\0pw")
    result = await smtpauth.auth_plain(server, ["PLAIN"], _ok)
    assert result.auth_data == ("bob@x", "pw") and server.challenges == [""]
    bad = await smtpauth.auth_plain(FakeServer(), ["PLAIN", "%%%"], _ok)
    assert not bad.success and (bad.message or "").startswith("501")
    aborted = await smtpauth.auth_plain(FakeServer(MISSING), ["PLAIN"], _ok)
    assert not aborted.success and aborted.handled


async def test_auth_login_two_steps() -> None:
    server = FakeServer(b"bob@x", b"secret")
    result = await smtpauth.auth_login(server, ["LOGIN"], _ok)
    assert result.auth_data == ("bob@x", "secret")
    assert server.challenges == ["Username:", "Password:"]
    result = await smtpauth.auth_login(FakeServer(b"pw"), ["LOGIN", _b64("bob@x")], _ok)
    assert result.auth_data == ("bob@x", "pw")


async def test_db_gate_times_out_and_trips() -> None:
    gate = DbGate(timeout=0.2, threads=1, cooldown=60)
    assert await gate.run(lambda: 42) == 42
    with pytest.raises(DbUnavailable):
        await gate.run(time.sleep, 1.0)
    assert not gate.available
    with pytest.raises(DbUnavailable):
        await gate.run(lambda: 1)  # fails at once while the breaker is open
    gate.close()


def test_selfsigned_pair_loads(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    write_selfsigned(cert, key, ["mail.example.com", "192.0.2.1"])
    assert key.stat().st_mode & 0o777 == 0o600
    names = (
        x509.load_pem_x509_certificate(cert.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert "mail.example.com" in names.get_values_for_type(x509.DNSName)
    with pytest.raises(ConfigError):
        write_selfsigned(cert, key, ["again"])
    context = relay_context(RelayConfig(cert_file=str(cert), key_file=str(key)))
    assert isinstance(context, ssl.SSLContext)
    with pytest.raises(ConfigError):
        relay_context(RelayConfig(cert_file=str(cert)))


def test_cli_tls_selfsigned(sqlite_cli: Cli, tmp_path: Path) -> None:
    cert, key = tmp_path / "relay.crt", tmp_path / "relay.key"
    out = sqlite_cli.ok(
        "tls",
        "selfsigned",
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--hostname",
        "smtp.example.com",
    )
    assert "smtp.example.com" in out and cert.exists() and key.exists()
    again = sqlite_cli.run("tls", "selfsigned", "--cert", str(cert), "--key", str(key))
    assert again.exit_code == 1 and "--force" in again.stderr
    sqlite_cli.ok("tls", "selfsigned", "--cert", str(cert), "--key", str(key), "--force")


def _named_pair(tmp_path: Path, cn: str, sans: list[str]) -> tuple[Path, Path]:
    """A self-signed pair whose subject CN and SAN entries are given separately."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(1))
    )  # fmt: skip
    if sans:
        names = [x509.DNSName(n) for n in sans]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert, keyfile = tmp_path / f"{cn}.crt", tmp_path / f"{cn}.key"
    cert.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    return cert, keyfile


def test_the_relay_is_named_after_its_certificate(tmp_path: Path) -> None:
    cert, key = _named_pair(tmp_path, "cn.ourco.example", ["localhost", "*.ourco.example",
                                                            "smtp.ourco.example"])  # fmt: skip
    config = RelayConfig(cert_file=str(cert), key_file=str(key))
    assert relay_hostname(config) == "smtp.ourco.example", "SAN first, wildcards left out"
    config.hostname = "relay.configured.example"
    assert relay_hostname(config) == "relay.configured.example", "[relay] hostname wins"
    cert, key = _named_pair(tmp_path, "only-cn.ourco.example", [])
    assert relay_hostname(RelayConfig(cert_file=str(cert), key_file=str(key))) == (
        "only-cn.ourco.example"
    )


async def test_the_banner_and_ehlo_say_the_certificate_name(
    tmp_path: Path, sqlite_url: str
) -> None:
    import asyncio
    import socket

    from crm.config import Config
    from crm.store.db import Database
    from proxy.smtp.relay import run_relay

    cert, key = _named_pair(tmp_path, "cn.ourco.example", ["mail.ourco.example", "localhost"])
    config = Config(database_url=sqlite_url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config.relay.host, config.relay.port = "127.0.0.1", port
    config.relay.cert_file, config.relay.key_file = str(cert), str(key)
    config.relay.spool_dir = str(tmp_path / "spool")
    db, stop = Database(sqlite_url), asyncio.Event()
    task = asyncio.create_task(run_relay(config, db, stop))
    try:
        for _ in range(600):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the relay did not listen within 60 s")
        banner = await asyncio.wait_for(reader.readline(), 60)
        writer.write(b"EHLO client.example\r\n")
        ehlo = await asyncio.wait_for(reader.readline(), 60)
        writer.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        db.dispose()
    assert banner.startswith(b"220 mail.ourco.example "), banner
    assert ehlo.startswith(b"250-mail.ourco.example"), ehlo
