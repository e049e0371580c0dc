"""OAuth2 providers (issue 15): the built-in ``google`` and ``microsoft`` endpoints and scopes,
and the providers an admin registers (``mailcrm oauth provider add/set/list``), with their client
secret sealed by the installation key. A built-in provider needs only the client id (and secret)
of the company's own app registration; its endpoints come from here unless overridden."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.errors import AlreadyExists, InvalidInput, NotFound
from crm.mailboxes.presets import PRESETS
from crm.store.models import Mailbox, OAuthProvider
from crm.store.secrets import SecretBox

_MS = "https://login.microsoftonline.com/common/oauth2/v2.0"


@dataclass(frozen=True)
class Provider:
    """What a token exchange needs of one provider."""

    name: str
    authorize_url: str
    token_url: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    device_url: str | None = None
    #: extra query parameters of the authorization request (Google: offline access)
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Builtin:
    authorize_url: str
    token_url: str
    device_url: str | None
    scopes: tuple[str, ...]
    extra: tuple[tuple[str, str], ...] = ()


BUILTIN: dict[str, Builtin] = {
    "google": Builtin(
        "https://accounts.google.com/o/oauth2/v2/auth",
        "https://oauth2.googleapis.com/token",
        None,  # Google's device flow does not grant the mail scope
        ("https://mail.google.com/",),
        (("access_type", "offline"), ("prompt", "consent")),
    ),
    "microsoft": Builtin(
        f"{_MS}/authorize",
        f"{_MS}/token",
        f"{_MS}/devicecode",
        (
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
            "offline_access",
        ),
    ),
}

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass
class ProviderOptions:
    """Options of ``oauth provider add/set``; None leaves a value as it is."""

    authorize_url: str | None = None
    token_url: str | None = None
    device_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scopes: list[str] | None = None


def _check_url(option: str, url: str | None) -> None:
    if url is None:
        return
    if not url.startswith(("https://", "http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise InvalidInput(f"--{option} must be an https:// URL (http only on loopback): {url!r}")
    if len(url) > 2000 or any(c.isspace() for c in url):
        raise InvalidInput(f"--{option} is not a usable URL")


def add_provider(
    session: Session, secrets: SecretBox, name: str, options: ProviderOptions
) -> OAuthProvider:
    """``oauth provider add``: a built-in name takes its endpoints from :data:`BUILTIN`."""
    name = name.strip().lower()
    if not name or len(name) > 40 or set(name) - _NAME_CHARS:
        raise InvalidInput(f"provider name {name!r}: use a-z, 0-9, - and _ (at most 40)")
    if session.get(OAuthProvider, name) is not None:
        raise AlreadyExists(f"provider {name} exists already: use `mailcrm oauth provider set`")
    builtin = BUILTIN.get(name)
    row = OAuthProvider(name=name, scopes=list(builtin.scopes) if builtin else [])
    if builtin is not None:
        row.authorize_url, row.token_url = builtin.authorize_url, builtin.token_url
        row.device_url = builtin.device_url
    elif options.authorize_url is None or options.token_url is None:
        raise InvalidInput(
            "a provider other than google or microsoft needs --authorize-url and --token-url"
        )
    if options.client_id is None:
        raise InvalidInput("--client-id is required (from the app registration)")
    _apply(row, secrets, options)
    session.add(row)
    session.flush()
    return row


def set_provider(
    session: Session, secrets: SecretBox, name: str, options: ProviderOptions
) -> OAuthProvider:
    """``oauth provider set``: change what was given; a built-in one not yet added is added."""
    row = session.get(OAuthProvider, name.strip().lower())
    if row is None:
        if name.strip().lower() in BUILTIN:
            return add_provider(session, secrets, name, options)
        raise NotFound(f"no provider {name}: see `mailcrm oauth provider list`")
    _apply(row, secrets, options)
    return row


def _apply(row: OAuthProvider, secrets: SecretBox, o: ProviderOptions) -> None:
    for option in ("authorize_url", "token_url", "device_url"):
        _check_url(option.replace("_", "-"), getattr(o, option))
    for option in ("authorize_url", "token_url", "device_url", "client_id"):
        value = getattr(o, option)
        if value is not None:
            setattr(row, option, value.strip())
    if o.client_secret is not None:
        row.secret = secrets.seal(o.client_secret) if o.client_secret else None
    if o.scopes is not None:
        row.scopes = [s for s in o.scopes if s.strip()]


def provider_json(row: OAuthProvider | None, name: str) -> dict[str, Any]:
    """One line of ``oauth provider list --json``: never the secret, only ``has_secret``."""
    builtin = BUILTIN.get(name)
    if row is None and builtin is not None:
        return {
            "name": name,
            "builtin": True,
            "authorize_url": builtin.authorize_url,
            "token_url": builtin.token_url,
            "device_url": builtin.device_url,
            "client_id": None,
            "scopes": list(builtin.scopes),
            "has_secret": False,
        }
    assert row is not None
    return {
        "name": row.name,
        "builtin": name in BUILTIN,
        "authorize_url": row.authorize_url,
        "token_url": row.token_url,
        "device_url": row.device_url,
        "client_id": row.client_id,
        "scopes": list(row.scopes),
        "has_secret": row.secret is not None,
    }


def list_providers(session: Session) -> list[dict[str, Any]]:
    """Every registered provider, and the built-in ones not registered yet (client_id null)."""
    rows = {r.name: r for r in session.scalars(select(OAuthProvider))}
    names = sorted(set(rows) | set(BUILTIN))
    return [provider_json(rows.get(n), n) for n in names]


def load_provider(session: Session, secrets: SecretBox, name: str | None) -> Provider:
    """The provider of an oauth2 mailbox, its secret opened, for a token exchange."""
    row = session.get(OAuthProvider, (name or "").lower())
    if row is None:
        raise NotFound(
            f"OAuth provider {name!r} is not set up: `mailcrm oauth provider add {name or 'NAME'}"
            " --client-id ID`"
        )
    builtin = BUILTIN.get(row.name)
    return Provider(
        name=row.name,
        authorize_url=row.authorize_url,
        token_url=row.token_url,
        client_id=row.client_id,
        client_secret=secrets.open(row.secret) if row.secret is not None else None,
        scopes=tuple(row.scopes),
        device_url=row.device_url,
        extra=builtin.extra if builtin else (),
    )


def set_auth(box: Mailbox, auth: str | None, provider: str | None) -> None:
    """``mailbox add/set --auth password|oauth2 --oauth-provider NAME``."""
    if auth is not None and auth not in ("password", "oauth2"):
        raise InvalidInput(f"--auth must be password or oauth2, not {auth!r}")
    if provider is not None:
        provider = provider.strip().lower()
        if not provider or len(provider) > 40 or set(provider) - _NAME_CHARS:
            raise InvalidInput(f"--oauth-provider {provider!r} is not a provider name")
        box.oauth_provider = provider
    if auth is not None:
        box.auth = auth
    if box.auth == "oauth2" and box.oauth_provider is None:
        preset = PRESETS.get(box.preset or "")
        box.oauth_provider = preset.oauth_provider if preset else None
        if box.oauth_provider is None:
            raise InvalidInput("--auth oauth2 needs --oauth-provider NAME (oauth provider list)")
