"""Finding the vCard parts of mail (SPEC C7), for ``crm.vcards.parse_vcards`` to read.

``may_contain_vcard`` looks at the top-level headers only, so most mail never has its body
parsed; ``vcard_parts`` walks a fully parsed message (nested multiparts, forwarded
``message/rfc822``) and returns the bytes of every vCard part.

Nothing here raises on bad input: a part that cannot be read is skipped and logged at INFO.
"""

from __future__ import annotations

import email.message
import email.policy
import logging
from email.parser import BytesParser

from .vcardlines import ascii_compatible

# The logger of crm.vcards, whose part this was: operators and tests watch that one name.
log = logging.getLogger("crm.vcards")

VCARD_TYPES = frozenset(
    {"text/vcard", "text/x-vcard", "text/directory", "application/vcard", "application/x-vcard"}
)
"""MIME types that carry vCards; any other part counts when its file name ends in ``.vcf``."""

_MAX_MIME_DEPTH = 64  # nesting of multiparts and forwarded messages walked


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


def vcard_parts(message: email.message.EmailMessage) -> list[bytes]:
    """The bytes of every vCard part of a fully parsed message, in message order.

    Looks into nested multiparts and forwarded messages (``message/rfc822``, also when the
    forwarding client base64-encoded it). Transfer encodings are undone; a part declaring a
    non-UTF-8 charset is re-encoded to UTF-8. Parts that cannot be read are skipped.
    """
    found: list[bytes] = []
    stack: list[tuple[email.message.Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        try:
            children = _children(part)
            if children is not None:
                if depth < _MAX_MIME_DEPTH:
                    stack.extend((child, depth + 1) for child in reversed(children))
            elif _is_vcard_part(part):
                payload = _vcard_payload(part)
                if payload is not None:
                    found.append(payload)
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
    return BytesParser(policy=email.policy.default).parsebytes(raw)


def _is_vcard_part(part: email.message.Message) -> bool:
    return part.get_content_type() in VCARD_TYPES or _vcf_name(part)


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
