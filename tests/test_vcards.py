"""SPEC C7: vCards (2.1, 3.0, 4.0; attached, inline, forwarded) become contact data."""

from __future__ import annotations

import base64
import email.policy
import logging
import random
import time
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from crm.mail import vcards
from crm.mail.vcards import VCardContact, may_contain_vcard, parse_vcards, vcard_parts

DATA = Path(__file__).parent / "data" / "vcards"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def parse_mail(raw: bytes, *, headersonly: bool = False) -> EmailMessage:
    return BytesParser(policy=email.policy.default).parsebytes(raw, headersonly=headersonly)


def contacts_in(message: EmailMessage) -> list[VCardContact]:
    return [c for part in vcard_parts(message) for c in parse_vcards(part).contacts]


def card(*lines: str, version: str = "3.0") -> str:
    return "\r\n".join(["BEGIN:VCARD", f"VERSION:{version}", *lines, "END:VCARD", ""])


# ----------------------------------------------------------------------------- vCard files


def test_outlook_21_quoted_printable_windows_1252_with_soft_line_break() -> None:
    result = parse_vcards(load("outlook21_qp.vcf"))

    assert result.errors == ()
    assert result.contacts == (
        VCardContact(
            name="Jürgen Müller",  # FN is split by a QP soft line break inside "Müller"
            emails=("j.mueller@mueller-soehne.example",),  # 2nd EMAIL differs only in case
            phones=("+49 221 123456-0", "+49 171 9876543", "+49 221 123456-99"),
            organization="Müller & Söhne GmbH",
            title="Geschäftsführer",
        ),
    )


def test_21_base64_photos_do_not_break_parsing() -> None:
    result = parse_vcards(load("photo21_base64.vcf"))

    assert result.errors == ()
    jose, linh = result.contacts
    assert jose == VCardContact(
        name="José García",
        emails=("jose.garcia@iberica.example",),  # comes after the folded photo
        phones=("+34 91 555 01 23",),
        organization="Distribuciones Ibéricas S.L.",
        title=None,
    )
    # A phone export whose photo lines are not folded; no FN, the name is built from N.
    assert linh == VCardContact(
        "Linh Ng", ("linh.ng@phone.example",), ("0912 345 678",), None, None
    )


def test_apple_30_export_with_several_cards() -> None:
    result = parse_vcards(load("apple30_multi.vcf"))

    assert result.errors == ()
    assert result.contacts == (
        VCardContact(
            name="Françoise Lefèvre",
            emails=("francoise@lefevre-dubois.example", "f.lefevre@maison.example"),
            phones=("+33 6 12 34 56 78", "+33 1 44 55 66 77"),
            organization="Lefèvre, Dubois & Associés",  # ORG:Lefèvre\, Dubois & Associés;Conseil
            title="Associée",
        ),
        VCardContact(
            name="Globex Corporation",
            emails=("sales@globex.example",),
            phones=("+1 (555) 010-2000",),
            organization="Globex Corporation",
            title=None,
        ),
        VCardContact(
            name="Dr. Siobhán O'Brien, PhD",  # escaped comma in FN
            emails=("siobhan.obrien@research.example",),  # EMAIL;TYPE=INTERNET,PREF:
            phones=("+353 1 555 0142",),
            organization=None,
            title="Head of Research, EMEA",  # unescaped comma: vobject would cut it there
        ),
    )


def test_vcard_40() -> None:
    result = parse_vcards(load("v40.vcf"))

    assert result.errors == ()
    assert result.contacts == (
        VCardContact(
            name="Zoë Nakamura-Smith",
            emails=("zoe@robotics.example", "zoe.ns@home.example"),
            phones=("+1-555-555-0100 ext. 102", "+1-555-555-0199"),  # TEL;VALUE=uri:tel:...
            organization="Example Robotics Ltd.",
            title="Lead Engineer",
        ),
    )


def test_google_export_without_duplicates() -> None:
    result = parse_vcards(load("google.vcf"))

    assert result.errors == ()
    ana, support = result.contacts
    # Cards 1 and 3 are the same person (same name, same address in another case): one contact
    # with the phones of both, the same mobile number written twice only once.
    assert ana == VCardContact(
        name="Ana Beatriz Souza",
        emails=("ana.souza@cliente.example", "anabeatriz@correio.example"),
        phones=("+55 11 98765-4321", "+55 11 3000-1000"),
        organization="Cliente Exemplo S.A.",
        title="Diretora Comercial",
    )
    # Empty FN and N: the name is the local part of the address.
    assert support == VCardContact("support", ("support@vendor.example",), (), None, None)


