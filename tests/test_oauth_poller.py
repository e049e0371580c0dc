"""The poller with OAuth2 (issue 15) against a real Dovecot that trusts the test provider:
SASL OAUTHBEARER/XOAUTH2 (an error challenge is answered, never a hang), capture and IDLE,
access tokens refreshed at 80 % of their lifetime during a long IDLE, a revoked grant turning
the mailbox red at once with how to re-authorize, garbage from the token endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import imaplib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crm.errors import UpstreamAuthError
from crm.mailboxes import oauth as grants
from proxy.imap.client import Endpoint, ImapClient
from tests.conftest import Cli
from tests.oauthkit import (
    OAuthDovecot,
    TestProvider,
    add_test_provider,
    authorize,
    oauth_dovecot,
    provider,
)
from tests.pollerkit import MailEnv, message, until

__all__ = ["oauth_dovecot", "provider"]
pytestmark = pytest.mark.servers
CUSTOMER = "Carla Customer <carla@acme-industries.example>"


class OAuthEnv(MailEnv):
    """A password-less Dovecot user whose mailbox signs in with the test provider's tokens."""

    def __init__(
        self, dovecot: OAuthDovecot, cli: Cli, tmp: Path, server: TestProvider, **poller: Any
    ) -> None:
        self.server = server
        self.user = "o" + uuid.uuid4().hex[:10]
        dovecot.add_oauth_user(self.user)
        super().__init__(dovecot, cli, tmp, **poller)

    def link_oauth(self) -> str:
        """The employee, the oauth2 mailbox over IMAPS, the owner's sign-in."""
        add_test_provider(self.cli, self.server)
        self.cli.ok("user", "add", self.address, "--name", "Employee")
        self.cli.ok(
            "mailbox", "add", self.address, "--owner", self.address, "--imap-host", "127.0.0.1",
            "--imap-port", str(self.dovecot.imaps_port), "--imap-tls", "ssl", "--auth", "oauth2",
            "--oauth-provider", "testidp",
        )  # fmt: skip
        authorize(self.cli, self.server, self.address)
        return self.address

    def logins(self) -> list[str]:
        """The mechanisms of this user's IMAP logins, from Dovecot's log."""
        pattern = rf"Login: user=<{re.escape(self.address)}>, method=(\w+)"
        return re.findall(pattern, self.dovecot.log())


@pytest.fixture
def server(provider: TestProvider) -> Iterator[TestProvider]:
    """The session's provider, put back as it was after the test."""
    yield provider
    provider.lifetime, provider.fault, provider.slow_s = 3600, None, 30.0


@pytest.fixture
def env(oauth_dovecot: OAuthDovecot, cli: Cli, tmp_path: Path, server: TestProvider) -> OAuthEnv:
    environment = OAuthEnv(oauth_dovecot, cli, tmp_path, server)
    # MailEnv made a password user of the same name: take its password away again
    (oauth_dovecot.auth_dir / "passdb" / environment.address).unlink()
    return environment


async def test_capture_and_idle_with_tokens_refreshed(env: OAuthEnv, server: TestProvider) -> None:
    env.deliver(message(CUSTOMER, env.address, "before linking"))
    server.lifetime = 4  # refreshed after 3.2 s, during the IDLE session
    env.link_oauth()
    assert env.mailbox()["settings"]["auth"] == "oauth2"
    refreshes = server.log.refreshes
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="green over OAuth2")
        await until(lambda: server.log.refreshes >= refreshes + 2, what="two refreshes")
        env.deliver(message(CUSTOMER, env.address, "while idling"))
        await until(
            lambda: any(a["subject"] == "while idling" for a in env.activities()),
            what="IDLE capture after refreshes",
        )
        assert env.mailbox()["status"] == "green"
    logins = env.logins()
    assert logins and set(logins) == {"OAUTHBEARER"}
    assert len(logins) == 1, "the IDLE session stayed logged in while its token was refreshed"
    assert "before linking" in {a["subject"] for a in env.activities()}


async def test_revoked_grant_turns_red_during_idle(env: OAuthEnv, server: TestProvider) -> None:
    server.lifetime = 3
    env.link_oauth()
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="green")
        server.revoke(env.address)
        shown = await until(
            lambda: (m := env.mailbox())["status"] == "red" and m, what="red after revocation"
        )
    assert shown["status_reason"].startswith(
        f"re-authorize: mailcrm mailbox authorize {env.address}"
    )
    assert "token revoked" in shown["status_reason"]
    # the owner signs in again: the grant works, the mailbox turns green
    server.lifetime = 3600
    authorize(env.cli, server, env.address)
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="green after re-authorize")


async def test_revoked_grant_turns_red_between_checks(
    oauth_dovecot: OAuthDovecot, cli: Cli, tmp_path: Path, server: TestProvider
) -> None:
    """No IDLE, an hour between checks: the token is refreshed while the worker sleeps, so the
    revocation shows at once, not at the next check."""
    env = OAuthEnv(oauth_dovecot, cli, tmp_path, server, idle=False)
    (oauth_dovecot.auth_dir / "passdb" / env.address).unlink()
    server.lifetime = 3
    env.link_oauth()
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="green")
        refreshes = server.log.refreshes
        await until(lambda: server.log.refreshes > refreshes, what="a refresh while asleep")
        server.revoke(env.address)
        shown = await until(
            lambda: (m := env.mailbox())["status"] == "red" and m, what="red between checks"
        )
    assert shown["status_reason"].startswith(
        f"re-authorize: mailcrm mailbox authorize {env.address}"
    )
    assert env.logins() == ["OAUTHBEARER"], "one session only: the refreshes came while asleep"


