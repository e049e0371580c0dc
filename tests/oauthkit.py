"""A test OAuth2 provider and a Dovecot that trusts it, for the OAuth2 tests (issue 15).

:class:`TestProvider` is a small authorization server on 127.0.0.1 (stdlib ``http.server`` in a
thread): ``/authorize`` redirects at once with a code for the user it is told to sign in as,
``/token`` serves ``authorization_code`` (with the PKCE S256 check), ``refresh_token`` (the refresh
token rotates: the old one is spent) and the device-code grant, ``/device`` starts a device flow,
``/introspect`` answers Dovecot (200 ``{"active": false}`` for a bad token: a 401 would be a
temporary failure there), ``/revoke`` and :meth:`TestProvider.revoke` revoke a user's grants.
Access tokens live :attr:`TestProvider.lifetime` seconds. :attr:`TestProvider.fault` makes the
token endpoint misbehave (``html``, ``500``, ``missing``, ``slow``).

:class:`OAuthDovecot` is :class:`tests.servers.Dovecot` with a second passdb ``driver = oauth2``
checking tokens by introspection, ``auth_mechanisms = plain login xoauth2 oauthbearer``; users
added with :meth:`OAuthDovecot.add_oauth_user` have no password at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.servers import Dovecot, Postfix, _skip_unless_available

CLIENT_ID = "mailcrm-test-client"
CLIENT_SECRET = "test-client-secret"


@dataclass
class _Grant:
    user: str
    refresh: str
    alive: bool = True


@dataclass
class _Pending:
    user: str
    redirect_uri: str
    challenge: str
    scope: str


@dataclass
class _Device:
    user_code: str
    user: str | None = None


@dataclass
class ProviderLog:
    """What the provider served, for assertions."""

    refreshes: int = 0
    codes: int = 0
    device_polls: int = 0
    introspections: int = 0
    refused: list[str] = field(default_factory=list)


class TestProvider:
    """A local OAuth2 authorization server (see the module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self, lifetime: int = 3600) -> None:
        self.lifetime = lifetime
        self.user: str | None = None  # who /authorize signs in
        self.fault: str | None = None
        self.slow_s = 30.0
        self.refresh_delay_s = 0.0  # widens the window two racing refreshes would share
        self.log = ProviderLog()
        self._lock = threading.Lock()
        self._codes: dict[str, _Pending] = {}
        self._grants: dict[str, _Grant] = {}  # refresh token -> grant
        self._access: dict[str, tuple[str, float]] = {}  # access token -> (user, expiry)
        self._devices: dict[str, _Device] = {}  # device code -> pending device flow
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TestProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what a test does ------------------------------------------------------------------------

    def revoke(self, user: str) -> None:
        """Withdraw every grant and access token of ``user`` (consent withdrawn)."""
        with self._lock:
            for grant in self._grants.values():
                if grant.user == user:
                    grant.alive = False
            for token, (owner, _) in list(self._access.items()):
                if owner == user:
                    del self._access[token]

    def approve_device(self, user_code: str, user: str) -> bool:
        """The user types ``user_code`` at the verification page and signs in as ``user``."""
        with self._lock:
            for device in self._devices.values():
                if device.user_code == user_code:
                    device.user = user
                    return True
        return False

    def valid_tokens(self, user: str) -> int:
        with self._lock:
            now = time.time()
            return sum(1 for u, exp in self._access.values() if u == user and exp > now)

    # -- endpoints -------------------------------------------------------------------------------

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
            return 400, {}, b"bad client or response_type"
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return 400, {}, b"PKCE S256 required"
        if self.user is None:
            return 403, {}, b"nobody signs in"
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = _Pending(
                self.user, query["redirect_uri"], query["code_challenge"], query.get("scope", "")
            )
        target = (
            query["redirect_uri"]
            + "?"
            + urllib.parse.urlencode({"code": code, "state": query.get("state", "")})
        )
        return 302, {"Location": target}, b""

    def token(self, form: dict[str, str], basic: tuple[str, str] | None) -> tuple[int, Any]:
        client = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        if client != (CLIENT_ID, CLIENT_SECRET):
            return 401, {"error": "invalid_client"}
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._code_grant(form)
        if grant_type == "refresh_token":
            return self._refresh_grant(form)
        if grant_type == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_grant(form)
        return 400, {"error": "unsupported_grant_type"}

    def _code_grant(self, form: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            pending = self._codes.pop(form.get("code", ""), None)
        if pending is None or pending.redirect_uri != form.get("redirect_uri"):
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "").encode()
        digest = hashlib.sha256(verifier).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != pending.challenge:
            self.log.refused.append("pkce")
            return 400, {"error": "invalid_grant", "error_description": "PKCE check failed"}
        self.log.codes += 1
        return 200, self._issue(pending.user)

    def _refresh_grant(self, form: dict[str, str]) -> tuple[int, Any]:
        time.sleep(self.refresh_delay_s)
        with self._lock:
            grant = self._grants.pop(form.get("refresh_token", ""), None)
        if grant is None or not grant.alive:
            self.log.refused.append("refresh")
            return 400, {"error": "invalid_grant", "error_description": "token revoked"}
        self.log.refreshes += 1
        return 200, self._issue(grant.user)

    def _device_grant(self, form: dict[str, str]) -> tuple[int, Any]:
        self.log.device_polls += 1
        with self._lock:
            device = self._devices.get(form.get("device_code", ""))
            if device is None:
                return 400, {"error": "expired_token"}
            if device.user is None:
                return 400, {"error": "authorization_pending"}
            del self._devices[form["device_code"]]
        return 200, self._issue(device.user)

    def device(self, form: dict[str, str]) -> tuple[int, Any]:
        if form.get("client_id") != CLIENT_ID:
            return 400, {"error": "invalid_client"}
        code, user_code = secrets.token_urlsafe(16), secrets.token_hex(4).upper()
        with self._lock:
            self._devices[code] = _Device(user_code)
        return 200, {
            "device_code": code,
            "user_code": user_code,
            "verification_uri": f"{self.url}/device/verify",
            "expires_in": 600,
            "interval": 1,
        }

    def _issue(self, user: str) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        with self._lock:
            self._access[access] = (user, time.time() + self.lifetime)
            self._grants[refresh] = _Grant(user, refresh)
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "refresh_token": refresh,
            "scope": "mail",
        }

    def introspect(self, form: dict[str, str]) -> dict[str, Any]:
        self.log.introspections += 1
        with self._lock:
            found = self._access.get(form.get("token", ""))
        if found is None or found[1] <= time.time():
            return {"active": False}
        return {"active": True, "username": found[0]}

    def revoke_token(self, form: dict[str, str]) -> None:
        with self._lock:
            grant = self._grants.get(form.get("token", ""))
        if grant is not None:
            self.revoke(grant.user)


