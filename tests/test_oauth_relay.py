"""The relay with OAuth2 mailboxes (issue 15), against a real Postfix whose Dovecot SASL trusts
the test provider: the mail client logs in with the mailbox's app password, the relay submits
upstream with XOAUTH2; a wrong app password is 535 and counts for the throttle; a refused grant
is 454 4.7.0; the access token is refreshed between sends; one bad client never stops mail."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from crm.store.models import MailboxOAuth
from crm.vocab import utcnow
from tests.conftest import Cli
from tests.oauthkit import (
    TestProvider,
    add_test_provider,
    authorize,
    oauth_dovecot,
    oauth_postfix,
    provider,
)
from tests.relaykit import RelayEnv, message, running
from tests.servers import Postfix

__all__ = ["oauth_dovecot", "oauth_postfix", "provider"]
pytestmark = pytest.mark.servers


@pytest.fixture
def server(provider: TestProvider) -> Iterator[TestProvider]:
    yield provider
    provider.lifetime, provider.fault = 3600, None


def oauth_mailbox(env: RelayEnv, server: TestProvider) -> tuple[str, str]:
    """A password-less user, their oauth2 mailbox authorized, and its app password."""
    import uuid

    dovecot = env.postfix.dovecot
    address = dovecot.add_oauth_user(f"o{uuid.uuid4().hex[:8]}")  # type: ignore[attr-defined]
    add_test_provider(env.cli, server)
    env.cli.ok("user", "add", address)
    env.cli.ok(
        "mailbox",
        "add",
        address,
        "--owner",
        address,
        "--auth",
        "oauth2",
        "--oauth-provider",
        "testidp",
    )
    authorize(env.cli, server, address)
    password = env.cli.json("mailbox", "app-password", address)["password"]
    return address, password


async def _send(env: RelayEnv, login: str, password: str, to: str, subject: str) -> None:
    smtp = env.client()
    await smtp.connect()
    try:
        await smtp.login(login, password)
        await smtp.sendmail(login, [to], message(login, to, subject))
    finally:
        await smtp.quit()


async def test_app_password_and_xoauth2_upstream(
    cli: Cli, db_url: str, tmp_path: Path, oauth_postfix: Postfix, server: TestProvider
) -> None:
    async with running(cli, db_url, tmp_path, oauth_postfix) as env:
        address, password = oauth_mailbox(env, server)
        recipient = env.user("rcpt")
        await _send(env, address, password, recipient, "Offer via OAuth2")
        delivered = await env.delivered(recipient)
        assert b"Offer via OAuth2" in delivered[0]
        log = oauth_postfix.log()
        assert f"sasl_method=XOAUTH2, sasl_username={address}" in log
        # a wrong app password: 535, asked nowhere upstream
        smtp = env.client()
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await smtp.login(address, password + "x")
        assert refused.value.code == 535
        await smtp.quit()
        # the old app password stops working once a new one is made
        new = cli.json("mailbox", "app-password", address)["password"]
        smtp = env.client()
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await smtp.login(address, password)
        await smtp.quit()
        await _send(env, address, new, recipient, "second")
        await env.delivered(recipient, count=2)
        # revoked (a lost phone): refused from the next login on, until a new one is made
        assert cli.json("mailbox", "app-password", address, "--revoke") == {"revoked": True}
        assert "had none" in cli.ok("mailbox", "app-password", address, "--revoke")
        smtp = env.client()
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as revoked:
            await smtp.login(address, new)
        assert revoked.value.code == 535
        await smtp.quit()


async def test_failed_app_passwords_are_throttled(
    cli: Cli, db_url: str, tmp_path: Path, oauth_postfix: Postfix, server: TestProvider
) -> None:
    async with running(cli, db_url, tmp_path, oauth_postfix) as env:
        address, password = oauth_mailbox(env, server)
        codes = []
        for _ in range(12):
            smtp = env.client()
            await smtp.connect()
            try:
                await smtp.login(address, "wrong-guess")
            except aiosmtplib.SMTPAuthenticationError as exc:
                codes.append(exc.code)
            finally:
                smtp.close()
        assert codes[0] == 535
        assert any(code != 535 for code in codes), codes  # the gatekeeper stepped in
        del password


async def _past_refresh_due(env: RelayEnv) -> None:
    """Wait until the stored access token is due for its refresh (80 % of its lifetime)."""
    with env.db.session() as s:
        grant = s.query(MailboxOAuth).one()
        assert grant.issued_at is not None and grant.expires_at is not None
        due = grant.issued_at + (grant.expires_at - grant.issued_at) * 0.8
    await asyncio.sleep(max((due - utcnow()).total_seconds(), 0) + 0.2)


async def test_refresh_between_sends_and_revocation_454(
    cli: Cli, db_url: str, tmp_path: Path, oauth_postfix: Postfix, server: TestProvider
) -> None:
    server.lifetime = 3
    async with running(cli, db_url, tmp_path, oauth_postfix) as env:
        address, password = oauth_mailbox(env, server)
        recipient = env.user("rcpt")
        refreshes = server.log.refreshes
        await _send(env, address, password, recipient, "first")
        await _past_refresh_due(env)
        await _send(env, address, password, recipient, "after the refresh")
        await env.delivered(recipient, count=2)
        assert server.log.refreshes == refreshes + 1
        # the owner withdraws consent: the next login hears 454 4.7.0, the mailbox is red
        server.revoke(address)
        await _past_refresh_due(env)
        smtp = env.client()
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await smtp.login(address, password)
        smtp.close()
        assert refused.value.code == 454 and "4.7.0" in refused.value.message
        shown = cli.json("mailbox", "show", address)
        assert shown["status"] == "red"
        reason = f"re-authorize: mailcrm mailbox authorize {address}"
        assert shown["status_reason"].startswith(reason)


async def test_web_and_dav_sign_in_take_the_app_password_as_the_relay_does(
    cli: Cli, db_url: str, tmp_path: Path, oauth_postfix: Postfix, server: TestProvider
) -> None:
    """An OAuth2 mailbox's owner has no mail password: the web CRM and DAV (proxy.signin) accept
    the app password the relay accepts, and a wrong one is refused and counted."""
    from proxy.signin import THROTTLED, WRONG, PasswordCheck, SignInFailed
    from proxy.throttle import LoginThrottle

    async with running(cli, db_url, tmp_path, oauth_postfix) as env:
        address, password = oauth_mailbox(env, server)
        check = PasswordCheck(env.config, env.db, "web")
        view = await check.check("192.0.2.7", address, password, crm_only=True)
        assert view.user_email == address
        # a throttle refusing after one failure shows the wrong try was counted
        check.throttle = LoginThrottle(free=0, delay=0.0, max_delay=0.0, refuse_after=1)
        with pytest.raises(SignInFailed) as refused:
            await check.check("192.0.2.7", address, "not the app password")
        assert refused.value.kind == WRONG
        with pytest.raises(SignInFailed) as refused:
            await check.check("192.0.2.7", address, password)
        assert refused.value.kind == THROTTLED
