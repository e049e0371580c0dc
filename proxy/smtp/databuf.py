"""One message's DATA as the relay holds it: the client's exact bytes, in memory or spilled to disk.

The relay keeps the *wire form* (dot-stuffed, line endings as the client sent them) so the upstream
gets exactly what the client would have sent it directly, streamed in chunks. Messages beyond
``spill_at`` bytes continue in an unlinked temporary file, so ten 20 MB messages in flight do not
mean 200 MB of memory. :meth:`MessageBuffer.raw` gives the RFC 5322 message itself (dots
un-stuffed) for the capture spool; :meth:`MessageBuffer.ensure_message_id` adds a Message-ID
header when the client gave none, as MTAs do, so a later copy from the Sent folder dedups.

:func:`read_data` reads DATA from the client in large chunks until the lone ``.`` line.
"""

from __future__ import annotations

import asyncio
import enum
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

END = b"\r\n.\r\n"
CHUNK = 64 * 1024
HEAD_KEEP = 64 * 1024
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:")


class DataResult(enum.Enum):
    """How reading DATA ended."""

    OK = "ok"
    TOO_BIG = "too_big"


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
        fd, path = tempfile.mkstemp(prefix="mailcrm-data-", dir=self.spill_dir)
        os.unlink(path)
        self._fd = fd
        self._write(self._mem, 0)
        self._mem = bytearray()

    def truncate(self, count: int) -> None:
        """Drop the last ``count`` bytes (a piece of the end marker taken for content)."""
        if count <= 0:
            return
        self._raw = None
        self.size -= count
        if len(self.head) > self.size:
            del self.head[self.size :]
        if self._fd is not None:
            os.ftruncate(self._fd, self.size)
        else:
            del self._mem[self.size :]

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
    """Read DATA up to the lone dot; returns the outcome and bytes read past the end marker.

    Over ``limit`` the rest is read and dropped (the reply comes after the dot, RFC 5321 4.2.5).
    """
    tail = b"\r\n"  # the CRLF before the first line, so an empty message ends at ".\r\n"
    too_big = False
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            raise ConnectionResetError("client closed the connection during DATA")
        progress()
        window = tail + chunk
        found = window.find(END)
        if found >= 0:
            cut = found + 2 - len(tail)
            if not too_big:
                if cut > 0:
                    buffer.append(chunk[:cut])
                buffer.truncate(-cut)
                too_big = limit is not None and buffer.size > limit
            rest = chunk[found + len(END) - len(tail) :]
            return (DataResult.TOO_BIG if too_big else DataResult.OK), rest
        if not too_big:
            buffer.append(chunk)
            too_big = limit is not None and buffer.size > limit
        tail = window[-4:]