def test_broken_card_between_two_good_ones_is_a_logged_skip(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crm.vcards")

    result = parse_vcards(load("broken_middle.vcf"))

    assert result.contacts == (
        VCardContact(
            name="Karin Øster",
            emails=("karin.oster@nordisk.example",),
            phones=(),
            organization="Nordisk Handel A/S",
            title=None,
        ),
        VCardContact(
            name="Pedro Álvarez",
            emails=("pedro.alvarez@andes.example",),
            phones=("+56 2 2555 0101",),
            organization=None,
            title=None,
        ),
    )
    assert result.errors == ("card 2: no END:VCARD",)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "vCard skipped: card 2: no END:VCARD")
    ]


def test_cards_without_email_are_kept_cards_without_name_and_email_skipped() -> None:
    result = parse_vcards(load("no_email.vcf"))

    assert result.contacts == (
        VCardContact(
            name="Hans Weber",
            emails=(),
            phones=("+49 30 1234 5678", "+49 160 5551234"),
            organization="Weber Bau GmbH",
            title=None,
        ),
        VCardContact("Dr. Kenji Nakamura", (), ("+81 3-5555-0199",), None, None),  # from N
    )
    assert result.errors == ("card 2: no name and no e-mail",)


def test_iso_8859_1_file() -> None:
    result = parse_vcards(load("latin1_21.vcf"))

    assert result.errors == ()
    assert result.contacts == (
        VCardContact(
            name="Hélène Lefèvre",
            emails=("helene.lefevre@etudes.example",),
            phones=("01 23 45 67 89",),
            organization="Société Générale d'Études",
            title="Chargée d'affaires",
        ),
    )


def test_utf16_file() -> None:
    result = parse_vcards(load("utf16_windows.vcf"))

    assert result.errors == ()
    assert result.contacts == (
        VCardContact(
            name="Łukasz Wiśniewski",
            emails=("lukasz.wisniewski@polska.example",),
            phones=("+48 22 555 01 02",),
            organization=None,
            title=None,
        ),
    )


@pytest.mark.parametrize(
    "data",
    [
        load("empty.vcf"),
        load("garbage.vcf"),
        b"",
        "",
        " \r\n\t",
        b"\x00" * 1000,
        bytes(random.Random(5).randrange(256) for _ in range(200_000)),
        "Hello, this is not a vCard.\nEND:VCARD\n",
    ],
    ids=["empty-file", "garbage-file", "empty", "empty-str", "blank", "nul", "random", "text"],
)
def test_empty_and_garbage_give_no_contacts_and_one_reason(data: bytes | str) -> None:
    result = parse_vcards(data)

    assert result.contacts == ()
    assert result.errors == ("no BEGIN:VCARD found",)


def test_str_input_gives_the_same_contacts_as_bytes() -> None:
    raw = load("apple30_multi.vcf")

    assert parse_vcards(raw.decode("utf-8")) == parse_vcards(raw)


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("FN;CHARSET=ISO-8859-1;ENCODING=QUOTED-PRINTABLE:Jos=E9 Mu=F1oz", "José Muñoz"),
        ("FN;charset=iso-8859-1;encoding=quoted-printable:Jos=E9 Mu=F1oz", "José Muñoz"),
        ("FN;QUOTED-PRINTABLE;CHARSET=ISO-8859-1:Jos=E9 Mu=F1oz", "José Muñoz"),
        ("FN;ENCODING=QUOTED-PRINTABLE:Fran=E7ois Ma=EEtre", "François Maître"),  # no CHARSET
        ("FN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:M=FCller", "Müller"),  # wrong CHARSET
        ("FN;CHARSET=x-unknown;ENCODING=QUOTED-PRINTABLE:M=C3=BCller", "Müller"),
        ("FN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:Bj=C3=B6rn=\r\n =C3=85berg", "Björn Åberg"),
    ],
    ids=["declared", "lower-case", "bare-param", "no-charset", "wrong", "unknown", "soft-break"],
)
def test_quoted_printable_values_become_the_right_text(line: str, name: str) -> None:
    result = parse_vcards(card(line, "EMAIL;INTERNET:someone@example.com", version="2.1"))

    assert [c.name for c in result.contacts] == [name]
    assert result.errors == ()


