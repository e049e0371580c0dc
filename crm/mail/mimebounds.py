"""Bounds on what the stdlib ``email`` parser is given of hostile mail: header values, MIME tree.

:data:`POLICY` is ``policy.default`` with each header value cut at :data:`MAX_HEADER_VALUE` as it
is parsed and at :data:`MAX_DECODED_HEADER` before RFC 2047 and structured decoding: the stdlib's
header parser needs about a thousand bytes of memory per byte of encoded words (a 280 KB
Content-Type took over a gigabyte), so no header can blow up memory or time. The objects of short
MIME headers (Content-Type, -Disposition, -Transfer-Encoding) are made once per value and
shared: the parser and the vCard search ask for one part's Content-Type half a dozen times.

:func:`parse_headers` reads the header section alone, as the stdlib's ``headersonly`` parse does
but without the Content-Type parse its ``close`` makes and then drops for a header section (a
fifth of the poller's header parse).

:func:`parse_full` reads a whole message no deeper than :data:`MAX_MIME_DEPTH` levels and no
further than :data:`MAX_MIME_PARTS` parts: a container part past either bound is kept as one
opaque part (:data:`OPAQUE_TYPE`, its body unparsed text). The stdlib parser recurses once per
level and tests every line against every open boundary, so a mail nested a thousand levels deep
raised RecursionError and a deep one cost time quadratic in its depth.
"""

from __future__ import annotations

import functools
import logging
from email import policy
from email.feedparser import BytesFeedParser
from email.message import EmailMessage, Message
from typing import Any, cast

log = logging.getLogger(__name__)
MAX_HEADER_VALUE = 64 * 1024  # characters of one header value kept by the parser
MAX_DECODED_HEADER = 8 * 1024  # ... of which at most this many are decoded (RFC 2047, structure)
MAX_MIME_DEPTH = 50  # levels of multiparts and message/* parts parsed
MAX_MIME_PARTS = 1000  # parts parsed as such; later containers stay opaque
OPAQUE_TYPE = "application/x-mailcrm-unparsed"
"""The type a container part past the MIME bounds gets: its body is kept as it is, unparsed."""


class _BoundedPolicy(policy.EmailPolicy):
    """``policy.default`` with every header value bounded before it is stored and decoded."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = super().header_source_parse(sourcelines)
        return name, value[:MAX_HEADER_VALUE]

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if isinstance(value, str) and len(value) > MAX_DECODED_HEADER:
            value = value[:MAX_DECODED_HEADER]
        if isinstance(value, str) and len(value) <= _SHARED_LENGTH and name.lower() in _SHARED:
            return _shared_header(self, name, value)
        return super().header_fetch_parse(name, value)


_SHARED = frozenset({"content-type", "content-disposition", "content-transfer-encoding"})
_SHARED_LENGTH = 1024


@functools.lru_cache(maxsize=128)  # the parts of a message or two
def _shared_header(bounded: _BoundedPolicy, name: str, value: str) -> Any:
    """A MIME header's object, made once for the many times the parser and the vCard search
    ask for the same part's Content-Type (a header object is immutable); short values only."""
    return policy.EmailPolicy.header_fetch_parse(bounded, name, value)


POLICY = cast("policy.EmailPolicy[EmailMessage]", _BoundedPolicy())  # typeshed: EmailMessage
"""The policy every message and part is parsed with (``policy.default``, bounded)."""


class _BoundedParser(BytesFeedParser):
    """The stdlib's feed parser, with the MIME tree bounded in depth and parts.

    ``_parse_headers`` is the parser's step between a part's headers and its body, where the
    bounds are applied: a container part deeper than :data:`MAX_MIME_DEPTH` becomes an opaque
    leaf (its body read as text up to its parent's next boundary); the part after the first
    :data:`MAX_MIME_PARTS` becomes an opaque leaf holding the whole rest of the message (the
    open boundaries are no longer looked for), so no more parts are made.
    """

    def __init__(self) -> None:
        super().__init__(policy=POLICY)
        self.parts = 0
        self.cut = False

    def _parse_headers(self, lines: list[str]) -> None:
        super()._parse_headers(lines)  # type: ignore[misc]
        self.parts += 1
        part: Message = self._cur  # type: ignore[attr-defined]
        if self.parts > MAX_MIME_PARTS:
            self._opaque(part)
            matchers = self._input._eofstack  # type: ignore[attr-defined]
            matchers[:] = [_never] * len(matchers)  # the parents pop them as they end
        elif len(self._msgstack) > MAX_MIME_DEPTH and _container(part):  # type: ignore[attr-defined]
            self._opaque(part)

    def _opaque(self, part: Message) -> None:
        self.cut = True
        del part["Content-Type"]
        part["Content-Type"] = OPAQUE_TYPE


def _container(part: Message) -> bool:
    return part.get_content_maintype() in ("multipart", "message")


def _never(line: str) -> bool:
    """A boundary matcher that matches no line."""
    return False


class _HeadersParser(BytesFeedParser):
    """The stdlib's feed parser, headers only (``headersonly=True``); its ``close`` skips the
    multipart check, which stdlib makes whatever the mode and heeds only for a whole message."""

    def __init__(self) -> None:
        super().__init__(policy=POLICY)
        self._set_headersonly()  # type: ignore[attr-defined]

    def close(self) -> Message:
        self._input.close()  # type: ignore[attr-defined]
        self._call_parse()  # type: ignore[attr-defined]
        root: Message = self._pop_message()  # type: ignore[attr-defined]
        return root


def parse_headers(raw: bytes) -> EmailMessage:
    """A message's header section (its body, if any, is kept unparsed), with :data:`POLICY`."""
    parser = _HeadersParser()
    parser.feed(raw)
    message = parser.close()
    assert isinstance(message, EmailMessage)
    return message


def parse_full(raw: bytes, name: str = "") -> EmailMessage:
    """The whole MIME tree, for rules that need the body (vCards), within the MIME bounds.

    A container past :data:`MAX_MIME_DEPTH` levels or :data:`MAX_MIME_PARTS` parts is one
    opaque part (:data:`OPAQUE_TYPE`); that is logged, with ``name`` saying which message.
    """
    parser = _BoundedParser()
    parser.feed(raw)
    message = parser.close()
    if parser.cut:
        log.info(
            "MIME of %s cut: deeper than %d levels or more than %d parts; the rest is not read",
            name or "a message", MAX_MIME_DEPTH, MAX_MIME_PARTS,
        )  # fmt: skip
    assert isinstance(message, EmailMessage)
    return message
