"""Tests for crm.addresses: stored form of addresses, exclusion entries (SPEC C6)."""

from __future__ import annotations

import random

import idna
import pytest

from crm.errors import InvalidAddress, InvalidExclusion, InvalidInput
from crm.mail.addresses import (
    display_domain,
    domain_of,
    is_excluded,
    normalize_address,
    parse_exclusion,
    try_normalize,
)

ACCEPTED_FORMS = "use an address (a@x.com) or a domain (@x.com or x.com)"


def fullwidth(text: str) -> str:
    """The full-width form of printable ASCII text (``A`` -> U+FF21)."""
    return text.translate({code: code + 0xFEE0 for code in range(0x21, 0x7F)})


# --- normalize_address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("john.doe@example.com", "john.doe@example.com"),
        ("JOHN.Doe@Example.COM", "john.doe@example.com"),
        ("  <JOHN.Doe@Example.COM>  ", "john.doe@example.com"),
        ("< a@x.com >", "a@x.com"),
        ("\tA@X.COM\n", "a@x.com"),
        ("a@x.com.", "a@x.com"),
        ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("a@localhost", "a@localhost"),
        ("a@1.2.3.4", "a@1.2.3.4"),
        ("a@[192.0.2.1]", "a@[192.0.2.1]"),
        ("a@[IPv6:2001:DB8:0::1]", "a@[ipv6:2001:db8::1]"),
    ],
)
def test_normalize_ascii(value: str, expected: str) -> None:
    assert normalize_address(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("info@bücher.de", "info@xn--bcher-kva.de"),
        ("Info@BÜCHER.DE", "info@xn--bcher-kva.de"),
        ("info@xn--bcher-kva.de", "info@xn--bcher-kva.de"),
        ("info@XN--BCHER-KVA.DE", "info@xn--bcher-kva.de"),
        ("info@bücher.de.", "info@xn--bcher-kva.de"),
        # full-width letters and full stop are mapped by UTS-46 in the domain only
        (f"{fullwidth('INFO')}@{fullwidth('example.com')}", f"{fullwidth('INFO')}@example.com"),
        (f"a@{fullwidth('B')}Ü{fullwidth('CHER')}.de", "a@xn--bcher-kva.de"),
        ("a@例え。jp", "a@xn--r8jz45g.jp"),
        ("a@пример.рф", "a@xn--e1afmkfd.xn--p1ai"),
        ("a@bücher.de。", "a@xn--bcher-kva.de"),  # trailing ideographic full stop
        ("a@faß.de", "a@xn--fa-hia.de"),  # IDNA 2008: ß is kept, not mapped to ss
    ],
)
def test_normalize_idn_domain(value: str, expected: str) -> None:
    assert normalize_address(value) == expected