def test_unescaped_commas_are_kept() -> None:
    # vobject's own text decoding keeps only what comes before the first unescaped comma.
    result = parse_vcards(
        card("FN:Smith, John", "TITLE:CEO, Founder", "ORG:Acme, Inc.;Sales", "EMAIL:js@acme.ex")
    )

    assert result.contacts == (
        VCardContact("Smith, John", ("js@acme.ex",), (), "Acme, Inc.", "CEO, Founder"),
    )


def test_email_values() -> None:
    result = parse_vcards(
        card(
            "FN:Jane Doe",
            "EMAIL;TYPE=work: jane@doe.example ",
            "EMAIL;VALUE=uri:mailto:jd@doe.example",
            "EMAIL:Jane Doe <jane.doe@home.example>",
            "EMAIL;TYPE=X400:c=US;a=;p=Doe Corp",
            "EMAIL:",
        )
    )

    assert result.contacts[0].emails == (
        "jane@doe.example",
        "jd@doe.example",
        "jane.doe@home.example",
    )


def test_same_address_with_a_made_up_name_is_one_contact() -> None:
    result = parse_vcards(
        card("EMAIL:jane@doe.example")
        + card("FN:Jane Doe", "EMAIL:JANE@doe.example", "TEL:+1 555 0100", "ORG:Doe Ltd")
    )

    assert result.contacts == (
        VCardContact("Jane Doe", ("jane@doe.example",), ("+1 555 0100",), "Doe Ltd", None),
    )


def test_different_people_sharing_an_address_stay_apart() -> None:
    result = parse_vcards(
        card("FN:Anna Berg", "EMAIL:info@berg.example", "TEL:+46 8 555 01")
        + card("FN:Bert Berg", "EMAIL:info@berg.example", "TEL:+46 8 555 02")
    )

    assert [(c.name, c.emails, c.phones) for c in result.contacts] == [
        ("Anna Berg", ("info@berg.example",), ("+46 8 555 01",)),
        ("Bert Berg", ("info@berg.example",), ("+46 8 555 02",)),
    ]


def test_same_name_without_email_is_one_contact() -> None:
    result = parse_vcards(
        card("FN:Hans Weber", "TEL:+49 30 1") + card("FN:hans weber", "TEL:+49 30 2", "TITLE:Chef")
    )

    assert result.contacts == (
        VCardContact("Hans Weber", (), ("+49 30 1", "+49 30 2"), None, "Chef"),
    )


def test_agent_card_inside_a_card_is_not_mixed_into_it() -> None:
    data = (
        "BEGIN:VCARD\nVERSION:2.1\nFN:Boss Person\nAGENT:\n"
        "BEGIN:VCARD\nVERSION:2.1\nFN:Assistant\nEMAIL:assistant@corp.example\nEND:VCARD\n"
        "EMAIL:boss@corp.example\nEND:VCARD\n"
    )

    result = parse_vcards(data)

    assert result.contacts == (VCardContact("Boss Person", ("boss@corp.example",), (), None, None),)
    assert result.errors == ()


def test_card_with_unmatched_end_is_skipped_and_the_next_one_kept() -> None:
    data = card("FN:Broken", "BEGIN:VEVENT", "EMAIL:broken@x.example") + card(
        "FN:Fine", "EMAIL:fine@x.example"
    )

    result = parse_vcards(data)

    assert [(c.name, c.emails) for c in result.contacts] == [("Fine", ("fine@x.example",))]
    assert result.errors == ("card 1: END:VCARD without BEGIN:VCARD",)


