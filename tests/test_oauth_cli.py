"""OAuth2 on the command line (issue 15): providers, `mailbox authorize` through the loopback
redirect, `--paste` and `--device` against the local test provider, a wrong state, app passwords."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.oauthkit import CLIENT_ID, CLIENT_SECRET, TestProvider, provider

__all__ = ["provider"]

USER = "owner@example.test"
BOX = "olga@example.test"


def setup_provider(cli: Cli, server: TestProvider, device: bool = True) -> None:
    args = [
        "oauth",
        "provider",
        "add",
        "testidp",
        "--authorize-url",
        f"{server.url}/authorize",
        "--token-url",
        f"{server.url}/token",
        "--client-id",
        CLIENT_ID,
        "--client-secret-stdin",
        "--scope",
        "mail",
        "--scope",
        "offline_access",
    ]
    if device:
        args += ["--device-url", f"{server.url}/device"]
    cli.ok(*args, input=CLIENT_SECRET + "\n")
    cli.ok("user", "add", USER)
    cli.ok(
        "mailbox",
        "add",
        BOX,
        "--owner",
        USER,
        "--imap-host",
        "127.0.0.1",
        "--auth",
        "oauth2",
        "--oauth-provider",
        "testidp",
    )


def test_provider_list_shows_no_secret(cli: Cli, provider: TestProvider) -> None:
    listed = {p["name"]: p for p in cli.json("oauth", "provider", "list")}
    assert listed["google"]["scopes"] == ["https://mail.google.com/"]
    assert listed["microsoft"]["client_id"] is None
    assert "offline_access" in listed["microsoft"]["scopes"]
    setup_provider(cli, provider)
    cli.ok("oauth", "provider", "set", "microsoft", "--client-id", "ms-app")
    listed = {p["name"]: p for p in cli.json("oauth", "provider", "list")}
    assert listed["testidp"]["has_secret"] is True
    assert listed["testidp"]["scopes"] == ["mail", "offline_access"]
    assert listed["microsoft"]["client_id"] == "ms-app"
    assert listed["microsoft"]["has_secret"] is False
    assert CLIENT_SECRET not in json.dumps(listed)
    shown = cli.json("mailbox", "show", BOX)
    assert shown["settings"]["auth"] == "oauth2"
    assert shown["linked"] is False
    bad = cli.run("oauth", "provider", "add", "other", "--client-id", "x")
    assert bad.exit_code == 1 and "--authorize-url" in bad.stderr


class Command:
    """`mailcrm` as a child process with pipes, as an admin runs it: the URL it prints is read
    while it waits for the browser or for the pasted redirect."""

    def __init__(self, cli: Cli, *args: str) -> None:
        env = {**os.environ, **cli.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import cli; cli.main()", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).parent.parent,
        )

    def url(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def finish(self, stdin: str = "") -> tuple[int, str]:
        _out, err = self.proc.communicate(stdin, timeout=60)
        return self.proc.returncode, err


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def _redirect_of(url: str) -> str:
    """Where the provider sends the browser (its 302), without going there."""
    try:
        urllib.request.build_opener(_NoRedirect).open(url, timeout=30)
    except urllib.error.HTTPError as exc:
        return str(exc.headers["Location"])
    raise AssertionError("the provider did not redirect")


def test_authorize_loopback_stores_refresh_token(cli: Cli, provider: TestProvider) -> None:
    setup_provider(cli, provider)
    provider.user = BOX
    codes = provider.log.codes
    command = Command(cli, "mailbox", "authorize", BOX, "--no-browser")
    url = command.url()
    assert url.startswith(f"{provider.url}/authorize?")
    assert "code_challenge_method=S256" in url and "state=" in url
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in url
    with urllib.request.urlopen(url, timeout=30) as answer:  # the browser, redirected back
        assert b"signed in" in answer.read()
    code, err = command.finish()
    assert code == 0, err
    assert provider.log.codes == codes + 1
    assert cli.json("mailbox", "show", BOX)["linked"] is True


def test_authorize_paste_and_wrong_state(cli: Cli, provider: TestProvider) -> None:
    setup_provider(cli, provider)
    provider.user = BOX
    codes = provider.log.codes
    # a redirect of another authorization (wrong state), or none: nothing is exchanged, exit 1
    forged = "http://127.0.0.1:8400/?code=abc&state=not-ours"
    bad = cli.run("mailbox", "authorize", BOX, "--paste", input=forged + "\n")
    assert bad.exit_code == 1 and "state does not match" in bad.stderr
    missing = cli.run(
        "mailbox", "authorize", BOX, "--paste", input="http://127.0.0.1:8400/?code=a\n"
    )
    assert missing.exit_code == 1 and "state does not match" in missing.stderr
    # a real code with a forged state is not exchanged either
    command = Command(cli, "mailbox", "authorize", BOX, "--paste")
    redirect = _redirect_of(command.url())
    code, err = command.finish(redirect.split("&state=")[0] + "&state=forged\n")
    assert code == 1 and "state does not match" in err
    assert provider.log.codes == codes
    assert cli.json("mailbox", "show", BOX)["linked"] is False
    # --paste: the URL is printed, the browser elsewhere lands on the redirect, pasted back
    command = Command(cli, "mailbox", "authorize", BOX, "--paste")
    url = command.url()
    code, err = command.finish(_redirect_of(url) + "\n")
    assert code == 0, err
    assert provider.log.codes == codes + 1
    assert cli.json("mailbox", "show", BOX)["linked"] is True


def test_authorize_device_flow(cli: Cli, provider: TestProvider) -> None:
    setup_provider(cli, provider)
    polls = provider.log.device_polls

    def approve() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with provider._lock:
                codes = [d.user_code for d in provider._devices.values() if d.user is None]
            if codes and provider.approve_device(codes[-1], BOX):
                return
            time.sleep(0.1)

    thread = threading.Thread(target=approve)
    thread.start()
    out = cli.ok("mailbox", "authorize", BOX, "--device")
    thread.join(60)
    assert "enter the code" in out and f"{provider.url}/device/verify" in out
    assert provider.log.device_polls > polls
    assert cli.json("mailbox", "show", BOX)["linked"] is True


def test_app_password_replaces_the_old(cli: Cli, provider: TestProvider) -> None:
    setup_provider(cli, provider)
    first = cli.json("mailbox", "app-password", BOX)["password"]
    second = cli.json("mailbox", "app-password", BOX)["password"]
    assert first != second and len(second) >= 24
    from crm.face import Database
    from crm.face import oauth as face

    db = Database(cli.env["MAILCRM_DATABASE_URL"])
    try:
        stored = face.app_password_of(db, BOX)
        assert stored is not None and second not in stored
        assert face.check_app_password(stored, second)
        assert not face.check_app_password(stored, first)
    finally:
        db.dispose()
    cli.ok("mailbox", "add", "plain@example.test", "--company", "--imap-host", "127.0.0.1")
    refused = cli.run("mailbox", "app-password", "plain@example.test")
    assert refused.exit_code == 1 and "--auth oauth2" in refused.stderr


@pytest.mark.parametrize("fault", ["html", "500", "missing"])
def test_authorize_with_garbage_from_the_token_endpoint(
    cli: Cli, provider: TestProvider, fault: str
) -> None:
    """The code exchange meets nonsense: one clear line, exit 1, nothing stored."""
    setup_provider(cli, provider)
    provider.user = BOX
    command = Command(cli, "mailbox", "authorize", BOX, "--paste")
    redirect = _redirect_of(command.url())
    provider.fault = fault
    try:
        code, err = command.finish(redirect + "\n")
    finally:
        provider.fault = None
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("mailcrm:")]
    assert len(lines) == 1 and "token endpoint" in lines[0], err
    assert "Traceback" not in err
    assert cli.json("mailbox", "show", BOX)["linked"] is False


def test_presets_say_which_sign_in(cli: Cli) -> None:
    presets = {p["name"]: p for p in cli.json("mailbox", "presets")}
    assert (presets["gmail"]["auth"], presets["gmail"]["oauth_provider"]) == ("oauth2", "google")
    assert presets["outlook"]["oauth_provider"] == "microsoft"
    assert presets["fastmail"]["auth"] == "password"
    cli.ok("mailbox", "add", "team@example.com", "--company", "--preset", "outlook", "--auth",
           "oauth2")  # fmt: skip
    settings = cli.json("mailbox", "show", "team@example.com")["settings"]
    assert (settings["auth"], settings["oauth_provider"]) == ("oauth2", "microsoft")
    refused = cli.run("mailbox", "add", "x@example.com", "--company", "--imap-host", "127.0.0.1",
                      "--auth", "oauth2")  # fmt: skip
    assert refused.exit_code == 1 and "--oauth-provider" in refused.stderr
    usage = cli.run("mailbox", "set", "team@example.com", "--auth", "kerberos")
    assert usage.exit_code == 2
    # not set up yet: authorize says how
    missing = cli.run("mailbox", "authorize", "team@example.com", "--paste", input="\n")
    assert missing.exit_code == 1
    assert "oauth provider add microsoft --client-id ID" in missing.stderr
