"""OAuth2 grants of mailboxes (issue 15): authorization (code with PKCE S256 and ``state``, or the
device flow), the refresh of access tokens, and what the relay and poller ask for.

The HTTP side is authlib's ``OAuth2Session`` (over ``requests``): it builds the authorization URL
with the PKCE challenge, speaks the token endpoint (client secret by HTTP Basic) and parses its
answers. Everything the token endpoint says is hostile: a refusal of the refresh token
(``invalid_grant``) is :class:`~crm.errors.ReauthorizeNeeded` and turns the mailbox red at once;
anything else odd (HTML, a 500, missing fields, a slow answer) is a passing
:class:`~crm.errors.OAuthError` with a short, printable reason.

Tokens are sealed with the installation key in ``mailbox_oauth``. :func:`access_token` hands out
the stored access token until 80 % of its lifetime has passed, then refreshes it holding the row
locked (``SELECT ... FOR UPDATE`` on PostgreSQL), so that two nodes never race a rotating refresh
token: the second one waits and finds the fresh token.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError as AuthlibError
from authlib.integrations.requests_client import OAuth2Session
from requests import RequestException
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.errors import InvalidInput, OAuthError, ReauthorizeNeeded
from crm.mail.addresses import normalize_address
from crm.store.db import Database
from crm.store.models import Mailbox, MailboxOAuth, utcnow
from crm.store.secrets import SecretBox

from .providers import Provider, load_provider

log = logging.getLogger("crm.oauth")

#: a token is refreshed once this share of its lifetime has passed
REFRESH_AT = 0.8
RETRY_REFRESH_S = 30.0  # a refresh that failed for a passing reason is tried again this soon
#: seconds for one token-endpoint exchange
HTTP_TIMEOUT = 20.0
_MAX_LIFETIME = 86400 * 7
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Authorization:
    """One authorization request in flight: the URL to open and what checks the answer."""

    url: str
    state: str = field(repr=False)
    verifier: str = field(repr=False)
    redirect_uri: str


@dataclass(frozen=True)
class Tokens:
    """What the token endpoint granted."""

    access: str = field(repr=False)
    refresh: str | None = field(repr=False)
    lifetime: int


def reauthorize_reason(address: str, why: str) -> str:
    """The status of a mailbox whose grant is gone: what happened and the command that helps."""
    return f"re-authorize: mailcrm mailbox authorize {address} ({why})"


def _session(provider: Provider, **kwargs: Any) -> OAuth2Session:
    return OAuth2Session(
        provider.client_id,
        provider.client_secret,
        token_endpoint_auth_method="client_secret_basic" if provider.client_secret else "none",
        scope=" ".join(provider.scopes) or None,
        default_timeout=HTTP_TIMEOUT,
        **kwargs,
    )


def start(provider: Provider, redirect_uri: str) -> Authorization:
    """The authorization URL (PKCE S256, a fresh ``state``) for a loopback or pasted redirect."""
    client = _session(provider, redirect_uri=redirect_uri, code_challenge_method="S256")
    verifier = generate_token(64)
    url, state = client.create_authorization_url(
        provider.authorize_url, code_verifier=verifier, **dict(provider.extra)
    )
    return Authorization(url, state, verifier, redirect_uri)


def code_from(auth: Authorization, redirected: str) -> str:
    """The code from the URL the provider redirected to, once its ``state`` matches ours."""
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redirected.strip()).query))
    if "error" in query:
        text = (query.get("error_description") or query["error"])[:200]
        raise OAuthError(f"the provider refused the authorization: {text!r}")
    if query.get("state") != auth.state:
        raise InvalidInput("the redirect's state does not match this authorization: nothing done")
    code = query.get("code", "")
    if not code or len(code) > 4096:
        raise InvalidInput("the redirect carries no authorization code")
    return code


def exchange(provider: Provider, auth: Authorization, code: str) -> Tokens:
    """Trade the authorization code (with the PKCE verifier) for tokens."""
    client = _session(provider, redirect_uri=auth.redirect_uri)
    return _call(
        lambda: client.fetch_token(
            provider.token_url,
            grant_type="authorization_code",
            code=code,
            code_verifier=auth.verifier,
        ),
        refresh=False,
    )


def device_start(provider: Provider) -> dict[str, Any]:
    """Start a device flow: ``user_code``, ``verification_uri``, ``device_code``, ``interval``."""
    if not provider.device_url:
        raise InvalidInput(f"provider {provider.name} has no device flow (--device-url)")
    client = _session(provider)
    data = {"client_id": provider.client_id, "scope": " ".join(provider.scopes)}
    try:
        response = client.post(
            provider.device_url, data=data, timeout=HTTP_TIMEOUT, withhold_token=True
        )
        answer = response.json()
    except (RequestException, ValueError) as exc:
        raise OAuthError(f"the device endpoint failed: {type(exc).__name__}") from None
    if not isinstance(answer, dict) or not all(
        isinstance(answer.get(k), str) for k in ("device_code", "user_code")
    ):
        raise OAuthError(f"the device endpoint answered {response.status_code} without a code")
    uri = answer.get("verification_uri") or answer.get("verification_url")
    interval = answer.get("interval")
    return {
        "device_code": answer["device_code"],
        "user_code": answer["user_code"][:64],
        "verification_uri": str(uri)[:500],
        "interval": min(max(int(interval), 1), 30) if isinstance(interval, int) else 5,
        "expires_in": int(answer.get("expires_in") or 900),
    }


def device_poll(provider: Provider, device_code: str) -> Tokens | None:
    """One poll of the token endpoint in a device flow: None while the user has not signed in."""
    client = _session(provider)
    try:
        return _call(
            lambda: client.fetch_token(
                provider.token_url, grant_type=DEVICE_GRANT, device_code=device_code
            ),
            refresh=False,
        )
    except OAuthError as exc:
        if "authorization_pending" in str(exc) or "slow_down" in str(exc):
            return None
        raise


def refresh(provider: Provider, refresh_token: str) -> Tokens:
    """Spend the refresh token for a new access token (and, where the provider rotates, a new
    refresh token)."""
    client = _session(provider)
    return _call(
        lambda: client.refresh_token(provider.token_url, refresh_token=refresh_token),
        refresh=True,
    )


def _call(fetch: Any, refresh: bool) -> Tokens:
    try:
        answer = fetch()
    except AuthlibError as exc:
        error = str(exc.error or "error")[:60]
        if refresh and error == "invalid_grant":
            raise ReauthorizeNeeded(_printable(exc.description or error)) from None
        raise OAuthError(f"the token endpoint refused: {_printable(error)}") from None
    except RequestException as exc:
        raise OAuthError(f"the token endpoint failed: {type(exc).__name__}") from None
    except ValueError:
        raise OAuthError("the token endpoint answered something that is not JSON") from None
    return _tokens(answer)


def _tokens(answer: Any) -> Tokens:
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        raise OAuthError("the token endpoint answered without an access_token")
    access = answer["access_token"]
    refresh_token = answer.get("refresh_token")
    lifetime = answer.get("expires_in")
    if not access or len(access) > 16384 or not access.isprintable():
        raise OAuthError("the token endpoint answered an unusable access_token")
    try:
        seconds = int(lifetime) if lifetime is not None else 3600
    except (TypeError, ValueError):
        raise OAuthError("the token endpoint answered a bad expires_in") from None
    if isinstance(refresh_token, str) and (len(refresh_token) > 16384 or not refresh_token):
        refresh_token = None
    return Tokens(
        access,
        refresh_token if isinstance(refresh_token, str) else None,
        max(1, min(seconds, _MAX_LIFETIME)),
    )


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(text))[:200]


# -- stored grants ---------------------------------------------------------------------------------


def oauth_mailbox(session: Session, address: str) -> Mailbox:
    box = session.scalar(select(Mailbox).where(Mailbox.address == normalize_address(address)))
    if box is None:
        raise InvalidInput(f"no mailbox {address}")
    if box.auth != "oauth2":
        raise InvalidInput(f"{box.address} signs in with a password: mailbox set --auth oauth2")
    return box


def grant_row(session: Session, box: Mailbox, lock: bool = False) -> MailboxOAuth:
    query = select(MailboxOAuth).where(MailboxOAuth.mailbox_id == box.id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        row = MailboxOAuth(mailbox_id=box.id, refreshes=0)
        session.add(row)
        session.flush()
    return row


def store(session: Session, secrets: SecretBox, box: Mailbox, tokens: Tokens) -> None:
    """Keep a grant: the refresh token (unless the provider kept the old one) and the access
    token, sealed; a refusal noted before is cleared, and so is the mailbox's red."""
    row = grant_row(session, box, lock=True)
    now = utcnow()
    if tokens.refresh is not None:
        row.refresh = secrets.seal(tokens.refresh)
    row.access = secrets.seal(tokens.access)
    row.issued_at, row.expires_at = now, now + dt.timedelta(seconds=tokens.lifetime)
    if row.refused is not None:
        row.refused = None
        if box.last_error and box.last_error.startswith("re-authorize"):
            box.last_error = None


