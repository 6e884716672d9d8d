#!/usr/bin/env python3
"""Write the tidings demo data under examples/: CRM records, email the CRM already tracks,
four Maildir mailboxes of Northwind Traders, and the expected decision for every message.

    python examples/generate.py            # rewrite examples/ in place
    python examples/generate.py --out DIR  # write the same files under DIR

Deterministic (fixed dates, hashes instead of randomness, no clock) and idempotent: two
runs give byte-identical files. Standard library only.

The expected outcome of every message is written by hand, per scenario, from
docs/decisions.md. Nothing here evaluates the decision rules, so ground-truth.jsonl is an
independent oracle for the processors.
"""

# The mail bodies are business English with typographic dashes and quotes on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import html
import io
import json
import shutil
import struct
import sys
import textwrap
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.utils import format_datetime, formataddr
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- world

YEAR = 2026
US_DST_FROM = 8  # 8 March 2026: New York, Chicago and Los Angeles move one hour ahead
ZONES = {  # minutes east of UTC in March 2026 (Europe changes on the 29th, after the data)
    "LON": (0, 0),
    "CET": (60, 60),
    "NYC": (-300, -240),
    "CHI": (-360, -300),
    "LAX": (-480, -420),
    "SHA": (480, 480),
    "TYO": (540, 540),
}

AL_IN = ("mb-alice", "INBOX")
AL_SENT = ("mb-alice", "Sent")
BO_IN = ("mb-bob", "INBOX")
BO_SENT = ("mb-bob", "Sent")
CA_IN = ("mb-carol", "INBOX")
SU_IN = ("mb-support", "INBOX")

MAILBOXES = (
    # id, owner, address, filter, folders
    ("mb-alice", "user:alice", "alice@northwind.example", "responses", ("INBOX", "Sent")),
    ("mb-bob", "user:bob", "bob@northwind.example", "crm-records", ("INBOX", "Sent")),
    ("mb-carol", "user:carol", "carol@northwind.example", "email-enabled", ("INBOX",)),
    ("mb-support", "queue:support", "support@northwind.example", "all", ("INBOX",)),
)

OPP_Q3 = "opportunity:opp-001"
OPP_RENEWAL = "opportunity:opp-002"
OPP_AMENDMENT = "opportunity:opp-003"
OPP_SAMPLES = "opportunity:opp-004"
LEAD_BLUEFIN = "lead:l-001"
ORDER_4471 = "salesorder:so-4471"
CASE_1042 = "incident:case-1042"
CAMPAIGN_FAIR = "campaign:cmp-001"


@dataclass(frozen=True)
class Record:
    """A CRM record that owns email addresses."""

    id: str
    type: str
    name: str
    emails: tuple[str, ...]
    parent_account: str | None = None


RECORDS = (
    Record("alice", "user", "Alice Moreau", ("alice@northwind.example",)),
    Record("bob", "user", "Bob Okafor", ("bob@northwind.example",)),
    Record("carol", "user", "Carol Jensen", ("carol@northwind.example",)),
    Record("support", "queue", "Northwind Support", ("support@northwind.example",)),
    Record("contoso", "account", "Contoso Ltd", ("info@contoso.example",)),
    Record("fabrikam", "account", "Fabrikam Inc.", ("info@fabrikam.example",)),
    Record("tailspin", "account", "Tailspin Toys", ("hello@tailspin.example",)),
    Record("adatum", "account", "Adatum Corporation", ("contact@adatum.example",)),
    Record("wideworld", "account", "Wide World Importers", ("office@wideworld.example",)),
    Record("c-001", "contact", "Dana Whitfield", ("dana.whitfield@contoso.example",), "contoso"),
    Record(
        "c-002",
        "contact",
        "Marco Bianchi",
        ("marco.bianchi@contoso.example", "m.bianchi@contoso.example"),
        "contoso",
    ),
    Record(
        "c-003", "contact", "Élodie Fournier", ("elodie.fournier@fabrikam.example",), "fabrikam"
    ),
    Record(
        "c-004",
        "contact",
        "Søren Kjærgaard",
        ("soren.kjaergaard@fabrikam.example", "soren@kjaergaard.example"),
        "fabrikam",
    ),
    Record("c-005", "contact", "Priya Raman", ("priya.raman@tailspin.example",), "tailspin"),
    Record("c-006", "contact", "Tom Becker", ("tom.becker@tailspin.example",), "tailspin"),
    # ap@tailspin.example is shared by two contacts: an ambiguous address.
    Record(
        "c-007",
        "contact",
        "Lena Hoffmann",
        ("lena.hoffmann@tailspin.example", "ap@tailspin.example"),
        "tailspin",
    ),
    Record(
        "c-008",
        "contact",
        "Rui Costa",
        ("rui.costa@tailspin.example", "ap@tailspin.example"),
        "tailspin",
    ),
    Record("c-009", "contact", "王芳 (Wang Fang)", ("wang.fang@adatum.example",), "adatum"),
    Record("c-010", "contact", "José Álvarez", ("jose.alvarez@adatum.example",), "adatum"),
    Record("c-011", "contact", "Kwame Mensah", ("kwame.mensah@adatum.example",), "adatum"),
    Record(
        "c-012",
        "contact",
        "Ingrid Nilsson",
        ("ingrid.nilsson@wideworld.example", "ingrid@nilsson.example"),
        "wideworld",
    ),
    Record(
        "c-013", "contact", "Hiroshi Tanaka", ("hiroshi.tanaka@wideworld.example",), "wideworld"
    ),
    Record("c-014", "contact", "Fatima Zahra Benali", ("f.benali@wideworld.example",), "wideworld"),
    Record("c-015", "contact", "Greta Lindqvist", ("greta.lindqvist@contoso.example",), "contoso"),
    Record("c-016", "contact", "Noah Fischer", ("noah.fischer@example.com",)),
    Record("l-001", "lead", "Olivia Grant (Bluefin Logistics)", ("olivia.grant@bluefin.example",)),
    Record("l-002", "lead", "Mateo Rossi (Rossi Design Studio)", ("mateo@rossi-design.example",)),
    Record("l-003", "lead", "Aisha Bello (Greenleaf Grocers)", ("aisha.bello@greenleaf.example",)),
    Record("l-004", "lead", "Lukas Novák", ("lukas.novak@example.com",)),
    Record("l-005", "lead", "Chloé Martin (Lumière Épicerie)", ("chloe.martin@lumiere.example",)),
    Record("l-006", "lead", "Daniel Kim (Northpeak Outfitters)", ("dkim@northpeak.example",)),
)


@dataclass(frozen=True)
class Person:
    """Someone who writes email, with the habits of their mail client.

    `client` picks Message-ID style, quoting, threading headers and MIME shape;
    `charset` makes a legacy client encode headers and body in that charset.
    """

    name: str
    addr: str
    zone: str = "LON"
    client: str = "gmail"
    sig: str = ""
    charset: str | None = None
    encoded_name: str | None = None  # a hand-written RFC 2047 display name (legacy clients)
    crlf: bool = False
    reply_prefix: str = ""  # "SV:" for a Danish client; default RE:/Re: by client

    @property
    def domain(self) -> str:
        return self.addr.rpartition("@")[2].lower()

    def header(self) -> str:
        """The address as a legacy client writes it (display name pre-encoded)."""
        if self.encoded_name:
            return f"{self.encoded_name} <{self.addr}>"
        return formataddr((self.name, self.addr), charset="utf-8")


def _sig(*lines: str, dashes: bool = True) -> str:
    return ("-- \n" if dashes else "") + "\n".join(lines)


ALICE = Person(
    "Alice Moreau",
    "alice@northwind.example",
    client="outlook",
    sig=_sig(
        "Alice Moreau",
        "Key Account Manager | Northwind Traders",
        "+44 20 7946 0321",
        dashes=False,
    ),
)
BOB = Person(
    "Bob Okafor",
    "bob@northwind.example",
    client="thunderbird",
    sig=_sig("Bob Okafor", "Account Manager, Contracts & Logistics", "Northwind Traders"),
)
CAROL = Person(
    "Carol Jensen",
    "carol@northwind.example",
    client="apple",
    sig=_sig("Carol Jensen", "Customer Success Lead, Northwind Traders", dashes=False),
)
SUPPORT = Person("Northwind Support", "support@northwind.example", client="web")

DANA = Person(
    "Dana Whitfield",
    "dana.whitfield@contoso.example",
    "NYC",
    "outlook",
    _sig("Dana Whitfield", "Procurement Manager", "Contoso Ltd | +1 212 555 0143", dashes=False),
)
MARCO = Person(
    "Marco Bianchi", "marco.bianchi@contoso.example", "NYC", "apple", "Sent from my iPhone"
)
MARCO_ALT = Person("Marco Bianchi", "m.bianchi@contoso.example", "NYC", "gmail")
GRETA = Person(
    "Greta Lindqvist",
    "greta.lindqvist@contoso.example",
    "NYC",
    "outlook",
    _sig("Greta Lindqvist", "Store Operations, Contoso Ltd", dashes=False),
)
ELODIE = Person(
    "Élodie Fournier",
    "elodie.fournier@fabrikam.example",
    "CET",
    "exchange",
    _sig(
        "Élodie Fournier", "Responsable Achats / Head of Purchasing", "Fabrikam Inc.", dashes=False
    ),
    charset="iso-8859-1",
    encoded_name="=?iso-8859-1?Q?=C9lodie_Fournier?=",
    crlf=True,
)
SOREN = Person(
    "Søren Kjærgaard",
    "soren@kjaergaard.example",
    "CET",
    "thunderbird",
    _sig("Søren Kjærgaard", "Operations Director, Fabrikam"),
    charset="iso-8859-1",
    encoded_name="=?ISO-8859-1?Q?S=F8ren_Kj=E6rgaard?=",
    reply_prefix="SV:",
)
SOREN_WORK = Person(
    "Søren Kjærgaard",
    "soren.kjaergaard@fabrikam.example",
    "CET",
    "exchange",
    _sig("Søren Kjærgaard", "Operations Director, Fabrikam Inc.", dashes=False),
    crlf=True,
)
PRIYA = Person(
    "Priya Raman",
    "priya.raman@tailspin.example",
    "CHI",
    "outlook",
    _sig("Priya Raman | Contracts Manager", "Tailspin Toys", dashes=False),
)
TOM = Person("Tom Becker", "tom.becker@tailspin.example", "CHI", "gmail", _sig("Tom Becker"))
LENA = Person(
    "Lena Hoffmann",
    "lena.hoffmann@tailspin.example",
    "CHI",
    "outlook",
    _sig("Lena Hoffmann", "Accounts Payable, Tailspin Toys", dashes=False),
)
RUI = Person(
    "Rui Costa",
    "rui.costa@tailspin.example",
    "CHI",
    "outlook",
    _sig("Rui Costa", "Finance Controller | Tailspin Toys", dashes=False),
    crlf=True,
)
AP_TAILSPIN = Person(
    "Tailspin Accounts Payable",
    "ap@tailspin.example",
    "CHI",
    "outlook",
    _sig("Accounts Payable team", "Tailspin Toys", dashes=False),
)
WANG = Person(
    "王芳",
    "wang.fang@adatum.example",
    "SHA",
    "foxmail",
    _sig("王芳 Wang Fang", "Import Coordinator, Adatum Corporation", dashes=False),
    charset="gb2312",
    encoded_name="=?GB2312?B?zfW3vA==?=",
)
JOSE = Person(
    "José Álvarez",
    "jose.alvarez@adatum.example",
    "SHA",
    "gmail",
    _sig("José Álvarez", "Logistics Manager – Adatum Corporation"),
)
KWAME = Person(
    "Kwame Mensah",
    "kwame.mensah@adatum.example",
    "SHA",
    "thunderbird",
    _sig("Kwame Mensah", "IT & Systems, Adatum"),
)
INGRID = Person(
    "Ingrid Nilsson",
    "ingrid.nilsson@wideworld.example",
    "TYO",
    "apple",
    _sig("Ingrid", dashes=False),
)
INGRID_HOME = Person(
    "Ingrid Nilsson", "ingrid@nilsson.example", "TYO", "apple", "Sent from my iPad"
)
HIROSHI = Person(
    "Hiroshi Tanaka",
    "hiroshi.tanaka@wideworld.example",
    "TYO",
    "outlook",
    _sig("Hiroshi Tanaka", "Import Manager | Wide World Importers", dashes=False),
    crlf=True,
)
FATIMA = Person(
    "Fatima Zahra Benali",
    "f.benali@wideworld.example",
    "CET",
    "gmail",
    _sig("Fatima Zahra Benali", "Quality Assurance, Wide World Importers (Paris office)"),
)
NOAH = Person("Noah Fischer", "noah.fischer@example.com", "CET", "gmail", _sig("Noah"))
CONTOSO_INFO = Person("Contoso Ltd", "info@contoso.example", "NYC", "web")
FABRIKAM_INFO = Person("Fabrikam Inc.", "info@fabrikam.example", "CET", "exchange")
TAILSPIN_HELLO = Person("Tailspin Toys", "hello@tailspin.example", "CHI", "web")
ADATUM_INFO = Person("Adatum Corporation", "contact@adatum.example", "SHA", "web")
WWI_OFFICE = Person(
    "Wide World Importers",
    "office@wideworld.example",
    "TYO",
    "outlook",
    _sig("Wide World Importers – Tokyo office", dashes=False),
)

OLIVIA = Person(
    "Olivia Grant",
    "olivia.grant@bluefin.example",
    "LAX",
    "gmail",
    _sig("Olivia Grant", "Head of Procurement, Bluefin Logistics"),
)
MATEO = Person(
    "Mateo Rossi", "mateo@rossi-design.example", "CET", "apple", _sig("Mateo", dashes=False)
)
AISHA = Person(
    "Aisha Bello",
    "aisha.bello@greenleaf.example",
    "LON",
    "gmail",
    _sig("Aisha Bello", "Founder, Greenleaf Grocers"),
)
LUKAS = Person("Lukas Novák", "lukas.novak@example.com", "CET", "thunderbird", _sig("Lukas Novák"))
CHLOE = Person(
    "Chloé Martin",
    "chloe.martin@lumiere.example",
    "CET",
    "apple",
    _sig("Chloé Martin", "Lumière Épicerie, Bordeaux", dashes=False),
)
DANIEL = Person(
    "Daniel Kim",
    "dkim@northpeak.example",
    "LAX",
    "outlook",
    _sig("Daniel Kim | Buyer, Northpeak Outfitters", dashes=False),
)

SAM = Person("Sam Taylor", "sam.taylor@example.net", "NYC", "gmail", _sig("Sam Taylor", "BoxRight"))
NEWS = Person("Food Trade Weekly", "news@example.org", "LON", "web")
JOBS = Person("Harbor Talent", "jobs@example.net", "LON", "web")
EVENTS = Person("Spring Food Expo", "events@example.org", "CET", "web")
SPOOF = Person("Dana Whitfield", "dana.w@example.net", "NYC", "gmail")
TRACKER = Person("Parcel Tracker", "noreply@example.net", "LON", "web")
GRACE = Person("Grace Liu", "grace.liu@example.net", "LAX", "gmail", _sig("Grace"))
PRIIT = Person("Priit Tamm", "priit.tamm@example.org", "CET", "thunderbird", _sig("Priit Tamm"))
YUSUF = Person(
    "Yusuf Demir", "yusuf.demir@example.org", "CET", "apple", _sig("Yusuf", dashes=False)
)
HANNAH = Person(
    "Hannah Brooks",
    "hannah.brooks@example.net",
    "NYC",
    "outlook",
    _sig("Hannah Brooks", "Partnerships, CloudLedger", dashes=False),
)
MAILER = Person("Mail Delivery System", "MAILER-DAEMON@mx.northwind.example", "LON", "web")
SCANNER = Person("Scan to Email", "scanner@example.org", "CHI", "web")
PORTAL = Person("Supplier Portal", "portal-noreply@example.net", "LON", "web")

# --------------------------------------------------------------------------- helpers


def digest(*parts: str) -> str:
    """A stable hex digest: every "random" choice in the demo derives from one."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def stamp(day: int, hhmm: str, zone: str, month: int = 3) -> datetime:
    """A local time on `day` of `month` 2026 in `zone` (seconds may be given: 09:12:33)."""
    parts = [int(p) for p in hhmm.split(":")]
    hour, minute, second = (*parts, 0)[:3]
    before, after = ZONES[zone]
    offset = after if (month, day) >= (3, US_DST_FROM) else before
    tz = timezone(timedelta(minutes=offset))
    return datetime(YEAR, month, day, hour, minute, second, tzinfo=tz)


def normalized(header_id: str | None) -> str | None:
    """`<local@Domain>` written by us → `local@domain` (the form ground truth uses)."""
    if header_id is None:
        return None
    local, _, domain = header_id.strip().strip("<>").rpartition("@")
    return f"{local}@{domain.lower()}"


OUTLOOK_SERVERS = {
    "northwind.example": ("LO4P265MB5840", "GBRP265.PROD.OUTLOOK.EXAMPLE"),
    "contoso.example": ("BN8PR04MB6291", "namprd04.prod.outlook.example"),
    "tailspin.example": ("CH3PR12MB7724", "namprd12.prod.outlook.example"),
    "wideworld.example": ("TYAPR01MB5983", "jpnprd01.prod.outlook.example"),
    "northpeak.example": ("SJ0PR19MB4410", "namprd19.prod.outlook.example"),
    "example.net": ("PH7PR22MB3120", "namprd22.prod.outlook.example"),
}


def make_message_id(key: str, sender: Person, client: str, when: datetime) -> str:
    """A Message-ID in the style of the sender's mail client (angle brackets included)."""
    h = digest("msgid", key)
    if client == "outlook":
        server, domain = OUTLOOK_SERVERS[sender.domain]
        return f"<{server}{h[:24].upper()}@{server}.{domain}>"
    if client == "exchange":
        return f"<{h[:8].upper()}{h[8:32].upper()}@EX01.Fabrikam.example>"
    if client == "gmail":
        raw = base64.b64encode(bytes.fromhex(h[:42])).decode().replace("/", "_")
        return f"<CA{raw[:3]}+{raw[3:40]}=@mail.gmail.example>"
    if client == "thunderbird":
        return f"<{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}@{sender.domain}>"
    if client == "apple":
        u = h.upper()
        return f"<{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:32]}@{sender.domain}>"
    if client == "foxmail":
        return f"<{when:%Y%m%d%H%M%S}{int(h[:8], 16) % 10**8:08d}@{sender.domain}>"
    # web mailers, newsletters, notification systems
    return f"<{when:%Y%m%d%H%M%S}.{h[:16]}@mta.{sender.domain}>"


def filetime(when: datetime) -> int:
    """Windows FILETIME (100 ns since 1601) of `when`."""
    return int((when.timestamp() + 11_644_473_600) * 10_000_000)


