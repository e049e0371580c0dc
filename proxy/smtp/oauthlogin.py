"""Relay logins of OAuth2 mailboxes (issue 15): the mail client gives the mailbox's app password,
the relay signs in upstream with SASL XOAUTH2, as the mailbox's login, with its access token.

A wrong app password is a 535 and a failed try for the gatekeeper's throttling, like a wrong
password. A grant the provider refused (``invalid_grant``) is a temporary ``454 4.7.0``: the
client's password is right, the owner must re-authorize (the mailbox is red saying how). The app
password's check (scrypt) and a token refresh (HTTP) run on threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging

from crm.errors import MailcrmError, OAuthError, ReauthorizeNeeded
from crm.face import Database, StoreError
from crm.face import oauth as face
from crm.face.relay import LoginView, SecretBox
from crm.vocab import Endpoint

from .upstream import UpstreamClient, UpstreamSession, UpstreamUnavailable
from .values import Reply

log = logging.getLogger("proxy.session")
BAD_APP_PASSWORD = "535 5.7.8 Authentication credentials invalid"
REAUTHORIZE = "454 4.7.0 Temporary authentication failure: the mailbox needs re-authorization"
TOKEN_UNAVAILABLE = "454 4.7.0 Temporary authentication failure: no access token now"
#: seconds for getting a token (a refresh at the provider included)
TOKEN_TIMEOUT = 40.0


class TokenUnavailable(Exception):
    """No access token now; ``reply`` is what the client hears (454), ``why`` for the log."""

    def __init__(self, reply: str, why: str) -> None:
        super().__init__(why)
        self.reply = reply


async def app_password_ok(view: LoginView, password: str) -> bool:
    """The client's password against the mailbox's app password hash (scrypt, on a thread)."""
    return await asyncio.to_thread(face.check_app_password, view.app_password, password)


async def token_for(db: Database, secrets: SecretBox, view: LoginView) -> str:
    """A valid access token for the view's mailbox (refreshed at 80 % of its lifetime)."""
    assert view.mailbox is not None
    try:
        token, _due = await asyncio.wait_for(
            asyncio.to_thread(face.access_token, db, secrets, view.mailbox), TOKEN_TIMEOUT
        )
    except ReauthorizeNeeded as exc:
        raise TokenUnavailable(REAUTHORIZE, str(exc)) from None
    except (OAuthError, MailcrmError, StoreError, TimeoutError) as exc:
        raise TokenUnavailable(TOKEN_UNAVAILABLE, f"{type(exc).__name__}: {exc}") from None
    return token


async def upstream_login(
    client: UpstreamClient, endpoint: Endpoint, view: LoginView, token: str
) -> tuple[UpstreamSession, Reply]:
    """A new upstream session signed in with XOAUTH2 (UpstreamUnavailable when unreachable)."""
    session = UpstreamSession(client, endpoint)
    reply = await session.login(view.upstream_login or view.login, "", token)
    return session, reply


__all__ = ["UpstreamUnavailable", "upstream_login"]