def test_non_ascii_local_part_is_nfc_and_only_ascii_is_folded() -> None:
    decomposed = "Jo\u0308rg@x.com"  # o + combining diaeresis
    assert normalize_address(decomposed) == "j\u00f6rg@x.com"
    # Only ASCII letters are lower-cased: Unicode case folding of a local part is unsafe.
    assert normalize_address("JÖRG@X.COM") == "jÖrg@x.com"
    assert normalize_address("Ünal@x.com") == "Ünal@x.com"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"a b"@x.com', '"a b"@x.com'),
        ('"A B"@X.com', '"a b"@x.com'),
        ('"a@b"@x.com', '"a@b"@x.com'),
        ('"a\\"b"@x.com', '"a\\"b"@x.com'),
        ('"john..doe"@x.com', '"john..doe"@x.com'),
    ],
)
def test_quoted_local_part_accepted(value: str, expected: str) -> None:
    assert normalize_address(value) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("John <JOHN.Doe@Example.COM>", "header"),
        ("John<a@x.com>", "header"),
        ('"John" <a@x.com>', "header"),
        ("x", "no @"),
        ("", "no @"),
        ("   ", "no @"),
        ("@x.com", "empty local part"),
        ("a@", "empty domain"),
        ("a@.", "empty domain"),
        ("a b@x.com", "contains a space"),
        ("a@x .com", "contains a space"),
        ("a@x.com b@y.com", "contains a space"),
        ("a@b@c.com", "invalid local part"),
        ("a,b@x.com", "invalid local part"),
        ('a"b@x.com', "invalid local part"),
        ('"unterminated@x.com', "invalid local part"),
        ("a\x00b@x.com", "invalid local part"),
        ("\udcff@x.com", "invalid local part"),  # undecodable byte (surrogateescape)
        ('"\udcff"@x.com', "invalid local part"),
        ("a\u200bb@x.com", "invalid local part"),  # zero-width space
        ("a\u00a0b@x.com", "contains a space"),
        ("a@x\udcff.com", "invalid domain"),
        ("a@x\u2024com", "invalid domain"),  # one dot leader is not a dot
        ("a@x..com", "invalid domain"),
        ("a@.x.com", "invalid domain"),
        ("a@x.com..", "invalid domain"),
        ("a@-x.com", "invalid domain"),
        ("a@x_y.com", "invalid domain"),
        ("a@xn--bcher.de", "invalid domain"),
        ("a@☃.net", "invalid domain"),
        ("a@" + "b" * 64 + ".com", "invalid domain"),
        ("a@[1.2.3]", "invalid address literal"),
        ("a@[IPv6:zz::1]", "invalid address literal"),
        ("a" * 250 + "@x.com", "longer than 254"),
        ("a" * 5000 + "@x.com", "longer than 254"),
    ],
)
def test_invalid_addresses(value: str, why: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        normalize_address(value)
    message = str(info.value)
    assert message.startswith("not an e-mail address: ")
    assert why in message
    assert try_normalize(value) is None


def test_invalid_address_message_names_the_value() -> None:
    with pytest.raises(InvalidAddress, match=r"^not an e-mail address: 'x' \(no @\)$"):
        normalize_address("x")
    assert issubclass(InvalidAddress, InvalidInput)


def test_address_length_limit_is_254() -> None:
    local = "a" * 64
    domain = ".".join(["b" * 60] * 3) + ".co"  # 64 + 1 + 185 = 250
    assert len(normalize_address(f"{local}@{domain}")) == 250
    exactly = "a" * (254 - 1 - len("x.com")) + "@x.com"
    assert normalize_address(exactly) == exactly
    with pytest.raises(InvalidAddress):
        normalize_address("a" + exactly)


def test_try_normalize() -> None:
    assert try_normalize(" <Bob@Example.org> ") == "bob@example.org"
    assert try_normalize("Bob <bob@example.org>") is None


@pytest.mark.parametrize(
    "domain",
    ["example.com", "a-b.example.co.uk", "x1.y2", "123.example", "a.b.c.d.e.f", "z" * 63 + ".io"],
)
def test_ascii_fast_path_agrees_with_idna(domain: str) -> None:
    expected = idna.encode(domain.upper(), uts46=True).decode("ascii")
    assert normalize_address(f"a@{domain.upper()}") == f"a@{expected}"


# --- domain_of / display_domain --------------------------------------------------------------


def test_domain_of() -> None:
    assert domain_of("a@x.com") == "x.com"
    assert domain_of('"a@b"@x.com') == "x.com"
    assert domain_of(normalize_address("a@bücher.de")) == "xn--bcher-kva.de"
    with pytest.raises(InvalidAddress):
        domain_of("no-at-sign")


@pytest.mark.parametrize(
    ("ascii_domain", "shown"),
    [
        ("xn--bcher-kva.de", "bücher.de"),
        ("mail.xn--bcher-kva.de", "mail.bücher.de"),
        ("xn--e1afmkfd.xn--p1ai", "пример.рф"),
        ("example.com", "example.com"),
        ("xn--bcher.de", "xn--bcher.de"),  # not a valid A-label: shown as is
        ("xn--zz.com", "xn--zz.com"),
        ("", ""),
        ("[192.0.2.1]", "[192.0.2.1]"),
    ],
)
def test_display_domain(ascii_domain: str, shown: str) -> None:
    assert display_domain(ascii_domain) == shown


# --- parse_exclusion ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "stored"),
    [
        ("a@x.com", "a@x.com"),
        ("A@X.COM", "a@x.com"),
        ("  a@x.com  ", "a@x.com"),
        ("<Boss@X.com>", "boss@x.com"),
        ("@x.com", "@x.com"),
        ("@X.Com", "@x.com"),
        ("x.com", "@x.com"),
        ("X.COM.", "@x.com"),
        ("mail.x.com", "@mail.x.com"),
        ("acme.co.uk", "@acme.co.uk"),
        ("bücher.de", "@xn--bcher-kva.de"),
        ("@BÜCHER.de", "@xn--bcher-kva.de"),
        ("info@bücher.de", "info@xn--bcher-kva.de"),
        ("例え。jp", "@xn--r8jz45g.jp"),  # an IDN: its ideographic full stop counts as a dot
        ("@[192.0.2.1]", "@[192.0.2.1]"),
    ],
)
def test_exclusion_forms(entry: str, stored: str) -> None:
    assert parse_exclusion(entry) == stored


