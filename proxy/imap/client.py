"""One IMAP connection: aioimaplib's protocol with TLS, timeouts and loss detection added.

aioimaplib 2.0.x leaves a command waiting forever when the server closes the connection (its
issue #110), has no STARTTLS, drops untagged responses no command asked for (VANISHED, EXISTS),
and parses with one recursion per response line (issue #118). :class:`ImapClient` wraps its
protocol object (:mod:`.protocol`): every command races a connection-lost future and a timeout,
STARTTLS upgrades the transport in place, unsolicited responses are observed
(:attr:`ImapClient.changed`, :meth:`ImapClient.take_vanished`), and the parser runs as a loop. The
sync code still asks for everything in bounded UID chunks, which keeps responses and memory small.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aioimaplib import aioimaplib as aio

from crm import vocab
from crm.errors import UpstreamAuthError, UpstreamError
from crm.vocab import is_loopback

from . import parse, utf7
from .protocol import FetchCommand, Protocol
from .tlsconn import open_connection, shared_context, start_tls

log = logging.getLogger(__name__)
T = TypeVar("T")
_NOTICES = (b"EXISTS", b"EXPUNGE", b"FETCH", b"VANISHED", b"RECENT")


class ConnectionLost(UpstreamError):
    """The server closed the connection, or stopped answering."""


class CommandFailed(UpstreamError):
    """The server answered NO or BAD."""


@dataclass(frozen=True)
class Endpoint(vocab.Endpoint):
    """Where and how to reach one IMAP account: the server and the account's credentials."""

    login: str
    password: str = field(repr=False)
    ca_file: str | None = None
    insecure: bool = False
    #: the mailbox signs in with OAuth2 (issue 15): ``password`` is unused, the session is given
    #: an access token at login
    oauth: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        """Certificates are checked unless the admin said ``insecure``; the context is shared
        with every endpoint of the same CA file and mode (:mod:`.tlsconn`)."""
        return shared_context(self.ca_file, self.insecure)


