"""One mail client's connection to the relay: the aiosmtpd handler, one instance per connection.

It holds the client's upstream session and login. EHLO mirrors what the upstream can take; AUTH
is checked by logging in upstream, after the relay's gatekeeper (:mod:`proxy.smtp.gatekeeper`) let
the attempt through (not throttled, no password in clear to the upstream); MAIL, each RCPT and DATA
are passed through and the upstream's replies go back as they are (cut-through), after the
relay's own checks: the sender must belong to the user (553), recipients are counted (452), each
user has a message rate (450).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiosmtpd.smtp import AuthResult, Envelope, Session

from crm.errors import SecretError
from crm.face.relay import Envelope as SpoolEnvelope
from crm.face.relay import LoginView, domain_of, try_normalize

from . import auth as smtpauth
from . import oauthlogin
from .databuf import MessageBuffer
from .delivery import UNREACHABLE
from .gatekeeper import PLAINTEXT
from .shared import Shared
from .upstream import UpstreamSession, UpstreamUnavailable
from .values import Caps, Reply

log = logging.getLogger("proxy.session")  # its name before the move (issue 17)
AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure: upstream server unreachable"
KEY_MISSING = "454 4.7.0 Temporary authentication failure: gateway not fully configured"
NO_UPSTREAM = "535 5.7.8 Authentication credentials invalid (no upstream server for this login)"


def mirror(responses: list[str], caps: Caps, size: int) -> list[str]:
    """The relay's EHLO lines, minus what the upstream cannot take."""
    out: list[str] = []
    for line in responses:
        word = line[4:].split(" ", 1)[0].upper()
        if word == "SIZE":
            line = f"250-SIZE {size}"
        elif (word == "8BITMIME" and not caps.eightbit) or (
            word == "SMTPUTF8" and not caps.smtputf8
        ):
            continue
        out.append(line)
    return out


def mail_options(options: list[str], caps: Caps) -> tuple[list[str], str | None]:
    """MAIL parameters to forward, or the refusal when the upstream cannot honour one."""
    forward: list[str] = []
    for option in options:
        name, _, value = option.upper().partition("=")
        if name == "SIZE":
            if caps.size and value.isdigit() and int(value) > caps.size:
                return [], "552 5.3.4 Message size exceeds the upstream server's limit"
            if caps.size is not None:
                forward.append(option)
        elif name == "BODY":
            if value == "8BITMIME" and not caps.eightbit:
                return [], "555 5.5.4 BODY=8BITMIME is not supported by the upstream server"
            if caps.eightbit:
                forward.append(option)
        elif name == "SMTPUTF8":
            if not caps.smtputf8:
                return [], "555 5.6.7 SMTPUTF8 is not supported by the upstream server"
            forward.append("SMTPUTF8")
    return forward, None


