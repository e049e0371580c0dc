"""The relay's spool journal: capture copies appended to a segment file, one fsync per batch.

A delivered message's capture copy must be durable before the client hears 250 (B1). Creating,
fsyncing and renaming a file per copy costs an inode, two fsyncs and a directory update for every
message; a journal appends: the copies that arrive together are written to the end of the
*active segment* and made durable by one ``fdatasync``. A segment is published (renamed into the
spool, where the spool worker reads it) once it is :data:`SEGMENT_AGE` seconds old or
:data:`SEGMENT_BYTES` long, so capture runs a fraction of a second behind the relay.

The active segment is ``<dir>/.<time>-<uuid>.seg``, in the spool's batch format (version 2,
:mod:`crm.spool.files`), and its writer holds an exclusive ``flock`` on it as long as it writes
there. Every record in a segment is of delivered mail, so a segment left behind by a crash is
not thrown away: :meth:`crm.spool.files.FileSpool.recover` publishes it once nobody holds its lock,
without a record cut short by the crash (one that was never acknowledged).

A :class:`Journal` is used by one thread at a time for appends (the relay's group commit); its
lock orders them with :meth:`publish`, which a timer calls from another thread.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from crm.store.models import utcnow

from .files import (
    MAGIC_BATCH,
    SEGMENT_SUFFIX,
    Item,
    encode_records,
    published,
    sync_dir,
    write_all,
)

SEGMENT_BYTES = 8 * 1024 * 1024
SEGMENT_AGE = 0.25  # s: how long capture may lag behind the relay under a stream of mail


class _Segment:
    """The open active segment: its descriptor (holding the lock), path, size and birth."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f".{utcnow():%Y%m%d%H%M%S%f}-{uuid.uuid4().hex}{SEGMENT_SUFFIX}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            write_all(self.fd, MAGIC_BATCH)
            os.fsync(self.fd)
            sync_dir(directory)  # the file's name is durable before any copy in it is
        except BaseException:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            raise
        self.size = len(MAGIC_BATCH)
        self.born = time.monotonic()

    def append(self, items: Sequence[Item]) -> None:
        for piece in encode_records(items):
            write_all(self.fd, piece)
            self.size += len(piece)
        os.fdatasync(self.fd)

    def publish(self) -> Path:
        """Rename into the spool; on failure the lock is let go, and recovery publishes it."""
        final = published(self.path)
        try:
            os.rename(self.path, final)
            sync_dir(self.path.parent)
        finally:
            os.close(self.fd)  # the lock goes with it
        return final

    def abandon(self) -> None:
        """After a write error: stop using this segment; what it holds is published by recovery
        (the records acknowledged so far are whole; a cut one at its end is dropped there)."""
        os.close(self.fd)


class Journal:
    """Appends capture copies to the active segment of ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        segment_age: float = SEGMENT_AGE,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.segment_age = segment_age
        self._active: _Segment | None = None
        self._lock = threading.Lock()

    def append(self, items: Sequence[Item]) -> bool:
        """Write ``items`` durably (one fdatasync); True when a segment was published after it.

        Raises :class:`OSError` when the disk refuses: then none of ``items`` is to be counted on.
        """
        with self._lock:
            if self._active is None:
                self._active = _Segment(self.directory)
            segment = self._active
            try:
                segment.append(items)
            except OSError:
                self._active = None
                segment.abandon()
                raise
            if segment.size < self.segment_bytes:
                return False
            self._active = None
            segment.publish()
            return True

    @property
    def waiting(self) -> bool:
        """An active segment holds copies not published yet."""
        return self._active is not None

    def publish(self, older_than: float = 0.0) -> bool:
        """Publish the active segment if it is at least ``older_than`` seconds old; True if done."""
        with self._lock:
            segment = self._active
            if segment is None or time.monotonic() - segment.born < older_than:
                return False
            self._active = None
            segment.publish()
            return True
