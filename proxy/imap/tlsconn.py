"""TLS for a thousand idle connections: one SSL context per CA file and mode, small buffers.

A context made with the system's CAs holds them all, about 0.8 MB, and loading them takes the
event loop several milliseconds; one per connection made 1,000 mailboxes in IDLE cost 800 MB and
a slow start. :func:`shared_context` makes one per (CA file, ``insecure``) and hands it to every
connection (an :class:`ssl.SSLContext` may serve many connections at once); a CA file that
changes on disk (the admin's file, or the system's) is loaded afresh for the next connection.

asyncio gives every TLS connection a 256 KiB receive buffer (``sslproto.SSLProtocol.max_size``),
allocated and zeroed up front: 250 MB for 1,000 idle mailboxes. :func:`slim` swaps it for a
:data:`READ_BUFFER` one once the connection is up; a TLS record holds at most 16 KiB, and a long
FETCH is read in more, smaller steps.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl

READ_BUFFER = 32 * 1024


def _stamp(ca_file: str | None) -> tuple[int, int] | None:
    """What tells a changed CA file: its mtime and size (the system's file for ``None``)."""
    path = ca_file or ssl.get_default_verify_paths().cafile
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def _context(ca_file: str | None, insecure: bool, stamp: tuple[int, int] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def shared_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    """The client context for ``ca_file`` (None: the system's CAs); certificates checked unless
    ``insecure``. Raises OSError when ``ca_file`` cannot be read, like ``create_default_context``.
    """
    return _context(ca_file, insecure, _stamp(ca_file))


def slim(transport: asyncio.BaseTransport | None) -> None:
    """Give a TLS transport of asyncio a :data:`READ_BUFFER` receive buffer (no-op otherwise).

    Safe between two reads: the socket transport asks ``get_buffer`` before every read, and the
    protocol copies what it got out of the buffer at once.
    """
    proto = getattr(transport, "_ssl_protocol", None)
    buffer = getattr(proto, "_ssl_buffer", None)
    if proto is None or not isinstance(buffer, bytearray) or len(buffer) <= READ_BUFFER:
        return
    proto.max_size = READ_BUFFER
    proto._ssl_buffer = bytearray(READ_BUFFER)
    proto._ssl_buffer_view = memoryview(proto._ssl_buffer)
