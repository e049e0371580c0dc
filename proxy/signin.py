"""The password check the web CRM and DAV share: the relay's rule for a person signing in.

The mail address and mail password are proven by logging in to the user's upstream SMTP server
(the mailbox's own, else the company's), as the relay's AUTH does; an OAuth2 mailbox's app
password is checked against its hash instead (issue 15). The relay's login throttling applies
(:meth:`proxy.throttle.LoginThrottle.for_relay`), and a password is never sent in clear off this
host unless ``[relay] allow_plaintext_upstream`` says so. The password is passed on, never stored
or logged. Each front end words the refusals its own way (a page, an HTTP status).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from crm.config import Config
from crm.errors import UpstreamError
from crm.face import Database
from crm.face.relay import LoginView, lookup_login
from crm.vocab import Endpoint

from .smtp.gatekeeper import plaintext_upstream
from .smtp.oauthlogin import app_password_ok
from .smtp.upstream import UpstreamClient, UpstreamSession
from .throttle import LoginThrottle

log = logging.getLogger(__name__)
WRONG, THROTTLED, PLAINTEXT, UNAVAILABLE = "wrong", "throttled", "plaintext", "unavailable"


class SignInFailed(Exception):
    """Refused: ``kind`` is WRONG, THROTTLED (``retry_after`` s), PLAINTEXT or UNAVAILABLE."""

    def __init__(self, kind: str, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.kind, self.retry_after = kind, retry_after


class PasswordCheck:
    """Checks a login's password as the relay would; ``name`` (web, dav) names it in the log."""

    def __init__(self, config: Config, db: Database, name: str) -> None:
        self.config, self.db, self.name = config, db, name
        self.throttle = LoginThrottle.for_relay(config.relay)
        self.client = UpstreamClient(config.relay, socket.getfqdn())

    def endpoint(self, view: LoginView) -> Endpoint | None:
        """The SMTP server that checks ``view``'s password (None: none is known)."""
        if view.smtp is not None:
            return Endpoint(*view.smtp)
        relay = self.config.relay
        if not relay.upstream_host:
            return None
        return Endpoint(relay.upstream_host, relay.upstream_port, relay.upstream_tls)

    def _lookup(self, login: str) -> LoginView:
        with self.db.session() as session:
            return lookup_login(session, login)

    async def check(
        self, client: str | None, login: str, password: str, *, crm_only: bool = False
    ) -> LoginView:
        """The login's view once its password is proven; :class:`SignInFailed` else.
        ``crm_only``: a user without CRM access is refused before the upstream is asked."""
        verdict = self.throttle.check(client, login)
        if verdict.refused:
            raise SignInFailed(THROTTLED, "too many failed sign-ins", verdict.retry_after)
        await asyncio.sleep(verdict.delay)
        view = await asyncio.to_thread(self._lookup, login)
        endpoint = self.endpoint(view)
        if view.user_email is None or (crm_only and not view.crm_access):
            self._failed(client, login, "unknown user or no CRM access")
        if view.oauth:
            if not await app_password_ok(view, password):
                self._failed(client, login, "wrong app password")
        elif endpoint is None:
            self._failed(client, login, "no upstream server known")
        else:
            await self._upstream(client, login, password, endpoint)
        self.throttle.succeeded(client, login)
        log.info("%s sign-in of %r accepted", self.name, login[:100])
        return view

    def _failed(self, client: str | None, login: str, why: str) -> None:
        self.throttle.failed(client, login)
        log.info("%s sign-in of %r refused: %s", self.name, login[:100], why)
        raise SignInFailed(WRONG, "wrong address or password")

    async def _upstream(self, client: str | None, login: str, password: str, at: Endpoint) -> None:
        if plaintext_upstream(at) and not self.config.relay.allow_plaintext_upstream:
            raise SignInFailed(PLAINTEXT, f"{at} offers no TLS: the password was not sent")
        upstream = UpstreamSession(self.client, at)
        try:
            reply = await upstream.login(login, password)
        except UpstreamError as exc:
            log.warning("%s sign-in of %r: %s unreachable: %s", self.name, login[:100], at, exc)
            raise SignInFailed(UNAVAILABLE, "the mail server cannot be reached") from exc
        finally:
            upstream.close()
        if reply.code >= 500:
            self._failed(client, login, f"refused by {at}")
        if not reply.ok:
            raise SignInFailed(UNAVAILABLE, "the mail server cannot check passwords now")