def thread_index(key: str, when: datetime, parent: bytes | None) -> bytes:
    """An Outlook Thread-Index: a 22-byte header, plus a 5-byte block per reply."""
    if parent is None:
        head = b"\x01" + filetime(when).to_bytes(8, "big")[1:6]
        return head + bytes.fromhex(digest("guid", key)[:32])
    delta = (filetime(when) >> 18) & 0xFFFFFFFF
    return parent + delta.to_bytes(4, "big") + bytes.fromhex(digest("ti", key)[:2])


def boundary(key: str, client: str, n: int) -> str:
    """A MIME boundary in the style of the client (deterministic, unlike the stdlib's)."""
    h = digest("boundary", key, str(n))
    if client in ("outlook", "exchange"):
        return f"_00{n}_{h[:32].upper()}_"
    if client == "gmail":
        return f"0000000000{h[:16]}"
    if client == "apple":
        u = h.upper()
        return f"Apple-Mail={u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:32]}"
    if client == "thunderbird":
        return f"------------{h[:24]}"
    return f"----=_Part_{int(h[:6], 16)}_{int(h[6:14], 16)}.{n}"


def fake_pdf(title: str, lines: Sequence[str]) -> bytes:
    """A tiny but well-formed one-page PDF showing `title` and `lines`."""
    text = [f"BT /F1 16 Tf 72 760 Td ({title}) Tj ET"]
    for i, line in enumerate(lines):
        text.append(f"BT /F1 11 Tf 72 {730 - 16 * i} Td ({line}) Tj ET")
    stream = "\n".join(text).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def fake_png(width: int, height: int, seed: str) -> bytes:
    """A small valid PNG: a two-colour gradient derived from `seed`."""
    h = bytes.fromhex(digest("png", seed)[:12])
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            mix = (x + y) / (width + height)
            rows += bytes(int(h[i] * (1 - mix) + h[i + 3] * mix) for i in range(3))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


def csv_text(rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue()


WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")  # fmt: skip


def long_date(when: datetime) -> str:
    """Outlook's quote header date: Tuesday, March 3, 2026 3:12 PM."""
    hour = when.hour % 12 or 12
    ampm = "AM" if when.hour < 12 else "PM"
    return (
        f"{WEEKDAYS[when.weekday()]}, {MONTHS[when.month - 1]} {when.day}, {when.year} "
        f"{hour}:{when.minute:02d} {ampm}"
    )


def short_date(when: datetime) -> str:
    """Gmail's attribution date: Tue, 3 Mar 2026 at 15:12."""
    return (
        f"{WEEKDAYS[when.weekday()][:3]}, {when.day} {MONTHS[when.month - 1][:3]} {when.year} "
        f"at {when.hour:02d}:{when.minute:02d}"
    )


def addr_list(people: Sequence[Person]) -> str:
    return "; ".join(f"{p.name} <{p.addr}>" if p.name else p.addr for p in people)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Mail:
    """A message as written to one or more mailboxes, plus what replies need of it."""

    key: str
    raw: bytes
    header_id: str | None  # the Message-ID as written, angle brackets included
    subject: str
    sender: Person
    to: tuple[Person, ...]
    when: datetime
    text: str  # the plain-text body, for replies to quote
    refs: tuple[str, ...] = ()  # this message's References
    index: bytes | None = None  # Outlook Thread-Index
    parent_id: str | None = None

    @property
    def msgid(self) -> str | None:
        """The normalized Message-ID ground truth uses."""
        return normalized(self.header_id)


def history(num: str, sender: Person, to: Person, subject: str, when: datetime, text: str) -> Mail:
    """An email the CRM sent before the mailbox history starts (a thread's root)."""
    body = textwrap.dedent(text).strip("\n") + "\n\n" + sender.sig + "\n"
    return Mail(
        key=f"crm-{num}",
        raw=b"",
        header_id=f"<crm-{num}@northwind.example>",
        subject=subject,
        sender=sender,
        to=(to,),
        when=when,
        text=body,
    )


REPLY_PREFIXES = ("re:", "sv:", "aw:", "antw:", "réf:")


def reply_subject(subject: str, prefix: str) -> str:
    """`prefix` plus the subject without its existing reply prefixes."""
    text = subject
    while text.lower().startswith(REPLY_PREFIXES):
        text = text.split(":", 1)[1].lstrip()
    return f"{prefix} {text}"


def reply_prefix(client: str, sender: Person) -> str:
    if sender.reply_prefix:
        return sender.reply_prefix
    return "RE:" if client in ("outlook", "exchange") else "Re:"


def quoted(parent: Mail, client: str) -> str:
    """The parent's text quoted the way `client` quotes it."""
    if client in ("outlook", "exchange"):
        return (
            "________________________________\n"
            f"From: {parent.sender.name} <{parent.sender.addr}>\n"
            f"Sent: {long_date(parent.when)}\n"
            f"To: {addr_list(parent.to)}\n"
            f"Subject: {parent.subject}\n\n" + parent.text
        )
    lines = parent.text.rstrip("\n").split("\n")
    body = "\n".join(f"> {line}" if line else ">" for line in lines)
    who = f"{parent.sender.name} <{parent.sender.addr}>"
    if client == "apple":
        day = f"{parent.when.day} {MONTHS[parent.when.month - 1][:3]} {parent.when.year}"
        return f"> On {day}, at {parent.when:%H:%M}, {who} wrote:\n>\n{body}\n"
    if client == "thunderbird":
        return f"On {parent.when:%d/%m/%Y %H:%M}, {parent.sender.name} wrote:\n{body}\n"
    return f"On {short_date(parent.when)}, {who} wrote:\n\n{body}\n"


def forwarded(original: Mail) -> str:
    """An inline forward block (Gmail style)."""
    return (
        "---------- Forwarded message ---------\n"
        f"From: {original.sender.name} <{original.sender.addr}>\n"
        f"Date: {short_date(original.when)}\n"
        f"Subject: {original.subject}\n"
        f"To: {addr_list(original.to)}\n\n" + original.text
    )


def to_html(text: str, client: str) -> str:
    """A simple HTML rendering of a plain-text body, as a rich-text client sends it."""
    blocks = []
    for para in text.strip("\n").split("\n\n"):
        inner = "<br>\n".join(html.escape(line) for line in para.split("\n"))
        if para.startswith(">"):
            blocks.append(f'<blockquote type="cite">{inner}</blockquote>')
        else:
            blocks.append(f"<p>{inner}</p>")
    font = "Calibri, sans-serif" if client in ("outlook", "exchange") else "Helvetica, Arial"
    return (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
        f'</head>\n<body style="font-family: {font}; font-size: 11pt">\n'
        + "\n".join(blocks)
        + "\n</body></html>\n"
    )


SHAPES = {  # the MIME shape each client uses by default
    "outlook": "alt",
    "exchange": "alt",
    "gmail": "alt",
    "apple": "alt",
    "thunderbird": "plain",
    "foxmail": "alt",
    "web": "alt",
}
CTES = {  # the transfer encoding each client picks for text
    "outlook": "quoted-printable",
    "exchange": "quoted-printable",
    "gmail": "quoted-printable",
    "apple": "quoted-printable",
    "thunderbird": "8bit",
    "foxmail": "base64",
    "web": "quoted-printable",
}
USER_AGENTS = {
    "outlook": ("X-Mailer", "Microsoft Outlook 16.0"),
    "exchange": ("X-Mailer", "Microsoft Outlook 16.0"),
    "apple": ("X-Mailer", "Apple Mail (2.3774.500.171.1.1)"),
    "thunderbird": (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.8.0",
    ),
    "foxmail": ("X-Mailer", "Foxmail 7.2.25.228[cn]"),
}

AUTO = "auto"
Attachment = tuple[str, str, "bytes | str | Mail"]  # filename, content type, content


def received(sender: Person, when: datetime, key: str) -> str:
    """The Received header our MX adds to mail from outside."""
    h = digest("received", key)
    ip = f"192.0.2.{int(h[:2], 16) % 250 + 1}"
    arrival = when + timedelta(seconds=2 + int(h[2:4], 16) % 40)
    return (
        f"from mail.{sender.domain} (mail.{sender.domain} [{ip}]) by mx.northwind.example "
        f"(Postfix) with ESMTPS id 4{h[4:14].upper()}; "
        f"{format_datetime(arrival.astimezone(UTC))}"
    )


def compose(
    key: str,
    sender: Person,
    to: Sequence[Person],
    body: str,
    when: datetime,
    *,
    subject: str | None = None,
    cc: Sequence[Person] = (),
    bcc: Sequence[Person] = (),
    parent: Mail | None = None,
    in_reply_to: str | None = AUTO,
    references: Sequence[str] | None = None,
    shape: str | None = None,
    cte: str | None = None,
    attach: Sequence[Attachment] = (),
    extra: Sequence[tuple[str, str]] = (),
    client: str | None = None,
    msgid: str | None = AUTO,
    quote: bool = True,
    forward: Mail | None = None,
    signature: bool = True,
    from_header: str | None = AUTO,
) -> Mail:
    """Write one message. Replies (`parent`) get In-Reply-To, References, a reply subject and
    the parent quoted; `forward` appends an inline forward. `from_header` None leaves the From
    header out, a string writes it verbatim. Returns the message and what a reply needs."""
    author = sender
    client = client or author.client
    if when.second == 0:  # people rarely press Send on the full minute
        when = when.replace(second=int(digest("second", key)[:4], 16) % 60)
    if parent is not None and when <= parent.when:
        raise ValueError(f"{key}: a reply must be dated after its parent")
    if subject is None:
        if parent is None:
            raise ValueError(f"{key}: a new message needs a subject")
        subject = reply_subject(parent.subject, reply_prefix(client, author))
    header_id = make_message_id(key, author, client, when) if msgid == AUTO else msgid
    irt = (parent.header_id if parent else None) if in_reply_to == AUTO else in_reply_to
    if references is None:
        references = (*parent.refs, parent.header_id) if parent and parent.header_id else ()
    text = textwrap.dedent(body).strip("\n") + "\n"
    if signature and author.sig:
        text += "\n" + author.sig + "\n"
    if forward is not None:
        text += "\n" + forwarded(forward)
    elif parent is not None and quote:
        text += "\n" + quoted(parent, client)
    index = None
    if client in ("outlook", "exchange"):
        index = thread_index(key, when, parent.index if parent else None)
    threading = Threading(header_id, irt, tuple(references), index)
    headers = header_list(key, author, client, when, subject, threading, from_header)
    headers += list(extra)
    parts = Parts(text=text, html=to_html(text, client), attach=tuple(attach))
    shape = shape or ("mixed" if attach else SHAPES[client])
    cte = cte or CTES[client]
    if author.charset:
        msg = build_legacy(key, client, author, to, cc, headers, parts, shape)
    else:
        msg = build_modern(key, client, author, to, cc, bcc, headers, parts, shape, cte)
    crlf = author.crlf
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n" if crlf else "\n"))
    return Mail(
        key=key,
        raw=raw,
        header_id=header_id,
        subject=subject,
        sender=author,
        to=tuple(to),
        when=when,
        text=text,
        refs=tuple(references),
        index=index,
        parent_id=parent.msgid if parent else None,
    )


@dataclass(frozen=True)
class Threading:
    """The identity and threading headers of one message."""

    header_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    index: bytes | None


def header_list(
    key: str,
    author: Person,
    client: str,
    when: datetime,
    subject: str,
    threading: Threading,
    from_header: str | None,
) -> list[tuple[str, str]]:
    """The headers in the order the client writes them. "From" and "To" are placeholders the
    builders fill from the parties ("From-Verbatim" is written as given)."""
    headers: list[tuple[str, str]] = []
    if not author.domain.endswith("northwind.example"):
        headers.append(("Received", received(author, when, key)))
    headers.append(("Date", format_datetime(when)))
    if from_header == AUTO:
        headers.append(("From", ""))
    elif from_header is not None:
        headers.append(("From-Verbatim", from_header))
    headers += [("To", ""), ("Subject", subject)]
    if threading.header_id is not None:
        headers.append(("Message-ID", threading.header_id))
    if threading.in_reply_to:
        headers.append(("In-Reply-To", threading.in_reply_to))
    if threading.references:
        headers.append(("References", " ".join(threading.references)))
    if threading.index is not None:
        index = base64.b64encode(threading.index).decode()
        headers += [("Thread-Topic", reply_subject(subject, "").strip()), ("Thread-Index", index)]
    if client in USER_AGENTS:
        headers.append(USER_AGENTS[client])
    return headers


@dataclass(frozen=True)
class Parts:
    """The content of a message before it has a MIME shape."""

    text: str
    html: str
    attach: tuple[Attachment, ...] = ()


def build_modern(
    key: str,
    client: str,
    author: Person,
    to: Sequence[Person],
    cc: Sequence[Person],
    bcc: Sequence[Person],
    headers: Sequence[tuple[str, str]],
    parts: Parts,
    shape: str,
    cte: str,
) -> EmailMessage:
    """A message built with EmailMessage (utf-8, encoded words chosen by the library)."""
    msg = EmailMessage()
    for name, value in headers:
        if name == "From":
            msg["From"] = Address(author.name, addr_spec=author.addr)
        elif name == "From-Verbatim":
            msg["From"] = value
        elif name == "To":
            msg["To"] = tuple(Address(p.name, addr_spec=p.addr) for p in to)
            if cc:
                msg["Cc"] = tuple(Address(p.name, addr_spec=p.addr) for p in cc)
            if bcc:
                msg["Bcc"] = tuple(Address(p.name, addr_spec=p.addr) for p in bcc)
        else:
            msg[name] = value
    if shape == "html":
        msg.set_content(parts.html, subtype="html", cte=cte)
    else:
        msg.set_content(parts.text, cte=cte)
    if shape in ("alt", "mixed"):
        msg.add_alternative(parts.html, subtype="html", cte=cte)
    for filename, ctype, content in parts.attach:
        add_attachment(msg, filename, ctype, content)
    finish(msg, key, client)
    return msg


def add_attachment(
    msg: EmailMessage, filename: str, ctype: str, content: bytes | str | Mail
) -> None:
    maintype, subtype = ctype.split("/")
    if isinstance(content, Mail):
        inner = BytesParser(policy=policy.default).parsebytes(content.raw)
        msg.add_attachment(inner, cte="7bit" if content.raw.isascii() else "8bit")
    elif isinstance(content, str):
        msg.add_attachment(content, subtype=subtype, filename=filename, cte="quoted-printable")
    else:
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)


def finish(msg: Message, key: str, client: str) -> None:
    """Fix every multipart boundary and drop the MIME-Version the stdlib adds to sub-parts."""
    inner_roots = {
        id(sub)
        for part in msg.walk()
        if part.get_content_type() == "message/rfc822"
        for sub in part.get_payload()
    }
    for n, part in enumerate(msg.walk()):
        if part is not msg and id(part) not in inner_roots and "MIME-Version" in part:
            del part["MIME-Version"]
        if part.is_multipart() and part.get_boundary() is None:
            part.set_boundary(boundary(key, client, n))


LEGACY_TRANSLATION = str.maketrans(
    {"–": "-", "—": "-", "’": "'", "‘": "'", "“": '"', "”": '"', "…": "..."}
)


def legacy_text(text: str, charset: str) -> tuple[str, str]:
    """`text` as a legacy client stores it, and the charset it can actually use."""
    text = text.translate(LEGACY_TRANSLATION)
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return text, "utf-8"
    return text, charset


def encoded_words(text: str, charset: str) -> str:
    """`text` as RFC 2047 encoded words when it is not ASCII, the way a legacy client writes
    it: Q for Latin charsets, B chunks for the others."""
    text, charset = legacy_text(text, charset)
    if text.isascii():
        return text
    if charset.lower().startswith("iso-8859"):
        return Header(text, charset, maxlinelen=76, header_name="Subject").encode()
    words, chunk = [], ""
    for char in text:
        if len((chunk + char).encode(charset)) > 36:
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    encoded = (base64.b64encode(w.encode(charset)).decode() for w in words)
    return " ".join(f"=?{charset.upper()}?B?{data}?=" for data in encoded)


def build_legacy(
    key: str,
    client: str,
    author: Person,
    to: Sequence[Person],
    cc: Sequence[Person],
    headers: Sequence[tuple[str, str]],
    parts: Parts,
    shape: str,
) -> Message:
    """A message built with email.mime (compat32) in a legacy charset, headers as written."""
    text, charset = legacy_text(parts.text, author.charset or "utf-8")
    html_body, _ = legacy_text(parts.html.replace("charset=utf-8", f"charset={charset}"), charset)
    text_part = MIMEText(text, "plain", charset)
    html_part = MIMEText(html_body, "html", charset)
    root: Message
    if shape == "html":
        root = html_part
    elif shape == "plain":
        root = text_part
    else:
        root = MIMEMultipart("alternative", _subparts=[text_part, html_part])
    if parts.attach:
        root = MIMEMultipart("mixed", _subparts=[root])
        for filename, ctype, content in parts.attach:
            attachment = Message()
            attachment["Content-Type"] = f'{ctype}; name="{filename}"'
            attachment["Content-Disposition"] = f'attachment; filename="{filename}"'
            attachment["Content-Transfer-Encoding"] = "base64"
            data = content if isinstance(content, bytes) else str(content).encode()
            attachment.set_payload(base64.encodebytes(data).decode())
            root.attach(attachment)
    content_headers = [(k, v) for k, v in root.items()]
    for name in list(root.keys()):
        del root[name]
    for name, value in headers:
        if name == "From":
            root["From"] = author.header()
        elif name == "From-Verbatim":
            root["From"] = value
        elif name == "To":
            root["To"] = ", ".join(p.header() for p in to)
            if cc:
                root["Cc"] = ", ".join(p.header() for p in cc)
        elif name == "Subject":
            root["Subject"] = encoded_words(value, author.charset or "utf-8")
        else:
            root[name] = value
    root["MIME-Version"] = "1.0"
    for name, value in content_headers:
        if name != "MIME-Version":
            root[name] = value
    finish(root, key, client)
    return root


# --------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Expect:
    """The decision docs/decisions.md prescribes for one message file."""

    status: str
    reasons: tuple[str, ...]
    method: str = "None"
    correlated_to: str | None = None
    regarding: str | None = None
    error_code: str | None = None


def passes(reason: str, *, dup: bool = False) -> Expect:
    """Promoted by the mailbox's own filter, not correlated; `dup`: another copy passes too."""
    return Expect("promoted", (reason, "Duplicate") if dup else (reason,))


def correlated(parent: Mail, regarding: str | None, *, token: bool = False, dup: bool = False):
    """Promoted CorrelationMatch, linked to `parent` by In-Reply-To/References or token."""
    reasons = ("CorrelationMatch", "Duplicate") if dup else ("CorrelationMatch",)
    method = "TrackingToken" if token else "InReplyTo"
    return Expect("promoted", reasons, method, parent.msgid, regarding)