def test_line_endings_bom_and_indent() -> None:
    lines = [
        "BEGIN:VCARD",
        "VERSION:3.0",
        "FN:Ola Nordmann",
        "EMAIL:ola@nordmann.example",
        "END:VCARD",
    ]
    bom = b"\xef\xbb\xbf"
    for data in (
        "\r".join(lines).encode(),  # classic Mac
        # two files concatenated, each with a BOM
        bom + "\r\n".join(lines).encode() + b"\r\n" + bom + "\n".join(lines).encode(),
        "\n".join("    " + line for line in lines).encode(),  # pasted as quoted text
    ):
        result = parse_vcards(data)
        assert result.contacts == (
            VCardContact("Ola Nordmann", ("ola@nordmann.example",), (), None, None),
        ), data
        assert result.errors == ()


def test_line_that_makes_vobject_backtrack_is_dropped_fast() -> None:
    data = card("FN:Ok Name", "TEL" + ";a=b" * 40 + ";@@:123", "EMAIL;TYPE=" + ",".join("a" * 40))

    started = time.monotonic()
    result = parse_vcards(data)

    assert time.monotonic() - started < 2
    assert result.contacts == (VCardContact("Ok Name", (), (), None, None),)


def test_large_folded_photo_is_fast() -> None:
    photo = "\r\n ".join(["QUFB" * 18] * 60_000)  # 4.3 MB of base64
    data = card("FN:Big Photo", f"PHOTO;ENCODING=b;TYPE=JPEG:{photo}", "EMAIL:big@photo.example")

    started = time.monotonic()
    result = parse_vcards(data)

    assert time.monotonic() - started < 5
    assert result.contacts == (VCardContact("Big Photo", ("big@photo.example",), (), None, None),)


def test_too_many_cards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vcards, "MAX_CARDS", 3)
    data = "".join(card(f"FN:Person {i}", f"EMAIL:p{i}@x.example") for i in range(5))

    result = parse_vcards(data)

    assert [c.name for c in result.contacts] == ["Person 0", "Person 1", "Person 2"]
    assert result.errors == ("cards after card 3 skipped: too many in one part",)


def test_mangled_cards_never_raise() -> None:
    rng = random.Random(20250101)
    samples = [load(p.name) for p in sorted(DATA.glob("*.vcf")) if p.stat().st_size]
    noise = [
        b"=",
        b";",
        b":",
        b"\r\n",
        b"\n ",
        b"\\",
        b'"',
        b"BEGIN:VCARD\n",
        b"END:VCARD\n",
        b";CHARSET=x-nope",
        b";ENCODING=QUOTED-PRINTABLE",
        b"=\r\n",
        b"\xff\xfe",
        b"AGENT:\n",
    ]
    for _ in range(400):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randrange(1, 12)):
            at = rng.randrange(len(data) + 1)
            action = rng.randrange(3)
            if action == 0:
                data[at:at] = rng.choice(noise)
            elif action == 1:
                del data[at : at + rng.randrange(1, 40)]
            elif data:
                data[at % len(data)] = rng.randrange(256)

        result = parse_vcards(bytes(data))

        for contact in result.contacts:
            assert contact.name and contact.name == contact.name.strip()
            assert all("@" in address for address in contact.emails)
        assert all(error for error in result.errors)


# ----------------------------------------------------------------------------- mail parts


def test_vcf_attachment_sent_as_octet_stream_base64() -> None:
    raw = load("octet_stream_attachment.eml")

    assert may_contain_vcard(parse_mail(raw, headersonly=True))
    parts = vcard_parts(parse_mail(raw))
    assert parts == [load("outlook21_qp.vcf")]
    assert contacts_in(parse_mail(raw)) == [
        VCardContact(
            name="Jürgen Müller",
            emails=("j.mueller@mueller-soehne.example",),
            phones=("+49 221 123456-0", "+49 171 9876543", "+49 221 123456-99"),
            organization="Müller & Söhne GmbH",
            title="Geschäftsführer",
        )
    ]


def test_vcards_in_forwarded_messages() -> None:
    raw = load("forwarded_rfc822.eml")

    assert may_contain_vcard(parse_mail(raw, headersonly=True))
    # One text/vcard inside a forwarded multipart, one text/x-vcard inside a forwarded message
    # that the forwarding client base64-encoded.
    assert contacts_in(parse_mail(raw)) == [
        VCardContact(
            name="Ingrid Sørensen",
            emails=("ingrid.sorensen@fjord.example",),
            phones=("+47 22 55 01 00",),
            organization="Fjord Shipping AS",
            title="Innkjøpssjef",
        ),
        VCardContact("Mei Chen", ("mei.chen@lotus.example",), ("+86 138 0013 8000",), None, None),
    ]


