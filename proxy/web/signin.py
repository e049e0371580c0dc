"""Web CRM sign-in with the relay's credentials: the mail address and mail password, checked as
the relay does (:class:`proxy.signin.PasswordCheck`), worded for the sign-in page.

The password is only passed on to the upstream server; it is never stored or logged here.
"""

from __future__ import annotations

import asyncio

from crm.config import Config
from crm.face import Database
from crm.face.visibility import Viewer
from crm.face.web import signed_in
from proxy.signin import PLAINTEXT, THROTTLED, UNAVAILABLE, PasswordCheck, SignInFailed

MAX_FIELD = 320  # an address is at most this long; a password gets 1 KiB
MAX_PASSWORD = 1024
WRONG = "Wrong email or password."
SAID = {
    THROTTLED: "Too many failed sign-ins: try again later.",
    PLAINTEXT: "Your mail server offers no TLS: the password was not sent.",
    UNAVAILABLE: "Your mail server cannot be reached or cannot check the password now: try later.",
}


class SignInRefused(Exception):
    """Sign-in failed; the message is safe to show."""


class SignIn:
    """Checks a login's password as the relay does; the signed-in viewer."""

    def __init__(self, config: Config, db: Database) -> None:
        self.db = db
        self.passwords = PasswordCheck(config, db, "web")

    def _viewer(self, login: str) -> Viewer | None:
        with self.db.session() as session:
            return signed_in(session, login)

    async def check(self, client: str | None, login: str, password: str) -> Viewer:
        """The viewer once the upstream accepted ``password``; :class:`SignInRefused` else."""
        login = login.strip()
        if not login or not password or len(login) > MAX_FIELD or len(password) > MAX_PASSWORD:
            raise SignInRefused(WRONG)
        try:
            await self.passwords.check(client, login, password, crm_only=True)
        except SignInFailed as failed:
            raise SignInRefused(SAID.get(failed.kind, WRONG)) from failed
        viewer = await asyncio.to_thread(self._viewer, login)
        if viewer is None:
            raise SignInRefused(WRONG)
        return viewer
