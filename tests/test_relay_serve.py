"""``mailcrm serve`` as an admin runs it: the README's client settings, a real Postfix upstream.

The gateway runs as a separate process (``mailcrm --config FILE serve``) with a certificate from
``mailcrm tls selfsigned``; a mail client (aiosmtplib) sends through it with the user's own
password, the message reaches the recipient, the CRM shows the outgoing activity, and SIGTERM
stops the gateway cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import Cli
from tests.relaykit import HOST, PASSWORD, eventually, lf, message
from tests.servers import Postfix

pytestmark = pytest.mark.servers
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _config(tmp: Path, postfix: Postfix, port: int) -> Path:
    path = tmp / "mailcrm.toml"
    path.write_text(
        "[relay]\n"
        f'host = "{HOST}"\nport = {port}\n'
        f'cert_file = "{tmp / "relay.crt"}"\nkey_file = "{tmp / "relay.key"}"\n'
        f'upstream_host = "{HOST}"\nupstream_port = {postfix.port}\n'
        f'upstream_ca_file = "{postfix.cert_path}"\nspool_poll_interval = 0.2\n'
        "[poller]\nenabled = false\n[http]\nenabled = false\n"
    )
    return path


async def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "mailcrm serve exited early"
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("mailcrm serve did not open its port")


def _low_fd_limit() -> None:
    """A shell's usual soft limit on open files, lower than the hard one."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def _open_files_limits(pid: int) -> tuple[str, str]:
    """(soft, hard) "Max open files" of a process, as /proc shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open files limit")


async def test_mailcrm_serve_relays_and_captures(
    sqlite_cli: Cli, tmp_path: Path, postfix: Postfix
) -> None:
    cli = sqlite_cli
    alice = postfix.add_user(f"alice{uuid.uuid4().hex[:8]}", PASSWORD)
    customer = f"buyer{uuid.uuid4().hex[:8]}@customer.example"
    cli.ok("user", "add", alice, "--name", "Alice")
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
    port = _free_port()
    config = _config(tmp_path, postfix, port)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import cli; cli.main()", "--config", str(config), "serve"],
        cwd=ROOT,
        env={**os.environ, **cli.env},
        preexec_fn=_low_fd_limit,
    )
    try:
        await _wait_port(port, proc)
        assert _open_files_limits(proc.pid) == _open_files_limits(os.getpid())[1:] * 2
        context = ssl.create_default_context(cafile=str(tmp_path / "relay.crt"))
        smtp = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=True, tls_context=context)
        await smtp.connect()
        await smtp.login(alice, PASSWORD)
        raw = message(f"Alice <{alice}>", customer, "Through mailcrm serve")
        errors, reply = await smtp.sendmail(alice, [customer], raw)
        await smtp.quit()
        assert errors == {} and reply.startswith("2.0.0 Ok: ") and " queued as " in reply
        delivered = await eventually(lambda: postfix.delivered(customer))
        assert lf(raw) in lf(delivered[0])
        activities = await eventually(lambda: cli.json("activities", "list"))
        assert activities[0]["subject"] == "Through mailcrm serve"
        assert activities[0]["direction"] == "outgoing" and activities[0]["mailbox"] == alice
        assert cli.json("mailbox", "show", alice)["linked"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0


def test_mailcrm_serve_logs_json_from_its_first_line(sqlite_cli: Cli, tmp_path: Path) -> None:
    """With MAILCRM_LOG_FORMAT=json every line is JSON, the database's migrations included."""
    config = tmp_path / "quiet.toml"
    config.write_text(
        "[relay]\nenabled = false\n[poller]\nenabled = false\n[http]\nenabled = false\n"
    )
    env = {**os.environ, **sqlite_cli.env, "MAILCRM_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import cli; cli.main()", "-v", "--config", str(config), "serve"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=40)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 0, err
    assert any("alembic" in json.loads(line).get("logger", "") for line in lines), err
    assert all(isinstance(json.loads(line), dict) for line in lines)


async def test_relay_side_capture_skips_are_logged_with_the_reason(
    sqlite_cli: Cli, tmp_path: Path, postfix: Postfix
) -> None:
    """Mail between employees goes through and is not captured; ``serve -v`` says so, from the
    spool worker's own process, as the poller says its skips."""
    cli = sqlite_cli
    alice = postfix.add_user(f"alice{uuid.uuid4().hex[:8]}", PASSWORD)
    bob = postfix.add_user(f"bob{uuid.uuid4().hex[:8]}", PASSWORD)
    cli.ok("user", "add", alice)
    cli.ok("user", "add", bob)
    cli.ok("tls", "selfsigned", "--cert", str(tmp_path / "relay.crt"), "--key",
           str(tmp_path / "relay.key"), "--hostname", HOST)  # fmt: skip
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import cli; cli.main()", "-v", "--config",
             str(_config(tmp_path, postfix, port)), "serve"],
            cwd=ROOT, env={**os.environ, **cli.env}, stdout=sink, stderr=sink,
        )  # fmt: skip
    try:
        await _wait_port(port, proc)
        context = ssl.create_default_context(cafile=str(tmp_path / "relay.crt"))
        smtp = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=True, tls_context=context)
        await smtp.connect()
        await smtp.login(alice, PASSWORD)
        errors, _ = await smtp.sendmail(alice, [bob], message(alice, bob, "Lunch?"))
        await smtp.quit()
        assert errors == {}
        line = await eventually(
            lambda: [x for x in log.read_text().splitlines() if "capture skipped relay:" in x],
            timeout=60,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert f"capture skipped relay:{alice}/spool:" in line[0]
    assert line[0].endswith(": only employees")
    assert cli.json("activities", "list") == []
