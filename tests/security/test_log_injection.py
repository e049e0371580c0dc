"""``mailcrm serve``'s log as an operator reads it, fed by a hostile client (issue 13, item 5).

The gateway runs as its own process (text log, the default, and JSON); a client puts CR/LF, ESC,
C1 codes, a Unicode line separator and a bidi override into its AUTH LOGIN user name, its EHLO
name and its MAIL FROM address, and sends one message to recipients worth 20 KB. The log must
have no forged line, no raw control character, no line past its bound, the failed login once.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import Cli
from tests.relaykit import HOST, PASSWORD, message
from tests.servers import Postfix
from tests.test_relay_serve import ROOT, _config, _free_port, _wait_port

pytestmark = pytest.mark.servers
FORGED = "2030-01-01 00:00:00,000 WARNING proxy.relay: FORGED relay login accepted"
HOSTILE = f"mallory\r\n{FORGED}\r\n\x1b[2J\x00\x85\u2028\u202eevil"
ON_A_LINE = "evil\x1b[2J\x85\u2028\u202e"  # what a command line can carry (no CR/LF)
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def long_recipient(i: int) -> str:
    """A 231-character address (Postfix takes it; the capture Maildir's name still fits)."""
    return f"r{i:03d}{'x' * 46}@{'d' * 60}.{'e' * 60}.{'f' * 50}.example"


async def raw(smtp: aiosmtplib.SMTP, line: str) -> aiosmtplib.SMTPResponse:
    """A command as a hostile client sends it (aiosmtplib refuses control characters)."""
    assert smtp.protocol is not None
    smtp.protocol.write(line.encode() + b"\r\n")
    return await smtp.protocol.read_response(timeout=30)


async def hostile_client(port: int, ca: Path, user: str) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    smtp = aiosmtplib.SMTP(
        hostname=HOST, port=port, start_tls=True, tls_context=context, timeout=60
    )
    await smtp.connect()
    assert (await raw(smtp, f"EHLO {ON_A_LINE}.example")).code == 250
    reply = await smtp.execute_command(b"AUTH", b"LOGIN")
    assert reply.code == 334
    await smtp.execute_command(base64.b64encode(HOSTILE.encode()))
    reply = await smtp.execute_command(base64.b64encode(b"not the password"))
    assert reply.code == 535
    await smtp.login(user, PASSWORD)
    sender = f'"mallory{ON_A_LINE}"@evil.example'
    reply = await raw(smtp, f"MAIL FROM:<{sender}> SMTPUTF8")
    assert reply.code == 553
    recipients = [long_recipient(i) for i in range(90)]
    assert len(",".join(recipients)) > 20_000
    errors, _ = await smtp.sendmail(user, recipients, message(user, recipients[0], "Wide"))
    assert errors == {}
    await smtp.quit()


def serve_log(
    cli: Cli, tmp: Path, postfix: Postfix, fmt: str
) -> tuple[Path, subprocess.Popen[bytes], int]:
    port = _free_port()
    config = _config(tmp, postfix, port)
    log = tmp / "serve.log"
    env = {**os.environ, **cli.env, "MAILCRM_LOG_FORMAT": fmt, "PYTHONIOENCODING": "utf-8"}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import cli; cli.main()",
                "-v",
                "--config",
                str(config),
                "serve",
            ],
            cwd=ROOT,
            env=env,
            stderr=sink,
        )
    return log, proc, port


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_hostile_values_forge_no_log_line(
    sqlite_cli: Cli, tmp_path: Path, postfix: Postfix, fmt: str
) -> None:
    cli = sqlite_cli
    alice = postfix.add_user(f"alice{uuid.uuid4().hex[:8]}", PASSWORD)
    cli.ok("user", "add", alice)
    cli.ok(
        "tls",
        "selfsigned",
        "--cert",
        str(tmp_path / "relay.crt"),
        "--key",
        str(tmp_path / "relay.key"),
        "--hostname",
        HOST,
    )
    log, proc, port = serve_log(cli, tmp_path, postfix, fmt)
    try:
        await _wait_port(port, proc)
        await hostile_client(port, tmp_path / "relay.crt", alice)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(40)
    text = log.read_bytes().decode("utf-8")
    lines = text.splitlines(keepends=False)
    assert not RAW_CONTROLS.search(text.replace("\n", ""))  # no CR, ESC, NUL, C1, U+2028...
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        messages = [r["message"] for r in records]
    else:
        assert all(TEXT_LINE.match(line) or line.startswith("  ") for line in lines), text
        messages = lines
    assert not any(m.startswith("FORGED") or FORGED in m.split(": ", 1)[0] for m in messages)
    failed = [m for m in messages if "mallory" in m and "FORGED" in m]
    assert len(failed) == 1 and "relay: failed AUTH from 127.0.0.1:" in failed[0]  # once
    assert "\\r\\n" + FORGED in failed[0] and "\\x1b[2J" in failed[0]
    assert "\\u2028" in failed[0] and "\\u202e" in failed[0]
    spoofed = [m for m in messages if "may not send as" in m]
    assert len(spoofed) == 1 and '"mallory' + "evil\\x1b[2J\\x85\\u2028\\u202e" in spoofed[0]
    wide = [m for m in messages if " -> r000" in m]
    assert len(wide) == 1 and "more characters cut]" in wide[0]
    assert max(len(line) for line in lines) < 3000
    assert PASSWORD not in text and "not the password" not in text