class RelayConnection:
    """aiosmtpd handler for one client connection."""

    def __init__(self, relay: Shared) -> None:
        self.relay = relay
        self.view: LoginView | None = None
        self.upstream: UpstreamSession | None = None
        self._password = ""
        self.utf8 = False
        self._retry_mail: tuple[str, list[str], bool] | None = None  # MAIL to redo on a new session
        self.refusal: str | None = None  # the login and why the last AUTH failed (for the log)
        self.client: str | None = None  # the real client's address, once known

    # --- greeting and login -------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: Any,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.upstream is not None:
            caps = self.upstream.caps
        else:
            caps = await self.relay.default_caps()
        server.data_size_limit = self.relay.size_limit(caps)
        return mirror(responses, caps, server.data_size_limit)

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        return await smtpauth.auth_plain(server, args, self._check)

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        return await smtpauth.auth_login(server, args, self._check)

    def _refuse(self, why: str, message: str) -> AuthResult:
        self.refusal = why
        return AuthResult(success=False, handled=False, message=message)

    async def _check(self, login: str, password: str) -> AuthResult:
        gate = self.relay.gatekeeper
        refusal = await gate.before_login(self.client, login)
        if refusal is not None:
            return self._refuse(f"{login}: too many failed logins, not asked upstream", refusal)
        view = await self.relay.directory.lookup(login)
        if view.oauth:
            return await self._check_oauth(login, password, view)
        endpoint = self.relay.directory.endpoint(view)
        if endpoint is None:
            gate.failed(self.client, login)
            return self._refuse(f"{login}: no upstream server known", NO_UPSTREAM)
        if gate.refuses_upstream(endpoint):
            return self._refuse(
                f"{login}: upstream {endpoint} has no TLS, password not sent "
                "(relay.allow_plaintext_upstream is off)",
                PLAINTEXT,
            )
        upstream = UpstreamSession(self.relay.client, endpoint)
        try:
            reply = await upstream.login(login, password)
        except UpstreamUnavailable as exc:
            return self._refuse(
                f"{login}: upstream {endpoint} unreachable: {exc}", AUTH_UNAVAILABLE
            )
        if not reply.ok:
            line = reply.line()
            if reply.code >= 500:
                gate.failed(self.client, login)
            return self._refuse(
                f"{login}: refused by {endpoint}: {line.splitlines()[-1]}",
                line if reply.code >= 500 else AUTH_UNAVAILABLE,
            )
        gate.succeeded(self.client, login)
        if (missing := self.relay.directory.key_missing(view)) is not None:
            upstream.close()  # the password is right, but could not be kept for the CRM
            return self._refuse(f"{login}: {missing}", KEY_MISSING)
        self.view = await self.relay.directory.after_login(view, password)
        self.upstream, self._password = upstream, password
        log.info("relay login %s accepted by %s", login, endpoint)
        return AuthResult(success=True, auth_data=login)

    async def _check_oauth(self, login: str, password: str, view: LoginView) -> AuthResult:
        """An OAuth2 mailbox (issue 15): its app password here, its token upstream."""
        gate, directory = self.relay.gatekeeper, self.relay.directory
        if not await oauthlogin.app_password_ok(view, password):
            gate.failed(self.client, login)
            return self._refuse(f"{login}: wrong app password", oauthlogin.BAD_APP_PASSWORD)
        endpoint = directory.endpoint(view)
        if endpoint is None:
            return self._refuse(f"{login}: no upstream server known", NO_UPSTREAM)
        try:
            token = await oauthlogin.token_for(directory.db, directory.secrets(), view)
            upstream, reply = await oauthlogin.upstream_login(
                self.relay.client, endpoint, view, token
            )
        except oauthlogin.TokenUnavailable as exc:
            return self._refuse(f"{login}: {exc}", exc.reply)
        except SecretError as exc:
            return self._refuse(f"{login}: {exc}", KEY_MISSING)
        except UpstreamUnavailable as exc:
            return self._refuse(
                f"{login}: upstream {endpoint} unreachable: {exc}", AUTH_UNAVAILABLE
            )
        if not reply.ok:  # the app password was right: the token is the gateway's affair
            return self._refuse(
                f"{login}: token refused by {endpoint}: {reply.line()}",
                oauthlogin.TOKEN_UNAVAILABLE,
            )
        gate.succeeded(self.client, login)
        self.view, self.upstream, self._password = view, upstream, password
        log.info("relay login %s accepted (app password; XOAUTH2 to %s)", login, endpoint)
        return AuthResult(success=True, auth_data=login)

    async def _relogin(self, fresh: UpstreamSession) -> Reply:
        """A new upstream session for the logged-in client: its password, or a fresh token."""
        assert self.view is not None
        if not self.view.oauth:
            return await fresh.login(self.view.login, self._password)
        directory = self.relay.directory
        try:
            token = await oauthlogin.token_for(directory.db, directory.secrets(), self.view)
        except (oauthlogin.TokenUnavailable, SecretError) as exc:
            raise UpstreamUnavailable(f"no access token: {exc}") from None
        return await fresh.login(self.view.upstream_login or self.view.login, "", token)

    # --- the transaction ----------------------------------------------------------------------

    async def _connected(self) -> bool:
        """Make sure the upstream session is alive; True when it had to be made anew."""
        assert self.upstream is not None and self.view is not None
        if self.upstream.connected:
            if self.upstream.in_transaction:
                await self.upstream.rset()
            if self.upstream.connected:
                return False
        fresh = UpstreamSession(self.relay.client, self.upstream.endpoint)
        reply = await self._relogin(fresh)
        if not reply.ok:
            raise UpstreamUnavailable(f"login refused on reconnect: {reply.line()}")
        self.upstream = fresh
        return True

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        view = self.view
        if view is None or self.upstream is None:
            return "530 5.7.0 Authentication required"
        if try_normalize(address) not in view.senders:
            log.info("relay: %s may not send as %s", view.login, address)
            return f"553 5.7.1 <{address}>: Sender address rejected: not owned by user {view.login}"
        if not self.relay.limiter.allow(view.user_email or view.login.lower()):
            return "450 4.7.1 Too many messages from this user, try again later"
        utf8 = "SMTPUTF8" in options
        try:
            reply = await self._mail(address, options, utf8)
        except UpstreamUnavailable as exc:
            log.warning("relay: upstream unavailable at MAIL: %s", exc)
            return UNREACHABLE.line()
        if reply.ok:
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            self.utf8 = utf8
        return reply.line()

    async def _mail(self, address: str, options: list[str], utf8: bool) -> Reply:
        for attempt in (1, 2):
            fresh = await self._connected()
            assert self.upstream is not None
            forward, refusal = mail_options(options, self.upstream.caps)
            if refusal is not None:
                return Reply(int(refusal[:3]), refusal[4:])
            try:
                reply = await self.upstream.mail(address, forward, utf8)
            except UpstreamUnavailable:
                if fresh or attempt == 2:  # a stale pooled session gets one more try
                    raise
                continue
            self._retry_mail = None if fresh else (address, options, utf8)
            return reply
        raise AssertionError("unreachable")

    async def _rcpt(self, address: str) -> Reply:
        """RCPT upstream; a pipelined first RCPT that finds the kept session dead is tried once
        more on a new one (MAIL went with it, so nothing of the transaction was lost)."""
        assert self.upstream is not None
        retry, self._retry_mail = self._retry_mail, None
        try:
            return await self.upstream.rcpt(address, self.utf8)
        except UpstreamUnavailable:
            if retry is None:
                raise
        reply = await self._mail(*retry)
        if not reply.ok:
            return reply
        return await self.upstream.rcpt(address, self.utf8)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.upstream is None:
            return "530 5.7.0 Authentication required"
        if len(envelope.rcpt_tos) >= self.relay.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        try:
            reply = await self._rcpt(address)
        except UpstreamUnavailable as exc:
            log.warning("relay: upstream unavailable at RCPT: %s", exc)
            return UNREACHABLE.line()
        if reply.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return reply.line()

    def new_buffer(self) -> MessageBuffer:
        return MessageBuffer(self.relay.spill_at, self.relay.spill_dir)

    def begin_data(self) -> asyncio.Task[Reply] | None:
        """The client said DATA: say it upstream now, the 354 arrives while the client sends."""
        if self.upstream is None or not self.upstream.in_transaction:
            return None
        return asyncio.create_task(self.upstream.start_data())

    async def deliver(
        self, envelope: Envelope, buffer: MessageBuffer, started: asyncio.Task[Reply] | None
    ) -> str:
        """The reply to DATA: the upstream's, after the capture copy is safe."""
        view, upstream = self.view, self.upstream
        if view is None or upstream is None or started is None:
            return UNREACHABLE.line()
        sender = try_normalize(envelope.mail_from or "")
        buffer.ensure_message_id(domain_of(sender) if sender else self.relay.hostname)
        env = None
        if view.mailbox and view.linked:
            env = SpoolEnvelope(view.mailbox, envelope.mail_from, list(envelope.rcpt_tos))
        reply = await self.relay.deliverer.deliver(upstream, started, buffer, env)
        log.info(
            "relay %s -> %s: %s (%d bytes)",
            envelope.mail_from,
            ",".join(envelope.rcpt_tos),
            reply.line().splitlines()[-1],
            buffer.total,
        )
        return reply.line()

    async def abort(self, started: asyncio.Task[Reply] | None = None) -> None:
        """The client's transaction ended locally (e.g. too big): end the upstream's too.

        An upstream already in DATA cannot be told to forget the message but by hanging up; one
        waiting for a BDAT (CHUNKING) has had nothing of it and is simply reset.
        """
        if started is not None:
            started.cancel()
            with contextlib.suppress(BaseException):
                await started
            if self.upstream is not None and self.upstream.deferred:
                await self.upstream.rset()
            elif self.upstream is not None:
                self.upstream.close()
        elif self.upstream is not None and self.upstream.in_transaction:
            await self.upstream.rset()

    async def handle_RSET(self, server: Any, session: Session, envelope: Envelope) -> str:
        await self.abort()
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.upstream is not None:
            await self.upstream.quit()
        return "221 2.0.0 Bye"

    async def handle_exception(self, error: Exception) -> str:
        log.exception("relay session error", exc_info=error)
        return "451 4.3.0 Local error in processing, try again later"

    def closed(self) -> None:
        """The client went away: drop the upstream session with it."""
        if self.upstream is not None:
            self.upstream.close()
        self._password = ""
