"""Two gateway nodes on one PostgreSQL database refresh one mailbox's token at once (issue 15):
the grant row's lock lets one of them spend the rotating refresh token; the other waits and takes
the fresh token, so the provider sees one refresh and the mailbox is not turned red. A refresh
that fails for a passing reason goes on with the token while it is good."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest

from crm.errors import OAuthError
from crm.face import Database
from crm.face.relay import SecretBox
from crm.mailboxes import oauth as grants
from crm.store.models import MailboxOAuth
from tests.conftest import Cli
from tests.oauthkit import TestProvider, add_test_provider, authorize, provider

__all__ = ["provider"]
BOX = "shared@example.test"


@pytest.fixture
def server(provider: TestProvider) -> Iterator[TestProvider]:
    yield provider
    provider.refresh_delay_s, provider.lifetime = 0.0, 3600


def _expire(url: str) -> None:
    """Make the stored access token due for its refresh."""
    db = Database(url)
    try:
        with db.session() as s:
            grant = s.query(MailboxOAuth).one()
            issued = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
            grant.issued_at, grant.expires_at = issued, issued + dt.timedelta(hours=1)
    finally:
        db.dispose()


def _node(
    db: Database,
    key: bytes,
    start: threading.Barrier,
    tokens: list[str],
    errors: list[BaseException],
) -> None:
    """One node's token request. Nodes are separate processes, so the in-process lock of
    :func:`crm.mailboxes.oauth.access_token` is bypassed: only the database serialises them."""
    start.wait()
    try:
        tokens.append(grants._access_token(db, SecretBox(key), BOX)[0])
    except BaseException as exc:
        errors.append(exc)


def test_two_nodes_refresh_once(cli: Cli, db_url: str, server: TestProvider) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several nodes share PostgreSQL")
    add_test_provider(cli, server)
    cli.ok("mailbox", "add", BOX, "--company", "--imap-host", "127.0.0.1", "--auth", "oauth2",
           "--oauth-provider", "testidp")  # fmt: skip
    authorize(cli, server, BOX)
    _expire(db_url)
    server.refresh_delay_s = 1.0  # both nodes are inside the refresh window together
    refreshes = server.log.refreshes
    key = cli.env["MAILCRM_SECRET_KEY"].encode()
    nodes = [Database(db_url) for _ in range(2)]  # two engines, two pools: two nodes
    tokens: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)
    runs = [threading.Thread(target=_node, args=(db, key, start, tokens, errors)) for db in nodes]
    for t in runs:
        t.start()
    for t in runs:
        t.join(60)
    for db in nodes:
        db.dispose()
    assert not errors, errors
    assert server.log.refreshes == refreshes + 1
    assert len(tokens) == 2 and tokens[0] == tokens[1]
    shown = cli.json("mailbox", "show", BOX)
    assert shown["last_error"] is None


def _age(url: str, issued_ago: dt.timedelta, lifetime: dt.timedelta) -> None:
    """The stored access token as if issued ``issued_ago`` with ``lifetime``."""
    db = Database(url)
    try:
        with db.session() as s:
            grant = s.query(MailboxOAuth).one()
            grant.issued_at = dt.datetime.now(dt.UTC) - issued_ago
            grant.expires_at = grant.issued_at + lifetime
    finally:
        db.dispose()


def test_a_failed_refresh_goes_on_with_the_token_while_it_is_good(
    cli: Cli, db_url: str, server: TestProvider
) -> None:
    """The token endpoint down for a moment (500) at 80 % of the token's life: the mailbox keeps
    the token it has (not red), and is asked again soon, before the token expires; once it has
    expired, the failure is raised (the mailbox turns red saying why)."""
    add_test_provider(cli, server)
    cli.ok("mailbox", "add", BOX, "--company", "--imap-host", "127.0.0.1", "--auth", "oauth2",
           "--oauth-provider", "testidp")  # fmt: skip
    authorize(cli, server, BOX)
    key = SecretBox(cli.env["MAILCRM_SECRET_KEY"].encode())
    db = Database(db_url)
    try:
        token, _ = grants.access_token(db, key, BOX)
        _age(db_url, dt.timedelta(minutes=50), dt.timedelta(hours=1))  # 10 minutes left
        server.fault = "500"
        kept, due = grants.access_token(db, key, BOX)
        assert kept == token
        left = due - dt.datetime.now(dt.UTC)
        assert dt.timedelta(0) < left <= dt.timedelta(seconds=grants.RETRY_REFRESH_S)
        assert "token endpoint" not in str(cli.json("mailbox", "show", BOX)["status_reason"])
        _age(db_url, dt.timedelta(hours=2), dt.timedelta(hours=1))  # expired
        with pytest.raises(OAuthError, match="the token endpoint"):
            grants.access_token(db, key, BOX)
        server.fault = None
        fresh, due = grants.access_token(db, key, BOX)
        assert fresh != token and due > dt.datetime.now(dt.UTC)
    finally:
        server.fault = None
        db.dispose()
