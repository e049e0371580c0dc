"""One message's DATA as the relay holds it: canonical wire bytes, in memory or spilled to disk.

The relay keeps the *wire form* (dot-stuffed) so the upstream gets the message as the client
sent it, streamed in chunks; :func:`read_data` puts it there in canonical form (CRLF line ends
only, :mod:`proxy.smtp.lineends`), so no upstream can read it as anything but this one message.
Messages beyond ``spill_at`` bytes continue in an unlinked temporary file, so ten 20 MB messages
in flight do not mean 200 MB of memory; the spill directory is made again when it went missing,
and the system's temporary directory serves when it cannot be. :meth:`MessageBuffer.raw` gives
the RFC 5322 message itself (dots un-stuffed) for the capture spool;
:meth:`MessageBuffer.ensure_message_id` adds a Message-ID header when the client gave none, as
MTAs do, so a later copy from the Sent folder dedups.

:func:`read_data` reads DATA from the client in large chunks until ``<CR><LF>.<CR><LF>``,
whatever goes wrong on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from .lineends import Canonical

log = logging.getLogger(__name__)
END = b"\r\n.\r\n"
CHUNK = 64 * 1024
HEAD_KEEP = 64 * 1024
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:")


class DataResult(enum.Enum):
    """How reading DATA ended."""

    OK = "ok"
    TOO_BIG = "too_big"
    FAILED = "failed"  # the relay could not keep the data (e.g. the disk refused it)


class MessageBuffer:
    """The wire bytes of one message, plus an optional header line to put in front.

    Spilled bytes live in an unlinked temporary file read and written with positional I/O, so
    the upstream stream and the capture copy can read it at the same time.
    """

    def __init__(self, spill_at: int = 1024 * 1024, spill_dir: Path | None = None) -> None:
        self.spill_at = spill_at
        self.spill_dir = spill_dir
        self.prefix = b""
        self.size = 0
        self.head = bytearray()
        self._mem = bytearray()
        self._raw: bytes | None = None
        self._fd: int | None = None

    @property
    def spilled(self) -> bool:
        return self._fd is not None

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add wire bytes (local page-cache writes once spilled)."""
        if len(self.head) < HEAD_KEEP:
            self.head += data[: HEAD_KEEP - len(self.head)]
        if self._fd is not None:
            self._write(data, self.size)
            self.size += len(data)
            return
        self._mem += data
        self.size += len(data)
        if self.size > self.spill_at:
            self._spill()

    def _write(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def _spill(self) -> None:
        fd = self._spill_file()
        try:
            self._fd = fd
            self._write(self._mem, 0)
        except BaseException:
            self.close()
            raise
        self._mem = bytearray()

    def _spill_file(self) -> int:
        """An unlinked temporary file: in ``spill_dir`` (made again if it went missing), else
        in the system's temporary directory."""
        if self.spill_dir is not None:
            try:
                self.spill_dir.mkdir(parents=True, exist_ok=True)
                return _unlinked(self.spill_dir)
            except OSError as exc:
                log.warning(
                    "relay: cannot spill to %s (%s), using %s instead",
                    self.spill_dir,
                    exc,
                    tempfile.gettempdir(),
                )
        return _unlinked(None)

    def has_message_id(self) -> bool:
        end = self.head.find(b"\r\n\r\n")
        headers = self.head if end < 0 else self.head[: end + 2]
        return _MESSAGE_ID.search(headers) is not None

    def ensure_message_id(self, domain: str) -> str | None:
        """Add ``Message-ID`` when missing; the new id, or None when there was one."""
        if self.has_message_id():
            return None
        message_id = f"<{uuid.uuid4().hex}@{domain}>"
        self.prefix = f"Message-ID: {message_id}\r\n".encode("ascii")
        self._raw = None
        return message_id

    @property
    def total(self) -> int:
        """Bytes the upstream receives (before the final dot)."""
        return len(self.prefix) + self.size

    def _read(self, offset: int, size: int) -> bytes:
        assert self._fd is not None
        return os.pread(self._fd, size, offset)

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes | bytearray]:
        """The wire form with the prefix, in pieces (file reads happen off the loop)."""
        if self._fd is None:
            data = self._mem
            if len(data) + len(self.prefix) <= size:  # the usual small message: one piece
                yield self.prefix + data
                return
            if self.prefix:
                yield self.prefix
            for start in range(0, len(data), size):
                yield data[start : start + size]
            return
        if self.prefix:
            yield self.prefix
        for start in range(0, self.size, size):
            yield await asyncio.to_thread(self._read, start, min(size, self.size - start))

    def wire(self) -> bytes:
        """Every wire byte (prefix included); blocking for spilled messages."""
        if self._fd is None:
            return self.prefix + self._mem
        data = self._read(0, self.size)
        return self.prefix + data if self.prefix else data

    def raw(self) -> bytes:
        """The RFC 5322 message (dots un-stuffed); call in a thread for spilled messages.

        Kept once made for a message in memory (the upstream's BDAT and the capture copy)."""
        if self._fd is not None:
            return unstuff(self.wire())
        if self._raw is None:
            self._raw = unstuff(self.wire())
        return self._raw

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._mem = bytearray()
        self._raw = None


