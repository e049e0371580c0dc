"""A deterministic corpus of realistic raw messages, and the CRM population they talk about.

Shared by the bench scripts. Everything comes from one seeded :class:`random.Random`, so the same
arguments give the same bytes on every run and every machine.

The population:

* **our company** ``kestrel-systems.com``: :data:`EMPLOYEES` (users), a personal mailbox owned by
  the first employee and a shared company mailbox with a distribution queue (:data:`MAILBOXES`);
* **contacts**: :func:`contact` gives contact number ``i`` (name, addresses, company number);
  contacts ``0..n-1`` are the same in every CRM size, so a CRM of 1,000 and one of 100,000
  contacts both know every contact the messages come from (:func:`generate` only draws known
  correspondents from the first ``known`` contacts); four contacts per company, about one in ten
  on a free-mail address without a company, one in ten with a second, private address;
* **strangers**: prospects at business domains the CRM does not hold (new leads, new companies),
  new people at companies the CRM holds, free-mail senders, excluded senders (:data:`EXCLUSIONS`),
  robots (newsletters, mailing lists, auto-replies).

A message is plain text (often a reply with quoted text), HTML+text ``multipart/alternative``, or
either with a small PDF-like attachment; about 3% carry a vCard. Replies thread onto earlier
messages (In-Reply-To, References); about 15% of display names and 10% of subjects are non-ASCII
encoded words (UTF-8 base64 or ISO-8859-1 quoted-printable); a third of person-to-person mail has a
Cc list of 1-5 addresses; a few messages arrive a second time in the other mailbox (a duplicate).
Sizes come out between 2 and 8 KiB, about 4 KiB on average, with CRLF line ends as from IMAP.
"""

from __future__ import annotations

import base64
import datetime as dt
import quopri
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.header import Header
from email.utils import format_datetime, formataddr


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


OUR_DOMAIN = "kestrel-systems.com"
EMPLOYEES: tuple[tuple[str, str], ...] = (
    ("anna.berg@kestrel-systems.com", "Anna Berg"),
    ("ben.okafor@kestrel-systems.com", "Ben Okafor"),
    ("chloe.martin@kestrel-systems.com", "Chloé Martin"),
    ("david.nowak@kestrel-systems.com", "David Nowak"),
    ("eva.lindqvist@kestrel-systems.com", "Eva Lindqvist"),
    ("farid.haddad@kestrel-systems.com", "Farid Haddad"),
    ("grace.liu@kestrel-systems.com", "Grace Liu"),
    ("hugo.schmidt@kestrel-systems.com", "Hugo Schmidt"),
)
"""Users (address, name); the first owns the personal mailbox."""

PERSONAL_MAILBOX = EMPLOYEES[0][0]
COMPANY_MAILBOX = "sales@kestrel-systems.com"
QUEUE: tuple[str, ...] = tuple(e for e, _ in EMPLOYEES[1:4])
MAILBOXES: tuple[str, ...] = (PERSONAL_MAILBOX, COMPANY_MAILBOX)
"""The personal mailbox (owner: the first employee) and the company mailbox (queue: QUEUE)."""

EXCLUDED_DOMAIN = "rivalcorp.com"
EXCLUDED_ADDRESS = "press@media-watch.net"
BOX_EXCLUDED_DOMAIN = "tender-alerts.eu"
EXCLUSIONS: tuple[tuple[str, str | None], ...] = (
    ("@" + EXCLUDED_DOMAIN, None),
    (EXCLUDED_ADDRESS, None),
    ("@" + BOX_EXCLUDED_DOMAIN, COMPANY_MAILBOX),
)
"""Exclusion entries with the mailbox they apply to (None: global)."""

