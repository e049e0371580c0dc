"""What one client connection needs from the relay it belongs to, as an interface.

:class:`~proxy.smtp.session.RelayConnection` uses the parts the connections share through
:class:`Shared`; :class:`~proxy.smtp.relay.Relay` has them. So the relay imports the session and
the server, and neither of them imports the relay (no import circle, issue 17).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from crm.config import RelayConfig

from .delivery import Deliverer
from .directory import Directory
from .gatekeeper import Gatekeeper
from .upstream import UpstreamClient
from .values import Caps


class Limiter(Protocol):
    """The per-user rate limit: whether ``key`` may send one more message now."""

    def allow(self, key: str) -> bool: ...


class Shared(Protocol):
    """The relay's shared parts, as the connections see them (read-only)."""

    @property
    def config(self) -> RelayConfig: ...

    @property
    def hostname(self) -> str: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def gatekeeper(self) -> Gatekeeper: ...

    @property
    def client(self) -> UpstreamClient: ...

    @property
    def deliverer(self) -> Deliverer: ...

    @property
    def limiter(self) -> Limiter: ...

    @property
    def spill_at(self) -> int: ...

    @property
    def spill_dir(self) -> Path | None: ...

    async def default_caps(self) -> Caps:
        """What to advertise before AUTH."""

    def size_limit(self, caps: Caps) -> int:
        """The SIZE advertised and enforced."""
