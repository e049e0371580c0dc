"""``mailcrm oauth provider add/set/list`` and ``mailcrm mailbox authorize/app-password``
(issue 15): OAuth2 providers, the sign-in of a mailbox's owner (loopback redirect with PKCE,
``--paste``, ``--device``) and the relay's app passwords. Registered by cli.py."""

from __future__ import annotations

import contextlib
import sys
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Annotated, Any

import typer

from crm.errors import InvalidInput, OAuthError
from crm.face import Database
from crm.face import oauth as face
from crm.face.relay import SecretBox

from .common import STATE, Address, JsonOpt, Opt, group, out, print_json

app = group("OAuth2 sign-in for Microsoft 365, Google and other providers (issue 15).")
provider_app = group("OAuth2 providers: endpoints, client id and secret, scopes.")
app.add_typer(provider_app, name="provider")

Name = Annotated[str, typer.Argument(metavar="NAME", show_default=False)]
Url = Annotated[str | None, Opt(metavar="URL")]
ClientId = Annotated[str | None, Opt("--client-id", metavar="ID", help="The app's client id.")]
SecretStdin = Annotated[
    bool, Opt("--client-secret-stdin", help="Read the client secret from stdin.")
]
Scopes = Annotated[list[str] | None, Opt("--scope", metavar="SCOPE", help="Repeatable.")]
#: how long `mailbox authorize` waits for the browser's redirect
WAIT_S = 300.0


def _options(**o: Any) -> face.ProviderOptions:
    """The command's options (its locals: the provider's ``name`` aside) as ProviderOptions."""
    o.pop("name")
    o["scopes"] = o.pop("scope")
    secret = None
    if o.pop("client_secret_stdin"):
        secret = sys.stdin.readline().strip()
        if not secret:
            raise InvalidInput("--client-secret-stdin: no secret on standard input")
    return face.ProviderOptions(client_secret=secret, **o)


@provider_app.command("add")
def provider_add(
    name: Name,
    authorize_url: Url = None,
    token_url: Url = None,
    device_url: Url = None,
    client_id: ClientId = None,
    client_secret_stdin: SecretStdin = False,
    scope: Scopes = None,
) -> None:
    """Add a provider (google and microsoft know their endpoints: give --client-id)."""
    options = _options(**locals())
    face.provider_add(STATE.db, STATE.secrets(), name, options)
    typer.echo(f"provider {name.strip().lower()} added")


@provider_app.command("set")
def provider_set(
    name: Name,
    authorize_url: Url = None,
    token_url: Url = None,
    device_url: Url = None,
    client_id: ClientId = None,
    client_secret_stdin: SecretStdin = False,
    scope: Scopes = None,
) -> None:
    """Change a provider's endpoints, client id, secret or scopes."""
    options = _options(**locals())
    face.provider_set(STATE.db, STATE.secrets(), name, options)
    typer.echo(f"provider {name.strip().lower()} updated")


@provider_app.command("list")
def provider_list(as_json: JsonOpt = False) -> None:
    """The providers: registered ones, and the built-in ones (client_id empty until added)."""
    rows = face.providers(STATE.db)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        client = row["client_id"] or "(not set up: oauth provider add NAME --client-id ID)"
        typer.echo(
            f"{row['name']}: {client}  token {row['token_url']}  "
            f"scopes {' '.join(row['scopes'])}  secret {'yes' if row['has_secret'] else 'no'}"
        )


def authorize(
    address: Address,
    no_browser: Annotated[bool, Opt("--no-browser", help="Only print the URL.")] = False,
    redirect_port: Annotated[
        int, Opt("--redirect-port", metavar="N", min=0, max=65535, help="Loopback port.")
    ] = 0,
    paste: Annotated[bool, Opt("--paste", help="Read the redirected URL from stdin.")] = False,
    device: Annotated[bool, Opt("--device", help="Device-code flow (Microsoft).")] = False,
) -> None:
    """Sign in the mailbox's owner at its OAuth2 provider and keep the refresh token."""
    db, secrets = STATE.db, STATE.secrets()
    provider = face.mailbox_provider(db, secrets, address)
    if device:
        _device(db, secrets, address, provider)
    elif paste:
        auth = face.begin(provider, f"http://127.0.0.1:{redirect_port or 8400}/")
        typer.echo(auth.url)
        typer.echo("open the URL, sign in, then paste the address the browser went to:", err=True)
        face.finish(db, secrets, address, provider, auth, sys.stdin.readline()[:8192])
    else:
        _loopback(db, secrets, address, provider, redirect_port, not no_browser)
    typer.echo(f"mailbox {address} authorized", err=True)


def _loopback(
    db: Database,
    secrets: SecretBox,
    address: str,
    provider: face.Provider,
    port: int,
    browser: bool,
) -> None:
    got: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            answer = b"mailcrm: not an authorization answer"
            if "code=" in self.path or "error=" in self.path:
                got.append(self.path[:8192])
                answer = b"mailcrm: signed in; you may close this window."
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    with HTTPServer(("127.0.0.1", port), Redirect) as server:
        server.timeout = 1.0
        auth = face.begin(provider, f"http://127.0.0.1:{server.server_address[1]}/")
        typer.echo(auth.url)
        sys.stdout.flush()
        if browser:
            with contextlib.suppress(webbrowser.Error):
                webbrowser.open(auth.url)
        deadline = time.monotonic() + WAIT_S
        while not got:
            if time.monotonic() > deadline:
                raise OAuthError("no answer from the browser in 5 minutes: nothing stored")
            server.handle_request()
    face.finish(db, secrets, address, provider, auth, got[0])


def _device(db: Database, secrets: SecretBox, address: str, provider: face.Provider) -> None:
    flow = face.device_start(provider)
    typer.echo(f"open {flow['verification_uri']} and enter the code {flow['user_code']}")
    sys.stdout.flush()
    deadline = time.monotonic() + min(flow["expires_in"], 1800)
    while time.monotonic() < deadline:
        time.sleep(flow["interval"])
        tokens = face.device_poll(provider, flow["device_code"])
        if tokens is not None:
            face.keep(db, secrets, address, tokens)
            return
    raise OAuthError("the device code expired before anyone signed in: nothing stored")


def app_password(
    address: Address,
    revoke: Annotated[
        bool, Opt("--revoke", help="Forget the app password: mail clients are refused.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """A new password for mail clients to log in to the relay (replaces the one before)."""
    if revoke:
        had = face.revoke_app_password(STATE.db, address)
        if as_json:
            print_json({"revoked": had})
        else:
            out.print(f"app password of {address} revoked" if had else f"{address} had none")
        return
    password = face.new_app_password(STATE.db, address)
    if as_json:
        print_json({"password": password})
    else:
        typer.echo(password)


def register(mailbox_app: typer.Typer) -> None:
    """Add ``authorize`` and ``app-password`` to the ``mailbox`` group."""
    mailbox_app.command("authorize")(authorize)
    mailbox_app.command("app-password")(app_password)