FIRST = _words(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony "
    "Betty Mark Sandra Paul Ashley Steven Kimberly Andrew Emily Kenneth Donna Joshua Michelle "
    "Kevin Carol Brian Amanda George Melissa Timothy Deborah Lukas Sofia Mateo Lena Noah Mia "
    "Elias Hannah Liam Emma Oliver Ida Felix Clara Jonas Greta Henrik Astrid Marco Giulia Luca "
    "Chiara Pierre Camille Hiroshi Yuki Arjun Priya Kwame Amara Diego Lucia Tomas Ana"
)
LAST = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen "
    "Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Weber "
    "Fischer Wagner Becker Hoffmann Koch Richter Klein Wolf Neumann Schwarz Jansen Bakker "
    "Visser Rossi Russo Ferrari Bianchi Dubois Moreau Laurent Tanaka Suzuki Sato Patel Sharma "
    "Mensah Okoro Silva Santos Novak Horvat Nielsen Hansen Larsen Berg"
)
NON_ASCII_NAMES: tuple[tuple[str, str], ...] = (
    ("Jürgen", "Müller"),
    ("Zoë", "Ångström"),
    ("Łukasz", "Wiśniewski"),
    ("José", "Núñez"),
    ("François", "Lefèvre"),
    ("Søren", "Kierkegård"),
    ("Björn", "Öberg"),
    ("Dagný", "Þórsdóttir"),
    ("Ines", "Gonçalves"),
    ("Ekaterina", "Смирнова"),
    ("Renée", "Bézier"),
    ("Ömer", "Çelik"),
)
"""Display names that need encoded words (some also fit ISO-8859-1)."""

_CO_A = _words(
    "north south east west blue red green silver golden iron stone river lake bright clear "
    "swift true prime alpha nova apex summit harbor pioneer atlas vertex orbit quantum solar "
    "lunar cedar maple oak pine birch willow falcon eagle hawk raven fox wolf bear lynx otter "
    "delta sigma omega zen arc core peak ridge valley meadow coast bay cliff canyon forest "
    "crystal amber cobalt indigo scarlet ivory onyx jade coral pearl ruby sapphire topaz opal "
    "granite marble copper bronze titan vector pixel signal beacon anchor compass lantern "
    "harvest orchard garden field spring autumn winter summer dawn dusk noon star comet"
)
_CO_B = _words(
    "works labs systems solutions logistics trading foods energy medical robotics software "
    "analytics consulting partners ventures capital media design studios dynamics industries "
    "networks security cloud data devices motors textiles chemicals pharma grains farms "
    "construction engineering materials metals plastics printing packaging furniture "
    "interiors apparel outdoor sports travel tours hotels events catering brewing coffee "
    "tea wines bakery dairy seafood organics health care clinic dental optics audio "
    "video games toys books press publishing learning academy school tutors legal finance "
    "insurance realty homes rentals storage freight shipping aviation marine rail transit "
    "mobility charging solar wind water recycling waste cleaning facility gear tools supply"
)
_TLDS = ("com", "de", "co.uk", "fr", "io", "nl")
_PROSPECT_B = _words(
    "group gmbh digital online global international direct hub one plus pro works shop "
    "store market trade service services tech co"
)
FREE_MAIL = ("gmail.com", "yahoo.com", "outlook.com", "web.de", "gmx.de", "hotmail.co.uk")
_BRANDS = _words(
    "shopright tradeweekly cloudnews devdigest marketpulse saasinsider logisticsnow "
    "fintechbrief retailradar b2bmonthly"
)
_LISTS = ("dev", "users", "announce", "ops", "community")