class ImapClient:
    """An IMAP session on one connection; every method raises UpstreamError subclasses."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.protocol: Protocol | None = None
        self.lost: asyncio.Future[None] | None = None
        self.changed = asyncio.Event()
        self.changed_at = 0.0  # monotonic time the server's first unnoted change arrived
        self.selected: str | None = None
        self._vanished: list[tuple[int, int]] = []
        self._fetching = False
        self.needs_scan = False

    # -- connection -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection (TLS per the endpoint), read the greeting, upgrade STARTTLS."""
        ep = self.endpoint
        if ep.tls == "none" and not is_loopback(ep.host):
            raise UpstreamError(f"plaintext IMAP to {ep.host} refused: use ssl or starttls")
        loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        self.protocol = Protocol(loop, self)
        context = ep.ssl_context() if ep.tls == "ssl" else None
        try:
            await asyncio.wait_for(
                open_connection(loop, self.protocol, ep.host, ep.port, context), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {ep.host}:{ep.port}: {_why(exc)}") from exc
        await self.guard(self.protocol.wait("AUTH|NONAUTH"), "greeting")
        if ep.tls == "starttls":
            await self._starttls()

    async def _starttls(self) -> None:
        proto = self._proto()
        if "STARTTLS" not in proto.capabilities:
            raise UpstreamError(f"{self.endpoint.host} offers no STARTTLS")
        response = await self.guard(
            proto.execute(aio.Command("STARTTLS", proto.new_tag(), loop=proto.loop)), "STARTTLS"
        )
        _check(response, "STARTTLS")
        loop = asyncio.get_running_loop()
        try:
            transport = await asyncio.wait_for(
                start_tls(
                    loop, proto.transport, proto, self.endpoint.ssl_context(), self.endpoint.host
                ),
                self.timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(f"STARTTLS with {self.endpoint.host} failed: {_why(exc)}") from exc
        proto.transport = transport
        await self.guard(proto.capability(), "CAPABILITY")

    async def login(self, token: str | None = None) -> None:
        """LOGIN, or SASL with an OAuth2 ``token``; a refusal raises UpstreamAuthError with the
        server's words."""
        if token is not None:
            await self._oauth_login(token)
            return
        proto = self._proto()
        if "LOGINDISABLED" in proto.capabilities:
            raise UpstreamAuthError(f"{self.endpoint.host} does not allow LOGIN here")
        response = await self.guard(
            proto.login(aio.quoted(self.endpoint.login), self.endpoint.password), "LOGIN"
        )
        if response.result != "OK":
            text = parse.status_text(response.lines) or "login refused"
            raise UpstreamAuthError(f"IMAP login as {self.endpoint.login} failed: {text}")
        await self.guard(proto.capability(), "CAPABILITY")

    async def _oauth_login(self, token: str) -> None:
        """OAUTHBEARER (RFC 7628) where the server offers it, else XOAUTH2."""
        proto, user = self._proto(), self.endpoint.login
        if "AUTH=OAUTHBEARER" in self.capabilities:
            mechanism = "OAUTHBEARER"
            initial = f"n,a={user},\x01auth=Bearer {token}\x01\x01"
        elif "AUTH=XOAUTH2" in self.capabilities:
            mechanism, initial = "XOAUTH2", f"user={user}\x01auth=Bearer {token}\x01\x01"
        else:
            raise UpstreamAuthError(f"{self.endpoint.host} offers neither XOAUTH2 nor OAUTHBEARER")
        response = await self.guard(
            proto.authenticate(mechanism, initial.encode(), token), f"AUTHENTICATE {mechanism}"
        )
        if response.result != "OK":
            text = parse.status_text(response.lines) or "login refused"
            raise UpstreamAuthError(f"IMAP {mechanism} login as {user} failed: {text}")
        await self.guard(proto.capability(), "CAPABILITY")

    def connection_lost(self, exc: Exception | None) -> None:
        """aioimaplib's callback: wake every command waiting on this connection."""
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        self.changed.set()

    @property
    def is_lost(self) -> bool:
        """True once the connection is gone."""
        return self.lost is None or self.lost.done()

    def abort(self) -> None:
        """Drop the connection at once (used by watchdogs)."""
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.connection_lost(None)

    async def logout(self) -> None:
        """LOGOUT politely, briefly; then close whatever is left."""
        if not self.is_lost:
            try:
                await asyncio.wait_for(self._proto().logout(), 3.0)
            except Exception as exc:  # a failing goodbye changes nothing
                log.debug("logout from %s: %s", self.endpoint.host, exc)
        self.abort()

    # -- observation ---------------------------------------------------------------------------

    def observe(self, line: bytes) -> None:
        """Note unsolicited changes: VANISHED UIDs are kept for the sync, any change wakes IDLE."""
        head = line.split(b" ", 2)[:2]
        if self._fetching and b"FETCH" in head:
            return
        if any(word in _NOTICES for word in head):
            if not self.changed.is_set():
                self.changed_at = time.monotonic()
            self.changed.set()
            self.needs_scan = self.needs_scan or not any(w in (b"EXISTS", b"RECENT") for w in head)
        if head[0] == b"VANISHED":
            self._vanished.extend(parse.parse_vanished(line))

    def take_vanished(self) -> list[tuple[int, int]]:
        """UID ranges reported VANISHED in the selected folder since the last call."""
        found, self._vanished = self._vanished, []
        return found

    # -- commands ------------------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        """The server's capabilities (upper-case)."""
        return frozenset(c.upper() for c in self._proto().capabilities)

    def has(self, capability: str) -> bool:
        """True when the server announced ``capability``."""
        return capability.upper() in self.capabilities

    async def simple(self, name: str, *args: str, timeout: float | None = None) -> aio.Response:
        """Run one command and insist on OK."""
        proto = self._proto()
        command = aio.Command(name, proto.new_tag(), *args, loop=proto.loop)
        response = await self.guard(proto.execute(command), name, timeout)
        return _check(response, name)

    async def enable(self, *capabilities: str) -> None:
        """ENABLE the given extensions (those the server offers)."""
        wanted = [c for c in capabilities if self.has(c)]
        if wanted and self.has("ENABLE"):
            await self.simple("ENABLE", *wanted)

    async def list_folders(
        self, pattern: str = "*", special_use: bool = False
    ) -> list[parse.ListEntry]:
        """LIST ``pattern`` (readable name); ``special_use`` asks for SPECIAL-USE attributes."""
        args = ['""', parse.quote(utf7.encode(pattern))]
        if special_use and self.has("SPECIAL-USE") and self.has("LIST-EXTENDED"):
            args += ["RETURN", "(SPECIAL-USE)"]
        response = await self.simple("LIST", *args)
        return parse.parse_list(response.lines[:-1])

    async def select(self, folder: str) -> parse.SelectInfo:
        """SELECT a folder by its readable name."""
        self.selected = None
        self.needs_scan = False
        self.take_vanished()
        proto = self._proto()
        command = aio.Command("SELECT", proto.new_tag(), parse.quote(utf7.encode(folder)))
        response = await self.guard(proto.execute(command), "SELECT")
        proto.state = aio.SELECTED if response.result == "OK" else aio.AUTH
        _check(response, f"SELECT {folder}")
        self.selected = folder
        return parse.parse_select(response.lines)

    async def uid_search(self, criteria: str) -> list[int]:
        """UID SEARCH; the caller bounds the result with a UID range."""
        proto = self._proto()
        response = await self.guard(proto.search(criteria, charset=None, by_uid=True), "UID SEARCH")
        return parse.parse_search(_check(response, "UID SEARCH").lines)

    async def uid_fetch(
        self, uids: Sequence[int] | str, items: str, modifiers: str = ""
    ) -> list[parse.FetchRecord]:
        """UID FETCH; the timeout counts silence, not the whole transfer."""
        uid_set = uids if isinstance(uids, str) else parse.compact(uids)
        proto = self._proto()
        parts = f"{items} {modifiers}".strip()
        self._fetching = True
        try:
            command = FetchCommand(
                proto.new_tag(), uid_set, parts, prefix="UID", loop=proto.loop, timeout=self.timeout
            )
            response = await self.guard(proto.execute(command), "UID FETCH", 0)
        finally:
            self._fetching = False
        return parse.parse_fetch(_check(response, "UID FETCH").lines[:-1])

    async def uid_store(self, uids: Sequence[int], change: str, flags: str) -> None:
        """UID STORE ``change`` (e.g. ``+FLAGS.SILENT``) ``flags`` on ``uids``."""
        proto = self._proto()
        response = await self.guard(
            proto.store(parse.compact(uids), change, flags, by_uid=True), "UID STORE"
        )
        _check(response, "UID STORE")

    async def noop(self) -> None:
        """NOOP: proves the connection alive and collects pending notices."""
        await self.simple("NOOP")

    # -- plumbing ------------------------------------------------------------------------------

    def _proto(self) -> Protocol:
        if self.protocol is None or self.is_lost:
            raise ConnectionLost(f"not connected to {self.endpoint.host}")
        return self.protocol

    async def guard(self, awaitable: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """Await ``awaitable`` unless the connection is lost or ``timeout`` (0: none) passes."""
        if self.lost is None:
            raise ConnectionLost(f"not connected to {self.endpoint.host}")
        task = asyncio.ensure_future(awaitable)
        limit = self.timeout if timeout is None else (timeout or None)
        waits: list[asyncio.Future[Any]] = [task, self.lost]
        done, _ = await asyncio.wait(waits, timeout=limit, return_when="FIRST_COMPLETED")
        if task in done:
            try:
                return task.result()
            except aio.CommandTimeout as exc:
                self.abort()
                raise ConnectionLost(f"{what}: {self.endpoint.host} stopped answering") from exc
            except (aio.Abort, aio.Error) as exc:
                self.abort()
                raise ConnectionLost(f"{what}: {exc}") from exc
        task.cancel()
        if self.is_lost:
            raise ConnectionLost(f"{what}: {self.endpoint.host} closed the connection")
        self.abort()
        raise ConnectionLost(f"{what}: no answer from {self.endpoint.host} in {limit:.0f} s")


def _check(response: aio.Response, what: str) -> aio.Response:
    if response.result != "OK":
        text = parse.status_text(response.lines)
        raise CommandFailed(f"{what} refused: {response.result} {text}".strip())
    return response


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
