"""Credentials at rest: mailbox passwords and OAuth2 tokens are encrypted with Fernet
(``cryptography``); the relay's app passwords of OAuth2 mailboxes are kept only as a slow hash
(:func:`hash_password`, scrypt).

The key comes from ``MAILCRM_SECRET_KEY``, the config's ``secret_key_file``, or a key file created
on first use beside the default database (mode 0600, in a 0700 directory when that is new). Every
node of a gateway must share the key: the relay only ever loads it (``create=False``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from crm.config import Config, data_dir
from crm.errors import SecretError


def _key_path(config: Config) -> Path:
    if config.secret_key_file:
        return Path(config.secret_key_file)
    return data_dir() / "secret.key"


def load_key(config: Config, create: bool = True) -> bytes:
    """The Fernet key for this installation, created (0600) when absent and allowed."""
    if config.secret_key:
        return config.secret_key.encode()
    path = _key_path(config)
    if path.exists():
        return path.read_bytes().strip()
    if not create:
        raise SecretError(f"no secret key: set MAILCRM_SECRET_KEY or create {path}")
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


class SecretBox:
    """Encrypts and decrypts mailbox credentials."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise SecretError("the secret key is not a valid Fernet key") from exc

    def seal(self, secret: str) -> bytes:
        """Encrypt a password for storage."""
        return self._fernet.encrypt(secret.encode("utf-8"))

    def open(self, token: bytes) -> str:
        """Decrypt a stored password."""
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except InvalidToken as exc:
            raise SecretError("a stored credential cannot be decrypted with this key") from exc


_SCRYPT = {"n": 2**15, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """A slow salted hash (scrypt, N=2^15, r=8, p=1) of a relay app password, for storage."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * 2**20, **_SCRYPT)
    encode = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` value (constant-time compare)."""
    try:
        scheme, n, salt, digest = stored.split("$")
        if scheme != "scrypt" or len(password) > 1024:
            return False
        expected = base64.b64decode(digest)
        found = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=8,
            p=1,
            maxmem=64 * 2**20,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, expected)
