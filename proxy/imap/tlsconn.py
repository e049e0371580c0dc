"""TLS for a thousand idle connections: one SSL context per CA file and mode.

A context made with the system's CAs holds them all, about 0.8 MB, and loading them takes the
event loop several milliseconds; one per connection made 1,000 mailboxes in IDLE cost 800 MB and
a slow start. :func:`shared_context` makes one per (CA file, ``insecure``) and hands it to every
connection (an :class:`ssl.SSLContext` may serve many connections at once); a CA file that
changes on disk (the admin's file, or the system's) is loaded afresh for the next connection.
"""

from __future__ import annotations

import functools
import os
import ssl


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