def _unlinked(directory: Path | None) -> int:
    fd, path = tempfile.mkstemp(prefix="mailcrm-data-", dir=directory)
    os.unlink(path)
    return fd


def unstuff(wire: bytes) -> bytes:
    """RFC 5321 4.5.2: remove the leading dot a sender added to lines starting with one."""
    if wire.startswith(b"."):
        wire = wire[1:]
    if b"\r\n." not in wire:
        return wire
    return wire.replace(b"\r\n.", b"\r\n")


def stuff(raw: bytes) -> bytes:
    """The inverse of :func:`unstuff` (tests and benchmarks send through it)."""
    return (b"." if raw.startswith(b".") else b"") + raw.replace(b"\r\n.", b"\r\n..")


async def read_data(
    reader: asyncio.StreamReader,
    buffer: MessageBuffer,
    limit: int | None,
    progress: Callable[[], object] = lambda: None,
) -> tuple[DataResult, bytes]:
    """Read DATA up to ``<CR><LF>.<CR><LF>``; returns the outcome and bytes read past the end.

    Only that sequence ends the data; the text goes into ``buffer`` in canonical form
    (:mod:`proxy.smtp.lineends`). Over ``limit``, or once the buffer fails (the disk refuses the
    spill file, or anything else), the rest is read and dropped: the one reply comes after the end
    (RFC 5321 4.2.5), and nothing of the message is ever read as a command.
    """
    sink = _Sink(buffer, limit)
    tail, virtual = b"\r\n", 2  # a CRLF before the first line (not data): ".\r\n" ends at once
    keep = len(END) - 1  # bytes that may be the start of the end, held back from the buffer
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            raise ConnectionResetError("client closed the connection during DATA")
        progress()
        window = tail + chunk
        found = window.find(END)
        if found >= 0:
            sink.add(window[virtual : found + 2])  # the last line's CRLF is data
            sink.finish()
            return sink.outcome, window[found + len(END) :]
        edge = max(len(window) - keep, 0)
        if edge > virtual:
            sink.add(window[virtual:edge])
        tail, virtual = window[edge:], max(virtual - edge, 0)


class _Sink:
    """Where :func:`read_data` puts the text: canonical, into the buffer, until the limit or a
    failure (then the rest is only read)."""

    def __init__(self, buffer: MessageBuffer, limit: int | None) -> None:
        self.buffer = buffer
        self.limit = limit
        self.canonical = Canonical()
        self.outcome = DataResult.OK

    def add(self, data: bytes) -> None:
        self._keep(self.canonical.feed, data)

    def finish(self) -> None:
        self._keep(lambda _: self.canonical.finish(), b"")
        if self.canonical.changed:
            log.info("relay: bare CR or LF (or NUL) in message data, sent on as CRLF")

    def _keep(self, form: Callable[[bytes], bytes], data: bytes) -> None:
        if self.outcome is not DataResult.OK:
            return
        try:
            self.buffer.append(form(data))
        except Exception as exc:  # whatever it is, the data is read to its end
            log.error("relay: message data not kept, reading it to its end to refuse it: %r", exc)
            self.outcome = DataResult.FAILED
            with contextlib.suppress(Exception):
                self.buffer.close()
            return
        if self.limit is not None and self.buffer.size > self.limit:
            self.outcome = DataResult.TOO_BIG
