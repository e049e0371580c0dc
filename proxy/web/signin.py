"""Web CRM sign-in with the relay's credentials: the mail address and mail password, checked by
logging in to the user's upstream SMTP server exactly as the relay does (the mailbox's own
server, else the company's), under the relay's login throttling.

The password is only passed on to the upstream server; it is never stored or logged here.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from crm.config import Config
from crm.errors import UpstreamError
from crm.face import Database
from crm.face.relay import LoginView, lookup_login
from crm.face.visibility import Viewer
from crm.face.web import signed_in
from crm.vocab import Endpoint
from proxy.smtp.gatekeeper import plaintext_upstream
from proxy.smtp.upstream import UpstreamClient, UpstreamSession
from proxy.throttle import LoginThrottle

log = logging.getLogger(__name__)
MAX_FIELD = 320  # an address is at most this long; a password gets 1 KiB
MAX_PASSWORD = 1024


class SignInRefused(Exception):
    """Sign-in failed; the message is safe to show."""


class SignIn:
    """Checks a login's password against its upstream SMTP server."""

    def __init__(self, config: Config, db: Database) -> None:
        self.config, self.db = config, db
        relay = config.relay
        self.throttle = LoginThrottle(
            free=relay.auth_failures_before_delay,
            delay=relay.auth_delay,
            max_delay=relay.auth_delay_max,
            refuse_after=relay.auth_failures_before_refusal,
            refuse_for=relay.auth_refusal_seconds,
        )
        self.client = UpstreamClient(relay, socket.getfqdn())

    def _endpoint(self, view: LoginView) -> Endpoint | None:
        if view.smtp is not None:
            return Endpoint(*view.smtp)
        relay = self.config.relay
        if not relay.upstream_host:
            return None
        return Endpoint(relay.upstream_host, relay.upstream_port, relay.upstream_tls)

    def _lookup(self, login: str) -> LoginView:
        with self.db.session() as session:
            return lookup_login(session, login)

    def _viewer(self, login: str) -> Viewer | None:
        with self.db.session() as session:
            return signed_in(session, login)

    async def check(self, client: str | None, login: str, password: str) -> Viewer:
        """The viewer once the upstream accepted ``password``; :class:`SignInRefused` else."""
        login = login.strip()
        if not login or not password or len(login) > MAX_FIELD or len(password) > MAX_PASSWORD:
            raise SignInRefused("Wrong email or password.")
        verdict = self.throttle.check(client, login)
        if verdict.refused:
            raise SignInRefused("Too many failed sign-ins: try again later.")
        await asyncio.sleep(verdict.delay)
        view = await asyncio.to_thread(self._lookup, login)
        endpoint = self._endpoint(view)
        if endpoint is None or view.user_email is None or not view.crm_access:
            self.throttle.failed(client, login)
            raise SignInRefused("Wrong email or password.")
        if plaintext_upstream(endpoint) and not self.config.relay.allow_plaintext_upstream:
            raise SignInRefused("Your mail server offers no TLS: the password was not sent.")
        await self._upstream(client, login, password, endpoint)
        viewer = await asyncio.to_thread(self._viewer, login)
        if viewer is None:
            raise SignInRefused("Wrong email or password.")
        return viewer

    async def _upstream(self, client: str | None, login: str, password: str, at: Endpoint) -> None:
        upstream = UpstreamSession(self.client, at)
        try:
            reply = await upstream.login(login, password)
        except UpstreamError as exc:
            log.warning("web sign-in of %r: upstream %s unreachable: %s", login[:80], at, exc)
            raise SignInRefused("Your mail server cannot be reached: try again later.") from exc
        finally:
            upstream.close()
        if not reply.ok:
            if reply.code >= 500:
                self.throttle.failed(client, login)
                log.info("web sign-in of %r refused by %s", login[:80], at)
                raise SignInRefused("Wrong email or password.")
            raise SignInRefused("Your mail server cannot check the password now: try later.")
        self.throttle.succeeded(client, login)
