"""Credentials at rest: mailbox passwords are encrypted with Fernet (``cryptography``).

The key comes from ``MAILCRM_SECRET_KEY``, the config's ``secret_key_file``, or a key file created
on first use beside the default database (mode 0600, in a 0700 directory when that is new). Every
node of a gateway must share the key: the relay only ever loads it (``create=False``).
"""

from __future__ import annotations

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
