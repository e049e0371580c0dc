"""AUTH PLAIN and LOGIN for the relay, as aiosmtpd *handler* mechanisms (awaited, never blocking).

aiosmtpd awaits ``handler.auth_<MECH>(server, args)``; these functions decode the client's
credentials (initial response or 334 challenges, RFC 4616 / the LOGIN draft) and hand them to an
async ``check(login, password)`` that asks the upstream server. Only PLAIN and LOGIN exist: the
password must reach the upstream as it is, which rules out challenge-response mechanisms.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult

Check = Callable[[str, str], Awaitable[AuthResult]]
BAD_BASE64 = "501 5.5.2 Cannot decode base64"
BAD_SYNTAX = "501 5.5.2 Cannot decode the credentials"


async def _challenge(server: Any, text: str) -> bytes | None:
    """Send a 334 challenge; the decoded answer, or None when the client aborted (handled)."""
    answer = await server.challenge_auth(text)
    return None if answer is MISSING else bytes(answer)


def _b64(value: str) -> bytes | None:
    try:
        return b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _text(value: bytes) -> str | None:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _failed(message: str | None = None) -> AuthResult:
    if message is None:  # the client aborted; aiosmtpd already answered
        return AuthResult(success=False, handled=True)
    return AuthResult(success=False, handled=False, message=message)


async def _first_step(server: Any, args: list[str], prompt: str) -> bytes | AuthResult:
    """The first client step: the initial response given with AUTH, else asked for with a 334."""
    if len(args) > 1:
        blob = _b64(args[1])
        return _failed(BAD_BASE64) if blob is None else blob
    blob = await _challenge(server, prompt)
    return _failed() if blob is None else blob


async def auth_plain(server: Any, args: list[str], check: Check) -> AuthResult:
    """``AUTH PLAIN [initial-response]``: authzid NUL authcid NUL password."""
    blob = await _first_step(server, args, "")
    if isinstance(blob, AuthResult):
        return blob
    parts = blob.split(b"\x00")
    if len(parts) != 3:
        return _failed(BAD_SYNTAX)
    login, password = _text(parts[1]), _text(parts[2])
    if not login or password is None:
        return _failed(BAD_SYNTAX)
    return await check(login, password)


async def auth_login(server: Any, args: list[str], check: Check) -> AuthResult:
    """``AUTH LOGIN [user]``: user name and password in two base64 steps."""
    raw_login = await _first_step(server, args, "Username:")
    if isinstance(raw_login, AuthResult):
        return raw_login
    raw_password = await _challenge(server, "Password:")
    if raw_password is None:
        return _failed()
    login, password = _text(raw_login), _text(raw_password)
    if not login or password is None:
        return _failed(BAD_SYNTAX)
    return await check(login, password)