def duplicate(activity: Expect | None = None) -> Expect:
    """A copy its own mailbox would skip, linked to the activity another mailbox created."""
    if activity is None:
        return Expect("promoted", ("Duplicate",))
    return Expect(
        "promoted", ("Duplicate",), activity.method, activity.correlated_to, activity.regarding
    )


def skipped(reason: str) -> Expect:
    return Expect("skipped", (reason,))


MALFORMED = Expect("errored", ("Malformed",), error_code="Malformed")


@dataclass(frozen=True)
class Delivery:
    """One message file in one folder of one mailbox, with its expected decision."""

    mailbox: str
    folder: str
    key: str
    raw: bytes
    when: datetime
    scenario: str
    message_id: str | None
    expect: Expect


@dataclass
class Demo:
    """Everything the scenarios produce, in the order they produced it."""

    deliveries: list[Delivery] = field(default_factory=list)
    replied: set[tuple[str, str]] = field(default_factory=set)

    def add(self, mail: Mail, where: tuple[str, str], scenario: str, expect: Expect) -> None:
        mailbox, folder = where
        self.deliveries.append(
            Delivery(mailbox, folder, mail.key, mail.raw, mail.when, scenario, mail.msgid, expect)
        )
        if folder == "Sent" and mail.parent_id:
            self.replied.add((mailbox, mail.parent_id))

    def add_raw(
        self,
        key: str,
        raw: bytes,
        when: datetime,
        where: tuple[str, str],
        scenario: str,
        expect: Expect,
    ) -> None:
        mailbox, folder = where
        self.deliveries.append(Delivery(mailbox, folder, key, raw, when, scenario, None, expect))


# --------------------------------------------------------------------------- CRM history

H_Q3 = history(
    "0001001",
    ALICE,
    DANA,
    "Quote for the Q3 order CRM:0001001",
    stamp(2, "09:15", "LON"),
    """
    Dear Dana,

    As discussed on Friday, please find below our quote for the Q3 order:

      - Single-estate Darjeeling, 250 g tins: 1,200 units at GBP 6.40
      - Cold-pressed olive oil, 500 ml: 800 units at GBP 7.15
      - Dark chocolate 72%, 100 g bars: 3,000 units at GBP 1.32

    Prices are DAP New York, valid until 31 March. Delivery in two drops (July and
    August) is fine on our side.

    Kind regards,
    """,
)
H_RENEW = history(
    "0001002",
    ALICE,
    ELODIE,
    "Renewal terms for 2026 CRM:0001002",
    stamp(24, "14:02", "LON", month=2),
    """
    Dear Élodie,

    Our current supply agreement ends on 30 April. For the renewal we propose to keep
    the 2025 prices for twelve months, move to 45-day payment terms and add the new
    organic spice range at a 6% introductory discount.

    I would be happy to walk you and Søren through the details next week.

    Best regards,
    """,
)
H_CALL = history(
    "0001003",
    ALICE,
    OLIVIA,
    "Follow-up on our call CRM:0001003",
    stamp(25, "10:30", "LON", month=2),
    """
    Hi Olivia,

    Thank you for your time on the phone today. As promised, a short summary:
    Northwind can supply your staff canteens from our Reno warehouse, weekly deliveries,
    with a dedicated account manager (me). Could you send me your current volumes so I
    can prepare an indicative price list?

    Best,
    """,
)
H_SAMPLES = history(
    "0001004",
    ALICE,
    INGRID,
    "Samples shipped CRM:0001004",
    stamp(26, "08:05", "LON", month=2),
    """
    Dear Ingrid,

    The samples you asked for left our warehouse this morning by air courier
    (AWB 176-2291 8840): six jars of the yuzu marmalade, two tins of each tea blend and
    the new salted caramel range. They should reach your Tokyo office by Thursday.

    Kind regards,
    """,
)
H_AMEND = history(
    "0002001",
    BOB,
    PRIYA,
    "Service contract amendment CRM:0002001",
    stamp(20, "16:40", "LON", month=2),
    """
    Hello Priya,

    Attached to our CRM record is the draft of Amendment No. 2 to the service
    contract: it adds Saturday deliveries to the Chicago stores and moves the
    cut-off for next-day orders to 3 pm. Please review and let me know whether your
    legal team has comments.

    Regards,
    """,
)
H_PO = history(
    "0002002",
    BOB,
    WANG,
    "Delivery schedule for PO 4471 CRM:0002002",
    stamp(26, "03:20", "LON", month=2),
    """
    Dear Ms Wang,

    Thank you for purchase order 4471. We plan to ship in three containers from
    Felixstowe on 12, 19 and 26 March, arriving Shanghai about five weeks later.
    Please confirm the schedule works for your warehouse.

    Best regards,
    """,
)
H_CASE = history(
    "0003001",
    CAROL,
    KWAME,
    "Your support case 1042 CRM:0003001",
    stamp(27, "11:00", "LON", month=2),
    """
    Dear Kwame,

    We have opened case 1042 for the EDI order messages that were rejected on
    25 February. Our integration team sees an invalid GLN in the buyer segment.
    Could you check the partner profile on your side and reply to this email with
    the outcome?

    Kind regards,
    """,
)
H_FAIR = history(
    "0002003",
    BOB,
    LUKAS,
    "Invitation: spring trade fair CRM:0002003",
    stamp(19, "13:00", "LON", month=2),
    """
    Dear Mr Novák,

    Northwind Traders will exhibit at the Spring Food Expo in Frankfurt (hall 4,
    stand C21) from 17 to 19 March. We would be delighted to welcome you for a
    tasting of our new ranges. Reply to this email to book a time slot.

    Best regards,
    """,
)

TRACKED_HISTORY = (  # the CRM email, what it is regarding, its owner, its tracking token
    (H_FAIR, CAMPAIGN_FAIR, "user:bob", "CRM:0002003"),
    (H_AMEND, OPP_AMENDMENT, "user:bob", "CRM:0002001"),
    (H_RENEW, OPP_RENEWAL, "user:alice", "CRM:0001002"),
    (H_CALL, LEAD_BLUEFIN, "user:alice", "CRM:0001003"),
    (H_SAMPLES, OPP_SAMPLES, "user:alice", "CRM:0001004"),
    (H_PO, ORDER_4471, "user:bob", "CRM:0002002"),
    (H_CASE, CASE_1042, "user:carol", "CRM:0003001"),
    (H_Q3, OPP_Q3, "user:alice", "CRM:0001001"),
)


# --------------------------------------------------------------------------- scenarios
# Each scenario writes its messages and states, by hand, what docs/decisions.md says must
# become of every copy. Filters: mb-alice "responses", mb-bob "crm-records",
# mb-carol "email-enabled", mb-support "all"; internal email policy "one".


def contoso_quote_thread(d: Demo) -> None:
    """Customers answer a CRM email; Alice answers from her mailbox; regarding propagates."""
    s = "crm history thread: contoso q3 quote"
    a1 = compose(
        "a1",
        DANA,
        [ALICE],
        """
        Hi Alice,

        Thanks for the quote. The tea and chocolate prices work for us. On the olive oil,
        Fabrikam offered us 6.80 for a comparable product. Is there any room there if we
        commit to the full 800 units?
        """,
        stamp(3, "10:12", "NYC"),
        parent=H_Q3,
    )
    d.add(a1, AL_IN, s, correlated(H_Q3, OPP_Q3))
    a2 = compose(
        "a2",
        ALICE,
        [DANA],
        """
        Hi Dana,

        For 800 units I can do GBP 6.95 on the olive oil, and I will add free delivery on
        the August drop. I will send a revised quote tomorrow if that works for you.

        Best,
        Alice
        """,
        stamp(3, "16:40", "LON"),
        parent=a1,
    )
    d.add(a2, AL_SENT, s, correlated(a1, OPP_Q3))
    a3 = compose(
        "a3",
        DANA,
        [ALICE],
        """
        Alice,

        That works. Please send the revised quote and copy Marco, he will raise the PO.

        Dana
        """,
        stamp(4, "09:05", "NYC"),
        cc=[MARCO],
        parent=a2,
    )
    d.add(a3, AL_IN, s, correlated(a2, OPP_Q3))
    quote_pdf = fake_pdf(
        "Northwind Traders - Quote Q3-2026 rev 2",
        [
            "Customer: Contoso Ltd",
            "Darjeeling 250 g tins x 1200 @ 6.40",
            "Olive oil 500 ml x 800 @ 6.95",
            "Dark chocolate 72% x 3000 @ 1.32",
            "DAP New York, two drops (July, August)",
        ],
    )
    a4 = compose(
        "a4",
        ALICE,
        [DANA],
        """
        Dear Dana, dear Marco,

        Please find attached revision 2 of the quote with the olive oil at GBP 6.95 and
        free delivery on the second drop. The quote is valid until 31 March.

        Kind regards,
        Alice
        """,
        stamp(4, "15:30", "LON"),
        cc=[MARCO],
        parent=a3,
        attach=[("Northwind-Quote-Q3-2026-rev2.pdf", "application/pdf", quote_pdf)],
    )
    d.add(a4, AL_SENT, s, correlated(a3, OPP_Q3))
    a5 = compose(
        "a5",
        MARCO,
        [ALICE],
        """
        Thanks Alice. Adding Bob as Dana mentioned he handles the delivery slots. Could we
        get the first drop in the week of 6 July instead of 13 July?
        """,
        stamp(5, "08:47", "NYC"),
        cc=[DANA, BOB],
        parent=a4,
    )
    d.add(a5, AL_IN, s, correlated(a4, OPP_Q3, dup=True))
    d.add(a5, BO_IN, s, correlated(a4, OPP_Q3, dup=True))
    po = csv_text(
        [
            ["po_number", "line", "sku", "description", "qty", "unit_price_gbp"],
            ["CT-88410", "1", "NW-TEA-DJ250", "Darjeeling 250 g tin", "1200", "6.40"],
            ["CT-88410", "2", "NW-OIL-EV500", "Olive oil 500 ml", "800", "6.95"],
            ["CT-88410", "3", "NW-CHO-D72", "Dark chocolate 72% 100 g", "3000", "1.32"],
        ]
    )
    a6 = compose(
        "a6",
        DANA,
        [ALICE],
        """
        Hi Alice,

        Our purchase order CT-88410 is attached (CSV export from our ERP, the signed PDF
        follows by post). First drop in the week of 6 July please, as Marco asked.

        Thanks,
        Dana
        """,
        stamp(9, "11:20", "NYC"),
        cc=[MARCO],
        parent=a5,
        attach=[("PO-CT-88410.csv", "text/csv", po)],
    )
    d.add(a6, AL_IN, s, correlated(a5, OPP_Q3))
    a7 = compose(
        "a7",
        ALICE,
        [DANA],
        """
        Dear Dana,

        Thank you, PO CT-88410 is confirmed. Bob will send the booking references for the
        6 July drop closer to the date.

        Kind regards,
        Alice
        """,
        stamp(9, "17:02", "LON"),
        cc=[MARCO],
        parent=a6,
    )
    d.add(a7, AL_SENT, s, correlated(a6, OPP_Q3))


def fabrikam_renewal_thread(d: Demo) -> None:
    """A legacy client (ISO-8859-1, HTML only, CRLF); a reply whose In-Reply-To is untracked
    but whose References hold tracked mail (newest tracked References id wins)."""
    s = "crm history thread: fabrikam renewal"
    b1 = compose(
        "b1",
        ELODIE,
        [ALICE],
        """
        Bonjour Alice,

        Thank you for the renewal proposal. The prices and the spice range are fine for
        us. However 45 days is difficult: our policy is 60 days end of month for all
        suppliers. Can you accept this?

        Cordialement,
        """,
        stamp(4, "09:40", "CET"),
        parent=H_RENEW,
        shape="html",
    )
    d.add(b1, AL_IN, s, correlated(H_RENEW, OPP_RENEWAL))
    b2 = compose(
        "b2",
        ALICE,
        [ELODIE],
        """
        Bonjour Élodie,

        We can accept 60 days end of month if the agreement runs for 24 months instead of
        12. Would that be acceptable for Fabrikam?

        Best regards,
        Alice
        """,
        stamp(4, "11:15", "LON"),
        parent=b1,
    )
    d.add(b2, AL_SENT, s, correlated(b1, OPP_RENEWAL))
    internal = compose(  # Fabrikam-internal; never reaches a Northwind mailbox
        "b2-internal",
        ELODIE,
        [SOREN_WORK],
        """
        Søren, can you confirm we can commit to 24 months on these volumes? Alice needs
        an answer this week.
        """,
        stamp(4, "14:02", "CET"),
        parent=b2,
        signature=False,
    )
    b3 = compose(
        "b3",
        SOREN,
        [ALICE],
        """
        Dear Alice,

        Élodie asked me to confirm: 24 months is fine for us on the proposed volumes. I
        am writing from my personal address as I am travelling; please keep Élodie in
        copy on the contract.

        Best regards,
        """,
        stamp(6, "07:55", "CET"),
        cc=[ELODIE],
        parent=internal,
    )
    d.add(b3, AL_IN, s, correlated(b2, OPP_RENEWAL))
    b4 = compose(
        "b4",
        ALICE,
        [SOREN],
        """
        Dear Søren,

        Excellent, thank you. Élodie will receive the contract for signature on Monday.

        Kind regards,
        Alice
        """,
        stamp(6, "09:20", "LON"),
        cc=[ELODIE],
        parent=b3,
    )
    d.add(b4, AL_SENT, s, correlated(b3, OPP_RENEWAL))
    contract = fake_pdf(
        "Supply agreement Fabrikam - Northwind 2026-2028",
        ["Term: 24 months from 1 May 2026", "Payment: 60 days end of month", "Signed: E. Fournier"],
    )
    b5 = compose(
        "b5",
        ELODIE,
        [ALICE],
        """
        Bonjour Alice,

        Please find attached the signed agreement. The original follows by courier.

        Cordialement,
        """,
        stamp(10, "16:05", "CET"),
        cc=[SOREN_WORK],
        parent=b4,
        attach=[("Fabrikam-Northwind-agreement-signed.pdf", "application/pdf", contract)],
    )
    d.add(b5, AL_IN, s, correlated(b4, OPP_RENEWAL))


def bluefin_lead_thread(d: Demo) -> None:
    """A lead answers a CRM email; her out-of-office answers Alice's reply (correlated, so it
    is promoted, not skipped as an auto-reply)."""
    s = "crm history thread: bluefin lead"
    c1 = compose(
        "c1",
        OLIVIA,
        [ALICE],
        """
        Hi Alice,

        Great talking to you. Our three canteens serve about 1,400 meals a day; I will ask
        our chef for the product list. Before that: do you deliver on Mondays?
        """,
        stamp(3, "08:55", "LAX"),
        parent=H_CALL,
    )
    d.add(c1, AL_IN, s, correlated(H_CALL, LEAD_BLUEFIN))
    c2 = compose(
        "c2",
        ALICE,
        [OLIVIA],
        """
        Hi Olivia,

        Yes, Monday deliveries are possible from Reno, with orders placed by Friday noon.
        Looking forward to the list.

        Best,
        Alice
        """,
        stamp(3, "17:30", "LON"),
        parent=c1,
    )
    d.add(c2, AL_SENT, s, correlated(c1, LEAD_BLUEFIN))
    c3 = compose(
        "c3",
        OLIVIA,
        [ALICE],
        """
        Thank you for your email. I am out of the office until Tuesday 10 March with
        limited access to email. For urgent matters please contact our office on
        +1 775 555 0186.
        """,
        stamp(3, "09:31", "LAX"),
        subject=f"Out of Office Re: {reply_subject(c2.subject, '').strip()}",
        parent=c2,
        quote=False,
        signature=False,
        shape="plain",
        extra=[("Auto-Submitted", "auto-replied"), ("Precedence", "bulk")],
    )
    d.add(c3, AL_IN, s, correlated(c2, LEAD_BLUEFIN))
    c4 = compose(
        "c4",
        OLIVIA,
        [ALICE],
        """
        Hi Alice,

        Back from a week in the field. Our chef's list: coffee beans (40 kg a week), black
        and green teas, olive oil, canned tomatoes, rice and dried pasta. Could you send
        indicative prices?
        """,
        stamp(11, "09:10", "LAX"),
        parent=c2,
    )
    d.add(c4, AL_IN, s, correlated(c2, LEAD_BLUEFIN))
    brochure = fake_pdf(
        "Northwind Foodservice - indicative prices",
        ["Coffee beans, 1 kg: USD 14.20", "Teas, 100 bags: from USD 4.10", "Valid to 30 June"],
    )
    c5 = compose(
        "c5",
        ALICE,
        [OLIVIA],
        """
        Hi Olivia,

        Attached are indicative prices for the products on your chef's list. Happy to
        arrange a tasting at your Reno canteen.

        Best,
        Alice
        """,
        stamp(11, "17:45", "LON"),
        parent=c4,
        attach=[("Northwind-Foodservice-prices.pdf", "application/pdf", brochure)],
    )
    d.add(c5, AL_SENT, s, correlated(c4, LEAD_BLUEFIN))


def wideworld_samples_thread(d: Demo) -> None:
    """A contact answers from her work and then her personal address; a photo attached."""
    s = "crm history thread: wide world samples"
    s1 = compose(
        "s1",
        INGRID,
        [ALICE],
        """
        Dear Alice,

        The samples arrived today, thank you. Unfortunately two jars of the yuzu
        marmalade were broken (photo attached). Everything else is in perfect condition
        and the team loved the salted caramel.
        """,
        stamp(5, "09:45", "TYO"),
        parent=H_SAMPLES,
        attach=[("IMG_2291.png", "image/png", fake_png(32, 24, "broken-jars"))],
    )
    d.add(s1, AL_IN, s, correlated(H_SAMPLES, OPP_SAMPLES))
    s2 = compose(
        "s2",
        ALICE,
        [INGRID],
        """
        Dear Ingrid,

        So sorry about the jars. Two replacements go out with tomorrow's courier, and we
        will use double boxes for the glass from now on.

        Kind regards,
        Alice
        """,
        stamp(5, "08:30", "LON"),
        parent=s1,
    )
    d.add(s2, AL_SENT, s, correlated(s1, OPP_SAMPLES))
    s3 = compose(
        "s3",
        INGRID_HOME,
        [ALICE],
        """
        Thank you Alice, very kind. Writing from home: we would like to order the caramel
        range for our April catalogue. I will send the order on Monday.
        """,
        stamp(7, "10:12", "TYO"),
        parent=s2,
    )
    d.add(s3, AL_IN, s, correlated(s2, OPP_SAMPLES))


