"""The local file spool: capture copies kept on disk, durable the way an MTA's queue is.

The relay writes here first on SQLite, and on PostgreSQL whenever the database cannot take a
copy in time (see :mod:`proxy.delivery`); the spool worker moves the files into the ``spool``
table. A file holds one message or a batch of them (the copies that arrived together: one
write, one fsync, one rename and one directory fsync for the lot), under
``<dir>/<time>-<uuid>.msg``; it is written under a hidden temporary name and renamed into
place, so a reader only ever sees whole files.

Formats (both read): version 1, one message: ``MAILCRM-SPOOL 1 <envelope JSON>\\n<raw>``;
version 2, a batch: ``MAILCRM-SPOOL 2\\n`` then per message ``<envelope JSON with "size">\\n``
and that many raw bytes. A single message is written as version 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import MailcrmError
from .models import utcnow
from .spool import Envelope

MAGIC = b"MAILCRM-SPOOL 1 "
MAGIC_BATCH = b"MAILCRM-SPOOL 2\n"
Item = tuple[bytes, Envelope]


class FileSpool:
    """Capture copies on disk: ``<dir>/<time>-<uuid>.msg``, each written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put_many(self, items: Sequence[Item]) -> Path:
        """Write messages into one file: written, fsync'd, renamed into place, directory fsync'd;
        the file survives a crash once this returns."""
        tmp = self.write_hidden(items)
        return self.publish([tmp])[0]

    def write_hidden(self, items: Sequence[Item]) -> Path:
        """Write and fsync a file under a hidden name: durable, but not in the spool yet.

        The relay writes a copy this way while the upstream still decides; :meth:`publish` puts
        it in the spool once the upstream accepted, :meth:`discard` drops it otherwise.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{utcnow():%Y%m%d%H%M%S%f}-{uuid.uuid4().hex}.msg"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for piece in _encode(items):
                _write_all(fd, piece)
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def write_each_hidden(self, items: Sequence[Item]) -> list[Path]:
        """:meth:`write_hidden` for each message on its own (each is published or not alone)."""
        return [self.write_hidden([item]) for item in items]

    def publish(self, hidden: Sequence[Path]) -> list[Path]:
        """Rename hidden files into the spool, then one directory fsync makes that durable."""
        final = [tmp.with_name(tmp.name[1 : -len(".tmp")]) for tmp in hidden]
        for tmp, path in zip(hidden, final, strict=True):
            tmp.rename(path)
        self._sync_dir()
        return final

    @staticmethod
    def discard(hidden: Path) -> None:
        """Drop a hidden file that will not be published."""
        hidden.unlink(missing_ok=True)

    def purge_hidden(self, older_than: float) -> int:
        """Remove hidden files left by a crash more than ``older_than`` seconds ago; how many."""
        if not self.directory.is_dir():
            return 0
        cutoff, count = time.time() - older_than, 0
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".") and entry.name.endswith(".msg.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        count += 1
        return count

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def paths(self, limit: int | None = None) -> list[Path]:
        """Waiting files, oldest first (the ``limit`` oldest)."""
        if not self.directory.is_dir():
            return []
        names = sorted(e.name for e in os.scandir(self.directory)
                       if e.name.endswith(".msg") and e.name[:1].isdigit())
        return [self.directory / name for name in names[:limit]]

    @staticmethod
    def read(path: Path) -> list[tuple[Envelope, bytes]]:
        """The messages of one file, in the order they were written."""
        data = path.read_bytes()
        if data.startswith(MAGIC_BATCH):
            return _decode_batch(path, data, len(MAGIC_BATCH))
        header, _, raw = data.partition(b"\n")
        if not header.startswith(MAGIC):
            raise MailcrmError(f"{path} is not a mailcrm spool file")
        meta: dict[str, Any] = json.loads(header[len(MAGIC) :])
        return [(Envelope(**meta), raw)]


def _meta(env: Envelope, **extra: Any) -> bytes:
    return json.dumps({**asdict(env), **extra}, ensure_ascii=True).encode("ascii")


def _encode(items: Sequence[Item]) -> list[bytes]:
    if len(items) == 1:
        raw, env = items[0]
        return [MAGIC + _meta(env) + b"\n", raw]
    pieces = [MAGIC_BATCH]
    for raw, env in items:
        pieces += [_meta(env, size=len(raw)) + b"\n", raw]
    return pieces


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _decode_batch(path: Path, data: bytes, pos: int) -> list[tuple[Envelope, bytes]]:
    out: list[tuple[Envelope, bytes]] = []
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            raise MailcrmError(f"{path}: spool batch entry without its envelope line")
        meta: dict[str, Any] = json.loads(data[pos:end])
        size = meta.pop("size")
        if not isinstance(size, int) or end + 1 + size > len(data):
            raise MailcrmError(f"{path}: spool batch entry cut short")
        out.append((Envelope(**meta), data[end + 1 : end + 1 + size]))
        pos = end + 1 + size
    return out
