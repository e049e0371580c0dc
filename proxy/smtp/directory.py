"""Who a relay login is: the CRM's answer, remembered so a database outage does not stop mail.

:class:`Directory` asks :mod:`crm.mailboxes.linking` (through the
:class:`~proxy.smtp.dbgate.DbGate`) which user and mailbox a login belongs to, which upstream server
checks its password, and which sender addresses it may use; after the upstream accepted the password
it links the user's mailbox (U3). Answers are cached per login: while the database is down, known
users keep sending with what was last known, unknown ones are checked against the company's upstream
server.

Linking stores the login's password sealed with the installation's secret key, which every node
shares. The relay never makes a key of its own: a node without the key would seal passwords
no other node can open, so there a login that would store its password is refused for now
(``454``, :meth:`Directory.key_missing`) and the log says which key is missing.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from crm.config import Config
from crm.errors import MailcrmError, SecretError
from crm.face import Database
from crm.face.relay import (
    LoginView,
    SecretBox,
    link_on_login,
    load_key,
    lookup_login,
    try_normalize,
)
from crm.vocab import Endpoint

from .dbgate import DbGate, DbUnavailable

log = logging.getLogger("proxy.directory")  # its name before the move (issue 17)


class Directory:
    """Login lookups and U3 linking for the relay, with a last-known-good cache."""

    def __init__(self, config: Config, db: Database, gate: DbGate) -> None:
        self.config = config
        self.db = db
        self.gate = gate
        self._cache: dict[str, LoginView] = {}
        self._secrets: SecretBox | None = None
        self._said_missing = False

    def company_endpoint(self) -> Endpoint | None:
        """The company's own upstream server from the config, if any."""
        relay = self.config.relay
        if not relay.upstream_host:
            return None
        return Endpoint(relay.upstream_host, relay.upstream_port, relay.upstream_tls)

    def endpoint(self, view: LoginView) -> Endpoint | None:
        """The mailbox's own SMTP server, else the company's."""
        if view.smtp is not None:
            return Endpoint(*view.smtp)
        return self.company_endpoint()

    async def lookup(self, login: str) -> LoginView:
        """The CRM's view of ``login``; the cached or a minimal one when the database is down."""
        key = login.strip().lower()
        try:
            view = await self.gate.run(self._lookup, login)
        except DbUnavailable:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            address = try_normalize(login)
            senders = frozenset({address}) if address else frozenset()
            # Unknown while the CRM is away: spool for the login's own address; the worker
            # captures it later if that turns out to be a linked mailbox.
            return LoginView(
                login=login, mailbox=address, linked=address is not None, senders=senders
            )
        self._cache[key] = view
        return view

    def _lookup(self, login: str) -> LoginView:
        with self.db.session() as session:
            return lookup_login(session, login)

    async def after_login(self, view: LoginView, password: str) -> LoginView:
        """U3 and T1 once the password is proven; the view again (the mailbox may be new)."""
        try:
            fresh = await self.gate.run(self._link, view.login, password)
        except (DbUnavailable, MailcrmError) as exc:
            log.warning("relay login of %s: CRM not updated (%s)", view.login, exc)
            if view.crm_access and view.user_email and view.mailbox is None:
                # Spool for the mailbox the next login links: the worker retries until then.
                return replace(view, mailbox=view.user_email, linked=True)
            return view
        self._cache[view.login.strip().lower()] = fresh
        return replace(fresh, smtp=fresh.smtp or view.smtp)

    def secrets(self) -> SecretBox:
        """The shared key's box; :class:`SecretError` when this node lacks the key (never made
        here: a key of this node's own would seal passwords other nodes cannot open)."""
        if self._secrets is None:
            self._secrets = SecretBox(load_key(self.config, create=False))
        return self._secrets

    def key_missing(self, view: LoginView) -> str | None:
        """Why ``view``'s login cannot be linked on this node (None: it can, or needs no key)."""
        if not view.crm_access:
            return None
        try:
            self.secrets()
        except SecretError as exc:
            if not self._said_missing:
                self._said_missing = True
                log.error("relay: %s; CRM users' logins are refused (454) until it is there", exc)
            return str(exc)
        return None

    def _link(self, login: str, password: str) -> LoginView:
        with self.db.session() as session:
            return link_on_login(session, self.secrets(), self.config, login, password)