def tailspin_amendment_thread(d: Demo) -> None:
    """Bob's CRM email answered in his mailbox, Alice copied in, and a token-only follow-up."""
    s = "crm history thread: tailspin amendment"
    d1 = compose(
        "d1",
        PRIYA,
        [BOB],
        """
        Hi Bob,

        Legal has one comment on Amendment No. 2: Saturday deliveries should be limited to
        the four flagship stores, not all Chicago stores. Otherwise we are good to sign.

        Thanks,
        Priya
        """,
        stamp(3, "09:20", "CHI"),
        parent=H_AMEND,
    )
    d.add(d1, BO_IN, s, correlated(H_AMEND, OPP_AMENDMENT))
    d2 = compose(
        "d2",
        BOB,
        [PRIYA],
        """
        Hi Priya,

        That is fine with us. I will update clause 3.2 to list the four flagship stores
        and send the final version for signature.
        """,
        stamp(3, "16:05", "LON"),
        parent=d1,
    )
    d.add(d2, BO_SENT, s, correlated(d1, OPP_AMENDMENT))
    d3 = compose(
        "d3",
        PRIYA,
        [BOB],
        """
        Bob, one more thing: could Alice confirm the pricing for Saturday drops stays at
        the weekday rate? Copying her.

        Priya
        """,
        stamp(5, "10:02", "CHI"),
        cc=[ALICE],
        parent=d2,
    )
    d.add(d3, BO_IN, s, correlated(d2, OPP_AMENDMENT, dup=True))
    d.add(d3, AL_IN, s, correlated(d2, OPP_AMENDMENT, dup=True))
    d4 = compose(
        "d4",
        ALICE,
        [PRIYA],
        """
        Hi Priya,

        Confirmed: Saturday drops to the four flagship stores are charged at the weekday
        rate for the term of the contract.

        Best regards,
        Alice
        """,
        stamp(5, "16:48", "LON"),
        cc=[BOB],
        parent=d3,
    )
    d.add(d4, AL_SENT, s, correlated(d3, OPP_AMENDMENT, dup=True))
    d.add(d4, BO_IN, s, correlated(d3, OPP_AMENDMENT, dup=True))
    d5 = compose(
        "d5",
        TOM,
        [BOB],
        """
        Hi Bob,

        Warehouse here. For the Saturday drops our dock at the State Street store opens at
        7 am, please make sure the driver does not arrive earlier.
        """,
        stamp(6, "08:15", "CHI"),
        cc=[PRIYA],
        parent=d4,
    )
    d.add(d5, BO_IN, s, correlated(d4, OPP_AMENDMENT))
    signed = fake_pdf("Amendment No. 2 - countersigned", ["Tailspin Toys / Northwind Traders"])
    d6 = compose(
        "d6",
        PRIYA,
        [BOB],
        """
        Hi Bob,

        Attached is the countersigned Amendment No. 2. Thanks for the quick turnaround.

        Priya
        """,
        stamp(12, "13:30", "CHI"),
        subject="[CRM:0002001] Amendment No. 2 – countersigned",
        attach=[("Amendment-2-countersigned.pdf", "application/pdf", signed)],
    )
    d.add(
        d6, BO_IN, "tracking token only (bracketed)", correlated(H_AMEND, OPP_AMENDMENT, token=True)
    )


def adatum_order_thread(d: Demo) -> None:
    """A CJK sender in GB2312 with base64 bodies; Bob and Carol both receive every message;
    an auto-reply to a tracked message is correlated, so it is promoted."""
    s = "crm history thread: adatum po 4471"
    e1 = compose(
        "e1",
        WANG,
        [BOB],
        """
        Bob 您好，

        关于 PO 4471 的交货时间表：12 日和 19 日没有问题，但 26 日的集装箱请推迟一周，
        因为我们的仓库在月底盘点。

        Regarding the schedule for PO 4471: the 12th and 19th are fine, but please move
        the container of the 26th by one week; our warehouse does its stock count at the
        end of the month.

        谢谢！
        """,
        stamp(3, "10:05", "SHA"),
        cc=[CAROL],
        parent=H_PO,
    )
    d.add(e1, BO_IN, s, correlated(H_PO, ORDER_4471, dup=True))
    d.add(e1, CA_IN, s, correlated(H_PO, ORDER_4471, dup=True))
    e2 = compose(
        "e2",
        BOB,
        [WANG],
        """
        Dear Ms Wang,

        No problem: the third container now leaves Felixstowe on 2 April. José, please
        update your booking. Carol is copied for the customs documents.
        """,
        stamp(3, "08:30", "LON"),
        cc=[CAROL, JOSE],
        parent=e1,
    )
    d.add(e2, BO_SENT, s, correlated(e1, ORDER_4471, dup=True))
    d.add(e2, CA_IN, s, correlated(e1, ORDER_4471, dup=True))
    e3 = compose(
        "e3",
        JOSE,
        [BOB],
        """
        I am travelling until 9 March and will answer your email when I am back.
        For shipment questions please contact wang.fang@adatum.example.
        """,
        stamp(3, "16:31", "SHA"),
        subject=f"Auto: {e2.subject}",
        parent=e2,
        quote=False,
        signature=False,
        shape="plain",
        extra=[("Auto-Submitted", "auto-replied"), ("X-Autoreply", "yes")],
    )
    d.add(e3, BO_IN, "auto-reply to tracked email (correlated)", correlated(e2, ORDER_4471))
    e4 = compose(
        "e4",
        JOSE,
        [BOB],
        """
        Hi Bob,

        Back in the office. Booking updated: the third container is on the MSC Aurora,
        ETD Felixstowe 2 April. I will send the bill of lading once issued.
        """,
        stamp(10, "10:15", "SHA"),
        cc=[CAROL, WANG],
        parent=e2,
    )
    d.add(e4, BO_IN, s, correlated(e2, ORDER_4471, dup=True))
    d.add(e4, CA_IN, s, correlated(e2, ORDER_4471, dup=True))
    packing = csv_text(
        [
            ["container", "etd", "pallets", "gross_kg"],
            ["MSCU 771204-3", "2026-03-12", "20", "14320"],
            ["MSCU 771388-0", "2026-03-19", "20", "14105"],
            ["MSCU 772051-6", "2026-04-02", "18", "12870"],
        ]
    )
    e5 = compose(
        "e5",
        BOB,
        [JOSE],
        """
        Thanks José. The packing list for all three containers is attached.
        """,
        stamp(10, "09:00", "LON"),
        cc=[CAROL],
        parent=e4,
        attach=[("PO4471-packing-list.csv", "text/csv", packing)],
    )
    d.add(e5, BO_SENT, s, correlated(e4, ORDER_4471, dup=True))
    d.add(e5, CA_IN, s, correlated(e4, ORDER_4471, dup=True))


def adatum_case_thread(d: Demo) -> None:
    """A reply to Carol's CRM email sent to the support queue; follow-ups in Carol's mailbox;
    token-only follow-ups in both."""
    s = "crm history thread: adatum case 1042"
    f1 = compose(
        "f1",
        KWAME,
        [SUPPORT],
        """
        Hello,

        Following up on case 1042 at the support address as your portal suggests. We
        found the problem: our EDI partner profile still had the old GLN of the Pudong
        warehouse. It is corrected now; please reprocess the rejected orders.
        """,
        stamp(4, "09:12", "SHA"),
        parent=H_CASE,
    )
    d.add(f1, SU_IN, s, correlated(H_CASE, CASE_1042))
    f2 = compose(
        "f2",
        KWAME,
        [CAROL],
        """
        Hi Carol,

        Forwarding my note to support below directly to you, as the orders are still
        shown as rejected in the portal this morning. Could you check?
        """,
        stamp(5, "14:20", "SHA"),
        parent=f1,
    )
    d.add(f2, CA_IN, s, correlated(f1, CASE_1042))
    f3 = compose(
        "f3",
        JOSE,
        [SUPPORT],
        """
        Hello team,

        Adding to Kwame's message: three of the rejected orders are urgent (4488, 4490,
        4493). Could these be reprocessed first?
        """,
        stamp(6, "11:02", "SHA"),
        cc=[CAROL, KWAME],
        parent=f2,
    )
    d.add(f3, SU_IN, s, correlated(f2, CASE_1042, dup=True))
    d.add(f3, CA_IN, s, correlated(f2, CASE_1042, dup=True))
    f4 = compose(
        "f4",
        WANG,
        [CAROL],
        """
        Carol 您好，

        The reprocessed orders 4488, 4490 and 4493 arrived in our system today. Thank you
        for the fast help. Kwame will confirm the other orders tomorrow.
        """,
        stamp(9, "15:00", "SHA"),
        subject="关于案例 1042 的进展 CRM:0003001",
    )
    d.add(f4, CA_IN, "tracking token only (bare)", correlated(H_CASE, CASE_1042, token=True))
    f5 = compose(
        "f5",
        JOSE,
        [SUPPORT],
        """
        Hello,

        All rejected orders are now in our system. From our side case 1042 can be closed.
        Thank you.
        """,
        stamp(11, "10:40", "SHA"),
        subject="RE: Your support case 1042 (CRM:0003001)",
    )
    d.add(
        f5, SU_IN, "tracking token only (in parentheses)", correlated(H_CASE, CASE_1042, token=True)
    )


def support_then_alice_thread(d: Demo) -> None:
    """Order independence: a customer writes to support (AcceptAll); Alice answers from her
    own mailbox (correlated to the support message); the customer answers her."""
    s = "support message answered from alice's mailbox"
    g1 = compose(
        "g1",
        TOM,
        [SUPPORT],
        """
        Hello,

        Delivery 88213 arrived this morning with six crushed cartons of the chocolate
        bars (photos attached). We signed the CMR with a remark. How do we proceed?

        Tom
        """,
        stamp(10, "07:45", "CHI"),
        attach=[
            ("carton-1.png", "image/png", fake_png(24, 24, "carton-1")),
            ("carton-2.png", "image/png", fake_png(24, 24, "carton-2")),
        ],
        subject="Damaged cartons in delivery 88213",
        signature=False,
    )
    d.add(g1, SU_IN, s, passes("AcceptAll"))
    g2 = compose(
        "g2",
        ALICE,
        [TOM],
        """
        Hi Tom,

        Support passed your message to me as I manage the Tailspin account. Sorry about
        the cartons: we will credit the six cartons and replace them with the next drop.
        Please keep the damaged goods until the carrier has inspected them.

        Best regards,
        Alice
        """,
        stamp(10, "15:10", "LON"),
        parent=g1,
    )
    d.add(g2, AL_SENT, s, correlated(g1, None))
    g3 = compose(
        "g3",
        TOM,
        [ALICE],
        """
        Thanks Alice. The carrier's inspector came at noon, so the goods can go. Copying
        support so the ticket has the update.
        """,
        stamp(11, "08:30", "CHI"),
        cc=[SUPPORT],
        parent=g2,
    )
    d.add(g3, AL_IN, s, correlated(g2, None, dup=True))
    d.add(g3, SU_IN, s, correlated(g2, None, dup=True))
    g4 = compose(
        "g4",
        ALICE,
        [TOM],
        """
        Thanks Tom. Credit note CN-2026-0412 is issued and the replacement cartons are on
        Thursday's truck.

        Alice
        """,
        stamp(11, "16:20", "LON"),
        cc=[SUPPORT],
        parent=g3,
    )
    d.add(g4, AL_SENT, s, correlated(g3, None, dup=True))
    d.add(g4, SU_IN, s, correlated(g3, None, dup=True))


def tracked_via_carol_thread(d: Demo) -> None:
    """Alice's sent mail is tracked only because Carol (email-enabled) received a copy; the
    customer's reply in Alice's mailbox then correlates to it."""
    s = "alice's sent mail tracked via carol"
    i1 = compose(
        "i1",
        ALICE,
        [DANA],
        """
        Hi Dana,

        Looking forward to your visit on 19 March. Proposed agenda:

        10:00 warehouse tour (Tilbury)
        11:30 new ranges tasting with Carol
        13:00 lunch
        14:30 2026-27 volume planning

        Carol from our customer success team is copied.

        Best,
        Alice
        """,
        stamp(12, "10:00", "LON"),
        subject="Contoso visit on 19 March – agenda",
        cc=[CAROL],
    )
    d.add(i1, AL_SENT, s, duplicate())
    d.add(i1, CA_IN, s, passes("SenderMatch"))
    i2 = compose(
        "i2",
        DANA,
        [ALICE],
        """
        Hi Alice,

        The agenda is perfect. Marco will join for the afternoon session. Do we need
        safety shoes for the warehouse tour?
        """,
        stamp(12, "09:14", "NYC"),
        parent=i1,
    )
    d.add(i2, AL_IN, s, correlated(i1, None))
    i3 = compose(
        "i3",
        ALICE,
        [DANA],
        """
        Hi Dana,

        No need, we will have visitor shoes and vests at reception. See you on the 19th!

        Alice
        """,
        stamp(12, "15:30", "LON"),
        parent=i2,
    )
    d.add(i3, AL_SENT, s, correlated(i2, None))


def greta_introduction_thread(d: Demo) -> None:
    """Alice's introduction (skipped in both mailboxes); the contact's reply-all is tracked
    by Bob (SenderMatch) and linked in Alice's mailbox (Duplicate); replies then correlate."""
    s = "introduction: untracked start, tracked reply"
    j1 = compose(
        "j1",
        ALICE,
        [GRETA],
        """
        Hi Greta,

        As promised, let me introduce Bob Okafor, copied: Bob is your contact for
        delivery slots and paperwork from now on, and I stay your contact for pricing.

        Best,
        Alice
        """,
        stamp(16, "09:30", "LON"),
        subject="Introducing Bob Okafor – your contact for deliveries",
        cc=[BOB],
    )
    d.add(j1, AL_SENT, s, skipped("NoCorrelationMatch"))
    d.add(j1, BO_IN, s, skipped("NoSenderMatch"))
    j2 = compose(
        "j2",
        GRETA,
        [ALICE],
        """
        Hi Alice, hi Bob,

        Nice to meet you, Bob. Could we have a call this week about the delivery windows
        for our new Hoboken store? It opens on 6 April.

        Greta
        """,
        stamp(16, "08:05", "NYC"),
        cc=[BOB],
        parent=j1,
    )
    d.add(j2, BO_IN, s, passes("SenderMatch"))
    d.add(j2, AL_IN, s, duplicate())
    j3 = compose(
        "j3",
        BOB,
        [GRETA],
        """
        Hi Greta,

        Nice to meet you too. Thursday at 10:00 your time works for me; I will send an
        invite. Hoboken can be on the Tuesday/Friday route from the first week.
        """,
        stamp(16, "14:40", "LON"),
        cc=[ALICE],
        parent=j2,
    )
    d.add(j3, BO_SENT, s, correlated(j2, None, dup=True))
    d.add(j3, AL_IN, s, correlated(j2, None, dup=True))
    j4 = compose(
        "j4",
        GRETA,
        [BOB],
        """
        Thursday 10:00 is perfect. Talk then.
        """,
        stamp(17, "10:10", "NYC"),
        parent=j3,
    )
    d.add(j4, BO_IN, s, correlated(j3, None))


def tailspin_invoice_thread(d: Demo) -> Mail:
    """A SenderMatch message, Bob's correlated reply, and the shared AP address answering."""
    s = "invoice query: sender match then correlation"
    k1 = compose(
        "k1",
        LENA,
        [BOB],
        """
        Hello Bob,

        On invoice NW-2026-0117, line 4 charges 40 cartons of green tea, but our goods
        receipt shows 36. Could you check and send a credit note for the difference?

        Regards,
        Lena
        """,
        stamp(9, "10:30", "CHI"),
        subject="Invoice NW-2026-0117 – query on line 4",
    )
    d.add(k1, BO_IN, s, passes("SenderMatch"))
    k2 = compose(
        "k2",
        BOB,
        [LENA],
        """
        Hello Lena,

        You are right, four cartons were short-shipped. Credit note CN-2026-0398 for
        GBP 118.40 is on its way; copying your AP mailbox as requested on your portal.
        """,
        stamp(9, "17:05", "LON"),
        cc=[AP_TAILSPIN],
        parent=k1,
    )
    d.add(k2, BO_SENT, s, correlated(k1, None))
    k3 = compose(
        "k3",
        AP_TAILSPIN,
        [BOB],
        """
        Hello,

        Credit note CN-2026-0398 received and matched to invoice NW-2026-0117. Payment of
        the balance is scheduled for the 20 March run.
        """,
        stamp(10, "11:45", "CHI"),
        parent=k2,
    )
    d.add(k3, BO_IN, s, correlated(k2, None))
    return k1


def token_only_alice(d: Demo) -> None:
    """New messages (no In-Reply-To/References) whose subject holds a tracking token."""
    t1 = compose(
        "t1",
        ELODIE,
        [ALICE],
        """
        Bonjour Alice,

        For the renewal, here are the delivery addresses of our two new sites:
        Fabrikam Villeurbanne, 14 rue de la Soie, and Fabrikam Vénissieux, 3 avenue de
        la République. Both accept deliveries from 6h to 14h.

        Cordialement,
        """,
        stamp(13, "10:20", "CET"),
        subject="Renouvellement 2026 : adresses de livraison Vénissieux et Villeurbanne "
        "[CRM:0001002]",
    )
    d.add(
        t1, AL_IN, "tracking token only (bracketed)", correlated(H_RENEW, OPP_RENEWAL, token=True)
    )
    t2 = compose(
        "t2",
        GRETA,
        [ALICE],
        """
        Hi Alice,

        Dana shared your quote with me. For our stores we would need the chocolate in
        display boxes of 24. Is that possible at the same price?
        """,
        stamp(6, "11:00", "NYC"),
        subject="RE: Quote for the Q3 order (CRM:0001001)",
    )
    d.add(t2, AL_IN, "tracking token only (RE: ... (token))", correlated(H_Q3, OPP_Q3, token=True))
    t3 = compose(
        "t3",
        OLIVIA,
        [ALICE],
        """
        Hi Alice,

        Here are the documents you asked for: our supplier onboarding form and the
        canteen volumes for 2025.
        """,
        stamp(16, "10:05", "LAX"),
        subject="CRM:0001003 - documents you asked for",
        attach=[
            ("Bluefin-supplier-onboarding.pdf", "application/pdf", fake_pdf("Supplier form", [])),
            ("canteen-volumes-2025.csv", "text/csv", "month,meals\n2025-01,41200\n2025-02,38850\n"),
        ],
    )
    d.add(t3, AL_IN, "tracking token only (leading)", correlated(H_CALL, LEAD_BLUEFIN, token=True))
    to_broker = compose(  # Contoso-internal forward; never reaches a Northwind mailbox
        "t4-inner",
        DANA,
        [GRACE],
        "Grace, can you check the freight costs on this quote?",
        stamp(3, "08:20", "NYC"),
        subject="FW: Quote for the Q3 order CRM:0001001",
        forward=H_Q3,
        signature=False,
    )
    t4 = compose(
        "t4",
        GRACE,
        [ALICE],
        """
        Hello Alice,

        I am the freight broker for Contoso. Dana forwarded me your quote below. Could you
        tell me the pallet count and gross weight for each of the two drops?
        """,
        stamp(5, "13:20", "LAX"),
        subject="Fwd: FW: Quote for the Q3 order CRM:0001001",
        forward=to_broker,
    )
    d.add(
        t4,
        AL_IN,
        "inline forward from unknown sender with tracking token",
        correlated(H_Q3, OPP_Q3, token=True),
    )
    ingrid_forward = compose(  # Wide World-internal forward
        "t5-inner",
        INGRID,
        [HIROSHI],
        "Hiroshi-san, please watch for this courier delivery on Thursday.",
        stamp(27, "09:00", "TYO", month=2),
        subject="Fwd: Samples shipped CRM:0001004",
        forward=H_SAMPLES,
    )
    t5 = compose(
        "t5",
        HIROSHI,
        [ALICE],
        """
        Dear Alice,

        Ingrid forwarded your message. The courier delivered the samples to our Tokyo
        office this morning. I have one question about customs: could you send the
        commercial invoice for the samples? Japanese customs asks for it.
        """,
        stamp(4, "10:30", "TYO"),
        cc=[INGRID],
        parent=ingrid_forward,
    )
    d.add(
        t5,
        AL_IN,
        "tracking token; in-reply-to an untracked message",
        correlated(H_SAMPLES, OPP_SAMPLES, token=True),
    )
    t6 = compose(
        "t6",
        FATIMA,
        [ALICE],
        """
        Hello Alice,

        Please find the certificate of analysis for lot 2207 below; our lab found no
        issues. The reference in the subject is the one your colleague gave me on the
        phone.
        """,
        stamp(18, "14:50", "CET"),
        subject="Certificate of analysis lot 2207 [CRM:0009999]",
    )
    d.add(t6, AL_IN, "unknown tracking token", skipped("NoCorrelationMatch"))


