"""Modified UTF-7 (RFC 3501 section 5.1.3): how IMAP spells non-ASCII folder names.

Printable ASCII stands for itself except ``&``, written ``&-``; any other run of characters is
UTF-16BE, base64 with ``,`` for ``/`` and no padding, between ``&`` and ``-``.
"""

from __future__ import annotations

import base64
import binascii


def _is_direct(char: str) -> bool:
    return 0x20 <= ord(char) <= 0x7E


def _flush(run: list[str]) -> str:
    data = "".join(run).encode("utf-16-be")
    return "&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode(name: str) -> str:
    """A folder name as it goes on the wire."""
    out: list[str] = []
    run: list[str] = []
    for char in name:
        if _is_direct(char):
            if run:
                out.append(_flush(run))
                run = []
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    if run:
        out.append(_flush(run))
    return "".join(out)


def _decode_run(chunk: str) -> str:
    if not chunk:
        return "&"
    data = chunk.replace(",", "/")
    data += "=" * (-len(data) % 4)
    try:
        return base64.b64decode(data, validate=True).decode("utf-16-be")
    except (binascii.Error, UnicodeDecodeError):
        return "&" + chunk + "-"  # not valid modified UTF-7: keep it as the server wrote it


def decode(wire: str) -> str:
    """A folder name as the server sent it, made readable (invalid runs kept verbatim)."""
    out: list[str] = []
    pos = 0
    while pos < len(wire):
        amp = wire.find("&", pos)
        if amp < 0:
            out.append(wire[pos:])
            break
        out.append(wire[pos:amp])
        end = wire.find("-", amp + 1)
        if end < 0:
            out.append(wire[amp:])
            break
        out.append(_decode_run(wire[amp + 1 : end]))
        pos = end + 1
    return "".join(out)