@pytest.mark.parametrize("fault", ["html", "500", "missing", "slow"])
async def test_token_endpoint_garbage_gives_clear_status(
    env: OAuthEnv, server: TestProvider, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.lifetime, server.slow_s = 2, 5.0
    env.link_oauth()
    monkeypatch.setattr(grants, "HTTP_TIMEOUT", 1.5)
    expected = {
        "html": "not JSON",
        "500": "the token endpoint",
        "missing": "without an access_token",
        "slow": "the token endpoint failed: ReadTimeout",
    }[fault]
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="green")
        server.fault = fault
        shown = await until(
            lambda: (m := env.mailbox())["status"] == "red" and m, what=f"red on {fault}"
        )
        assert expected in shown["status_reason"], shown["status_reason"]
        assert "re-authorize" not in shown["status_reason"]
        server.fault, server.lifetime = None, 3600
        await until(lambda: env.mailbox()["status"] == "green", what="green again")


@pytest.mark.parametrize("sasl_ir", [True, False], ids=["sasl-ir", "no-sasl-ir"])
async def test_sasl_error_challenge_is_answered(
    env: OAuthEnv, server: TestProvider, sasl_ir: bool
) -> None:
    """A refused token: the server's error challenge gets its empty line, NO comes at once; a
    server without SASL-IR gets the initial response after its first "+"."""
    env.link_oauth()
    endpoint = Endpoint(
        "127.0.0.1", env.dovecot.imaps_port, "ssl", env.address, "", str(env.ca_bundle()),
        oauth=True,
    )  # fmt: skip

    async def client_for(mechanism: str) -> ImapClient:
        client = ImapClient(endpoint, timeout=30)
        await client.connect()
        if mechanism == "XOAUTH2":
            client._proto().capabilities.discard("AUTH=OAUTHBEARER")
        if not sasl_ir:
            client._proto().capabilities.discard("SASL-IR")
        return client

    for mechanism in ("OAUTHBEARER", "XOAUTH2"):
        client = await client_for(mechanism)
        started = time.monotonic()
        with pytest.raises(UpstreamAuthError, match=f"IMAP {mechanism} login as"):
            await client.login("not-a-valid-token")
        assert time.monotonic() - started < 10
        assert client._proto().sasl_challenges, "the server sent an error challenge"
        await client.logout()
        client = await client_for(mechanism)  # a good token with the same mechanism
        token = server._issue(env.address)["access_token"]
        await asyncio.wait_for(client.login(token), 30)
        await client.logout()
    assert set(env.logins()) == {"OAUTHBEARER", "XOAUTH2"}


def test_mailbox_check_with_a_token(env: OAuthEnv, server: TestProvider) -> None:
    """`mailbox check` signs in with the mailbox's token; a refused grant says how to fix it."""
    env.link_oauth()
    report = env.cli.json("mailbox", "check", env.address)
    assert report["ok"] is True and report["imap"] == "ok"
    assert report["capabilities"], "the capabilities after login"
    assert env.logins() == ["OAUTHBEARER"]
    server.revoke(env.address)
    grants_due(env)
    refused = env.cli.run("mailbox", "check", env.address, "--json")
    assert refused.exit_code == 1
    assert f"re-authorize: mailcrm mailbox authorize {env.address}" in refused.stdout
    assert env.mailbox()["status"] == "red"


def grants_due(env: OAuthEnv) -> None:
    """Make the mailbox's access token due for its refresh."""
    import datetime as dt

    from crm.store.db import Database
    from crm.store.models import MailboxOAuth

    db = Database(env.url)
    try:
        with db.session() as s:
            grant = s.query(MailboxOAuth).one()
            issued = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
            grant.issued_at, grant.expires_at = issued, issued + dt.timedelta(hours=1)
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def penalised_dovecot(provider: TestProvider) -> Iterator[OAuthDovecot]:
    """A Dovecot with its auth penalty on: after failed logins from an address, every login
    from it waits 2, 4, 8, then 15 s (as production servers slow a gateway down)."""
    server = OAuthDovecot(provider)
    server.extra_config += _PENALTY
    with server:
        yield server


_PENALTY = """
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0600
  }
}
"""


async def test_login_waits_out_the_servers_auth_penalty(
    penalised_dovecot: OAuthDovecot, sqlite_cli: Cli, tmp_path: Path, server: TestProvider
) -> None:
    """Failed logins from the gateway's address make the server hold the next ones for
    seconds: the poller's default timeout waits that out and the mailbox turns green."""
    env = OAuthEnv(penalised_dovecot, sqlite_cli, tmp_path, server, timeout_s=30.0)
    (penalised_dovecot.auth_dir / "passdb" / env.address).unlink()
    env.link_oauth()
    for attempt in range(3):  # someone at this address got it wrong three times
        conn = imaplib.IMAP4("127.0.0.1", penalised_dovecot.imap_port)
        with contextlib.suppress(imaplib.IMAP4.error):
            conn.authenticate("XOAUTH2", functools.partial(_bad, env.address, attempt))
        conn.logout()
    started = time.monotonic()
    async with env.poller():
        await until(lambda: env.mailbox()["status"] == "green", what="green despite the penalty")
    assert time.monotonic() - started > 4, "the server did hold the login back"
    assert env.logins() == ["OAUTHBEARER"]


def _bad(address: str, attempt: int, challenge: bytes) -> bytes:
    """A wrong token; the error challenge that follows is answered with an empty line."""
    if challenge:
        return b""
    return f"user={address}\x01auth=Bearer wrong-{attempt}\x01\x01".encode()
