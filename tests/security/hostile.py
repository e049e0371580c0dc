"""A corpus of hostile MIME, generated in code with a fixed seed (nothing big is committed).

Role: the mail an attacker (or a broken mailer) can send to a captured mailbox, for
``tests/security/test_hostile_mime.py`` and ``bench/hostile.py``: deep nesting (multipart,
message/rfc822, digest, base64-forwarded), huge headers and encoded words, broken base64 and
quoted-printable, bad charset names, vCard floods and broken vCards, NULs, 8-bit and invalid
UTF-8 in headers, endless and unclosed boundaries, 10,000 parts, empty and header-only messages,
and seeded random mutations of a good message. :func:`corpus` is every case;
:func:`dovecot_corpus` a smaller subset for the poller's run through a real Dovecot.
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SEED = 13
TO = "sales@example.com"


@dataclass(frozen=True)
class Case:
    """One hostile message."""

    name: str
    raw: bytes


def card(n: int, name: bytes = b"Card") -> bytes:
    """A small vCard 3.0."""
    return (
        b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:%s %d\r\nEMAIL:card%d@cards.example\r\nEND:VCARD\r\n"
        % (name, n, n)
    )


def mail(name: str, body: bytes, ctype: bytes = b"text/plain", extra: bytes = b"") -> bytes:
    """A message from a stranger to the captured mailbox with this body and Content-Type."""
    return (
        b"From: Hostile <%s@attacker.example>\r\nTo: %s\r\nSubject: %s\r\n"
        b"Date: Wed, 13 Mar 2024 12:00:00 +0000\r\nMessage-ID: <%s@attacker.example>\r\n"
        b"MIME-Version: 1.0\r\n%sContent-Type: %s\r\n\r\n%s"
        % (name.encode(), TO.encode(), name.encode(), name.encode(), extra, ctype, body)
    )


# --- nesting -------------------------------------------------------------------------------------


def nested_multipart(depth: int) -> bytes:
    """``depth`` multiparts one inside the other, a vCard at the bottom."""
    inner = b"Content-Type: text/vcard\r\n\r\n" + card(depth)
    for level in range(depth, 0, -1):
        b = b"n%d" % level
        inner = b'Content-Type: multipart/mixed; boundary="%s"\r\n\r\n--%s\r\n%s\r\n--%s--\r\n' % (
            b,
            b,
            inner,
            b,
        )
    head, _, body = inner.partition(b"\r\n\r\n")
    return mail(f"deep-multipart-{depth}", body, head.split(b": ", 1)[1])


def nested_rfc822(depth: int) -> bytes:
    """``depth`` forwarded messages one inside the other, a vCard at the bottom."""
    inner = b"Content-Type: text/vcard\r\n\r\n" + card(depth)
    for _ in range(depth):
        inner = b"Content-Type: message/rfc822\r\n\r\nSubject: fwd\r\n" + inner
    return mail(f"deep-rfc822-{depth}", inner.partition(b"\r\n\r\n")[2], b"message/rfc822")


def nested_digest(depth: int) -> bytes:
    """Digests whose parts are (by default) messages that are digests again."""
    inner = b"Content-Type: text/vcard\r\n\r\n" + card(depth)
    for level in range(depth, 0, -1):
        b = b"d%d" % level
        inner = (
            b"Content-Type: multipart/digest; boundary=%s\r\n\r\n--%s\r\n\r\n%s\r\n--%s--\r\n"
            % (b, b, inner, b)
        )
    head, _, body = inner.partition(b"\r\n\r\n")
    return mail(f"deep-digest-{depth}", body, head.split(b": ", 1)[1])


def nested_base64_forward(depth: int) -> bytes:
    """Forwarded messages base64-encoded by the forwarder, each inside the next."""
    inner = b"Subject: bottom\r\nContent-Type: text/vcard\r\n\r\n" + card(depth)
    for _ in range(depth):
        encoded = base64.encodebytes(inner).replace(b"\n", b"\r\n")
        inner = (
            b"Subject: fwd\r\nContent-Type: message/rfc822\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
        )
    _head, _, body = inner.partition(b"\r\n\r\n")
    return mail(
        f"deep-b64-{depth}", body, b"message/rfc822", b"Content-Transfer-Encoding: base64\r\n"
    )


# --- headers -------------------------------------------------------------------------------------


def encoded_word_header(header: bytes, size: int) -> bytes:
    """A message whose ``header`` (the only one of that name) is ``size`` bytes of encoded words."""
    word = b"=?utf-8?q?=C3=A9t=C3=A9_caf=C3=A9?= "
    value = (word * (size // len(word) + 1))[:size]
    if header == b"Content-Type":
        return mail(f"ew-ctype-{size}", b"hi\r\n", b"text/plain; name=" + value)
    body = mail(f"ew-{header.decode().lower()}-{size}", b"hi\r\n")
    line = re.compile(rb"^" + header + rb": [^\r]*\r\n", re.MULTILINE)
    body = line.sub(b"", body, count=1)
    return body.replace(b"MIME-Version", header + b": " + value + b"\r\nMIME-Version", 1)


def header_flood(lines: int, width: int) -> bytes:
    """``lines`` headers of ``width`` bytes each."""
    many = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * width) for i in range(lines))
    return mail(f"header-flood-{lines}x{width}", b"hi\r\n", extra=many)


def no_header_end(size: int) -> bytes:
    """A header section that never ends (no empty line), folded for ``size`` bytes."""
    return (
        mail("no-header-end", b"").rstrip(b"\r\n") + b"\r\nX-Fold: a\r\n" + b" b\r\n" * (size // 4)
    )


def one_line(size: int) -> bytes:
    """A header of ``size`` bytes and no line break at all."""
    return mail("one-line", b"", extra=b"X-Line: " + b"x" * size).rstrip(b"\r\n")


# --- encodings and charsets ----------------------------------------------------------------------


def attachment(name: str, body: bytes, part_headers: bytes) -> bytes:
    """A multipart message with one text part and one attachment part."""
    parts = (
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n%s\r\n\r\n%s\r\n--b--\r\n"
        % (part_headers, body)
    )
    return mail(name, parts, b"multipart/mixed; boundary=b")


def encoding_cases() -> Iterator[Case]:
    good = base64.b64encode(card(1)).decode()
    broken = {
        "b64-bad-chars": (b"%s!!**%s" % (good[:20].encode(), good[20:].encode()), b"base64"),
        "b64-no-padding": (good.rstrip("=").encode()[:-1], b"base64"),
        "b64-garbage": (b"\xff\xfe\x00" * 2000, b"base64"),
        "qp-bad-escapes": (card(2).replace(b"Card", b"C=ZZa=\r\nrd=") + b"=", b"quoted-printable"),
        "qp-soft-break-flood": (b"=\r\n" * 50_000 + card(3), b"quoted-printable"),
        "unknown-cte": (card(4), b"x-uuencode-ish"),
    }
    for name, (body, cte) in broken.items():
        headers = b"Content-Type: text/vcard\r\nContent-Transfer-Encoding: " + cte
        yield Case(name, attachment(name, body, headers))
    for n, charset in enumerate(
        [
            b"../../etc/passwd",
            b"utf-7",
            b"x" * 5000,
            b"bogus",
            b"utf-16",
            b'"',
            b"\xff\xfe",
            b"cp65001",
            b"idna",
            b"rot13",
        ]
    ):
        headers = b"Content-Type: text/vcard; charset=" + charset
        yield Case(f"charset-{n}", attachment(f"charset-{n}", card(n) + b"\xe9\xff", headers))
    words = b"=?bogus?q?x?= =?utf-8?b?!!!?= =?utf-8?q?=ZZ?= =?../x?b?QUJD?= =?utf-16?b?2D3eAA==?="
    yield Case(
        "bad-encoded-words",
        mail("bad-encoded-words", b"hi\r\n").replace(
            b"Subject: bad-encoded-words", b"Subject: " + words * 50
        ),
    )


# --- vCards --------------------------------------------------------------------------------------


def vcard_flood(cards: int) -> bytes:
    """One attachment with ``cards`` different vCards (100,000 is some 7 MB)."""
    body = b"".join(card(n) for n in range(cards))
    return attachment(f"vcard-flood-{cards}", body, b"Content-Type: text/vcard")


def vcard_part_flood(parts: int, per_part: int) -> bytes:
    """``parts`` vCard attachments of ``per_part`` cards each."""
    chunks = []
    for p in range(parts):
        cards = b"".join(card(p * per_part + n) for n in range(per_part))
        chunks.append(b"--b\r\nContent-Type: text/x-vcard\r\n\r\n" + cards)
    body = b"\r\n".join(chunks) + b"\r\n--b--\r\n"
    return mail(f"vcard-parts-{parts}x{per_part}", body, b"multipart/mixed; boundary=b")


def vcard_cases() -> Iterator[Case]:
    broken = {
        "vcard-never-closed": b"BEGIN:VCARD\r\nFN:Open\r\nEMAIL:open@x.example\r\n" * 3000,
        "vcard-end-only": b"END:VCARD\r\n" * 10_000,
        "vcard-agent-chain": b"BEGIN:VCARD\r\nAGENT:\r\n" * 5000 + b"END:VCARD\r\n" * 5000,
        "vcard-backtracking": b"BEGIN:VCARD\r\nTEL" + b";a=b" * 20_000 + b";@:1\r\nEND:VCARD\r\n",
        "vcard-long-line": b"BEGIN:VCARD\r\nFN:" + b"x" * 2_000_000 + b"\r\nEND:VCARD\r\n",
        "vcard-folded-photo": (
            b"BEGIN:VCARD\r\nFN:Pic\r\nPHOTO;ENCODING=b:"
            + b"\r\n QUJD" * 200_000
            + b"\r\nEND:VCARD\r\n"
        ),
        "vcard-nul": card(7).replace(b"Card", b"Ca\x00rd\x00"),
        "vcard-utf16-bom": b"\xff\xfe" + card(8).decode().encode("utf-16-le"),
    }
    for name, body in broken.items():
        yield Case(name, attachment(name, body, b"Content-Type: text/vcard"))


# --- bytes and structure -------------------------------------------------------------------------


def byte_cases() -> Iterator[Case]:
    yield Case(
        "nul-headers",
        mail("nul-headers", b"body\x00\x00\r\n").replace(
            b"Subject: nul-headers", b"Subject: n\x00ul\x00\r\nX-Nul: \x00\x00\x00"
        ),
    )
    yield Case(
        "eight-bit-headers",
        mail("eight-bit", b"hi\r\n").replace(
            b"From: Hostile", b"From: H\xe9l\xe8ne \xff\xfe\xc0\xaf"
        ),
    )
    yield Case(
        "invalid-utf8-subject",
        mail("invalid-utf8", b"hi\r\n").replace(
            b"Subject: invalid-utf8", b"Subject: \xed\xa0\x80\xf4\x90\x80\x80\xc3"
        ),
    )
    yield Case("cr-only", mail("cr-only", b"a\rb\r").replace(b"\r\n", b"\r"))
    yield Case("lf-only", mail("lf-only", b"a\nb\n").replace(b"\r\n", b"\n"))
    yield Case("empty", b"")
    yield Case("whitespace", b" \r\n\t\r\n")
    yield Case("only-blank-lines", b"\r\n" * 1000)
    yield Case("only-headers", mail("only-headers", b"").rstrip(b"\r\n"))
    yield Case("no-colon", b"this is not a header\r\nnor this\r\n\r\nbody\r\n")
    yield Case("body-only", b"\r\n\r\nBEGIN:VCARD\r\nFN:x\r\nEND:VCARD\r\n")


VCARD_PART = b"--b\r\nContent-Type: text/vcard\r\n\r\n" + card(99_999) + b"\r\n"
"""A vCard part at the end, so capture parses the whole MIME tree looking for it."""


def boundary_cases() -> Iterator[Case]:
    yield Case(
        "endless-boundaries",
        mail("endless", b"--b\r\n" * 200_000 + VCARD_PART, b"multipart/mixed; boundary=b"),
    )
    yield Case(
        "boundary-never-closed",
        mail(
            "never-closed",
            b"--b\r\nContent-Type: text/vcard\r\n\r\n" + card(1) * 100,
            b"multipart/mixed; boundary=b",
        ),
    )
    yield Case(
        "boundary-empty",
        mail("boundary-empty", b"--\r\n\r\nx\r\n----\r\n", b'multipart/mixed; boundary=""'),
    )
    long = b"L" * 5000
    yield Case(
        "boundary-long",
        mail(
            "boundary-long",
            b"--%s\r\n\r\nx\r\n--%s--\r\n" % (long, long),
            b'multipart/mixed; boundary="%s"' % long,
        ),
    )
    yield Case("no-boundary", mail("no-boundary", card(1), b"multipart/mixed"))
    parts = b"".join(
        b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(10_000)
    )
    yield Case(
        "ten-thousand-parts",
        mail("10k-parts", parts + VCARD_PART + b"--b--\r\n", b"multipart/mixed; boundary=b"),
    )
    nested = b"".join(
        b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" for _ in range(3000)
    )
    yield Case(
        "same-boundary-nested",
        mail("same-boundary", nested + VCARD_PART, b"multipart/mixed; boundary=b"),
    )


# --- seeded mutations ----------------------------------------------------------------------------


def mutations(count: int, rng: random.Random) -> Iterator[Case]:
    """A good message with a vCard, with random bytes changed, cut, doubled or inserted."""
    base = attachment("mutant", card(1) + card(2), b"Content-Type: text/vcard")
    ops: list[Callable[[bytearray], None]] = [
        lambda b: b.__setitem__(rng.randrange(len(b)), rng.randrange(256)),
        lambda b: b.__delitem__(slice(rng.randrange(len(b)), None)),
        lambda b: b.__setitem__(
            slice(rng.randrange(len(b)), None), bytes(b[rng.randrange(len(b)) :]) * 2
        ),
        lambda b: b.insert(rng.randrange(len(b)), rng.choice(b"\x00\r\n-=:;?\xff")),
    ]
    for n in range(count):
        data = bytearray(base.replace(b"mutant", b"mutant-%d" % n))
        for _ in range(rng.randint(1, 8)):
            if data:
                rng.choice(ops)(data)
        yield Case(f"mutant-{n}", bytes(data))


# --- the corpus ----------------------------------------------------------------------------------


def corpus(mutants: int = 40) -> list[Case]:
    """Every case, in a fixed order (the same bytes on every run)."""
    rng = random.Random(SEED)
    cases: list[Case] = []
    for depth in (10, 49, 50, 51, 100, 1000, 5000):
        cases.append(Case(f"deep-multipart-{depth}", nested_multipart(depth)))
    for depth in (60, 1000, 5000):
        cases.append(Case(f"deep-rfc822-{depth}", nested_rfc822(depth)))
        cases.append(Case(f"deep-digest-{depth}", nested_digest(depth)))
    cases.append(Case("deep-b64-12", nested_base64_forward(12)))
    for header, size in (
        (b"Subject", 280_000),
        (b"Content-Type", 280_000),
        (b"From", 280_000),
        (b"To", 280_000),
        (b"References", 1_000_000),
    ):
        cases.append(Case(f"ew-{header.decode()}-{size}", encoded_word_header(header, size)))
    cases.append(Case("header-flood-small", header_flood(200_000, 2)))
    cases.append(Case("header-section-4mb", header_flood(4_000, 1000)))
    cases.append(Case("no-header-end", no_header_end(3_000_000)))
    cases.append(Case("one-line", one_line(5_000_000)))
    cases += encoding_cases()
    cases.append(Case("vcard-flood-100k", vcard_flood(100_000)))
    cases.append(Case("vcard-parts-300x10", vcard_part_flood(300, 10)))
    cases += vcard_cases()
    cases += byte_cases()
    cases += boundary_cases()
    cases += mutations(mutants, rng)
    return cases


DOVECOT_CASES = (
    "deep-multipart-1000",
    "deep-rfc822-5000",
    "deep-digest-1000",
    "ew-Content-Type-280000",
    "vcard-flood-100k",
    "vcard-never-closed",
    "b64-bad-chars",
    "charset-0",
    "nul-headers",
    "eight-bit-headers",
    "boundary-never-closed",
    "ten-thousand-parts",
    "only-headers",
    "mutant-0",
    "mutant-1",
)


def dovecot_corpus() -> list[Case]:
    """The subset that goes through a real Dovecot and the poller (kept small: fast)."""
    wanted = set(DOVECOT_CASES)
    return [case for case in corpus(mutants=2) if case.name in wanted]
