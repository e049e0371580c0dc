"""What the relay lets one client do, so that no client can lock the others out or guess passwords.

:class:`Gatekeeper` (one per relay) keeps:

* the open connections per client address (``relay.max_connections_per_client``, IPv6 by /64,
  0 for no limit): one more is told ``421`` before its greeting;
* how long a connection may stay without logging in (``relay.unauthenticated_timeout`` from its
  start; ``relay.unauthenticated_timeout_busy`` while more than half of ``max_connections`` are
  open, as Postfix's stress mode shortens its timeouts), so idle connections cannot hold the
  places of those who log in;
* failed logins per client address and per login (:class:`~proxy.throttle.LoginThrottle`): a
  growing delay, waited in that session alone, then ``454 4.7.0`` for a while, decided before
  the upstream server is asked, so a guesser reaches neither the upstream nor its own penalty
  for the gateway's address (Dovecot's, which would slow every user's login);
* the rule that a password never goes to an upstream server in clear: ``smtp_tls = none`` is
  refused but for a loopback upstream, unless ``relay.allow_plaintext_upstream`` says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from crm.config import RelayConfig
from crm.vocab import Endpoint, is_loopback
from proxy.throttle import LoginThrottle, client_key

log = logging.getLogger(__name__)
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try again later"
LOGIN_TIMEOUT = "421 4.4.2 Error: timeout exceeded (no login in time)"
THROTTLED = "454 4.7.0 Too many failed logins, try again later"
PLAINTEXT = (
    "454 4.7.0 Temporary authentication failure: the upstream server for this login "
    "is not reached over TLS; ask the administrator"
)


def plaintext_upstream(endpoint: Endpoint) -> bool:
    """Whether a login through ``endpoint`` would carry its password in clear off this host."""
    return endpoint.tls == "none" and not is_loopback(endpoint.host)


class Gatekeeper:
    """Per-client limits of one relay; ``open_count`` tells how many connections it has."""

    def __init__(self, config: RelayConfig, open_count: Callable[[], int]) -> None:
        self.config = config
        self.open_count = open_count
        self.per_client: dict[str, int] = {}
        self.throttle = LoginThrottle.for_relay(config)

    # --- connections ----------------------------------------------------------------------

    def admit(self, client: str | None) -> bool:
        """Count a connection of ``client``; False (not counted) when it has too many."""
        key = client_key(client)
        count = self.per_client.get(key, 0)
        limit = self.config.max_connections_per_client
        if limit > 0 and count >= limit:
            log.warning("relay: connection from %s refused, %d open from there already", key, count)
            return False
        self.per_client[key] = count + 1
        return True

    def release(self, client: str | None) -> None:
        key = client_key(client)
        count = self.per_client.get(key, 0) - 1
        if count > 0:
            self.per_client[key] = count
        else:
            self.per_client.pop(key, None)

    def login_timeout(self) -> float:
        """Seconds a connection may stay without logging in: shorter while the relay is busy."""
        busy = self.open_count() > self.config.max_connections / 2
        return float(
            self.config.unauthenticated_timeout_busy
            if busy
            else self.config.unauthenticated_timeout
        )

    # --- logins ---------------------------------------------------------------------------

    async def before_login(self, client: str | None, login: str) -> str | None:
        """The refusal for this attempt (nothing asked upstream), or None once its delay (in
        this session only) is over."""
        verdict = self.throttle.check(client, login)
        if verdict.refused:
            return THROTTLED
        if verdict.delay > 0:
            await asyncio.sleep(verdict.delay)
        return None

    def refuses_upstream(self, endpoint: Endpoint) -> bool:
        """True when the password would go to ``endpoint`` in clear and that is not allowed."""
        return plaintext_upstream(endpoint) and not self.config.allow_plaintext_upstream

    def failed(self, client: str | None, login: str) -> None:
        self.throttle.failed(client, login)

    def succeeded(self, client: str | None, login: str) -> None:
        self.throttle.succeeded(client, login)