def _fresh(row: MailboxOAuth, now: dt.datetime) -> bool:
    if row.access is None or row.issued_at is None or row.expires_at is None:
        return False
    return now < row.issued_at + (row.expires_at - row.issued_at) * REFRESH_AT


def _still_valid(row: MailboxOAuth, now: dt.datetime) -> bool:
    """The stored access token has not expired yet (a failed refresh may go on with it)."""
    return row.access is not None and row.expires_at is not None and now < row.expires_at


def _retry_at(row: MailboxOAuth, now: dt.datetime) -> dt.datetime:
    """When to try a failed refresh again: soon, and never after the token expires."""
    assert row.expires_at is not None
    return min(now + dt.timedelta(seconds=RETRY_REFRESH_S), row.expires_at)


def refresh_due(row: MailboxOAuth) -> dt.datetime | None:
    """When the stored access token is to be refreshed (80 % of its lifetime)."""
    if row.issued_at is None or row.expires_at is None:
        return None
    return row.issued_at + (row.expires_at - row.issued_at) * REFRESH_AT


def _local_lock(address: str) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(address.lower(), threading.Lock())


def access_token(db: Database, secrets: SecretBox, address: str) -> tuple[str, dt.datetime]:
    """A valid access token for an oauth2 mailbox and when to refresh it, refreshing it first
    when 80 % of its lifetime has passed. The refresh of one mailbox is serialised: in this
    process by a lock (the relay and the poller of one node; SQLite), across nodes by the grant
    row's lock (PostgreSQL ``FOR UPDATE``), so a rotating refresh token is spent once. A refused
    refresh token is noted (the mailbox red, saying how to re-authorize) before it is raised. A
    refresh that fails for a passing reason (the endpoint down, slow, talking nonsense) goes on
    with the current token while it has not expired, tried again within ``RETRY_REFRESH_S``;
    after that the :class:`OAuthError` is raised (the mailbox red, saying why)."""
    with _local_lock(address):
        return _access_token(db, secrets, address)


