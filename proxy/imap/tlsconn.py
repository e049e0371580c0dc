"""TLS for a thousand idle connections: one SSL context per CA file and mode, small buffers.

A context made with the system's CAs holds them all, about 0.8 MB, and loading them takes the
event loop several milliseconds; one per connection made 1,000 mailboxes in IDLE cost 800 MB and
a slow start. :func:`shared_context` makes one per (CA file, ``insecure``) and hands it to every
connection (an :class:`ssl.SSLContext` may serve many connections at once); a CA file that
changes on disk (the admin's file, or the system's) is loaded afresh for the next connection.

asyncio gives every TLS connection a 256 KiB receive buffer (``sslproto.SSLProtocol.max_size``),
allocated and zeroed when the connection starts: 250 MB for 1,000 mailboxes, and freeing it after
the handshake is too late (1,000 mailboxes connect at once, and the freed memory stays with the
process). :func:`open_connection` and :func:`start_tls` do what ``loop.create_connection(ssl=)``
and ``loop.start_tls`` do, with a :data:`READ_BUFFER` one; a TLS record holds at most 16 KiB,
and a long FETCH is read in more, smaller steps (no slower).
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from asyncio import sslproto

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


class _SlimSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS layer with a :data:`READ_BUFFER` receive buffer."""

    max_size = READ_BUFFER


async def start_tls(
    loop: asyncio.AbstractEventLoop,
    raw: asyncio.Transport,
    app: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    host: str,
    *,
    made: bool = False,
) -> asyncio.Transport:
    """TLS over the connected ``raw`` transport for ``app``; its transport once the handshake is
    done. ``made``: tell ``app`` ``connection_made`` (it has not seen the plain connection)."""
    waiter = loop.create_future()
    tls = _SlimSSLProtocol(
        loop, app, context, waiter, server_hostname=host, call_connection_made=made
    )
    raw.pause_reading()  # as loop.start_tls: no data before the TLS layer is in place
    raw.set_protocol(tls)
    begin = loop.call_soon(tls.connection_made, raw)
    resume = loop.call_soon(raw.resume_reading)
    try:
        await waiter
    except BaseException:
        raw.close()
        begin.cancel()
        resume.cancel()
        raise
    return tls._app_transport


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    app: asyncio.BaseProtocol,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
) -> None:
    """Connect ``app`` to ``host:port``, over implicit TLS when a ``context`` is given."""
    if context is None:
        await loop.create_connection(lambda: app, host, port)
        return
    raw, _ = await loop.create_connection(asyncio.Protocol, host, port)
    try:
        await start_tls(loop, raw, app, context, host, made=True)
    except BaseException:
        raw.close()
        raise
