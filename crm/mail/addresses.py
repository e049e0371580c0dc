"""E-mail addresses and exclusion entries: the one place that decides their stored form.

Every address mailcrm stores or compares goes through :func:`normalize_address` first, so
two spellings of one mailbox always give the same string:

* the local part has its ASCII letters lower-cased (servers treat them case-insensitively in
  practice); non-ASCII characters are kept, in Unicode NFC, because Unicode case folding of a
  local part is not safe (RFC 6531 leaves it to the receiving server);
* the domain is lower-cased and converted to its ASCII (punycode) form with IDNA 2008 and the
  UTS-46 mapping (so ``Bücher.DE`` and its full-width spelling both give ``xn--bcher-kva.de``);
  a trailing dot is removed.

Only a bare addr-spec is accepted (optionally in ``<...>``); a header such as
``John <john@x.com>`` is refused, parsing headers is the caller's job.

Exclusions (SPEC C6) are an address (``a@x.com``) or a domain (``@x.com`` or ``x.com``);
wildcards are refused.  A domain entry also covers its subdomains: ``@x.com`` excludes
``a@mail.x.com``.  Matching ignores case because entries and addresses are both stored in
normalised form.

The functions are pure and cached: they run for every captured message.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from functools import lru_cache

import idna

from crm.errors import InvalidAddress, InvalidExclusion
from crm.mail.domains import is_public_suffix

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "display_domain",
    "domain_of",
    "is_excluded",
    "normalize_address",
    "parse_exclusion",
    "try_normalize",
]

MAX_ADDRESS_LENGTH = 254
"""Longest accepted address, in UTF-8 octets of the stored form (RFC 5321 path limit)."""

_MAX_INPUT_LENGTH = 1024  # longer input is refused before any work is done
_CACHE_SIZE = 8192  # bounded: a long import must not grow memory with every new address

# An ASCII domain made of LDH labels only (lower-cased already); those need no IDNA work.
# Labels with "--" (A-labels such as xn--..., or invalid R-LDH labels) go through idna.
_LDH_DOMAIN = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)
_SPACE = re.compile(r"\s")
# Characters never allowed in an unquoted local part: whitespace, controls and RFC 5322 specials.
_BAD_LOCAL_CHAR = re.compile(r'[\s\x00-\x1f\x7f()<>\[\]:;@\\,"]')
# A quoted local part: printable characters, space/tab, and backslash escapes.
_QUOTED_LOCAL = re.compile(r'"(?:[^"\\\r\n\x00]|\\[^\r\n\x00])*"')
_ASCII_UPPER_TO_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_WILDCARDS = ("*", "?", "%")
_DOTS = (".", "\u3002", "\uff0e", "\uff61")  # the label separators IDNA recognises
_ACCEPTED_FORMS = "use an address (a@x.com) or a domain (@x.com or x.com)"


class _DomainError(ValueError):
    """Internal: why a domain is refused (turned into InvalidAddress/InvalidExclusion)."""


def _shown(value: str) -> str:
    """The value quoted for an error message, shortened if it is very long."""
    if len(value) > 80:
        value = value[:77] + "..."
    return repr(value)


def _invalid(value: str, why: str) -> InvalidAddress:
    return InvalidAddress(f"not an e-mail address: {_shown(value)} ({why})")


@lru_cache(maxsize=_CACHE_SIZE)
def _normalize_domain(domain: str) -> str:
    """The stored (ASCII, lower-case, no trailing dot) form of a domain, or _DomainError."""
    if domain.endswith(_DOTS):
        domain = domain[:-1]
    if not domain:
        raise _DomainError("empty domain")
    if domain.endswith(_DOTS):
        raise _DomainError("invalid domain: empty label")
    if domain.startswith("[") and domain.endswith("]"):
        return _normalize_domain_literal(domain)
    if domain.isascii():
        lowered = domain.lower()
        if len(lowered) <= 253 and "--" not in lowered and _LDH_DOMAIN.fullmatch(lowered):
            return lowered
    try:
        encoded = idna.encode(domain, uts46=True)
    except (idna.IDNAError, UnicodeError, ValueError) as error:
        raise _DomainError(f"invalid domain: {error}") from None
    return encoded.decode("ascii")


def _normalize_domain_literal(literal: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` in canonical lower-case form."""
    inner = literal[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[ipv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise _DomainError("invalid address literal") from None


def _normalize_local(local: str) -> str | None:
    """The stored form of a local part, or None when it is not acceptable."""
    if local.startswith('"'):
        if len(local) < 2 or not _QUOTED_LOCAL.fullmatch(local):
            return None
    elif _BAD_LOCAL_CHAR.search(local):
        return None
    local = local.translate(_ASCII_UPPER_TO_LOWER)
    if not local.isascii():
        local = unicodedata.normalize("NFC", local)
        # No invisible or undecodable characters: controls, format characters (zero-width
        # space...), surrogates (undecodable bytes), private use, unassigned, separators.
        for ch in local:
            if ch > "\x7f" and unicodedata.category(ch)[0] in "CZ":
                return None
    return local


@lru_cache(maxsize=_CACHE_SIZE)
def normalize_address(value: str) -> str:
    """The stored form of a bare e-mail address (addr-spec), or raise InvalidAddress.

    Surrounding whitespace and one pair of surrounding ``<>`` are stripped.  The local part has
    its ASCII letters lower-cased (non-ASCII kept, NFC); a quoted local part (``"a b"@x.com``)
    is accepted and kept with its quotes.  The domain is lower-cased, IDNA-encoded (UTS-46) to
    its ASCII form, trailing dot removed; ``[192.0.2.1]`` literals are accepted.

    >>> normalize_address(" <John.Doe@Bücher.DE.> ")
    'john.doe@xn--bcher-kva.de'
    """
    if len(value) > _MAX_INPUT_LENGTH:
        raise _invalid(value, f"longer than {MAX_ADDRESS_LENGTH} characters")
    address = value.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    local, at, domain = address.rpartition("@")
    if ("<" in address or ">" in address) and not _QUOTED_LOCAL.fullmatch(local):
        raise _invalid(value, "a header with a name? give the bare address, like a@x.com")
    if not at:
        raise _invalid(value, "no @")
    if not local:
        raise _invalid(value, "empty local part")
    if not domain:
        raise _invalid(value, "empty domain")
    if _SPACE.search(domain) or (not local.startswith('"') and _SPACE.search(local)):
        raise _invalid(value, "contains a space")
    stored_local = _normalize_local(local)
    if stored_local is None:
        raise _invalid(value, "invalid local part")
    try:
        stored_domain = _normalize_domain(domain)
    except _DomainError as error:
        raise _invalid(value, str(error)) from None
    result = f"{stored_local}@{stored_domain}"
    if (
        len(result) > MAX_ADDRESS_LENGTH
        or len(result.encode("utf-8", "surrogatepass")) > MAX_ADDRESS_LENGTH
    ):
        raise _invalid(value, f"longer than {MAX_ADDRESS_LENGTH} characters")
    return result


def try_normalize(value: str) -> str | None:
    """Like :func:`normalize_address`, but None instead of raising InvalidAddress."""
    try:
        return normalize_address(value)
    except InvalidAddress:
        return None


def domain_of(normalized: str) -> str:
    """The domain of a normalised address (``a@x.com`` -> ``x.com``)."""
    local, at, domain = normalized.rpartition("@")
    if not at or not local or not domain:
        raise _invalid(normalized, "no @" if not at else "not normalised")
    return domain


@lru_cache(maxsize=_CACHE_SIZE)
def display_domain(ascii_domain: str) -> str:
    """A stored (ASCII) domain in Unicode for display: ``xn--bcher-kva.de`` -> ``bücher.de``.

    Gives the input back unchanged when it has no A-label or cannot be decoded.
    """
    if "xn--" not in ascii_domain.lower():
        return ascii_domain
    try:
        return idna.decode(ascii_domain)
    except (idna.IDNAError, UnicodeError, ValueError):
        return ascii_domain


def _refused(entry: str, why: str) -> InvalidExclusion:
    return InvalidExclusion(f"{_shown(entry)} is not accepted: {why}; {_ACCEPTED_FORMS}")


def parse_exclusion(entry: str) -> str:
    """The stored form of an exclusion entry (SPEC C6), or raise InvalidExclusion.

    * ``a@x.com``           -> ``a@x.com`` (a normalised address: that mailbox only);
    * ``@x.com`` or ``x.com`` -> ``@x.com`` (a normalised domain: it and its subdomains).

    Refused: empty entries, wildcards (``*``, ``?``, ``%`` anywhere, e.g. ``*@x.com``),
    whitespace inside, ``a@``, ``@``, invalid domains, single-label domains (``localhost``)
    and bare public suffixes (``co.uk``), which would exclude a whole registry.
    A domain needs two labels after UTS-46 mapping, so an IDN written with an ideographic
    full stop (``例え。jp``) is accepted.
    """
    text = entry.strip()
    if not text:
        raise _refused(entry, "it is empty")
    if any(w in text for w in _WILDCARDS):
        raise _refused(entry, "wildcards are not supported")
    if _SPACE.search(text):
        raise _refused(entry, "it contains a space")
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if text.startswith("@"):
        return "@" + _exclusion_domain(entry, text[1:])
    if "@" in text:
        try:
            return normalize_address(text)
        except InvalidAddress:
            if text.endswith("@"):
                raise _refused(entry, "the domain after @ is missing") from None
            raise _refused(entry, "it is not an e-mail address") from None
    return "@" + _exclusion_domain(entry, text)


def _exclusion_domain(entry: str, domain: str) -> str:
    if not domain:
        raise _refused(entry, "the domain is missing")
    if "@" in domain:
        raise _refused(entry, "it has more than one @")
    try:
        stored = _normalize_domain(domain)
    except _DomainError as error:
        raise _refused(entry, str(error)) from None
    if stored.startswith("["):
        return stored
    if "." not in stored:
        raise _refused(entry, f"{stored!r} is a single label, a domain needs a dot")
    if is_public_suffix(stored):
        raise _refused(entry, f"{stored!r} is a public suffix, not one organisation's domain")
    return stored


def is_excluded(address: str, entries: frozenset[str]) -> bool:
    """True when a normalised address is excluded by stored entries (from parse_exclusion).

    Matches the address itself, ``@`` + its domain, and ``@`` + each parent domain
    (``@x.com`` excludes ``a@x.com`` and ``a@mail.x.com``, not ``a@notx.com``).
    """
    if not entries:
        return False
    if address in entries:
        return True
    domain = address[address.rfind("@") + 1 :]
    if domain.startswith("["):
        return "@" + domain in entries
    while True:
        if "@" + domain in entries:
            return True
        dot = domain.find(".")
        if dot < 0:
            return False
        domain = domain[dot + 1 :]