def _handler(provider: TestProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/authorize":
                status, headers, body = provider.authorize(query)
                self._send(status, body, "text/plain", headers)
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            path = urllib.parse.urlsplit(self.path).path
            if path == "/token":
                self._token(form)
            elif path == "/introspect":
                self._json(200, provider.introspect(form))
            elif path == "/device":
                self._json(*provider.device(form))
            elif path == "/revoke":
                provider.revoke_token(form)
                self._send(200, b"", "text/plain")
            else:
                self._send(404, b"not found", "text/plain")

        def _token(self, form: dict[str, str]) -> None:
            fault = provider.fault
            if fault == "html":
                self._send(200, b"<html><body>Sign in</body></html>", "text/html")
                return
            if fault == "500":
                self._send(500, b"Internal Server Error", "text/plain")
                return
            if fault == "missing":
                self._json(200, {"token_type": "Bearer"})
                return
            if fault == "slow":
                time.sleep(provider.slow_s)
            self._json(*provider.token(form, self._basic()))

        def _basic(self) -> tuple[str, str] | None:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            raw = base64.b64decode(header[6:]).decode()
            user, _, password = raw.partition(":")
            return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _send(
            self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
        ) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client went away (a timeout test)

    return Handler


_OAUTH2_PASSDB = """
auth_mechanisms = plain login xoauth2 oauthbearer
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {conf}
}}
"""

_OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}/introspect
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
"""


class OAuthDovecot(Dovecot):
    """Dovecot trusting :class:`TestProvider` through a second passdb ``driver = oauth2``."""

    def __init__(self, provider: TestProvider) -> None:
        super().__init__()
        self.provider = provider
        conf = Path(self.base_dir) / "dovecot-oauth2.conf.ext"
        conf.write_text(_OAUTH2_CONF.format(url=provider.url))
        conf.chmod(0o644)
        self.extra_config = _OAUTH2_PASSDB.format(conf=conf)

    def add_oauth_user(self, name: str) -> str:
        """A user with a mailbox and no password at all: only a token logs them in."""
        addr = self.address(name)
        path = self.auth_dir / "userdb" / addr
        path.write_text("{}")
        path.chmod(0o644)
        self.users[addr] = ""
        self._ensure_maildir(addr, "INBOX")
        for listener in list(self._user_listeners):  # Postfix's virtual mailbox list
            listener([addr])
        return addr


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def redirect_of(url: str) -> str:
    """Where the provider sends the browser after sign-in (its 302), without going there."""
    try:
        urllib.request.build_opener(_NoRedirect).open(url, timeout=30)
    except urllib.error.HTTPError as exc:
        return str(exc.headers["Location"])
    raise AssertionError("the provider did not redirect")


def add_test_provider(cli: Cli, server: TestProvider, name: str = "testidp") -> None:
    """``oauth provider add`` for the test provider (with its device endpoint)."""
    cli.ok(
        "oauth", "provider", "add", name, "--authorize-url", f"{server.url}/authorize",
        "--token-url", f"{server.url}/token", "--device-url", f"{server.url}/device",
        "--client-id", CLIENT_ID, "--client-secret-stdin", "--scope", "mail",
        input=CLIENT_SECRET + "\n",
    )  # fmt: skip


def authorize(cli: Cli, server: TestProvider, address: str) -> None:
    """The owner signs in (code flow with PKCE, as `mailbox authorize --paste` does)."""
    from crm.face import Database
    from crm.face import oauth as face
    from crm.face.relay import SecretBox

    db = Database(cli.env["MAILCRM_DATABASE_URL"])
    secrets = SecretBox(cli.env["MAILCRM_SECRET_KEY"].encode())
    try:
        server.user = address
        provider = face.mailbox_provider(db, secrets, address)
        auth = face.begin(provider, "http://127.0.0.1:8400/")
        face.finish(db, secrets, address, provider, auth, redirect_of(auth.url))
    finally:
        db.dispose()


@pytest.fixture(scope="session")
def provider() -> Iterator[TestProvider]:
    """The session's test OAuth2 provider."""
    server = TestProvider().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def oauth_dovecot(provider: TestProvider) -> Iterator[OAuthDovecot]:
    """A Dovecot that accepts the test provider's tokens (XOAUTH2, OAUTHBEARER)."""
    _skip_unless_available()
    with OAuthDovecot(provider) as server:
        yield server


@pytest.fixture(scope="session")
def oauth_postfix(oauth_dovecot: OAuthDovecot) -> Iterator[Postfix]:
    """Postfix submission with Dovecot SASL from :func:`oauth_dovecot`: it offers XOAUTH2."""
    _skip_unless_available()
    with Postfix(oauth_dovecot) as server:
        yield server
