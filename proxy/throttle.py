"""Failed-login throttling, protocol-free: who guessed wrong how often, and what they get now.

A front end that checks passwords (the relay's AUTH today; a web sign-in or DAV Basic auth
tomorrow) asks :meth:`LoginThrottle.check` *before* it asks anyone to verify a password, and
reports the outcome with :meth:`~LoginThrottle.failed` or :meth:`~LoginThrottle.succeeded`.
Failures are counted per client address (:func:`client_key`: an IPv6 client by its /64) and per
login name; the larger count decides: up to ``free`` failures cost nothing, each further one
doubles a delay (``delay``, ``2 * delay``, ... at most ``max_delay``) the front end waits in that
session alone, and at ``refuse_after`` failures the key is refused for ``refuse_for`` seconds
without the password being checked at all. A key's failures are forgotten ``forget_after``
seconds after its last one, or at once for a login on success. At most ``max_keys`` keys are
kept: the least recently failed go first, so memory stays bounded whatever a flood sends.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from crm.config import RelayConfig

MAX_KEYS = 10_000
FORGET_AFTER = 900.0


@dataclass(frozen=True)
class Verdict:
    """What to do with a login attempt: wait ``delay`` seconds first, or refuse it outright."""

    delay: float = 0.0
    refused: bool = False
    retry_after: float = 0.0  # when refused: seconds until the refusal ends


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    refused_until: float = 0.0


def client_key(host: str | None) -> str:
    """The key of a client address: IPv4 as is, IPv6 by its /64 (one host's usual share),
    an IPv4-mapped IPv6 address as IPv4; ``unknown`` when there is none."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.lower()
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    """Counts failed logins per client and per login; see the module's docstring."""

    def __init__(
        self,
        *,
        free: int = 3,
        delay: float = 1.0,
        max_delay: float = 8.0,
        refuse_after: int = 10,
        refuse_for: float = 300.0,
        forget_after: float = FORGET_AFTER,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.delay, self.max_delay = free, delay, max_delay
        self.refuse_after, self.refuse_for = refuse_after, refuse_for
        self.forget_after, self.max_keys = forget_after, max_keys
        self.clock = clock
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()

    @classmethod
    def for_relay(cls, relay: RelayConfig) -> LoginThrottle:
        """The relay's throttling (``[relay] auth_*``), for the relay and every sign-in."""
        return cls(
            free=relay.auth_failures_before_delay,
            delay=relay.auth_delay,
            max_delay=relay.auth_delay_max,
            refuse_after=relay.auth_failures_before_refusal,
            refuse_for=relay.auth_refusal_seconds,
        )

    @staticmethod
    def _keys(client: str | None, login: str | None) -> list[tuple[str, str]]:
        keys = [("client", client_key(client))]
        if login:
            keys.append(("login", login.strip().lower()))
        return keys

    def _get(self, key: tuple[str, str], now: float) -> _Record | None:
        record = self._records.get(key)
        if (
            record is not None
            and now >= record.refused_until
            and (now - record.last >= self.forget_after)
        ):
            del self._records[key]
            return None
        return record

    def check(self, client: str | None, login: str | None) -> Verdict:
        """Before the password is checked: how long to wait first, or that it is refused."""
        now = self.clock()
        records = [r for k in self._keys(client, login) if (r := self._get(k, now)) is not None]
        refused_until = max((r.refused_until for r in records), default=0.0)
        if refused_until > now:
            return Verdict(refused=True, retry_after=refused_until - now)
        failures = max((r.failures for r in records), default=0)
        if failures < self.free:
            return Verdict()
        return Verdict(delay=min(self.max_delay, self.delay * 2 ** (failures - self.free)))

    def failed(self, client: str | None, login: str | None) -> None:
        """The password was wrong (or the login unknown)."""
        now = self.clock()
        for key in self._keys(client, login):
            record = self._get(key, now) or _Record()
            record.failures += 1
            record.last = now
            if record.failures >= self.refuse_after:
                record.refused_until = now + self.refuse_for
                record.failures = self.free  # after the refusal: delays again, not at once
            self._records[key] = record
            self._records.move_to_end(key)
        while len(self._records) > self.max_keys:
            self._records.popitem(last=False)

    def succeeded(self, client: str | None, login: str | None) -> None:
        """The password was right: the login's failures are forgotten (the client's stay:
        other people may share its address, a guesser among them)."""
        if login:
            self._records.pop(("login", login.strip().lower()), None)

    def __len__(self) -> int:
        return len(self._records)