def test_inline_x_vcard_in_iso_8859_1() -> None:
    raw = load("inline_x_vcard.eml")

    assert may_contain_vcard(parse_mail(raw, headersonly=True))
    assert contacts_in(parse_mail(raw)) == [
        VCardContact(
            name="Renée Jünger",
            emails=("renee@baeckerei-juenger.example",),
            phones=("+41 44 555 12 34",),
            organization="Bäckerei Jünger",
            title=None,
        )
    ]


def test_broken_multipart_gives_what_can_be_read() -> None:
    message = parse_mail(load("broken_multipart.eml"))

    parts = vcard_parts(message)  # bad base64 in one part, no closing boundary

    assert len(parts) == 2
    results = [parse_vcards(part) for part in parts]
    assert results[0].contacts == ()
    assert results[1].contacts == (
        VCardContact(
            "Amara Okafor", ("amara.okafor@lagos-trade.example",), ("+234 1 555 0100",), None, None
        ),
    )


def test_multipart_without_boundary_gives_nothing() -> None:
    raw = (
        b"From: a@b.example\r\nContent-Type: multipart/mixed\r\n\r\n"
        b"--x\r\nContent-Type: text/vcard\r\n\r\nBEGIN:VCARD\r\nFN:Lost\r\nEND:VCARD\r\n--x--\r\n"
    )

    assert vcard_parts(parse_mail(raw)) == []


def test_single_part_vcard_message() -> None:
    body = card("FN:Kim Lee", "EMAIL:kim@lee.example", "TEL;TYPE=CELL:+82 10 5555 0100").encode()
    raw = (
        b"From: Kim Lee <kim@lee.example>\r\nSubject: card\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/vcard; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(body)
    )

    assert may_contain_vcard(parse_mail(raw, headersonly=True))
    assert vcard_parts(parse_mail(raw)) == [body]
    assert contacts_in(parse_mail(raw)) == [
        VCardContact("Kim Lee", ("kim@lee.example",), ("+82 10 5555 0100",), None, None)
    ]


def test_other_attachments_are_not_vcards() -> None:
    raw = (
        b"From: a@b.example\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nBEGIN:VCARD in the text is not an attachment\r\n"
        b'--b\r\nContent-Type: application/pdf; name="offer.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
        b'--b\r\nContent-Type: text/calendar; name="meeting.ics"\r\n\r\nBEGIN:VCALENDAR\r\n'
        b"--b--\r\n"
    )

    assert vcard_parts(parse_mail(raw)) == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"Content-Type: text/plain; charset=utf-8", False),
        (b"Content-Type: text/html; charset=utf-8", False),
        (b"Subject: no content type at all", False),
        (b'Content-Type: application/pdf; name="offer.pdf"', False),
        (b'Content-Type: multipart/mixed; boundary="b"', True),
        (b'Content-Type: multipart/alternative; boundary="b"', True),
        (b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"', True),
        (b"Content-Type: text/vcard; charset=utf-8", True),
        (b"Content-Type: text/x-vcard", True),
        (b"Content-Type: text/directory; profile=vCard", True),
        (b"Content-Type: application/vcard", True),
        (b'Content-Type: application/octet-stream; name="Card.VCF"', True),
        (b'Content-Type: text/plain\r\nContent-Disposition: attachment; filename="me.vcf"', True),
        (
            b"Content-Type: text/plain\r\nContent-Disposition: attachment; "
            b"filename*=utf-8''J%C3%BCrgen.vcf",
            True,
        ),
    ],
)
def test_may_contain_vcard_from_top_level_headers(headers: bytes, expected: bool) -> None:
    raw = b"From: a@b.example\r\nTo: c@d.example\r\n" + headers + b"\r\n\r\nbody\r\n"

    assert may_contain_vcard(parse_mail(raw, headersonly=True)) is expected


def test_may_contain_vcard_on_broken_headers_does_not_raise() -> None:
    raw = (
        b"Content-Type: ;;;==\x00\xff\r\nContent-Disposition: attachment; filename*=x''%ZZ\r\n\r\n"
    )

    assert isinstance(may_contain_vcard(parse_mail(raw, headersonly=True)), bool)