_WORDS = _words(
    "the a we our your please thanks regarding order delivery invoice quote proposal contract "
    "meeting schedule next week tomorrow Monday Friday update attached document review price "
    "discount volume shipment warehouse project timeline budget approval team question issue "
    "support ticket feature release version customer account renewal licence terms payment "
    "due confirm available call agenda notes follow up as discussed let me know if you have "
    "any questions best regards kind looking forward to hearing from on for with about this "
    "that will can could should would be is are was have has need needs sample samples "
    "specification drawing revision batch units pallet freight forwarder customs lead time "
    "production capacity quality inspection report certificate compliance audit training"
)
_SUBJECTS = (
    "Quote request for {n} units",
    "Order {n} - delivery date",
    "Invoice {n}",
    "Meeting next week",
    "Proposal for Q{q} rollout",
    "Question about the contract renewal",
    "Samples and specification",
    "Updated timeline",
    "Follow-up on our call",
    "Pricing for volume orders",
    "Shipment {n} delayed",
    "Support ticket #{n}",
    "Introduction",
    "Partnership opportunity",
    "Your offer {n}",
)
_NON_ASCII_SUBJECTS = (
    "Angebot für Ihre Anfrage \N{EN DASH} Größe {n}",
    "Réunion de suivi — café à {q}h",
    "Zamówienie {n}: potwierdzenie dostawy",
    "Offerte nº {n} \N{EN DASH} condições de pagamento",
    "Förfrågan om leverans {n}",
    "Счёт № {n}",
    "Ödeme plan\N{LATIN SMALL LETTER DOTLESS I} {n}",
)
_TITLES = (
    "Head of Purchasing",
    "CTO",
    "Sales Manager",
    "Operations Lead",
    "Procurement Specialist",
    "CEO, Founder",
    "Account Executive",
)
_TZS = tuple(dt.timezone(dt.timedelta(hours=h)) for h in (0, 1, 2, -5, -8, 9, 5))
_START = dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC)
CRLF = "\r\n"


@dataclass(frozen=True)
class SeedContact:
    """Contact number ``index`` of the CRM: name, addresses (first is primary), company."""

    index: int
    name: str
    addresses: tuple[str, ...]
    company: int | None


