"""Finding the vCard parts of mail (SPEC C7), for ``crm.vcards.parse_vcards`` to read.

``may_contain_vcard`` looks at the top-level headers only, so most mail never has its body
parsed; ``vcard_parts`` walks a fully parsed message (nested multiparts, forwarded
``message/rfc822``) and returns the bytes of every vCard part. The walk is bounded like the
parse (:mod:`crm.mimebounds`): no deeper than ``MAX_MIME_DEPTH`` levels, no more than
``MAX_MIME_PARTS`` parts, and no more vCard bytes than the caller's budget.

Nothing here raises on bad input: a part that cannot be read is skipped and logged at INFO.
"""

from __future__ import annotations

import email.message
import logging

from .mimebounds import MAX_MIME_DEPTH, MAX_MIME_PARTS, OPAQUE_TYPE, parse_full
from .vcardlines import ascii_compatible

# The logger of crm.vcards, whose part this was: operators and tests watch that one name.
log = logging.getLogger("crm.vcards")

VCARD_TYPES = frozenset(
    {"text/vcard", "text/x-vcard", "text/directory", "application/vcard", "application/x-vcard"}
)
"""MIME types that carry vCards; any other part counts when its file name ends in ``.vcf``."""


def may_contain_vcard(message: email.message.EmailMessage) -> bool:
    """Whether a message's top-level headers say its body may hold a vCard.

    True for multipart and message types, the vCard types and a ``.vcf`` file name (Content-Type
    ``name=`` or Content-Disposition ``filename=``); False for a plain text or HTML body. Works
    on a headers-only parse, so most mail never has its body parsed. Broken headers give True.
    """
    try:
        content_type = message.get_content_type()
        if content_type.startswith(("multipart/", "message/")) or content_type in VCARD_TYPES:
            return True
        return _vcf_name(message)
    except Exception:
        return True


def vcard_parts(message: email.message.EmailMessage, max_bytes: int | None = None) -> list[bytes]:
    """The bytes of every vCard part of a fully parsed message, in message order.

    Looks into nested multiparts and forwarded messages (``message/rfc822``, also when the
    forwarding client base64-encoded it). Transfer encodings are undone; a part declaring a
    non-UTF-8 charset is re-encoded to UTF-8. Parts that cannot be read are skipped, and so
    are parts deeper than ``MAX_MIME_DEPTH``, after ``MAX_MIME_PARTS`` parts, or once the vCards
    found hold ``max_bytes`` (the part that reaches it is cut there); each bound hit is logged.
    """
    found: list[bytes] = []
    kept = walked = 0
    stack: list[tuple[email.message.Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        walked += 1
        if walked > MAX_MIME_PARTS:
            log.info("vCard search stopped after %d MIME parts", MAX_MIME_PARTS)
            break
        try:
            children = _children(part)
            if children is not None:
                if depth < MAX_MIME_DEPTH:
                    stack.extend((child, depth + 1) for child in reversed(children))
                else:
                    log.info("vCard search stops at MIME depth %d", MAX_MIME_DEPTH)
            elif _is_vcard_part(part) and (payload := _vcard_payload(part)) is not None:
                room = len(payload) if max_bytes is None else max_bytes - kept
                if room < len(payload):
                    log.info("vCard part of %d bytes: %d read (%s bytes per message)",
                             len(payload), max(room, 0), max_bytes)  # fmt: skip
                if room > 0:
                    found.append(payload[:room])
                    kept += min(room, len(payload))
        except Exception as exc:
            log.info("MIME part skipped while looking for vCards: %s", type(exc).__name__)
    return found


def _children(part: email.message.Message) -> list[email.message.Message] | None:
    """The sub-parts of a multipart or forwarded message; None for a leaf part."""
    if part.get_content_maintype() == "message" and part.get_content_subtype() in (
        "rfc822",
        "global",
    ):
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if encoding in ("base64", "quoted-printable") or not part.is_multipart():
            inner = _reparse_message(part, encoding)
            return [inner] if inner is not None else []
    if not part.is_multipart():
        return None
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    return [p for p in payload if isinstance(p, email.message.Message)]


def _reparse_message(part: email.message.Message, encoding: str) -> email.message.Message | None:
    """The forwarded message of a ``message/*`` part whose body the parser did not read."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the parser read the encoded text as a message: undo that
        if len(payload) != 1 or not isinstance(payload[0], email.message.Message):
            return None
        inner = payload[0]
        text = inner.get_payload() if not inner.keys() else inner.as_string()
        if not isinstance(text, str):
            return None
        carrier = email.message.Message()
        carrier["Content-Transfer-Encoding"] = encoding
        carrier.set_payload(text)
        raw = carrier.get_payload(decode=True)
    else:
        raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes) or not raw.strip():
        return None
    return parse_full(raw, "a forwarded message")


def _is_vcard_part(part: email.message.Message) -> bool:
    kind = part.get_content_type()
    return kind != OPAQUE_TYPE and (kind in VCARD_TYPES or _vcf_name(part))


def _vcf_name(part: email.message.Message) -> bool:
    filename = part.get_filename()
    return isinstance(filename, str) and filename.strip().lower().endswith(".vcf")


def _vcard_payload(part: email.message.Message) -> bytes | None:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes) or not data.strip():
        return None
    charset = part.get_content_charset()
    if not charset or charset in ("utf-8", "utf8", "us-ascii") or not ascii_compatible(charset):
        return data
    try:
        data.decode("utf-8")
        return data  # declared wrongly, or only ASCII: parse_vcards reads UTF-8 first anyway
    except UnicodeDecodeError:
        pass
    try:
        return data.decode(charset).encode("utf-8")
    except (LookupError, UnicodeError):
        return data