def shared_with_bob(d: Demo) -> None:
    """Customers writing to Alice with Bob in copy: Bob's copy passes his filter, Alice's is a
    Duplicate (her `responses` filter alone would skip it)."""
    s = "contact to alice, cc bob"
    m1 = compose(
        "m1",
        HIROSHI,
        [ALICE],
        """
        Dear Alice, dear Bob,

        For the April order we would like to book one 20-foot container from Felixstowe
        in week 15. Could you confirm the loading date and the cut-off for the final
        quantities?
        """,
        stamp(17, "16:40", "TYO"),
        cc=[BOB],
        subject="Container booking for April",
    )
    d.add(m1, BO_IN, s, passes("SenderMatch"))
    d.add(m1, AL_IN, s, duplicate())
    m2 = compose(
        "m2",
        MARCO_ALT,
        [ALICE],
        """
        Hi Alice, Bob,

        Our Hoboken store opens on 6 April. Could you add 10 extra pallets of the
        chocolate to the July drop, or ship them separately in March?

        Marco
        """,
        stamp(18, "12:15", "NYC"),
        cc=[BOB],
        subject="Hoboken opening – extra pallets?",
    )
    d.add(m2, BO_IN, "contact's second address to alice, cc bob", passes("SenderMatch"))
    d.add(m2, AL_IN, "contact's second address to alice, cc bob", duplicate())
    m3 = compose(
        "m3",
        AISHA,
        [ALICE, BOB],
        """
        Hello both,

        Following the Food Expo, Greenleaf would like to trial your organic teas in our
        five London shops. Could one of you send trade prices and minimum order sizes?
        """,
        stamp(19, "17:05", "LON"),
        subject="Organic teas for Greenleaf – trade prices",
    )
    d.add(m3, BO_IN, "lead to alice and bob", passes("SenderMatch"))
    d.add(m3, AL_IN, "lead to alice and bob", duplicate())


def internal_mail(d: Demo) -> None:
    """Email between users: tracked only where a mailbox's own filter accepts it."""
    m4 = compose(
        "m4",
        ALICE,
        [BOB],
        "Lunch on Thursday? The new Lebanese place on Mark Lane.",
        stamp(4, "11:50", "LON"),
        subject="Lunch Thursday?",
        signature=False,
    )
    d.add(m4, AL_SENT, "internal alice to bob, tracked nowhere", skipped("NoCorrelationMatch"))
    d.add(m4, BO_IN, "internal alice to bob, tracked nowhere", skipped("NoSenderMatch"))
    m5 = compose(
        "m5",
        BOB,
        [ALICE],
        "Sounds good, 12:30?",
        stamp(4, "12:02", "LON"),
        parent=m4,
        signature=False,
    )
    d.add(m5, BO_SENT, "internal bob to alice, tracked nowhere", skipped("NoRecipientMatch"))
    d.add(m5, AL_IN, "internal bob to alice, tracked nowhere", skipped("NoCorrelationMatch"))
    m6 = compose(
        "m6",
        ALICE,
        [BOB],
        """
        Bob, Carol,

        Attached is my draft of the Q2 forecast per account. Please add your delivery
        capacity notes by Friday.

        Alice
        """,
        stamp(13, "09:10", "LON"),
        cc=[CAROL],
        subject="Q2 forecast draft",
        attach=[
            (
                "Q2-forecast-draft.csv",
                "text/csv",
                csv_text(
                    [
                        ["account", "q2_gbp", "note"],
                        ["Contoso Ltd", "184000", "Q3 order signed"],
                        ["Fabrikam Inc.", "96000", "renewal 24 months"],
                        ["Tailspin Toys", "71500", "Saturday drops"],
                        ["Adatum Corporation", "133000", "PO 4471"],
                        ["Wide World Importers", "42000", "April container"],
                    ]
                ),
            )
        ],
        signature=False,
    )
    s = "internal alice to bob cc carol, tracked via carol"
    d.add(m6, AL_SENT, s, duplicate())
    d.add(m6, BO_IN, s, duplicate())
    d.add(m6, CA_IN, s, passes("SenderMatch"))
    m7 = compose(
        "m7",
        CAROL,
        [BOB],
        """
        Bob,

        Case 1042 (Adatum EDI) needs your input: they ask whether we can waive the
        late-delivery penalty for the three orders that were stuck. Your call as contract
        owner.
        """,
        stamp(6, "13:20", "LON"),
        subject="Case 1042 escalation – penalty waiver?",
    )
    d.add(m7, BO_IN, "internal carol to bob", skipped("NoSenderMatch"))
    m8 = compose(
        "m8",
        BOB,
        [CAROL],
        """
        Yes, waive it for those three orders, the delay was on our side. Please tell
        Kwame.
        """,
        stamp(6, "15:45", "LON"),
        parent=m7,
    )
    s = "internal bob to carol, tracked via carol"
    d.add(m8, BO_SENT, s, duplicate())
    d.add(m8, CA_IN, s, passes("SenderMatch"))
    m9 = compose(
        "m9",
        BOB,
        [SUPPORT],
        """
        Hi team,

        Tailspin's warehouse (Tom Becker) will call about the Saturday deliveries. Please
        log the calls on the Tailspin account and route anything contractual to me.
        """,
        stamp(12, "10:30", "LON"),
        subject="Tailspin Saturday deliveries – calls to expect",
    )
    s = "internal bob to support queue"
    d.add(m9, BO_SENT, s, duplicate())
    d.add(m9, SU_IN, s, passes("AcceptAll"))
    m10 = compose(
        "m10",
        CAROL,
        [ALICE],
        """
        Hi Alice,

        Here is the onboarding checklist I use for new accounts, in case it helps with
        Fabrikam's new sites: delivery addresses, dock hours, EDI partner IDs, invoice
        contacts, allergen sheets.

        Carol
        """,
        stamp(13, "16:15", "LON"),
        subject="Onboarding checklist for Fabrikam's new sites",
        signature=False,
    )
    d.add(m10, AL_IN, "internal carol to alice", skipped("NoCorrelationMatch"))
    m11 = compose(
        "m11",
        BOB,
        [ALICE],
        """
        Alice, FYI: finance raised Tailspin's credit limit to GBP 150k after the amendment.
        """,
        stamp(19, "09:05", "LON"),
        subject="FYI: Tailspin credit limit",
    )
    d.add(m11, BO_SENT, "internal bob to alice", skipped("NoRecipientMatch"))
    d.add(m11, AL_IN, "internal bob to alice", skipped("NoCorrelationMatch"))


def alice_writes_to_carol(d: Demo) -> None:
    """Alice's internal mail to Carol: Carol (email-enabled) tracks it, Alice's copy links."""
    notes = [
        (
            "n-carol-1",
            "Tasting session on 19 March",
            "Carol, could you run the tasting for Contoso on the 19th at 11:30? Dana and Marco "
            "are coming; they liked the salted caramel and the yuzu marmalade.",
            stamp(12, "10:20", "LON"),
        ),
        (
            "n-carol-2",
            "Wide World: double boxes for glass",
            "After the broken jars at Wide World, can we make double boxes the default for "
            "glass shipped by courier? Happy to discuss the cost with Bob.",
            stamp(5, "08:50", "LON"),
        ),
        (
            "n-carol-3",
            "Bluefin tasting in Reno",
            "Bluefin (Olivia Grant) may want a tasting at their Reno canteen in April. Do we "
            "have someone on the West Coast who could do it?",
            stamp(23, "14:35", "LON"),
        ),
    ]
    for key, subject, text, when in notes:
        mail = compose(key, ALICE, [CAROL], text + "\n\nThanks,\nAlice", when, subject=subject)
        d.add(mail, AL_SENT, "internal alice to carol", duplicate())
        d.add(mail, CA_IN, "internal alice to carol", passes("SenderMatch"))