def company(index: int) -> tuple[str, str]:
    """Company number ``index`` of the CRM: (name, registrable domain); unique below 58,000."""
    a = _CO_A[index % len(_CO_A)]
    b = _CO_B[(index // len(_CO_A)) % len(_CO_B)]
    tld = _TLDS[(index // (len(_CO_A) * len(_CO_B))) % len(_TLDS)]
    return f"{a.capitalize()} {b.capitalize()}", f"{a}{b}.{tld}"


def contact(index: int) -> SeedContact:
    """Contact number ``index``: four per company, one in ten on free mail only."""
    first = FIRST[index % len(FIRST)]
    last = LAST[(index * 7 + index // len(FIRST)) % len(LAST)]
    if index % 10 == 9:
        free = FREE_MAIL[index % len(FREE_MAIL)]
        return SeedContact(
            index, f"{first} {last}", (f"{first}.{last}{index}@{free}".lower(),), None
        )
    number = index // 4
    domain = company(number)[1]
    addresses = [f"{first}.{last}@{domain}".lower()]
    if index % 10 == 3:
        addresses.append(f"{first}{last}{index}@{FREE_MAIL[index % 3]}".lower())
    return SeedContact(index, f"{first} {last}", tuple(addresses), number)


@dataclass(frozen=True)
class Sample:
    """One message to capture: raw bytes, where it was seen, which way it went."""

    raw: bytes
    mailbox: str
    direction: str  # "incoming" or "outgoing" (crm.models.Direction values)
    seen: bool
    kind: str  # what the generator made, for the mix report
    sender_kind: str


@dataclass
class _Leaf:
    content_type: str
    body: str
    cte: str = "7bit"
    extra: tuple[tuple[str, str], ...] = ()


@dataclass
class _Multi:
    subtype: str
    parts: list[_Leaf | _Multi]
    boundary: str = ""


@dataclass
class _Thread:
    message_id: str
    references: tuple[str, ...]
    subject: str
    name: str
    address: str
    direction: str


@dataclass
class Corpus:
    """The generated messages and what went into them."""

    samples: list[Sample] = field(default_factory=list)

    def mix(self) -> dict[str, dict[str, int]]:
        """Counts by kind, sender kind, direction and mailbox."""
        return {
            "kind": dict(Counter(s.kind for s in self.samples).most_common()),
            "sender": dict(Counter(s.sender_kind for s in self.samples).most_common()),
            "direction": dict(Counter(s.direction for s in self.samples).most_common()),
            "mailbox": dict(Counter(s.mailbox for s in self.samples).most_common()),
        }

    def sizes(self) -> tuple[int, float, int]:
        """(smallest, mean, largest) raw size in bytes."""
        lengths = [len(s.raw) for s in self.samples]
        return min(lengths), sum(lengths) / len(lengths), max(lengths)


class _Generator:
    def __init__(self, seed: int, known: int) -> None:
        self.rng = random.Random(seed)
        self.known = known
        self.now = _START
        self.history: list[_Thread] = []
        self.samples: list[Sample] = []
        self.count = 0
        self.paragraphs = [self.paragraph() for _ in range(1000)]

    # ------------------------------------------------------------------ people

    def pick(self, weights: Sequence[tuple[str, float]]) -> str:
        names = [n for n, _ in weights]
        return self.rng.choices(names, [w for _, w in weights])[0]

    def person(self, kind: str) -> tuple[str, str]:
        """(display name, address) of a correspondent of this kind."""
        rng = self.rng
        if kind == "known":
            seed = contact(rng.randrange(self.known))
            return seed.name, seed.addresses[0]
        if kind == "known-alt":
            while True:
                seed = contact(rng.randrange(self.known))
                if len(seed.addresses) > 1:
                    return seed.name, seed.addresses[1]
        if kind == "employee":
            address, name = rng.choice(EMPLOYEES)
            return name, address
        first, last = self.name()
        local = f"{_ascii(first)}.{_ascii(last)}".lower()
        if kind == "prospect":
            number = rng.randrange(1500)
            domain = f"{_CO_A[number % len(_CO_A)]}-{_PROSPECT_B[number % len(_PROSPECT_B)]}"
            return f"{first} {last}", f"{local}@{domain}.{_TLDS[number % len(_TLDS)]}"
        if kind == "new-at-known":
            return f"{first} {last}", f"{local}@{company(rng.randrange(self.known // 4))[1]}"
        if kind == "free-mail":
            number = rng.randrange(800)
            return f"{first} {last}", f"{local}{number}@{FREE_MAIL[number % len(FREE_MAIL)]}"
        if kind == "excluded":
            if rng.random() < 0.3:
                return "Press Desk", EXCLUDED_ADDRESS
            domain = BOX_EXCLUDED_DOMAIN if rng.random() < 0.3 else EXCLUDED_DOMAIN
            return f"{first} {last}", f"{local}@{domain}"
        raise ValueError(kind)

    def name(self) -> tuple[str, str]:
        if self.rng.random() < 0.15:
            return self.rng.choice(NON_ASCII_NAMES)
        return self.rng.choice(FIRST), self.rng.choice(LAST)

    def cc(self) -> list[tuple[str, str]]:
        kinds = (("employee", 4), ("known", 4), ("prospect", 1), ("free-mail", 1))
        return [self.person(self.pick(kinds)) for _ in range(self.rng.randint(1, 5))]

    # ---------------------------------------------------------------- messages

    def next_date(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=self.rng.randrange(5, 1800))
        return self.now.astimezone(self.rng.choice(_TZS))

    def message_id(self, domain: str) -> str:
        self.count += 1
        return f"<{self.rng.getrandbits(64):016x}.{self.count}@{domain}>"

    def paragraph(self) -> str:
        """A paragraph of two to five sentences of business words, wrapped at 72."""
        rng = self.rng
        sentences = [
            " ".join(rng.choices(_WORDS, k=rng.randint(6, 16))).capitalize()
            + rng.choice((".", ".", ".", "?", "!"))
            for _ in range(rng.randint(2, 5))
        ]
        lines: list[str] = []
        line: list[str] = []
        width = 0
        for word in " ".join(sentences).split(" "):
            if width + len(word) > 72:
                lines.append(" ".join(line))
                line, width = [], 0
            line.append(word)
            width += len(word) + 1
        lines.append(" ".join(line))
        return CRLF.join(lines)

    def text(self, size: int) -> str:
        """Paragraphs from the pool, about ``size`` characters."""
        chosen: list[str] = []
        used = 0
        while used < size:
            chosen.append(self.rng.choice(self.paragraphs))
            used += len(chosen[-1]) + 4
        return (CRLF + CRLF).join(chosen)

    def html(self, text: str) -> str:
        paragraphs = "".join(
            f'<p style="margin:0 0 12px 0">{p.replace(CRLF, " ")}</p>\r\n'
            for p in text.split(CRLF + CRLF)
        )
        return (
            '<html><head><meta http-equiv="Content-Type" content="text/html; '
            'charset=utf-8"><style>body{font-family:Calibri,Arial,sans-serif;font-size:11pt}'
            "</style></head>\r\n<body>\r\n" + paragraphs + "</body></html>\r\n"
        )

    def pdf(self) -> _Leaf:
        blob = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + self.rng.randbytes(self.rng.randint(700, 2200))
        encoded = base64.encodebytes(blob).decode("ascii").replace("\n", CRLF)
        name = f"{self.rng.choice(('offer', 'invoice', 'spec', 'report'))}-{self.count}.pdf"
        return _Leaf(
            f'application/pdf; name="{name}"',
            encoded,
            "base64",
            (("Content-Disposition", f'attachment; filename="{name}"'),),
        )

    def vcard(self, name: str, address: str) -> _Leaf:
        first, _, last = name.partition(" ")
        org = address.rpartition("@")[2].split(".")[0].replace("-", " ").title()
        card = CRLF.join(
            (
                "BEGIN:VCARD",
                "VERSION:3.0",
                f"FN:{name}",
                f"N:{last};{first};;;",
                f"ORG:{org}",
                f"TITLE:{self.rng.choice(_TITLES).replace(',', chr(92) + ',')}",
                f"TEL;TYPE=WORK,VOICE:+49 30 {self.rng.randrange(1000000, 9999999)}",
                f"EMAIL;TYPE=INTERNET:{address}",
                "END:VCARD",
                "",
            )
        )
        filename = f"{_ascii(name)}.vcf"
        if self.rng.random() < 0.5:
            encoded = base64.encodebytes(card.encode()).decode("ascii").replace("\n", CRLF)
            return _Leaf(
                f'text/x-vcard; name="{filename}"',
                encoded,
                "base64",
                (("Content-Disposition", f'attachment; filename="{filename}"'),),
            )
        return _Leaf(
            f'text/vcard; charset=utf-8; name="{filename}"',
            card,
            "8bit",
            (("Content-Disposition", f'attachment; filename="{filename}"'),),
        )

    def body(self, text: str, style: str) -> _Leaf | _Multi:
        plain = _Leaf("text/plain; charset=utf-8; format=flowed", text, _cte(text))
        if style == "plain":
            return plain
        html = self.html(text)
        if self.rng.random() < 0.5:
            qp = quopri.encodestring(html.encode("utf-8")).decode("ascii")
            html_part = _Leaf("text/html; charset=utf-8", qp, "quoted-printable")
        else:
            html_part = _Leaf("text/html; charset=utf-8", html, _cte(html))
        return _Multi("alternative", [plain, html_part])

    def headers(
        self,
        sender: tuple[str, str],
        to: list[tuple[str, str]],
        cc: list[tuple[str, str]],
        subject: str,
        date: dt.datetime,
        message_id: str,
        parent: _Thread | None,
        outgoing: bool,
    ) -> list[tuple[str, str]]:
        """Trace and authentication headers (received mail only), then the usual ones."""
        rng = self.rng
        domain = sender[1].rpartition("@")[2]
        found: list[tuple[str, str]] = []
        hops = [
            f"from mail{rng.randrange(1, 40)}.{domain} (mail{rng.randrange(1, 40)}.{domain} "
            f"[203.0.113.{rng.randrange(1, 255)}])\r\n\tby mx.{OUR_DOMAIN} (Postfix) "
            f"with ESMTPS id {rng.getrandbits(40):010X}\r\n\tfor <{to[0][1]}>; "
            f"{format_datetime(date)}"
            for _ in range(0 if outgoing else rng.randint(2, 4))
        ]
        if not outgoing:
            found.append(("Return-Path", f"<{sender[1]}>"))
        found += [("Received", hop) for hop in hops]
        if not outgoing and rng.random() < 0.6:
            signature = base64.b64encode(rng.randbytes(128)).decode("ascii")
            found.append(
                (
                    "DKIM-Signature",
                    f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s1;\r\n\t"
                    f"t={int(date.timestamp())}; h=from:to:subject:date:message-id;\r\n\t"
                    f"bh={base64.b64encode(rng.randbytes(32)).decode('ascii')};\r\n\t"
                    f"b={signature[:70]}\r\n\t {signature[70:]}",
                )
            )
            found.append(
                (
                    "Authentication-Results",
                    f"mx.{OUR_DOMAIN}; dkim=pass header.d={domain}; spf=pass "
                    f"smtp.mailfrom={domain}; dmarc=pass header.from={domain}",
                )
            )
        found += [
            ("From", self.address(*sender)),
            ("To", _join([self.address(*p) for p in to])),
        ]
        if cc:
            found.append(("Cc", _join([self.address(*p) for p in cc])))
        found += [
            ("Subject", self.subject_header(subject)),
            ("Date", format_datetime(date)),
            ("Message-ID", message_id),
        ]
        if parent is not None:
            found.append(("In-Reply-To", parent.message_id))
            refs = (*parent.references, parent.message_id)[-10:]
            found.append(("References", "\r\n ".join(refs)))
        found.append(("MIME-Version", "1.0"))
        found.append(
            rng.choice(
                (
                    ("User-Agent", "Mozilla Thunderbird 115.8.0"),
                    ("X-Mailer", "Microsoft Outlook 16.0"),
                    ("X-Mailer", "Apple Mail (2.3774.500.171.1.1)"),
                    ("Content-Language", "en-US"),
                )
            )
        )
        return found

    def address(self, name: str, address: str) -> str:
        if name.isascii():
            return formataddr((name, address))
        charset = "utf-8"
        if self.rng.random() < 0.4:
            try:
                name.encode("iso-8859-1")
                charset = "iso-8859-1"
            except UnicodeEncodeError:
                pass
        return f"{Header(name, charset).encode()} <{address}>"

    def subject_header(self, subject: str) -> str:
        if subject.isascii():
            return subject
        charset = "utf-8"
        if self.rng.random() < 0.4:
            try:
                subject.encode("iso-8859-1")
                charset = "iso-8859-1"
            except UnicodeEncodeError:
                pass
        return Header(subject, charset).encode(linesep=CRLF)

    def subject(self) -> str:
        rng = self.rng
        template = rng.choice(_NON_ASCII_SUBJECTS if rng.random() < 0.1 else _SUBJECTS)
        return template.format(n=rng.randrange(1000, 99999), q=rng.randint(1, 4))

    def serialize(self, headers: list[tuple[str, str]], body: _Leaf | _Multi) -> bytes:
        head = "".join(f"{name}: {value}{CRLF}" for name, value in headers)
        return (head + self.entity(body)).encode("utf-8")

    def entity(self, part: _Leaf | _Multi) -> str:
        if isinstance(part, _Leaf):
            head = f"Content-Type: {part.content_type}{CRLF}"
            head += f"Content-Transfer-Encoding: {part.cte}{CRLF}"
            head += "".join(f"{n}: {v}{CRLF}" for n, v in part.extra)
            return head + CRLF + part.body + CRLF
        boundary = part.boundary or f"----=_Part_{self.rng.getrandbits(48):012x}"
        out = [f'Content-Type: multipart/{part.subtype};{CRLF}\tboundary="{boundary}"{CRLF}{CRLF}']
        out.append(f"This is a multi-part message in MIME format.{CRLF}")
        for child in part.parts:
            out.append(f"{CRLF}--{boundary}{CRLF}{self.entity(child)}")
        out.append(f"{CRLF}--{boundary}--{CRLF}")
        return "".join(out)

    # ------------------------------------------------------------------ kinds

    def sample(self) -> Sample:
        if self.history and self.rng.random() < 0.02:
            return self.duplicate()
        kind = self.pick(
            (
                ("person", 0.55),
                ("outgoing", 0.23),
                ("mailing-list", 0.07),
                ("newsletter", 0.07),
                ("auto-reply", 0.04),
                ("vcard", 0.03),
            )
        )
        if kind == "outgoing":
            return self.outgoing()
        if kind in ("mailing-list", "newsletter", "auto-reply"):
            return self.robot(kind)
        return self.incoming(with_vcard=kind == "vcard")

    def mailbox(self) -> str:
        return PERSONAL_MAILBOX if self.rng.random() < 0.55 else COMPANY_MAILBOX

    def size(self) -> int:
        return int(self.rng.triangular(1500, 7500, 1500))

    def parent(self) -> _Thread | None:
        if self.history and self.rng.random() < 0.5:
            return self.rng.choice(self.history[-300:])
        return None

    def compose(
        self,
        sender: tuple[str, str],
        to: list[tuple[str, str]],
        cc: list[tuple[str, str]],
        direction: str,
        attachments: list[_Leaf],
        style: str | None = None,
    ) -> tuple[bytes, str]:
        rng = self.rng
        parent = self.parent()
        subject = ("Re: " + parent.subject.removeprefix("Re: ")) if parent else self.subject()
        date = self.next_date()
        message_id = self.message_id(sender[1].rpartition("@")[2])
        headers = self.headers(
            sender, to, cc, subject, date, message_id, parent, direction == "outgoing"
        )
        style = style or ("plain" if rng.random() < 0.45 else "alternative")
        target = self.size()
        head_size = sum(len(n) + len(v) + 4 for n, v in headers) + 300
        attached = sum(len(a.body) + 200 for a in attachments)
        share = 2.2 if style == "alternative" else 1.0
        room = max(200, int((target - head_size - attached) / share))
        if parent is not None:
            own = self.text(room // 3)
            quoted = CRLF.join("> " + line for line in self.text(room - room // 3).split(CRLF))
            intro = f"On {format_datetime(date)}, {parent.name} wrote:"
            text = f"{own}{CRLF}{CRLF}{intro}{CRLF}{quoted}"
        else:
            text = self.text(room)
        text += f"{CRLF}{CRLF}-- {CRLF}{sender[0]}{CRLF}{sender[1]}"
        body: _Leaf | _Multi = self.body(text, style)
        if attachments:
            body = _Multi("mixed", [body, *attachments])
        raw = self.serialize(headers, body)
        references = (*parent.references, parent.message_id)[-10:] if parent else ()
        self.history.append(_Thread(message_id, references, subject, *sender, direction))
        return raw, message_id

    def attachments(self) -> list[_Leaf]:
        return [self.pdf()] if self.rng.random() < 0.15 else []

    def incoming(self, with_vcard: bool) -> Sample:
        rng = self.rng
        sender_kind = self.pick(
            (
                ("known", 0.45),
                ("known-alt", 0.03),
                ("prospect", 0.17),
                ("new-at-known", 0.07),
                ("free-mail", 0.12),
                ("employee", 0.10),
                ("excluded", 0.06),
            )
        )
        sender = self.person(sender_kind)
        mailbox = self.mailbox()
        if mailbox == PERSONAL_MAILBOX:
            to = [(EMPLOYEES[0][1], PERSONAL_MAILBOX)]
        else:
            to = [("Kestrel Sales", COMPANY_MAILBOX)]
        cc = self.cc() if rng.random() < 0.33 else []
        attachments = self.attachments()
        kind = "attachment" if attachments else "person"
        if with_vcard:
            kind = "vcard"
            card = sender if rng.random() < 0.5 else self.person("prospect")
            attachments.append(self.vcard(*card))
        raw, _ = self.compose(sender, to, cc, "incoming", attachments)
        return Sample(raw, mailbox, "incoming", rng.random() < 0.7, kind, sender_kind)

    def outgoing(self) -> Sample:
        rng = self.rng
        mailbox = self.mailbox()
        if mailbox == PERSONAL_MAILBOX:
            sender = (EMPLOYEES[0][1], PERSONAL_MAILBOX)
        else:
            sender = ("Kestrel Sales", COMPANY_MAILBOX)
        recipient_kind = self.pick(
            (
                ("known", 0.58),
                ("prospect", 0.15),
                ("free-mail", 0.10),
                ("new-at-known", 0.07),
                ("employee", 0.05),
                ("excluded", 0.05),
            )
        )
        to = [self.person(recipient_kind) for _ in range(1 if rng.random() < 0.8 else 2)]
        cc = self.cc() if rng.random() < 0.33 else []
        attachments = self.attachments()
        raw, _ = self.compose(sender, to, cc, "outgoing", attachments)
        kind = "outgoing+attachment" if attachments else "outgoing"
        return Sample(raw, mailbox, "outgoing", True, kind, recipient_kind)

    def robot(self, kind: str) -> Sample:
        rng = self.rng
        mailbox = self.mailbox()
        to = [("", mailbox)]
        extra: list[tuple[str, str]] = []
        if kind == "newsletter":
            brand = rng.choice(_BRANDS)
            sender = (
                brand.title(),
                rng.choice(("news", "no-reply", "newsletter")) + f"@{brand}.com",
            )
            sender_kind = "robot"
            extra = [
                ("List-Unsubscribe", f"<https://{brand}.com/u/{rng.getrandbits(32):x}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                ("Precedence", "bulk"),
            ]
            style = "alternative"
        elif kind == "mailing-list":
            sender_kind = self.pick((("known", 0.5), ("prospect", 0.3), ("free-mail", 0.2)))
            sender = self.person(sender_kind)
            name = rng.choice(_LISTS)
            to = [("", f"{name}@lists.opensource.example.org")]
            extra = [
                ("List-Id", f"{name.title()} list <{name}.lists.opensource.example.org>"),
                ("List-Post", f"<mailto:{name}@lists.opensource.example.org>"),
                ("Precedence", "list"),
            ]
            style = "plain"
        else:
            sender_kind = self.pick((("known", 0.7), ("prospect", 0.3)))
            sender = self.person(sender_kind)
            extra = [("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All")]
            style = "plain"
        raw, _ = self.compose(sender, to, [], "incoming", [], style)
        head, sep, rest = raw.partition(b"MIME-Version: 1.0\r\n")
        more = "".join(f"{n}: {v}{CRLF}" for n, v in extra).encode("utf-8")
        if kind == "auto-reply":
            head = head.replace(b"Subject: ", b"Subject: Automatic reply: ", 1)
        return Sample(head + more + sep + rest, mailbox, "incoming", False, kind, sender_kind)

    def duplicate(self) -> Sample:
        """An earlier message seen again in the other mailbox (both were addressed)."""
        original = self.rng.choice(self.samples[-500:])
        other = COMPANY_MAILBOX if original.mailbox == PERSONAL_MAILBOX else PERSONAL_MAILBOX
        return Sample(
            original.raw,
            other,
            original.direction,
            original.seen,
            "duplicate",
            original.sender_kind,
        )


def generate(count: int = 10_000, seed: int = 1, known: int = 1_000) -> Corpus:
    """``count`` messages from a generator seeded with ``seed``; known senders < ``known``."""
    generator = _Generator(seed, known)
    while len(generator.samples) < count:
        generator.samples.append(generator.sample())
    return Corpus(generator.samples)


def _ascii(text: str) -> str:
    """A plain ASCII spelling of a name, for addresses and file names."""
    table = str.maketrans(
        "äöüåøæéèêëçñńśłóíúþðıçãõ",
        "aouaoaeeeecnnsloiutdicao",
    )
    folded = text.lower().translate(table).replace("ß", "ss")
    result = "".join(c for c in folded if c.isascii() and (c.isalnum() or c in " .-"))
    return result.replace(" ", ".") or "x"


def _cte(text: str) -> str:
    return "7bit" if text.isascii() else "8bit"


def _join(addresses: list[str]) -> str:
    return ("," + CRLF + " ").join(addresses) if len(addresses) > 2 else ", ".join(addresses)
