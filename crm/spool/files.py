"""The local file spool: capture copies kept on disk, durable the way an MTA's queue is.

The relay writes here first on SQLite, and on PostgreSQL whenever the database cannot take a
copy in time (see :mod:`proxy.smtp.delivery`); the spool worker moves the files into the ``spool``
table. The relay appends to a journal segment (:mod:`crm.spool.journal`) and publishes it under
``<dir>/<time>-<uuid>.msg``; a reader only ever sees whole files: those, and segments a crash
left behind once :meth:`FileSpool.recover` has published them.

Formats (both read): version 1, one message: ``MAILCRM-SPOOL 1 <envelope JSON>\\n<raw>``
(written by earlier versions); version 2, a batch: ``MAILCRM-SPOOL 2\\n`` then per message
``<envelope JSON with "size">\\n`` and that many raw bytes (a journal segment).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from crm.errors import MailcrmError

from .queue import Envelope

log = logging.getLogger("crm.filespool")  # its name before the move (issue 17)
MAGIC = b"MAILCRM-SPOOL 1 "
MAGIC_BATCH = b"MAILCRM-SPOOL 2\n"
Item = tuple[bytes, Envelope]
SEGMENT_SUFFIX = ".seg"  # a journal segment still written (hidden: ``.<name>.seg``)
ORPHAN_AGE = 60.0  # s: a hidden segment this old and unlocked was left by a crash


class FileSpool:
    """Capture copies on disk, as the spool worker sees them: ``<dir>/<time>-<uuid>.msg``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def recover(self, min_age: float = ORPHAN_AGE) -> int:
        """Publish journal segments whose writer is gone (a crash: nobody holds their lock and
        they are ``min_age`` seconds old), a record cut short at the end dropped; how many."""
        if not self.directory.is_dir():
            return 0
        cutoff, count = time.time() - min_age, 0
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".") and entry.name.endswith(SEGMENT_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff and _adopt(Path(entry.path)):
                        count += 1
        return count

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

    def paths(self, limit: int | None = None) -> list[Path]:
        """Waiting files, oldest first (the ``limit`` oldest)."""
        if not self.directory.is_dir():
            return []
        names = sorted(
            e.name
            for e in os.scandir(self.directory)
            if e.name.endswith(".msg") and e.name[:1].isdigit()
        )
        return [self.directory / name for name in names[:limit]]

    def waiting(self) -> tuple[int, float | None]:
        """(messages, when the oldest was written: epoch seconds) in published files and journal
        segments, active or left by a crash; only envelope lines are read (for metrics)."""
        if not self.directory.is_dir():
            return 0, None
        count, oldest = 0, None
        for entry in os.scandir(self.directory):
            name = entry.name
            if not (
                (name.endswith(".msg") and name[:1].isdigit())
                or (name.startswith(".") and name.endswith(SEGMENT_SUFFIX))
            ):
                continue
            with contextlib.suppress(OSError):
                found = _count_records(entry.path)
                if found:
                    count += found
                    born = _born(name.lstrip("."), entry.stat().st_mtime)
                    oldest = born if oldest is None else min(oldest, born)
        return count, oldest

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


def published(segment: Path) -> Path:
    """Where a journal segment ``.<name>.seg`` goes when published: ``<name>.msg``."""
    return segment.with_name(segment.name[1 : -len(SEGMENT_SUFFIX)] + ".msg")


def sync_dir(directory: Path) -> None:
    """fsync a directory: the names created or renamed in it are durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _adopt(path: Path) -> bool:
    """Publish an orphaned segment if its lock is free; False while its writer still holds it."""
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        data = path.read_bytes()
        whole = _whole_length(data)
        if whole < len(data):
            log.warning(
                "spool segment %s: %d bytes at its end cut short by a crash, dropped",
                path,
                len(data) - whole,
            )
            os.truncate(fd, whole)
            os.fsync(fd)
        if whole <= len(MAGIC_BATCH):
            path.unlink()
        else:
            os.rename(path, published(path))
        sync_dir(path.parent)
        return True
    finally:
        os.close(fd)


def _whole_length(data: bytes) -> int:
    """Where the last whole record of a segment ends (the header's end when there is none)."""
    if not data.startswith(MAGIC_BATCH):
        return 0
    pos = len(MAGIC_BATCH)
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            return pos
        try:
            size = json.loads(data[pos:end])["size"]
        except (ValueError, KeyError, TypeError):
            return pos
        if not isinstance(size, int) or end + 1 + size > len(data):
            return pos
        pos = end + 1 + size


def _meta(env: Envelope, **extra: Any) -> bytes:
    return json.dumps({**asdict(env), **extra}, ensure_ascii=True).encode("ascii")


def encode_records(items: Sequence[Item]) -> list[bytes]:
    """Batch-format records (version 2, after its header line) for ``items``."""
    pieces: list[bytes] = []
    for raw, env in items:
        pieces += [_meta(env, size=len(raw)) + b"\n", raw]
    return pieces


def write_all(fd: int, data: bytes) -> None:
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


def _count_records(path: str) -> int:
    """Whole messages in a spool file or segment, read by their envelope lines (seeking past
    each message); a record still being written or cut short is not counted."""
    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC_BATCH))
        if head.startswith(MAGIC):
            return 1
        if head != MAGIC_BATCH:
            return 0
        end, count = os.fstat(handle.fileno()).st_size, 0
        while line := handle.readline(64 * 1024):
            try:
                size = json.loads(line)["size"] if line.endswith(b"\n") else None
            except (ValueError, KeyError, TypeError):
                size = None
            if not isinstance(size, int) or handle.tell() + size > end:
                break
            handle.seek(size, os.SEEK_CUR)
            count += 1
        return count


def _born(name: str, fallback: float) -> float:
    """When a spool file was begun, from its name (``<YYYYmmddHHMMSSffffff>-<uuid>``, UTC)."""
    try:
        stamp = dt.datetime.strptime(name[:20], "%Y%m%d%H%M%S%f")
    except ValueError:
        return fallback
    return stamp.replace(tzinfo=dt.UTC).timestamp()