@pytest.mark.parametrize(
    "entry",
    [
        "*@x.com",
        "*",
        "*.x.com",
        "@*.x.com",
        "a*@x.com",
        "a?@x.com",
        "?",
        "%@x.com",
        "a%b@x.com",
        "x.*",
        "@%",
    ],
)
def test_wildcards_refused(entry: str) -> None:
    with pytest.raises(InvalidExclusion) as info:
        parse_exclusion(entry)
    assert str(info.value) == (
        f"{entry!r} is not accepted: wildcards are not supported; {ACCEPTED_FORMS}"
    )


def test_star_at_message_exactly() -> None:
    with pytest.raises(InvalidExclusion) as info:
        parse_exclusion("*@x.com")
    assert str(info.value) == (
        "'*@x.com' is not accepted: wildcards are not supported; "
        "use an address (a@x.com) or a domain (@x.com or x.com)"
    )
    assert issubclass(InvalidExclusion, InvalidInput)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("a b@x.com", "it contains a space"),
        ("x .com", "it contains a space"),
        ("@x.com\tfoo", "it contains a space"),
        ("a@", "the domain after @ is missing"),
        ("@", "the domain is missing"),
        ("@@x.com", "more than one @"),
        ("a@@x.com", "not an e-mail address"),
        ("a@b@x.com", "not an e-mail address"),
        ("localhost", "single label"),
        ("@localhost", "single label"),
        ("intranet", "single label"),
        ("рф", "single label"),
        ("com", "single label"),
        ("co.uk", "public suffix"),
        ("@co.uk", "public suffix"),
        ("github.io", "public suffix"),
        ("x..com", "invalid domain"),
        ("-x.com", "invalid domain"),
        ("@xn--bcher.de", "invalid domain"),
        ("x_y.com", "invalid domain"),
    ],
)
def test_refused_entries(entry: str, why: str) -> None:
    with pytest.raises(InvalidExclusion) as info:
        parse_exclusion(entry)
    message = str(info.value)
    assert message.startswith(f"{entry!r} is not accepted: ")
    assert why in message
    assert message.endswith(ACCEPTED_FORMS)


# --- is_excluded ----------------------------------------------------------------------------


def _entries(*raw: str) -> frozenset[str]:
    return frozenset(parse_exclusion(entry) for entry in raw)


def test_exact_address_entry() -> None:
    entries = _entries("Boss@X.com")
    assert is_excluded("boss@x.com", entries)
    assert is_excluded(normalize_address("BOSS@x.COM"), entries)
    assert not is_excluded("other@x.com", entries)
    assert not is_excluded("boss@mail.x.com", entries)
    assert not is_excluded("boss@y.com", entries)


@pytest.mark.parametrize("entry", ["@x.com", "x.com", "X.COM", "@X.com."])
def test_domain_entry_covers_domain_and_subdomains(entry: str) -> None:
    entries = _entries(entry)
    assert is_excluded("a@x.com", entries)
    assert is_excluded(normalize_address("A@X.COM"), entries)
    assert is_excluded("a@mail.x.com", entries)
    assert is_excluded("a@deep.mail.x.com", entries)
    assert not is_excluded("a@notx.com", entries)
    assert not is_excluded("a@x.com.evil.net", entries)
    assert not is_excluded("a@com", entries)
    assert not is_excluded("x.com@y.com", entries)


def test_subdomain_entry_does_not_cover_parent() -> None:
    entries = _entries("mail.x.com")
    assert is_excluded("a@mail.x.com", entries)
    assert is_excluded("a@eu.mail.x.com", entries)
    assert not is_excluded("a@x.com", entries)


def test_idn_entries_match_any_spelling() -> None:
    entries = _entries("BÜCHER.de", "chef@пример.рф")
    assert is_excluded(normalize_address("info@bücher.de"), entries)
    assert is_excluded(normalize_address("info@shop.xn--bcher-kva.de"), entries)
    assert is_excluded(normalize_address("CHEF@ПРИМЕР.РФ"), entries)
    assert not is_excluded(normalize_address("sous-chef@пример.рф"), entries)


def test_literal_and_empty_entries() -> None:
    assert is_excluded("a@[192.0.2.1]", _entries("@[192.0.2.1]"))
    assert not is_excluded("a@[192.0.2.2]", _entries("@[192.0.2.1]"))
    assert not is_excluded("a@x.com", frozenset())


def test_random_input_only_raises_the_documented_errors_and_is_idempotent() -> None:
    rng = random.Random(20240603)
    alphabet = 'aZ09.-_@<>"\\ \t()[],;:*?%+\u00fc\u3002\uff0e\u200b\udcffxn--'
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        stored = try_normalize(value)
        if stored is not None:
            assert normalize_address(stored) == stored
        try:
            entry = parse_exclusion(value)
        except InvalidExclusion:
            continue
        assert parse_exclusion(entry) == entry
        display_domain(value)
