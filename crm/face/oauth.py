"""What the front ends need for OAuth2 mailboxes (issue 15): the providers (``oauth provider``),
authorizing a mailbox (code flow with PKCE, device flow), the relay's app passwords, and a valid
access token for the poller and the relay. Takes the :class:`Database` and returns plain data."""

from __future__ import annotations

import secrets as random
from typing import Any

from crm.errors import InvalidInput, PermissionDenied
from crm.mailboxes import oauth as grants
from crm.mailboxes.oauth import Authorization as Authorization
from crm.mailboxes.oauth import Tokens as Tokens
from crm.mailboxes.oauth import access_token as access_token
from crm.mailboxes.oauth import code_from as code_from
from crm.mailboxes.oauth import reauthorize_reason as reauthorize_reason
from crm.mailboxes.providers import Provider as Provider
from crm.mailboxes.providers import ProviderOptions as ProviderOptions
from crm.mailboxes.providers import add_provider, list_providers, load_provider, provider_json
from crm.mailboxes.providers import set_provider as _set_provider
from crm.store.db import Database
from crm.store.models import MailboxKind, utcnow
from crm.store.secrets import SecretBox, hash_password, verify_password


def provider_add(db: Database, box: SecretBox, name: str, options: ProviderOptions) -> Any:
    with db.session() as session:
        row = add_provider(session, box, name, options)
        return provider_json(row, row.name)


def provider_set(db: Database, box: SecretBox, name: str, options: ProviderOptions) -> Any:
    with db.session() as session:
        row = _set_provider(session, box, name, options)
        return provider_json(row, row.name)


def providers(db: Database) -> list[dict[str, Any]]:
    with db.session() as session:
        return list_providers(session)


def mailbox_provider(db: Database, box: SecretBox, address: str) -> Provider:
    """The provider of an oauth2 mailbox, ready for a token exchange."""
    with db.session() as session:
        mailbox = grants.oauth_mailbox(session, address)
        return load_provider(session, box, mailbox.oauth_provider)


def begin(provider: Provider, redirect_uri: str) -> Authorization:
    return grants.start(provider, redirect_uri)


def finish(
    db: Database, box: SecretBox, address: str, provider: Provider, auth: Authorization, url: str
) -> None:
    """Check the redirect's ``state``, exchange its code, keep the grant (see :func:`keep`)."""
    code = code_from(auth, url)
    keep(db, box, address, grants.exchange(provider, auth, code))


def device_start(provider: Provider) -> dict[str, Any]:
    return grants.device_start(provider)


def device_poll(provider: Provider, device_code: str) -> Tokens | None:
    return grants.device_poll(provider, device_code)


def keep(db: Database, box: SecretBox, address: str, tokens: Tokens) -> None:
    """Store a fresh grant (sealed) and link the mailbox: signing in is the owner's consent."""
    if tokens.refresh is None:
        raise InvalidInput("the provider granted no refresh token (offline access missing?)")
    with db.session() as session:
        mailbox = grants.oauth_mailbox(session, address)
        grants.store(session, box, mailbox, tokens)
        if mailbox.kind == MailboxKind.PERSONAL and not mailbox.linked:
            if mailbox.owner is None or not mailbox.owner.crm_access:
                raise PermissionDenied("the owner has no CRM access: the mailbox stays unlinked")
            mailbox.linked, mailbox.linked_at = True, utcnow()


def new_app_password(db: Database, address: str) -> str:
    """A new strong relay password for an oauth2 mailbox; only its slow hash is kept, and it
    replaces the one before."""
    password = "-".join(
        random.token_urlsafe(6).replace("-", "x").replace("_", "y") for _ in range(4)
    )
    digest = hash_password(password)
    with db.session() as session:
        mailbox = grants.oauth_mailbox(session, address)
        grants.grant_row(session, mailbox).app_password = digest
    return password


def revoke_app_password(db: Database, address: str) -> bool:
    """Forget an oauth2 mailbox's app password (a leaked one, a phone lost): from the next login
    on, mail clients are refused until a new one is made. False when there was none."""
    with db.session() as session:
        grant = grants.grant_row(session, grants.oauth_mailbox(session, address))
        had, grant.app_password = grant.app_password is not None, None
    return had


def app_password_of(db: Database, address: str) -> str | None:
    """The stored hash of an oauth2 mailbox's app password (None: none, or not oauth2)."""
    with db.session() as session:
        try:
            mailbox = grants.oauth_mailbox(session, address)
        except InvalidInput:
            return None
        return grants.grant_row(session, mailbox).app_password


def check_app_password(stored: str | None, password: str) -> bool:
    return stored is not None and verify_password(password, stored)


def is_oauth(db: Database, address: str) -> bool:
    """Whether a mailbox signs in with OAuth2 (the relay's and the poller's fork)."""
    with db.session() as session:
        try:
            grants.oauth_mailbox(session, address)
        except InvalidInput:
            return False
        return True
