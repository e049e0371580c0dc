"""DATA in canonical form: CRLF line ends only, dots stuffed, so no server reads it otherwise.

SMTP smuggling (CVE-2023-51764 and kin) lives in the gap between two readers' idea of a line:
a client ends its message with ``<LF>.<LF>`` (or ``<CR><LF>.<LF>``, ``<CR>.<CR>`` ...), the relay
takes that for message text, and the server behind it takes it for the end of the data and reads
what follows as a second transaction. The relay ends DATA only at ``<CR><LF>.<CR><LF>`` (as
aiosmtpd does since 1.4.5) and passes on nothing any server could read another way:
:class:`Canonical` rewrites the message text the way Postfix's ``smtpd_forbid_bare_newline =
normalize`` (its default since 3.9) reads it, and re-stuffs it:

* a bare LF and a bare CR each end a line, as a CRLF would (a line's leading dot is dot-stuffing
  wherever the line starts);
* NUL bytes are dropped (RFC 5321/6152 allow none; a server that strips them could otherwise
  see a lone dot in ``<NUL>.``);
* a line that starts with a dot after all that gets its stuffing dot back.

The result has CRLF line ends only and never a line that is a lone dot, so the upstream (DATA or
BDAT, strict or lenient about line ends) reads exactly one message, the one the relay read.
Clean pieces (CRLF only, no NUL: every real mail client's) pass through untouched and uncopied.
"""

from __future__ import annotations

import re

_BREAK = re.compile(rb"\r\n|\r|\n")


class Canonical:
    """Rewrites one message's DATA text, fed in pieces cut anywhere, into canonical wire form."""

    def __init__(self) -> None:
        self._cr = False  # the last piece ended in CR: a LF may follow in the next one
        self._fresh = True  # the next input byte starts a line (a dot there is stuffing)
        self._blank = True  # nothing of the current line is out yet (a dot there needs stuffing)
        self.changed = False  # a bare CR or LF, or a NUL, was rewritten

    def feed(self, data: bytes) -> bytes:
        """The canonical form of the next piece of message text (a CR at its end waits)."""
        if self._cr:
            data, self._cr = b"\r" + data, False
        if data.endswith(b"\r"):
            data, self._cr = data[:-1], True
        if not data:
            return b""
        crlf = data.count(b"\r\n")
        clean = data.count(b"\r") == crlf == data.count(b"\n") and b"\0" not in data
        if clean and self._as_is(data):
            self._fresh = self._blank = data.endswith(b"\r\n")
            return data
        self.changed = self.changed or not clean
        return self._rewrite(data)

    def _as_is(self, data: bytes) -> bool:
        """Whether a clean piece may go on as the client wrote it, its stuffing too: not where a
        line it starts or leaves open begins with a dot (the dot line a bare LF ends, the one
        place where a lone dot is not the end, would go on as one)."""
        if self._fresh and data.startswith(b"."):
            return False
        if not self._fresh and self._blank:
            return False
        last = data.rfind(b"\r\n")
        return last < 0 or not data.startswith(b".", last + 2)

    def finish(self) -> bytes:
        """At the end of the data: a CR still waiting was a bare one."""
        if not self._cr:
            return b""
        self._cr, self.changed = False, True
        return self._rewrite(b"\r")

    def _rewrite(self, data: bytes) -> bytes:
        lines = _BREAK.split(data)
        out = [self._text(lines[0])]  # the rest of the line under way
        for line in lines[1:]:
            self._fresh = self._blank = True
            out.append(self._text(line))
        return b"\r\n".join(out)

    def _text(self, text: bytes) -> bytes:
        """A piece of one line: the client's stuffing off, NULs out, our stuffing on."""
        if not text:
            return text
        if self._fresh:
            self._fresh = False
            if text.startswith(b"."):
                text = text[1:]
        if b"\0" in text:
            text = text.replace(b"\0", b"")
        if text and self._blank:
            self._blank = False
            if text.startswith(b"."):
                return b"." + text
        return text
