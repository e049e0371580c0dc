"""HTTP Basic sign-in for DAV with the relay's credentials: the user's mail address and mail
password, checked by logging in to the user's upstream SMTP server (as the relay's AUTH does),
remembered for ``CACHE_SECONDS`` (clients send many requests), throttled as the relay is
(:class:`proxy.signin.PasswordCheck`). A sign-in counts as the owner being active (T1)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from typing import Any

from crm.config import Config
from crm.face import Database
from crm.face import dav as face

from ..signin import PLAINTEXT, THROTTLED, UNAVAILABLE, PasswordCheck, SignInFailed

log = logging.getLogger("proxy.dav")
CACHE_SECONDS = 120.0
MAX_CACHE = 10_000
MAX_CREDENTIALS = 2048  # characters of a Basic header
STATUS = {THROTTLED: 429, PLAINTEXT: 503, UNAVAILABLE: 503}  # else 401: wrong credentials


class Refused(Exception):
    """Sign-in refused: ``status`` 401 (wrong or no credentials), 403, 429 or 503."""

    def __init__(self, status: int, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after


def credentials(header: str | None) -> tuple[str, str] | None:
    """(login, password) of a Basic ``Authorization`` header, or None."""
    if not header or len(header) > MAX_CREDENTIALS:
        return None
    scheme, _, blob = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(blob.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    login, sep, password = text.partition(":")
    return (login.strip(), password) if sep and login.strip() else None


class SignIn:
    """Checks Basic credentials; the viewer (:func:`crm.face.dav.signed_in`) on success."""

    def __init__(self, config: Config, db: Database) -> None:
        self.db = db
        self.passwords = PasswordCheck(config, db, "dav")
        self._cache: dict[tuple[str, bytes], tuple[float, str]] = {}

    async def viewer(self, client: str | None, header: str | None) -> Any:
        found = credentials(header)
        if found is None:
            raise Refused(401, "sign in with your mail address and mail password")
        login, password = found
        key = (login.lower(), hashlib.sha256(password.encode()).digest())
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            email = cached[1]
        else:
            email = await self._check(client, login, password)
            if len(self._cache) >= MAX_CACHE:
                self._cache.clear()
            self._cache[key] = (time.monotonic(), email)
        viewer = await asyncio.to_thread(face.signed_in, self.db, email)
        if viewer is None:
            raise Refused(403, f"{email} has no access to the CRM")
        return viewer

    async def _check(self, client: str | None, login: str, password: str) -> str:
        try:
            view = await self.passwords.check(client, login, password)
        except SignInFailed as failed:
            status = STATUS.get(failed.kind, 401)
            raise Refused(status, str(failed), failed.retry_after) from failed
        assert view.user_email is not None
        return view.user_email