DANA_UPPER = Person(  # the same contact, her address typed in another case
    "Dana Whitfield", "Dana.Whitfield@CONTOSO.example", "NYC", "outlook", DANA.sig
)
HIROSHI_TYPO = Person("Hiroshi Tanaka", "hirosh.tanaka@wideworld.example", "TYO", "outlook")
SURVEY = Person("Tailspin Toys via SurveyDesk", "survey@example.net", "CHI", "web")
BROKER = Person("Yangshan Customs Brokerage", "ops@example.org", "SHA", "web")
CARRIER = Person("Rhine Freight Dispatch", "dispatch@example.org", "CET", "web")
WEBFORM = Person("Website", "webform@web01.northwind.example", "LON", "web")
NEWSLETTER_HEADERS = (
    ("List-Id", "Food Trade Weekly <weekly.news.example.org>"),
    ("List-Unsubscribe", "<https://news.example.org/u/7f3a9c>, <mailto:leave@example.org>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ("Precedence", "bulk"),
)


@dataclass(frozen=True)
class Note:
    """A new message (no parent) for the batch scenarios."""

    key: str
    sender: Person
    subject: str
    body: str
    when: datetime
    to: tuple[Person, ...] = ()
    cc: tuple[Person, ...] = ()
    bcc: tuple[Person, ...] = ()
    attach: tuple[Attachment, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    shape: str | None = None
    forward: Mail | None = None


def batch(
    d: Demo,
    scenario: str,
    places: Sequence[tuple[tuple[str, str], Expect]],
    recipient: Person,
    notes: Iterable[Note],
) -> dict[str, Mail]:
    """Write each note (to `recipient` unless it names its own) into every place, all with
    the same hand-written expectation. Returns the messages by key, for replies."""
    written = {}
    for note in notes:
        mail = compose(
            note.key,
            note.sender,
            list(note.to or (recipient,)),
            note.body,
            note.when,
            subject=note.subject,
            cc=note.cc,
            bcc=note.bcc,
            attach=note.attach,
            extra=note.extra,
            shape=note.shape,
            forward=note.forward,
        )
        for where, expect in places:
            d.add(mail, where, scenario, expect)
        written[note.key] = mail
    return written


def alice_inbox_uncorrelated(d: Demo) -> None:
    """Mail to Alice that answers no tracked email: her `responses` filter skips it all,
    whoever the sender is (contacts, leads, unknown senders, newsletters)."""
    notes = [
        Note(
            "al-news-1",
            NEWS,
            "Cocoa futures hit a 3-month low; tea auctions steady",
            "This week: cocoa prices, Kenyan tea auctions, and what the new UK packaging "
            "levy means for importers.\n\nRead online: https://news.example.org/w/2026-10",
            stamp(7, "06:00", "LON"),
            extra=NEWSLETTER_HEADERS,
        ),
        Note(
            "al-news-2",
            NEWS,
            "Olive oil harvest report: Spain recovers",
            "Spanish output is up 38% on last year. Also: five trends from the Frankfurt "
            "Expo.\n\nRead online: https://news.example.org/w/2026-12",
            stamp(21, "06:00", "LON"),
            extra=NEWSLETTER_HEADERS,
        ),
        Note(
            "al-expo",
            EVENTS,
            "Your exhibitor guide – Spring Food Expo 2026",
            "Dear exhibitor,\n\nYour guide with build-up times, badge collection and the "
            "hall plan is now online. Build-up starts on 15 March at 08:00.",
            stamp(10, "07:30", "CET"),
        ),
        Note(
            "al-sam",
            SAM,
            "Custom printed tea tins – 20% off your first order",
            "Hi Alice,\n\nI noticed Northwind sells loose-leaf tea in tins. BoxRight prints "
            "custom tins from 500 units, with 20% off a first order this month. Worth a "
            "15-minute call?",
            stamp(5, "10:02", "NYC"),
        ),
        Note(
            "al-hannah",
            HANNAH,
            "Automate your supplier invoices",
            "Hello Alice,\n\nCloudLedger reads supplier invoices and matches them to POs "
            "automatically. Teams like yours save around 12 hours a week. Could I show you "
            "a demo next week?",
            stamp(17, "11:30", "NYC"),
        ),
        Note(
            "al-jobs",
            JOBS,
            "Senior Key Account Manager roles in London",
            "Hi Alice,\n\nI am recruiting for two senior key account roles with leading "
            "food brands in London. Open to a confidential chat?",
            stamp(24, "09:40", "LON"),
        ),
        Note(
            "al-dana-easter",
            DANA,
            "Deliveries around Easter",
            "Hi Alice,\n\nOur stores close on Easter Sunday. Can the delivery planned for "
            "5 April move to 4 April?\n\nThanks,\nDana",
            stamp(20, "10:25", "NYC"),
        ),
        Note(
            "al-priya-catalogue",
            PRIYA,
            "Autumn range catalogue",
            "Hi Alice,\n\nCould you send us the autumn range catalogue when it is ready? Our "
            "buyers plan the Q4 assortment in May.\n\nPriya",
            stamp(19, "13:10", "CHI"),
        ),
        Note(
            "al-jose-visit",
            JOSE,
            "Visiting London in May",
            "Hi Alice,\n\nI will be in London from 11 to 14 May. Could we meet and maybe "
            "visit the Tilbury warehouse?",
            stamp(25, "18:20", "SHA"),
        ),
        Note(
            "al-marco-labels",
            MARCO,
            "Chocolate shelf labels",
            "Alice, our shelf labels need the cocoa percentage in larger type. Can you send "
            "the artwork files?",
            stamp(23, "15:45", "NYC"),
        ),
        Note(
            "al-noah",
            NOAH,
            "Intro call about ESG reporting",
            "Hello Alice,\n\nI advise Contoso on supplier ESG reporting. Would you have 30 "
            "minutes to walk me through Northwind's sourcing data?",
            stamp(11, "14:00", "CET"),
        ),
        Note(
            "al-ingrid-order",
            INGRID,
            "April catalogue order",
            "Dear Alice,\n\nAs promised, our order for the April catalogue is attached.",
            stamp(9, "11:05", "TYO"),
            attach=(
                (
                    "WWI-order-April.csv",
                    "text/csv",
                    "sku,qty\nNW-CAR-SLT200,480\nNW-CAR-SPR200,240\n",
                ),
            ),
        ),
        Note(
            "al-daniel-expo",
            DANIEL,
            "Great meeting you at the Expo",
            "Hi Alice,\n\nGreat to meet you at your stand. Please send me your catalogue; "
            "we are looking for a new coffee supplier for our cafés.",
            stamp(20, "08:40", "LAX"),
        ),
    ]
    batch(
        d,
        "uncorrelated inbound to a responses mailbox",
        [(AL_IN, skipped("NoCorrelationMatch"))],
        ALICE,
        notes,
    )


def raw_mail(key: str, raw: bytes, header_id: str | None, sender: Person, when: datetime) -> Mail:
    """A hand-written message (bounces) wrapped so scenarios can deliver it."""
    return Mail(key, raw, header_id, "", sender, (), when, "")


def bounce(key: str, to: Person, original: Mail, failed: str, when: datetime) -> Mail:
    """A Postfix-style delivery status notification (multipart/report) for `original`."""
    h = digest("bounce", key)
    queue_id = h[:10].upper()
    edge = f"{queue_id}.{int(when.timestamp())}/mx.northwind.example"
    header_id = f"<{when:%Y%m%d%H%M%S}.{queue_id}@mx.northwind.example>"
    original_headers = original.raw.split(b"\n\n", 1)[0].decode("ascii").replace("\r", "")
    text = f"""\
Return-Path: <>
Received: by mx.northwind.example (Postfix) id {queue_id}; {format_datetime(when)}
Date: {format_datetime(when)}
From: {MAILER.addr} (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {to.addr}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{edge}"
Content-Transfer-Encoding: 8bit
Message-Id: {header_id}

This is a MIME-encapsulated message.

--{edge}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.northwind.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

                   The mail system

<{failed}>: host mail.{failed.rpartition("@")[2]}[192.0.2.61] said: 550 5.1.1
    <{failed}>: Recipient address rejected: User unknown in virtual mailbox
    table (in reply to RCPT TO command)

--{edge}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.northwind.example
X-Postfix-Queue-ID: {queue_id}
X-Postfix-Sender: rfc822; {to.addr}
Arrival-Date: {format_datetime(original.when)}

Final-Recipient: rfc822; {failed}
Original-Recipient: rfc822;{failed}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mail.{failed.rpartition("@")[2]}
Diagnostic-Code: smtp; 550 5.1.1 <{failed}>: Recipient address rejected: User
    unknown in virtual mailbox table

--{edge}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{original_headers}

--{edge}--
"""
    return raw_mail(key, text.encode("ascii"), header_id, MAILER, when)


def truncated_download(when: datetime) -> bytes:
    """No header block at all: the tail of a message whose first part was lost (a PDF
    attachment cut mid-way, then the closing boundary)."""
    pdf = fake_pdf("Delivery note 88190", ["Contoso Ltd", "12 pallets", "Signed: G. L."])
    encoded = base64.encodebytes(b"\x00\x17\x9f" + pdf[37:]).decode()
    tail = "\n".join(encoded.splitlines()[1:])
    return (
        b"\x9c\x1f\xd2\xee\x07"
        + tail.encode()
        + f"\n\n------=_Part_{int(when.timestamp())}_88190--\n".encode()
    )


def missing_boundary(key: str, sender: Person, to: Person, subject: str, when: datetime) -> bytes:
    """A multipart/mixed message whose declared boundary never appears in the body."""
    declared = f"----=_NextPart_000_{digest('declared', key)[:16].upper()}"
    used = f"----=_NextPart_001_{digest('used', key)[:16].upper()}"
    body = base64.encodebytes(fake_pdf(subject, ["page 1 of 3"])[:400]).decode()
    return f"""\
Received: {received(sender, when, key)}
Date: {format_datetime(when)}
From: {sender.header()}
To: {to.header()}
Subject: {subject}
Message-ID: {make_message_id(key, sender, "web", when)}
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="{declared}"

This is a multi-part message in MIME format.

--{used}
Content-Type: text/plain; charset="us-ascii"

Please find the scanned documents attached.

--{used}
Content-Type: application/pdf; name="scan.pdf"
Content-Transfer-Encoding: base64

{body}""".replace("\n", "\r\n").encode("ascii")


def truncated_alternative(key: str, sender: Person, to: Person, when: datetime) -> bytes:
    """multipart/alternative cut off before its first boundary (a half-written file)."""
    declared = boundary(key, "gmail", 0)
    return f"""\
Received: {received(sender, when, key)}
Date: {format_datetime(when)}
From: {sender.header()}
To: {to.header()}
Subject: Re: catalogue
Message-ID: {make_message_id(key, sender, "gmail", when)}
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="{declared}"

""".encode("ascii")


def alice_untracked_threads(d: Demo) -> None:
    """Threads Alice starts or answers that never touch tracked mail: every message stays
    untracked in her `responses` mailbox, however long the thread."""
    s = "untracked thread in a responses mailbox"
    catalogue = fake_pdf("Northwind Traders - Catalogue 2026", ["Teas", "Coffee", "Chocolate"])
    n1 = compose(
        "n1",
        ALICE,
        [CHLOE],
        """
        Bonjour Chloé,

        It was a pleasure to meet you at the Expo. As promised, our 2026 catalogue is
        attached; the salted caramel and the single-estate teas sell very well in
        épiceries fines.

        Best regards,
        Alice
        """,
        stamp(10, "10:05", "LON"),
        subject="Lumière Épicerie – introduction and 2026 catalogue",
        attach=[("Northwind-Catalogue-2026.pdf", "application/pdf", catalogue)],
    )
    d.add(n1, AL_SENT, s, skipped("NoCorrelationMatch"))
    n2 = compose(
        "n2",
        CHLOE,
        [ALICE],
        """
        Bonjour Alice,

        Merci ! Do you have a minimum order for shops outside the UK? We are in Bordeaux.
        """,
        stamp(11, "09:30", "CET"),
        parent=n1,
    )
    d.add(n2, AL_IN, s, skipped("NoCorrelationMatch"))
    n3 = compose(
        "n3",
        ALICE,
        [CHLOE],
        """
        Bonjour Chloé,

        For France the minimum is EUR 600 per order, delivered in 3 to 4 working days.

        Alice
        """,
        stamp(11, "11:10", "LON"),
        parent=n2,
    )
    d.add(n3, AL_SENT, s, skipped("NoCorrelationMatch"))
    n4 = compose(
        "n4",
        CHLOE,
        [ALICE],
        """
        Parfait. I will prepare a first order after Easter.
        """,
        stamp(26, "17:40", "CET"),
        parent=n3,
    )
    d.add(n4, AL_IN, s, skipped("NoCorrelationMatch"))
    p1 = compose(
        "p1",
        MATEO,
        [ALICE],
        """
        Hi Alice,

        We are setting up a coffee corner in our Milan showroom. Could Northwind supply
        beans and a grinder service, around 6 kg a month?
        """,
        stamp(12, "10:50", "CET"),
        subject="Coffee corner for our showroom",
    )
    d.add(p1, AL_IN, s, skipped("NoCorrelationMatch"))
    p2 = compose(
        "p2",
        ALICE,
        [MATEO],
        """
        Hi Mateo,

        Beans yes, from 5 kg a month; the grinder service we arrange through a partner in
        Milan. Shall I send our espresso blends?

        Best,
        Alice
        """,
        stamp(12, "14:25", "LON"),
        parent=p1,
    )
    d.add(p2, AL_SENT, s, skipped("NoCorrelationMatch"))
    p3 = compose(
        "p3",
        MATEO,
        [ALICE],
        """
        Yes please, the two darker blends.
        """,
        stamp(13, "09:05", "CET"),
        parent=p2,
    )
    d.add(p3, AL_IN, s, skipped("NoCorrelationMatch"))


def alice_sent_uncorrelated(d: Demo) -> None:
    """Alice's sent mail that answers nothing tracked, an out-of-office and a bounce."""
    s = "sent mail not answering tracked email"
    q1 = compose(
        "q1",
        ALICE,
        [DANIEL],
        """
        Hi Daniel,

        Lovely to meet you at the Expo. Our 2026 catalogue is attached; page 12 has the
        coffee blends we discussed for your cafés.

        Best regards,
        Alice
        """,
        stamp(20, "17:10", "LON"),
        subject="Northwind 2026 catalogue for Northpeak",
        attach=[
            ("Northwind-Catalogue-2026.pdf", "application/pdf", fake_pdf("Catalogue 2026", []))
        ],
    )
    d.add(q1, AL_SENT, s, skipped("NoCorrelationMatch"))
    q2 = compose(
        "q2",
        DANIEL,
        [ALICE],
        """
        I am out of the office until Monday 30 March. For urgent orders please contact
        purchasing@northpeak.example.
        """,
        stamp(20, "10:11", "LAX"),
        subject=f"Automatic reply: {q1.subject}",
        parent=q1,
        quote=False,
        signature=False,
        extra=[("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All")],
    )
    d.add(q2, AL_IN, "uncorrelated out-of-office", skipped("AutoReply"))
    kit = """
        Dear Hiroshi,

        A tasting kit with the new caramel range is on its way to your team for the
        April catalogue shoot. Tracking: 1Z 884 21A 04 7712 3309.

        Kind regards,
        Alice
        """
    subject = "Tasting kit for the Tokyo team"
    r1 = compose("r1", ALICE, [HIROSHI_TYPO], kit, stamp(20, "09:30", "LON"), subject=subject)
    d.add(r1, AL_SENT, s, skipped("NoCorrelationMatch"))
    r2 = bounce("r2", ALICE, r1, HIROSHI_TYPO.addr, stamp(20, "09:30:41", "LON"))
    d.add(r2, AL_IN, "bounce of a mistyped address", skipped("Bounce"))
    r3 = compose("r3", ALICE, [HIROSHI], kit, stamp(20, "09:52", "LON"), subject=subject)
    d.add(r3, AL_SENT, s, skipped("NoCorrelationMatch"))
    notes = [
        Note(
            "as-fabrikam",
            ALICE,
            "Northwind price list 2026",
            "Dear Sir or Madam,\n\nPlease find our 2026 price list attached, valid from "
            "1 April. Your account manager remains Alice Moreau.\n\nKind regards,",
            stamp(16, "08:45", "LON"),
            to=(FABRIKAM_INFO,),
            attach=(
                (
                    "Northwind-prices-2026.pdf",
                    "application/pdf",
                    fake_pdf("Price list 2026", ["Valid from 1 April"]),
                ),
            ),
        ),
        Note(
            "as-noah",
            ALICE,
            "Re: Intro call about ESG reporting",
            "Hello Noah,\n\nHappy to. Would Thursday 19 March at 15:00 UK time work? I will "
            "send a Teams link.",
            stamp(11, "16:30", "LON"),
            to=(NOAH,),
        ),
        Note(
            "as-sam",
            ALICE,
            "Re: Custom printed tea tins – 20% off your first order",
            "Hi Sam,\n\nThanks, we are covered for tins this year. Feel free to get back to "
            "us in the autumn.",
            stamp(6, "09:15", "LON"),
            to=(SAM,),
        ),
        Note(
            "as-jose",
            ALICE,
            "Re: Visiting London in May",
            "Hi José,\n\nWonderful, let's do Tuesday 12 May: warehouse tour in the morning "
            "and lunch with Bob and Carol.",
            stamp(26, "10:40", "LON"),
            to=(JOSE,),
        ),
        Note(
            "as-dana",
            ALICE,
            "Re: Deliveries around Easter",
            "Hi Dana,\n\nNo problem, the 5 April delivery moves to Saturday 4 April, same "
            "time window.",
            stamp(27, "09:20", "LON"),
            to=(DANA,),
        ),
        Note(
            "as-marco",
            ALICE,
            "Re: Chocolate shelf labels",
            "Hi Marco,\n\nThe artwork files with the larger cocoa percentage are on their "
            "way through our file transfer; you will get a download link shortly.",
            stamp(24, "11:55", "LON"),
            to=(MARCO,),
        ),
    ]
    batch(d, s, [(AL_SENT, skipped("NoCorrelationMatch"))], ALICE, notes)


def forwards_to_alice(d: Demo, invoice_query: Mail) -> None:
    """A forward as a message/rfc822 attachment whose inner message is tracked, and an inline
    forward: both are new messages with their own Message-ID and no In-Reply-To, so nothing
    correlates them (the attached message's headers are content, not threading)."""
    fw1 = compose(
        "fw1",
        RUI,
        [ALICE],
        """
        Alice,

        Forwarding Lena's query to Bob as an attachment for your information. Finance
        would like the short shipments to stop; can we discuss at the next review?
        """,
        stamp(11, "09:40", "CHI"),
        subject=f"FW: {invoice_query.subject}",
        attach=[("message.eml", "message/rfc822", invoice_query)],
    )
    d.add(
        fw1, AL_IN, "forward as attachment (inner message tracked)", skipped("NoCorrelationMatch")
    )
    guideline = compose(  # Contoso-internal; never reaches a Northwind mailbox
        "fw2-inner",
        GRETA,
        [MARCO],
        """
        Marco,

        From June all suppliers must deliver chocolate in shelf-ready trays of 12 or 24,
        with the tray printable on the front. Can you pass this on to our suppliers?
        """,
        stamp(18, "16:00", "NYC"),
        subject="Shelf-ready packaging guidelines",
    )
    fw2 = compose(
        "fw2",
        MARCO,
        [ALICE],
        """
        Hi Alice, see Greta's note below; this applies to the Q3 order as well.
        """,
        stamp(19, "08:20", "NYC"),
        subject="Fwd: Shelf-ready packaging guidelines",
        forward=guideline,
    )
    d.add(fw2, AL_IN, "inline forward", skipped("NoCorrelationMatch"))
    junk = truncated_alternative("al-truncated", AISHA, ALICE, stamp(19, "22:14", "LON"))
    d.add_raw(
        "al-truncated",
        junk,
        stamp(19, "22:14", "LON"),
        AL_IN,
        "truncated multipart (boundary never found)",
        MALFORMED,
    )


def bob_inbox_sender_match(d: Demo) -> dict[str, Mail]:
    """New threads from contacts, accounts, leads and the shared (ambiguous) address: Bob's
    `crm-records` filter promotes them on the sender alone."""
    courier_notice = compose(  # the carrier's notice Marco forwards as an attachment
        "bo-fw-inner",
        TRACKER,
        [MARCO],
        """
        Your shipment 1Z 884 21A 04 5510 2291 is delayed by one day due to weather in
        the Midwest. New estimated delivery: Thursday 26 March.
        """,
        stamp(24, "06:10", "LON"),
        subject="Shipment 1Z88421A0455102291: new delivery date",
        shape="plain",
    )
    customs_hold = compose(  # a broker's notice José forwards inline
        "bo-fw2-inner",
        BROKER,
        [JOSE],
        """
        Dear customer,

        Container MSCU 771204-3 is held for inspection at Yangshan (document check:
        certificate of origin missing). Please provide the original within 3 days.
        """,
        stamp(16, "09:00", "SHA"),
        subject="Customs hold – MSCU 771204-3",
    )
    remittance = csv_text(
        [
            ["invoice", "amount_gbp", "paid_on"],
            ["NW-2026-0117", "3241.60", "2026-03-13"],
            ["NW-2026-0121", "1877.00", "2026-03-13"],
        ]
    )
    notes = [
        Note(
            "bo-soren",
            SOREN_WORK,
            "Delivery slots at the Villeurbanne site",
            "Hello Bob,\n\nOur new Villeurbanne site accepts trucks from 6:00 to 14:00, "
            "Monday to Friday. Please plan the first delivery for the week of 4 May.\n\n"
            "Best regards,",
            stamp(13, "08:40", "CET"),
        ),
        Note(
            "bo-contoso-info",
            CONTOSO_INFO,
            "Updated supplier registration form",
            "Dear supplier,\n\nPlease complete the attached registration form by 31 March "
            "so that your payments continue without interruption.\n\nContoso Ltd – "
            "Supplier Management",
            stamp(9, "13:00", "NYC"),
            attach=(
                (
                    "Contoso-supplier-form.pdf",
                    "application/pdf",
                    fake_pdf("Supplier registration", ["Section A"]),
                ),
            ),
        ),
        Note(
            "bo-tailspin-hello",
            TAILSPIN_HELLO,
            "Tailspin Toys – Easter opening hours",
            "Dear partners,\n\nOur distribution centre is closed on 3 and 6 April. "
            "Deliveries planned on these days move to the next working day.",
            stamp(18, "12:00", "CHI"),
            shape="html",
            extra=NEWSLETTER_HEADERS,
        ),
        Note(
            "bo-ap",
            AP_TAILSPIN,
            "Remittance advice – payment run 13 March",
            "Hello,\n\nPlease find attached the remittance advice for our payment run of 13 March.",
            stamp(13, "15:20", "CHI"),
            attach=(("remittance-2026-03-13.csv", "text/csv", remittance),),
        ),
        Note(
            "bo-mateo",
            MATEO,
            "Delivery question for our Milan showroom",
            "Hi Bob,\n\nAlice said you handle deliveries. Our showroom is in a pedestrian "
            "zone: deliveries only before 10:00. Is that possible?",
            stamp(16, "11:25", "CET"),
        ),
        Note(
            "bo-daniel",
            DANIEL,
            "Shipping to Portland – lead times?",
            "Hi Bob,\n\nWhat are your lead times to Portland, Oregon for a mixed pallet of "
            "coffee and tea?",
            stamp(23, "09:15", "LAX"),
        ),
        Note(
            "bo-dana-case",
            DANA_UPPER,
            "Receiving hours at the Newark DC",
            "Hi Bob,\n\nFrom April our Newark DC receives from 05:00 to 13:00 only. Please "
            "brief your carrier.",
            stamp(17, "07:50", "NYC"),
        ),
        Note(
            "bo-hiroshi",
            HIROSHI,
            "Customs documents for shipment WW-5521",
            "Dear Bob,\n\nFor shipment WW-5521 we still need the certificate of origin and "
            "the health certificate for the honey.",
            stamp(11, "10:15", "TYO"),
        ),
        Note(
            "bo-fatima",
            FATIMA,
            "Allergen declarations for the caramel range",
            "Hello Bob,\n\nCould you send the allergen declarations for the salted caramel "
            "range? Our QA file must be complete before the April launch.",
            stamp(12, "09:30", "CET"),
        ),
        Note(
            "bo-kwame",
            KWAME,
            "EDI test messages next Tuesday",
            "Hi Bob,\n\nWe would like to send EDI test orders next Tuesday between 09:00 and "
            "11:00 Shanghai time. Can your team monitor?",
            stamp(19, "16:45", "SHA"),
        ),
        Note(
            "bo-tom-token",
            TOM,
            "Pallet labels – ref CRM:0009999",
            "Hi Bob,\n\nThe pallet labels on the last delivery had no SSCC barcode. The "
            "reference above is from the label itself.",
            stamp(13, "10:00", "CHI"),
        ),
        Note(
            "bo-priya-behalf",
            PRIYA,
            "Contract review meeting in April",
            "Hi Bob,\n\nPriya asked me to set up the annual contract review. Would 14 or 15 "
            "April suit you?\n\nJordan (on behalf of Priya)",
            stamp(20, "14:10", "CHI"),
            extra=(("Sender", "Jordan Lee <jordan.lee@tailspin.example>"),),
        ),
        Note(
            "bo-noah",
            NOAH,
            "Sustainability questionnaire for Northwind",
            "Hello Bob,\n\nContoso asked me to collect supplier sustainability data. The "
            "questionnaire takes about 20 minutes: https://esg.example.com/q/nw",
            stamp(10, "15:30", "CET"),
        ),
        Note(
            "bo-wwi-office",
            WWI_OFFICE,
            "Office closure on 20 March",
            "Dear partners,\n\nOur Tokyo office is closed on Friday 20 March (Vernal "
            "Equinox Day). Deliveries resume on Monday 23 March.",
            stamp(16, "09:00", "TYO"),
        ),
        Note(
            "bo-chloe",
            CHLOE,
            "Livraison à Bordeaux",
            "Bonjour Bob,\n\nAlice m'a dit que vous gérez les livraisons. Do you deliver to "
            "Bordeaux city centre, and which days?",
            stamp(17, "10:45", "CET"),
        ),
        Note(
            "bo-rui",
            RUI,
            "Payment run moved to 20 March",
            "Hello Bob,\n\nOur March payment run moves from 18 to 20 March because of the "
            "ERP upgrade. Invoices due in between will be paid on the 20th.",
            stamp(16, "13:05", "CHI"),
        ),
        Note(
            "bo-greta",
            GRETA,
            "Display stands for the Hoboken store",
            "Hi Bob,\n\nCan the chocolate display stands come with the first Hoboken "
            "delivery? We need them assembled by 5 April.",
            stamp(26, "09:30", "NYC"),
        ),
        Note(
            "bo-lukas",
            LUKAS,
            "Tasting slot at the Expo",
            "Hallo Bob,\n\nConfirming my tasting slot at your stand on Wednesday 18 March "
            "at 14:00. I will bring our head of purchasing.",
            stamp(16, "18:20", "CET"),
        ),
        Note(
            "bo-ingrid-home",
            INGRID_HOME,
            "Invoice address for the April order",
            "Dear Bob,\n\nPlease invoice the April order to our Osaka branch; the address is "
            "in our vendor portal.",
            stamp(21, "09:05", "TYO"),
        ),
        Note(
            "bo-adatum",
            ADATUM_INFO,
            "Adatum supplier day 2026 – save the date",
            "Dear partner,\n\nAdatum's supplier day takes place in Shanghai on 18 June. "
            "Invitations follow in April.",
            stamp(27, "10:00", "SHA"),
        ),
        Note(
            "bo-fw-attached",
            MARCO,
            "FW: Shipment 1Z88421A0455102291: new delivery date",
            "Bob, forwarding the carrier's notice (attached). The Hoboken pallets will be "
            "one day late.",
            stamp(24, "08:05", "NYC"),
            attach=(("notice.eml", "message/rfc822", courier_notice),),
        ),
        Note(
            "bo-fw-inline",
            JOSE,
            "Fwd: Customs hold – MSCU 771204-3",
            "Bob, see below: the certificate of origin for the first container is "
            "missing. Can you courier the original today?",
            stamp(16, "10:30", "SHA"),
            forward=customs_hold,
        ),
    ]
    return batch(d, "from a contact, account or lead", [(BO_IN, passes("SenderMatch"))], BOB, notes)


def bob_inbox_no_sender_match(d: Demo) -> dict[str, Mail]:
    """Mail to Bob from outside the CRM: skipped NoSenderMatch, even when a contact is in
    copy, in Reply-To, or the display name copies a contact's."""
    notes = [
        Note(
            "bo-spoof",
            SPOOF,
            "Urgent: updated bank details for Contoso payments",
            "Hello Bob,\n\nOur bank details have changed. Please update them before the next "
            "payment and confirm by return.\n\nDana",
            stamp(18, "16:58", "NYC"),
        ),
        Note(
            "bo-sam",
            SAM,
            "Printed tins for your Expo giveaways?",
            "Hi Bob,\n\nBoxRight can print 500 branded tins in 5 days, in time for the "
            "Expo. Interested?",
            stamp(9, "09:12", "NYC"),
        ),
        Note(
            "bo-news",
            NEWS,
            "Freight rates: Asia–Europe spot rates ease",
            "This week: container spot rates, the Felixstowe strike ballot, and the new "
            "customs portal.\n\nRead online: https://news.example.org/w/2026-11",
            stamp(14, "06:00", "LON"),
            extra=NEWSLETTER_HEADERS,
        ),
        Note(
            "bo-jobs",
            JOBS,
            "Logistics Account Manager roles",
            "Hi Bob,\n\nAre you open to hearing about logistics roles with a FTSE 250 distributor?",
            stamp(25, "12:30", "LON"),
        ),
        Note(
            "bo-survey",
            SURVEY,
            "How did we do? Tailspin supplier survey",
            "Tailspin Toys would like your feedback on working with us this quarter. "
            "Reply to this email to reach Priya Raman directly.",
            stamp(19, "08:00", "CHI"),
            extra=(("Reply-To", "Priya Raman <priya.raman@tailspin.example>"),),
        ),
        Note(
            "bo-priit",
            PRIIT,
            "Reefer container availability for April",
            "Hello Bob,\n\nWe have two 40-foot reefer containers free from Tallinn in "
            "April. Hiroshi Tanaka at Wide World gave me your name.",
            stamp(17, "11:40", "CET"),
            cc=(HIROSHI,),
        ),
        Note(
            "bo-expo",
            EVENTS,
            "Exhibitor badges ready for collection",
            "Dear exhibitor,\n\nYour four exhibitor badges are ready at the north entrance "
            "service desk.",
            stamp(14, "08:30", "CET"),
        ),
        Note(
            "bo-tracker",
            TRACKER,
            "Delivered: your parcel 1Z88421A0477123309",
            "Your parcel was delivered on 23 March at 10:42 and signed for by TANAKA.",
            stamp(23, "02:05", "LON"),
            shape="plain",
        ),
    ]
    return batch(d, "from outside the crm", [(BO_IN, skipped("NoSenderMatch"))], BOB, notes)


def bob_sent(d: Demo, inbox: dict[str, Mail], unknown: dict[str, Mail]) -> None:
    """Bob's sent mail: a recipient who is a contact, account or lead (To, Cc or Bcc) makes
    it RecipientMatch; replies to tracked mail correlate; the rest is NoRecipientMatch."""
    s = "sent to a contact, account or lead"
    notes = [
        Note(
            "bs-fabrikam",
            BOB,
            "Northwind price list 2026 – logistics annex",
            "Dear Sir or Madam,\n\nAttached is the logistics annex to our 2026 price list: "
            "delivery zones, pallet surcharges and cut-off times.",
            stamp(16, "09:10", "LON"),
            to=(FABRIKAM_INFO,),
            attach=(
                (
                    "logistics-annex-2026.pdf",
                    "application/pdf",
                    fake_pdf("Logistics annex", ["Zones", "Surcharges"]),
                ),
            ),
        ),
        Note(
            "bs-ap",
            BOB,
            "Statement of account – March",
            "Hello,\n\nPlease find your statement of account below. Two invoices are open: "
            "NW-2026-0133 and NW-2026-0140.",
            stamp(23, "10:00", "LON"),
            to=(AP_TAILSPIN,),
        ),
        Note(
            "bs-bcc",
            BOB,
            "Pallet counts for the July and August drops",
            "Hello Grace,\n\nJuly: 14 pallets, 6,120 kg. August: 9 pallets, 3,980 kg. All "
            "standard EUR pallets, not stackable.",
            stamp(6, "10:45", "LON"),
            to=(GRACE,),
            bcc=(DANA,),
        ),
        Note(
            "bs-fatima",
            BOB,
            "Updated specification sheets",
            "Hello Fatima,\n\nThe updated specification sheets for the spring range are "
            "ready in the partner portal.",
            stamp(18, "11:20", "LON"),
            to=(FATIMA,),
        ),
        Note(
            "bs-dana",
            BOB,
            "Booking references for the 6 July drop",
            "Hi Dana,\n\nThe booking reference for the 6 July drop is NWB-70641, slot 07:00 "
            "at the Newark DC.",
            stamp(25, "15:05", "LON"),
            to=(DANA,),
        ),
        Note(
            "bs-tailspin-hello",
            BOB,
            "Saturday delivery calendar for April",
            "Hello,\n\nAttached is the Saturday delivery calendar for the four flagship "
            "stores in April.",
            stamp(24, "13:30", "LON"),
            to=(TAILSPIN_HELLO,),
        ),
        Note(
            "bs-wwi",
            BOB,
            "Shipping calendar April–June",
            "Dear team,\n\nOur sailings from Felixstowe to Tokyo from April to June: every "
            "second Thursday, first on 2 April.",
            stamp(26, "08:55", "LON"),
            to=(WWI_OFFICE,),
        ),
        Note(
            "bs-aisha",
            BOB,
            "Delivery options for Greenleaf's shops",
            "Hello Aisha,\n\nFor your five London shops we can deliver on our Tuesday "
            "route, minimum two cases per shop.",
            stamp(24, "16:40", "LON"),
            to=(AISHA,),
        ),
    ]
    batch(d, s, [(BO_SENT, passes("RecipientMatch"))], BOB, notes)
    priit = unknown["bo-priit"]
    r4 = compose(
        "bs-priit",
        BOB,
        [PRIIT],
        "Hello Priit,\n\nThanks. Hiroshi, would a reefer help for the April honey shipment?",
        stamp(17, "14:05", "LON"),
        cc=[HIROSHI],
        parent=priit,
    )
    d.add(r4, BO_SENT, "reply to an untracked message, contact in cc", passes("RecipientMatch"))
    replies = [  # answers to messages Bob's mailbox tracked (SenderMatch) → correlated
        ("bs-kwame", inbox["bo-kwame"], "Hi Kwame,\n\nYes, we will monitor on Tuesday.",
         stamp(19, "10:20", "LON"), ()),
        ("bs-noah", inbox["bo-noah"], "Hello Noah,\n\nDone, questionnaire submitted.",
         stamp(12, "16:00", "LON"), ()),
        ("bs-daniel", inbox["bo-daniel"],
         "Hi Daniel,\n\nFive working days to Portland for a mixed pallet.",
         stamp(23, "18:30", "LON"), ()),
        ("bs-hiroshi", inbox["bo-hiroshi"],
         "Dear Hiroshi,\n\nBoth certificates were couriered today, DHL 4471 2290 18.",
         stamp(11, "11:30", "LON"), ()),
    ]  # fmt: skip
    for key, parent, text, when, cc in replies:
        mail = compose(key, BOB, [parent.sender], text, when, parent=parent, cc=cc)
        d.add(mail, BO_SENT, "reply to a sender-matched message", correlated(parent, None))


def bob_more(d: Demo, inbox: dict[str, Mail]) -> None:
    """Bob's sent mail to unknown people (NoRecipientMatch), auto-replies that answer it or
    carry no threading (AutoReply), and a lead answering a CRM campaign email."""
    s = "sent only to people outside the crm"
    quote_request = compose(
        "bs-sam",
        BOB,
        [SAM],
        """
        Hi Sam,

        Could you quote 5,000 printed tins (250 g, 4 colours) delivered to Tilbury by the
        end of May?
        """,
        stamp(10, "09:40", "LON"),
        subject="Quote request: 5,000 printed tins",
    )
    d.add(quote_request, BO_SENT, s, skipped("NoRecipientMatch"))
    autoresponse = compose(
        "bo-sam-auto",
        SAM,
        [BOB],
        """
        Thanks for contacting BoxRight! Your request has been received and a product
        specialist will get back to you within one business day.
        """,
        stamp(10, "05:41:12", "NYC"),
        parent=quote_request,
        subject=f"Re: {quote_request.subject} [BoxRight request #58213]",
        quote=False,
        signature=False,
        client="web",
        extra=[("X-Autorespond", "BoxRight Helpdesk")],
    )
    d.add(autoresponse, BO_IN, "autoresponder answering untracked mail", skipped("AutoReply"))
    notes = [
        Note(
            "bs-expo",
            BOB,
            "Booth C21 – extra power socket",
            "Hello,\n\nFor booth C21 we need one extra 16 A power socket for the coffee "
            "machine. Please add it to our order.",
            stamp(11, "13:15", "LON"),
            to=(EVENTS,),
        ),
        Note(
            "bs-carrier",
            BOB,
            "Collection request – 4 pallets from Tilbury",
            "Hello,\n\nPlease collect 4 pallets (1,650 kg) from our Tilbury warehouse on "
            "Tuesday 31 March, for delivery to Lyon.",
            stamp(27, "11:10", "LON"),
            to=(CARRIER,),
        ),
    ]
    batch(d, s, [(BO_SENT, skipped("NoRecipientMatch"))], BOB, notes)
    yusuf = compose(
        "bs-yusuf",
        BOB,
        [YUSUF],
        """
        Hello Yusuf,

        Yes, we ship to Istanbul by road every two weeks. Alice, copied, can send you the
        export price list.
        """,
        stamp(24, "10:10", "LON"),
        subject="Shipping to Istanbul",
        cc=[ALICE],
    )
    s = "to an unknown person, cc a user"
    d.add(yusuf, BO_SENT, s, skipped("NoRecipientMatch"))
    d.add(yusuf, AL_IN, s, skipped("NoCorrelationMatch"))
    ooo = compose(
        "bo-kwame-ooo",
        KWAME,
        [BOB],
        """
        I am on annual leave until 30 March. For EDI questions please contact
        it-support@adatum.example.
        """,
        stamp(19, "18:21", "SHA"),
        subject="Out of office: Kwame Mensah",
        signature=False,
        client="web",
        extra=[("Auto-Submitted", "auto-replied"), ("X-Auto-Response-Suppress", "All")],
    )
    d.add(ooo, BO_IN, "out-of-office without threading headers", skipped("AutoReply"))
    fair = compose(
        "lk1",
        LUKAS,
        [BOB],
        """
        Dear Mr Okafor,

        Thank you for the invitation. I would like to book a tasting on Wednesday
        18 March in the afternoon, if possible at 14:00.
        """,
        stamp(4, "13:10", "CET"),
        parent=H_FAIR,
    )
    d.add(
        fair, BO_IN, "crm history thread: trade fair invitation", correlated(H_FAIR, CAMPAIGN_FAIR)
    )
    booked = compose(
        "lk2",
        BOB,
        [LUKAS],
        "Dear Mr Novák,\n\nBooked: Wednesday 18 March, 14:00, stand C21. See you there!",
        stamp(4, "15:00", "LON"),
        parent=fair,
    )
    d.add(
        booked,
        BO_SENT,
        "crm history thread: trade fair invitation",
        correlated(fair, CAMPAIGN_FAIR),
    )
    booking = inbox["bo-dana-case"]
    confirm = compose(
        "bs-dana-newark",
        BOB,
        [DANA],
        "Hi Dana,\n\nNoted, our carrier is briefed for the new Newark hours.",
        stamp(17, "15:30", "LON"),
        parent=booking,
        cc=[ALICE],
    )
    s = "reply to a sender-matched message, cc a user"
    d.add(confirm, BO_SENT, s, correlated(booking, None, dup=True))
    d.add(confirm, AL_IN, s, correlated(booking, None, dup=True))


def carol_inbox(d: Demo) -> None:
    """Carol's `email-enabled` filter: any CRM record as sender (users and queues too)."""
    sender_match = [
        Note(
            "ca-kwame",
            KWAME,
            "Portal training for two new colleagues",
            "Hi Carol,\n\nTwo new colleagues join our purchasing team in April. Could you "
            "run the portal training for them?",
            stamp(16, "15:10", "SHA"),
        ),
        Note(
            "ca-jose",
            JOSE,
            "Allergen sheets for the caramel range",
            "Hi Carol,\n\nWhere can I find the allergen sheets for the new caramel range in "
            "the portal?",
            stamp(17, "11:30", "SHA"),
        ),
        Note(
            "ca-tom",
            TOM,
            "Feedback on the new carton design",
            "Hi Carol,\n\nThe new cartons are much sturdier, the warehouse team loves them. "
            "One photo attached of the stacking test.",
            stamp(19, "09:45", "CHI"),
            attach=(("stacking-test.png", "image/png", fake_png(40, 30, "stacking")),),
        ),
        Note(
            "ca-fatima",
            FATIMA,
            "Audit visit on 14 April",
            "Hello Carol,\n\nConfirming our supplier audit at Tilbury on 14 April, 09:30. "
            "Two auditors will attend.",
            stamp(20, "10:05", "CET"),
        ),
        Note(
            "ca-ingrid",
            INGRID,
            "Thank you for the tasting notes",
            "Dear Carol,\n\nThank you for the tasting notes, they will go straight into our "
            "April catalogue.",
            stamp(24, "17:20", "TYO"),
        ),
        Note(
            "ca-noah",
            NOAH,
            "Customer success benchmarking interview",
            "Hello Carol,\n\nWould you be available for a 30-minute interview on how "
            "Northwind onboards new retail accounts?",
            stamp(25, "14:15", "CET"),
        ),
        Note(
            "ca-rui",
            RUI,
            "Portal access for the finance team",
            "Hello Carol,\n\nPlease give portal access to two people in our finance team: "
            "invoices and credit notes only.",
            stamp(26, "08:50", "CHI"),
        ),
        Note(
            "ca-mateo",
            MATEO,
            "Tasting for our design team?",
            "Ciao Carol,\n\nAlice mentioned you organise tastings. Could you do one in "
            "Milan for our design team?",
            stamp(18, "16:05", "CET"),
        ),
        Note(
            "ca-aisha",
            AISHA,
            "Product sheets for the tea trial",
            "Hello Carol,\n\nCould you send the product sheets for the teas in our trial? "
            "Our shop staff need them for the shelf talkers.",
            stamp(23, "12:40", "LON"),
        ),
        Note(
            "ca-lukas",
            LUKAS,
            "Thank you for the tasting at the Expo",
            "Hallo Carol,\n\nThank you for the excellent tasting on Wednesday. The yuzu "
            "marmalade was the favourite of our team.",
            stamp(20, "09:10", "CET"),
        ),
        Note(
            "ca-adatum",
            ADATUM_INFO,
            "Quarterly supplier scorecard – Q1",
            "Dear supplier,\n\nYour Q1 scorecard: on-time delivery 97.4%, quality 99.1%, "
            "documentation 92.0%. Thank you for your partnership.",
            stamp(27, "09:00", "SHA"),
            shape="html",
        ),
        Note(
            "ca-wwi",
            WWI_OFFICE,
            "Updated delivery instructions",
            "Dear partners,\n\nFrom 1 April please deliver to gate 3 of our Tokyo "
            "warehouse; gate 1 closes for renovation.",
            stamp(11, "14:00", "TYO"),
        ),
        Note(
            "ca-support",
            SUPPORT,
            "Escalation: ticket #5521 – Contoso label misprint",
            "Hi Carol,\n\nTicket #5521 (Contoso, misprinted best-before dates on 40 "
            "cartons) needs a customer success decision: relabel or replace?\n\nNorthwind "
            "Support",
            stamp(18, "10:30", "LON"),
        ),
    ]
    batch(d, "from a crm record", [(CA_IN, passes("SenderMatch"))], CAROL, sender_match)
    unknown = [
        Note(
            "ca-news",
            NEWS,
            "Retail shelf trends for spring",
            "This week: shelf-ready packaging, price marking rules and the rise of "
            "premium snacks.\n\nRead online: https://news.example.org/w/2026-11b",
            stamp(14, "06:00", "LON"),
            extra=NEWSLETTER_HEADERS,
        ),
        Note(
            "ca-grace",
            GRACE,
            "Freight quote for the Contoso drops",
            "Hello Carol,\n\nBob gave me your name. Who should receive our freight quote for "
            "the July and August drops?",
            stamp(9, "12:20", "LAX"),
        ),
        Note(
            "ca-yusuf",
            YUSUF,
            "Partnership proposal",
            "Hello Carol,\n\nWe import Turkish dried fruit and would like to discuss a "
            "distribution partnership. Kwame at Adatum recommended you.",
            stamp(17, "15:35", "CET"),
            cc=(KWAME,),
        ),
        Note(
            "ca-tracker",
            TRACKER,
            "Your parcel has been delivered",
            "Parcel 1Z88421A0412700018 was delivered to NORTHWIND TRADERS, TILBURY.",
            stamp(12, "13:02", "LON"),
            shape="plain",
        ),
        Note(
            "ca-survey",
            SURVEY,
            "Tailspin supplier survey – customer success",
            "Tailspin Toys would like your feedback on working with us. Reply to reach "
            "Priya Raman directly.",
            stamp(16, "08:00", "CHI"),
            extra=(("Reply-To", "priya.raman@tailspin.example"),),
        ),
        Note(
            "ca-hannah",
            HANNAH,
            "Quick question about your customer portal",
            "Hi Carol,\n\nWhich CRM does Northwind use for its customer portal? We build "
            "integrations for CloudLedger.",
            stamp(25, "10:50", "NYC"),
        ),
    ]
    outside = batch(d, "from outside the crm", [(CA_IN, skipped("NoSenderMatch"))], CAROL, unknown)
    priit_ooo = compose(
        "ca-priit-ooo",
        PRIIT,
        [CAROL],
        "I am away until 23 March without access to email.",
        stamp(19, "08:12", "CET"),
        subject="Automatic reply: Northwind tasting invitation",
        signature=False,
        extra=[("Auto-Submitted", "auto-replied")],
    )
    d.add(priit_ooo, CA_IN, "out-of-office from outside the crm", skipped("AutoReply"))
    credentials = compose(
        "ca-own-1",
        CAROL,
        [KWAME],
        """
        Hi Kwame,

        Your colleagues' portal accounts are ready; they will receive their passwords in
        a separate email. Training is booked for 2 April, 10:00 Shanghai time.
        """,
        stamp(17, "09:15", "LON"),
        subject="Portal accounts for your new colleagues",
    )
    s = "carol's own message copied to her inbox (outgoing)"
    d.add(credentials, CA_IN, s, passes("RecipientMatch"))
    decline = compose(
        "ca-own-2",
        CAROL,
        [YUSUF],
        """
        Hello Yusuf,

        Thank you for thinking of us. Dried fruit is outside our range for now, so we will
        not take this further this year.
        """,
        stamp(18, "11:45", "LON"),
        parent=outside["ca-yusuf"],
        quote=False,
    )
    d.add(decline, CA_IN, s, skipped("NoRecipientMatch"))


def support_and_carol(d: Demo) -> None:
    """One message to the support queue and to Carol: both filters accept a customer's (one
    copy creates the activity, the other links); an unknown sender passes support only."""
    s = "to support and carol"
    wang = compose(
        "sc1",
        WANG,
        [SUPPORT],
        """
        您好，

        Since this morning I cannot log in to the supplier portal: after the password the
        page shows "session expired". I tried two browsers. Carol, copying you as you did
        our training.
        """,
        stamp(24, "09:20", "SHA"),
        cc=[CAROL],
        subject="Login to supplier portal fails",
    )
    d.add(wang, SU_IN, s, passes("AcceptAll", dup=True))
    d.add(wang, CA_IN, s, passes("SenderMatch", dup=True))
    greta = compose(
        "sc3",
        GRETA,
        [SUPPORT, CAROL],
        """
        Hello,

        Two cartons in today's Hoboken delivery have best-before dates printed twice.
        Is the product fine to sell?

        Greta
        """,
        stamp(26, "13:40", "NYC"),
        subject="Double-printed best-before dates",
        signature=False,
    )
    d.add(greta, SU_IN, s, passes("AcceptAll", dup=True))
    d.add(greta, CA_IN, s, passes("SenderMatch", dup=True))
    priit = compose(
        "sc2",
        PRIIT,
        [SUPPORT],
        """
        Hello,

        We ordered tasting samples through your website last week (order W-10233) but
        received nothing. Carol, copying you as you sent the invitation.
        """,
        stamp(18, "14:25", "CET"),
        cc=[CAROL],
        subject="Tasting samples not received",
    )
    d.add(priit, SU_IN, "unknown sender to support and carol", passes("AcceptAll"))
    d.add(priit, CA_IN, "unknown sender to support and carol", duplicate())


def support_inbox(d: Demo) -> None:
    """The support queue accepts everything (`all`), except what the rules before the filter
    stop: no sender, auto-replies, bounces, unreadable files."""
    accept = [
        Note(
            "su-dana",
            DANA,
            "Missing delivery note for 88190",
            "Hello,\n\nDelivery 88190 arrived without a delivery note. Could you email a "
            "copy so we can book the goods in?",
            stamp(13, "08:35", "NYC"),
        ),
        Note(
            "su-ingrid",
            INGRID,
            "Pallet height limit for the April container",
            "Hello,\n\nPlease note our racking takes pallets up to 1.6 m only. Could you "
            "confirm the April container is built accordingly?",
            stamp(18, "13:10", "TYO"),
        ),
        Note(
            "su-hiroshi",
            HIROSHI,
            "Portal password reset not arriving",
            "Hello,\n\nI requested a password reset for the supplier portal three times "
            "today but no email arrives.",
            stamp(19, "15:40", "TYO"),
        ),
        Note(
            "su-noah",
            NOAH,
            "Question about your B Corp certification",
            "Hello,\n\nIs Northwind Traders B Corp certified, or working towards it?",
            stamp(24, "10:05", "CET"),
        ),
        Note(
            "su-lukas",
            LUKAS,
            "Catalogue in German?",
            "Guten Tag,\n\nGibt es Ihren Katalog auch auf Deutsch? Is your catalogue "
            "available in German?",
            stamp(17, "14:30", "CET"),
        ),
        Note(
            "su-olivia",
            OLIVIA,
            "Allergen matrix",
            "Hi,\n\nCould you send the allergen matrix for your foodservice range?",
            stamp(20, "11:15", "LAX"),
        ),
        Note(
            "su-contoso",
            CONTOSO_INFO,
            "Change of invoice address",
            "Dear supplier,\n\nFrom 1 April please send all invoices to "
            "invoices@contoso.example; paper invoices are no longer accepted.",
            stamp(16, "12:00", "NYC"),
            shape="html",
        ),
        Note(
            "su-grace",
            GRACE,
            "Collection times at Tilbury",
            "Hi,\n\nWhat are the collection times at your Tilbury warehouse on Saturdays?",
            stamp(13, "16:20", "LAX"),
        ),
        Note(
            "su-yusuf",
            YUSUF,
            "Do you ship to Istanbul?",
            "Hello,\n\nDo you ship to Istanbul, and is there a minimum order?",
            stamp(23, "09:55", "CET"),
        ),
        Note(
            "su-news",
            NEWS,
            "Special edition: packaging levy explained",
            "A special edition on the UK packaging levy: who pays, when, and how to "
            "report.\n\nRead online: https://news.example.org/w/2026-12s",
            stamp(21, "07:00", "LON"),
            extra=NEWSLETTER_HEADERS,
        ),
        Note(
            "su-hannah",
            HANNAH,
            "Partnership enquiry",
            "Hello support team,\n\nCould you forward this to whoever handles "
            "partnerships? CloudLedger would like to list Northwind in our supplier "
            "directory.",
            stamp(25, "11:20", "NYC"),
            extra=(("Auto-Submitted", "no"),),
        ),
        Note(
            "su-marco",
            MARCO,
            "Damaged pallet at Hoboken",
            "Hi,\n\nOne pallet in today's Hoboken delivery was damaged by the forklift at "
            "unloading. Photo attached; our fault, no claim, just so you know.",
            stamp(27, "10:05", "NYC"),
            attach=(("IMG_4410.png", "image/png", fake_png(32, 32, "pallet")),),
        ),
    ]
    batch(d, "accepted by an all-mail queue", [(SU_IN, passes("AcceptAll"))], SUPPORT, accept)
    delivery_notice = compose(
        "su-fw-inner",
        CARRIER,
        [DANA],
        """
        Your delivery appointment is confirmed: Newark DC, 27 March 2026, 06:00-07:00,
        4 pallets, reference NWB-70588.
        """,
        stamp(25, "17:00", "CET"),
        subject="Delivery appointment confirmed – NWB-70588",
        shape="plain",
    )
    forward = compose(
        "su-fw",
        DANA,
        [SUPPORT],
        """
        Hello,

        Forwarding the carrier's confirmation (attached). The driver should ask for
        receiving door 4.
        """,
        stamp(26, "07:30", "NYC"),
        subject="FW: Delivery appointment confirmed – NWB-70588",
        attach=[("Delivery appointment confirmed.eml", "message/rfc822", delivery_notice)],
    )
    d.add(forward, SU_IN, "forward as attachment", passes("AcceptAll"))
    scan = compose(
        "su-scan",
        SCANNER,
        [SUPPORT],
        "Scanned document from TAILSPIN-MFP-02. Pages: 2.",
        stamp(12, "16:02", "CHI"),
        subject="Scanned document from TAILSPIN-MFP-02",
        msgid=None,
        shape="plain",
        attach=[("scan0042.pdf", "application/pdf", fake_pdf("Scan", ["CMR 88213"]))],
    )
    d.add(scan, SU_IN, "no message-id header", passes("AcceptAll"))
    support_no_sender(d)
    support_auto_replies(d)
    support_unreadable(d)


def support_no_sender(d: Demo) -> None:
    """No parseable From address: skipped InvalidSender before any filter."""
    form = compose(
        "su-nofrom",
        WEBFORM,
        [SUPPORT],
        """
        Contact form submission

        Name: K. Ivanova
        Company: (not given)
        Message: Do you sell gift hampers for corporate clients?
        """,
        stamp(15, "21:47", "LON"),
        subject="Website contact form",
        from_header=None,
        shape="plain",
        msgid="<form-20260315214700.5521@web01.northwind.example>",
    )
    d.add(form, SU_IN, "no from header", skipped("InvalidSender"))
    group = compose(
        "su-group",
        PORTAL,
        [SUPPORT],
        "Reminder: 3 supplier documents expire this month. Log in to renew them.",
        stamp(22, "05:00", "LON"),
        subject="Documents expiring",
        from_header="undisclosed-recipients:;",
        shape="plain",
    )
    d.add(group, SU_IN, "from header is an empty group", skipped("InvalidSender"))


def support_auto_replies(d: Demo) -> None:
    """Each auto-reply marker once, none of them correlated: skipped AutoReply (even from a
    contact); a delivery status report: skipped Bounce."""
    cases = [
        ("su-ooo-1", GRACE, "Out of office: Re: Collection times at Tilbury",
         "I am out of the office until 20 March.", stamp(16, "09:01", "LAX"),
         (("Auto-Submitted", "auto-replied"),)),
        ("su-ooo-2", HIROSHI, "Automatic reply: Portal password reset not arriving",
         "I am on a business trip until 25 March. I will answer after my return.",
         stamp(20, "09:03", "TYO"), (("X-Autoreply", "yes"),)),
        ("su-ooo-3", YUSUF, "Away: Do you ship to Istanbul?",
         "I am travelling with limited access to email until 30 March.",
         stamp(24, "08:00", "CET"), (("Precedence", "auto_reply"),)),
        ("su-ooo-4", PORTAL, "Your weekly supplier portal summary",
         "This week: 14 orders, 2 invoices, 1 message waiting. This message was generated "
         "automatically.", stamp(23, "04:00", "LON"), (("Auto-Submitted", "auto-generated"),)),
    ]  # fmt: skip
    for key, sender, subject, text, when, extra in cases:
        mail = compose(
            key,
            sender,
            [SUPPORT],
            text,
            when,
            subject=subject,
            extra=extra,
            signature=False,
            client="web",
            shape="plain",
        )
        d.add(mail, SU_IN, "uncorrelated auto-reply", skipped("AutoReply"))
    original = compose(
        "su-ack",
        SUPPORT,
        [Person("Anna Kowalska", "anna.kowalska@greenleaf.example")],
        "Thank you for contacting Northwind Support. Your ticket number is #5590.",
        stamp(17, "08:10", "LON"),
        subject="[#5590] We received your request",
        shape="plain",
    )
    report = bounce("su-bounce", SUPPORT, original, "anna.kowalska@greenleaf.example",
                    stamp(17, "08:10:07", "LON"))  # fmt: skip
    d.add(report, SU_IN, "delivery status notification", skipped("Bounce"))


def support_unreadable(d: Demo) -> None:
    """Files that are not readable email: errored Malformed."""
    when = stamp(14, "03:12", "LON")
    d.add_raw("su-junk", truncated_download(when), when, SU_IN, "no header block", MALFORMED)
    when = stamp(22, "19:40", "LON")
    raw = missing_boundary(
        "su-noboundary", PRIIT, SUPPORT, "Scanned documents for order W-10233", when
    )
    d.add_raw("su-noboundary", raw, when, SU_IN, "declared boundary never found", MALFORMED)
    when = stamp(25, "02:00", "LON")
    d.add_raw("su-empty", b"", when, SU_IN, "empty file", MALFORMED)


# --------------------------------------------------------------------------- the demo


def build() -> Demo:
    """Run every scenario, in a fixed order."""
    d = Demo()
    contoso_quote_thread(d)
    fabrikam_renewal_thread(d)
    bluefin_lead_thread(d)
    wideworld_samples_thread(d)
    tailspin_amendment_thread(d)
    adatum_order_thread(d)
    adatum_case_thread(d)
    support_then_alice_thread(d)
    tracked_via_carol_thread(d)
    greta_introduction_thread(d)
    invoice_query = tailspin_invoice_thread(d)
    token_only_alice(d)
    shared_with_bob(d)
    internal_mail(d)
    alice_writes_to_carol(d)
    alice_inbox_uncorrelated(d)
    alice_untracked_threads(d)
    alice_sent_uncorrelated(d)
    forwards_to_alice(d, invoice_query)
    bob_inbox = bob_inbox_sender_match(d)
    bob_unknown = bob_inbox_no_sender_match(d)
    bob_sent(d, bob_inbox, bob_unknown)
    bob_more(d, bob_inbox)
    carol_inbox(d)
    support_and_carol(d)
    support_inbox(d)
    return d


# --------------------------------------------------------------------------- writing

NEW_FROM = datetime(YEAR, 3, 26, tzinfo=UTC)  # mail from here on is unread (Maildir new/)
GENERATED = ("crm", "mailboxes", "mailboxes.toml", "ground-truth.jsonl")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def jsonl(rows: Iterable[dict[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_records(out: Path) -> None:
    rows = [
        {
            "id": r.id,
            "type": r.type,
            "name": r.name,
            "emails": list(r.emails),
            "parent_account": r.parent_account,
        }
        for r in RECORDS
    ]
    write_text(out / "crm" / "records.jsonl", jsonl(rows))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "type", "name", "emails", "parent_account"])
    for r in RECORDS:
        writer.writerow([r.id, r.type, r.name, ";".join(r.emails), r.parent_account or ""])
    write_text(out / "crm" / "records.csv", buf.getvalue())


def write_tracked(out: Path) -> None:
    rows = [
        {
            "type": "email",
            "message_id": mail.msgid,
            "subject": mail.subject,
            "tracking_token": token,
            "regarding": regarding,
            "owner": owner,
            "from": mail.sender.addr,
            "to": [p.addr for p in mail.to],
            "sent_at": mail.when.astimezone(UTC).isoformat(),
        }
        for mail, regarding, owner, token in sorted(TRACKED_HISTORY, key=lambda h: h[0].when)
    ]
    write_text(out / "crm" / "tracked-emails.jsonl", jsonl(rows))


def write_mailboxes_toml(out: Path) -> None:
    lines = [
        "# The demo mailboxes of Northwind Traders. `path` is relative to this file's directory",
        "# (examples/). Generated by examples/generate.py: edit that script, not this file.",
    ]
    for mailbox_id, owner, address, incoming_filter, folders in MAILBOXES:
        folder_list = ", ".join(f'"{f}"' for f in folders)
        lines += [
            "",
            "[[mailbox]]",
            f'id = "{mailbox_id}"',
            f'owner = "{owner}"',
            f'email = "{address}"',
            f'filter = "{incoming_filter}"',
            f'path = "mailboxes/{mailbox_id}"',
            f"folders = [{folder_list}]",
        ]
    write_text(out / "mailboxes.toml", "\n".join(lines) + "\n")


def folder_dir(mailbox_root: Path, folder: str) -> Path:
    """INBOX is the Maildir root; any other folder N is the Maildir++ sub-folder `.N`."""
    return mailbox_root if folder == "INBOX" else mailbox_root / f".{folder}"


def file_name(delivery: Delivery, seq: int, replied: bool) -> tuple[str, str, str]:
    """(sub-directory, file name, unique name) of one delivery in its Maildir folder."""
    h = digest("file", delivery.mailbox, delivery.folder, delivery.key)
    delay = int(h[:2], 16) % 3 if delivery.folder == "Sent" else 2 + int(h[:2], 16) % 58
    arrived = int(delivery.when.timestamp()) + delay
    unique = f"{arrived}.M{int(h[2:8], 16) % 1_000_000:06d}P{3000 + int(h[8:11], 16)}Q{seq}.demo"
    if delivery.when >= NEW_FROM:
        return "new", unique, unique
    flags = {"S"}
    if replied:
        flags.add("R")
    if delivery.folder == "INBOX" and h[11] == "0":
        flags.add("F")
    return "cur", f"{unique}:2,{''.join(sorted(flags))}", unique


def write_maildirs(out: Path, demo: Demo) -> list[dict[str, object]]:
    """Write every delivery into its Maildir; returns the ground-truth rows."""
    for mailbox_id, _, _, _, folders in MAILBOXES:
        for folder in folders:
            base = folder_dir(out / "mailboxes" / mailbox_id, folder)
            for sub in ("cur", "new", "tmp"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            (base / "tmp" / ".keep").write_bytes(b"")
    rows: list[dict[str, object]] = []
    for seq, delivery in enumerate(demo.deliveries, start=1):
        replied = (delivery.mailbox, delivery.message_id or "") in demo.replied
        sub, name, unique = file_name(delivery, seq, replied)
        base = folder_dir(out / "mailboxes" / delivery.mailbox, delivery.folder)
        (base / sub / name).write_bytes(delivery.raw)
        expect = delivery.expect
        rows.append(
            {
                "mailbox": delivery.mailbox,
                "folder": delivery.folder,
                "file": unique,
                "scenario": delivery.scenario,
                "message_id": delivery.message_id,
                "status": expect.status,
                "reasons": list(expect.reasons),
                "correlation_method": expect.method,
                "correlated_to": expect.correlated_to,
                "regarding": expect.regarding,
                "error_code": expect.error_code,
            }
        )
    for mailbox_id, _, _, _, folders in MAILBOXES:
        for folder in folders:
            base = folder_dir(out / "mailboxes" / mailbox_id, folder)
            for sub in ("cur", "new"):
                if not any((base / sub).iterdir()):
                    raise RuntimeError(f"{base / sub} is empty; git would not keep it")
    rows.sort(key=lambda r: (str(r["mailbox"]), str(r["folder"]), str(r["file"])))
    return rows


def check_deliveries(demo: Demo) -> None:
    """Guard the hand-written data against slips (not against the rules): unique keys per
    place, same bytes for every copy of a message, malformed files carry no Message-ID."""
    seen: set[tuple[str, str, str]] = set()
    copies: dict[str, bytes] = {}
    for delivery in demo.deliveries:
        place = (delivery.mailbox, delivery.folder, delivery.key)
        if place in seen:
            raise RuntimeError(f"{place} delivered twice")
        seen.add(place)
        if (
            delivery.message_id is not None
            and copies.setdefault(delivery.message_id, delivery.raw) != delivery.raw
        ):
            raise RuntimeError(f"two different messages share {delivery.message_id}")
        if delivery.expect.status == "errored" and delivery.message_id is not None:
            raise RuntimeError(f"{delivery.key}: malformed files carry no Message-ID")


def write_all(out: Path, demo: Demo) -> list[dict[str, object]]:
    """(Re)write every generated file under `out`, removing what an earlier run left."""
    check_deliveries(demo)
    out.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    write_records(out)
    write_tracked(out)
    write_mailboxes_toml(out)
    rows = write_maildirs(out, demo)
    write_text(out / "ground-truth.jsonl", jsonl(rows))
    return rows


def summary(rows: Sequence[dict[str, object]]) -> str:
    """Message files per mailbox and folder, and expected decisions by status and reason."""
    places: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for row in rows:
        place = f"{row['mailbox']}/{row['folder']}"
        places[place] = places.get(place, 0) + 1
        reasons = row["reasons"]
        assert isinstance(reasons, list)
        outcome = f"{row['status']} {'/'.join(reasons)}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    lines = [f"{len(rows)} message files"]
    lines += [f"  {place:<20} {count:>4}" for place, count in sorted(places.items())]
    lines += [f"  {outcome:<40} {count:>4}" for outcome, count in sorted(outcomes.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=EXAMPLES,
        help="directory to write into (default: the examples/ directory of this script)",
    )
    args = parser.parse_args(argv)
    rows = write_all(args.out, build())
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