def _access_token(db: Database, secrets: SecretBox, address: str) -> tuple[str, dt.datetime]:
    refused: ReauthorizeNeeded | None = None
    with db.session() as session:
        box = oauth_mailbox(session, address)
        row = grant_row(session, box, lock=True)
        if row.refused is not None:
            raise ReauthorizeNeeded(row.refused)
        if row.refresh is None:
            raise ReauthorizeNeeded(reauthorize_reason(box.address, "not authorized yet"))
        if not _fresh(row, utcnow()):
            provider = load_provider(session, secrets, box.oauth_provider)
            try:
                tokens = refresh(provider, secrets.open(row.refresh))
            except ReauthorizeNeeded as exc:
                reason = reauthorize_reason(box.address, f"the provider refused: {exc}")
                row.refused = box.last_error = reason
                log.warning("oauth: %s: refresh token refused: %s", box.address, exc)
                refused = ReauthorizeNeeded(reason)
            except OAuthError as exc:
                if not _still_valid(row, utcnow()):
                    raise
                log.warning("oauth: %s: refresh failed (%s); going on with the token, good "
                            "until %s", box.address, exc, row.expires_at)  # fmt: skip
                return secrets.open(row.access or b""), _retry_at(row, utcnow())
            else:
                store(session, secrets, box, tokens)
                row.refreshes += 1
                log.info("oauth: %s: access token refreshed", box.address)
        token, due = secrets.open(row.access) if row.access else "", refresh_due(row)
    if refused is not None:
        raise refused
    assert due is not None and token
    return token, due
