"""IMAP wire details as pure functions: sequence sets, mailbox-name encoding, and
parsing the responses aioimaplib hands back (`Response.lines`: untagged lines
without the leading "* ", literals as bytearray items, the tagged text last).

Nothing here does I/O, so all of it is tested without a server.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import NamedTuple

_FETCH_START = re.compile(rb"^(\d+) FETCH \(")
_ATTRIBUTE = re.compile(
    rb'\b(UID|MODSEQ|RFC822\.SIZE|INTERNALDATE|FLAGS) (\d+|\(([^)]*)\)|"([^"]*)")'
)
_LITERAL_AT_END = re.compile(rb"\{(\d+)\}$")
_RESP_CODE = re.compile(rb"\[([A-Z-]+)(?: ([^\]]*))?\]")
_VANISHED = re.compile(rb"^VANISHED (?:\(EARLIER\) )?([0-9:,]+)")
_STATUS_ITEM = re.compile(rb"([A-Z]+) (\d+)")
_LIST_LINE = re.compile(rb'^(?:LIST )?\(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") (.*)$')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# -- sequence sets -------------------------------------------------------------


def compress_uids(uids: Iterable[int]) -> str:
    """An IMAP sequence set for `uids`, as ranges: {1,2,3,5} → "1:3,5" ("" when empty)."""
    return UidRanges(uids).sequence_set()


class UidRanges:
    """A growing set of UIDs kept as the IMAP sequence set that names it.

    Made for cursors saved after every batch: adding UIDs above the highest
    costs only their number, and the text of every range below the highest is
    kept, so rendering stays cheap however large the folder. Adding a UID lower
    down rebuilds the ranges (correct, only slower).
    """

    def __init__(self, uids: Iterable[int] = ()) -> None:
        self._closed: list[str] = []
        self._start = self._end = 0  # the highest range; 0: none (UIDs start at 1)
        self._extend(sorted(set(uids)))

    def add(self, uids: Iterable[int]) -> None:
        """Add `uids` (any order, duplicates allowed)."""
        ordered = sorted(uids)
        if ordered and ordered[0] <= self._end:
            everything = sorted(expand_uids(self.sequence_set()).union(ordered))
            self._closed, self._start, self._end = [], 0, 0
            self._extend(everything)
        else:
            self._extend(ordered)

    def _extend(self, ordered: list[int]) -> None:
        start, end = self._start, self._end
        for uid in ordered:
            if uid == end + 1 and end:
                end = uid
            elif uid > end:
                if end:
                    self._closed.append(_range_text(start, end))
                start = end = uid
        self._start, self._end = start, end

    def sequence_set(self) -> str:
        """The UIDs as a sequence set ("1:3,5"; "" when empty)."""
        if not self._end:
            return ""
        last = _range_text(self._start, self._end)
        return ",".join([*self._closed, last]) if self._closed else last


def _range_text(start: int, end: int) -> str:
    return f"{start}:{end}" if end != start else str(start)


def expand_uids(sequence_set: str) -> set[int]:
    """The UIDs a sequence set of numbers and ranges names (no "*")."""
    uids: set[int] = set()
    for part in filter(None, sequence_set.split(",")):
        low, _, high = part.partition(":")
        a, b = int(low), int(high or low)
        uids.update(range(min(a, b), max(a, b) + 1))
    return uids


def uid_chunks(uids: Sequence[int], size: int) -> list[list[int]]:
    """Sorted UIDs cut into consecutive chunks of at most `size` (bounded FETCH ranges)."""
    ordered = sorted(uids)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


# -- mailbox names (RFC 3501 5.1.3, modified UTF-7) ---------------------------


def encode_mailbox(name: str) -> str:
    """A mailbox name in IMAP's modified UTF-7 ("Envoyés" → "Envoy&AOk-s")."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append(
                "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"
            )
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mailbox(encoded: str) -> str:
    """The Unicode name of a modified-UTF-7 mailbox name; undecodable runs stay as they are."""
    out: list[str] = []
    i = 0
    while i < len(encoded):
        char = encoded[i]
        end = encoded.find("-", i) if char == "&" else -1
        if char != "&" or end == -1:
            out.append(char)
            i += 1
            continue
        chunk = encoded[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                out.append(raw.decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                out.append(encoded[i : end + 1])
        i = end + 1
    return "".join(out)


def quote(text: str) -> str:
    """A quoted IMAP string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_mailbox(name: str) -> str:
    """A mailbox name ready for a command: modified UTF-7, quoted."""
    return quote(encode_mailbox(name))


def search_date(moment: datetime) -> str:
    """A SEARCH date ("1-Feb-2026") for the UTC day of `moment`."""
    day = moment.astimezone(UTC) if moment.tzinfo else moment
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"


# -- responses -------------------------------------------------------------------


class FetchedMessage(NamedTuple):
    """One message's FETCH data; `body` is None when it was not requested.

    A NamedTuple: one is built per message of a backfill, and it is immutable.
    """

    uid: int
    flags: tuple[str, ...] = ()
    modseq: int = 0
    size: int = 0
    internal_date: datetime | None = None
    body: bytes | None = None


@dataclass
class FolderState:
    """What SELECT/EXAMINE (and QRESYNC) said about a folder."""

    exists: int = 0
    uidvalidity: int = 0
    uidnext: int = 0
    highestmodseq: int = 0
    read_only: bool = False
    vanished: set[int] = field(default_factory=set)
    changed: list[FetchedMessage] = field(default_factory=list)


@dataclass(frozen=True)
class ListedFolder:
    """A LIST answer: the decoded name, its attributes (lower-cased) and delimiter."""

    name: str
    attributes: frozenset[str]
    delimiter: str | None

    @property
    def selectable(self) -> bool:
        """False for \\Noselect and \\NonExistent containers."""
        return not self.attributes & {"\\noselect", "\\nonexistent"}


_MONTH_NUMBERS = {name.upper(): number for number, name in enumerate(_MONTHS, start=1)}


@functools.lru_cache(maxsize=4096)
def parse_internal_date(text: str) -> datetime | None:
    """INTERNALDATE ("21-Nov-2026 14:43:28 +0000", day may be space-padded) as an
    aware datetime; None if malformed."""
    try:
        day_part, time_part, zone = text.split()
        day, month, year = day_part.split("-")
        hour, minute, second = time_part.split(":")
        sign = -1 if zone[0] == "-" else 1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * sign
        return datetime(
            int(year),
            _MONTH_NUMBERS[month.upper()],
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone(offset),
        )
    except (ValueError, KeyError, IndexError):
        return None


def fetch_item(head: bytes, body: bytes | None) -> FetchedMessage | None:
    """One FETCH item from its attribute text (`head`) and literal; None without a UID."""
    values: dict[bytes, bytes] = {}
    for name, value, inner, quoted in _ATTRIBUTE.findall(head):
        values[name] = inner if value.startswith(b"(") else quoted or value
    uid = values.get(b"UID")
    if uid is None or not uid.isdigit():
        return None
    flags = values.get(b"FLAGS")
    modseq = values.get(b"MODSEQ", b"")
    size = values.get(b"RFC822.SIZE", b"")
    date = values.get(b"INTERNALDATE")
    return FetchedMessage(
        uid=int(uid),
        flags=_flag_names(flags) if flags else (),
        modseq=int(modseq) if modseq.isdigit() else 0,
        size=int(size) if size.isdigit() else 0,
        internal_date=parse_internal_date(date.decode("ascii", "replace")) if date else None,
        body=body,
    )


_ORDINARY_ITEM = re.compile(
    rb"\* \d+ FETCH \(UID (\d+) FLAGS \(([^)]*)\) RFC822\.SIZE (\d+) "
    rb'INTERNALDATE "([^"]*)" BODY\[[A-Z]*\] \{(\d+)\}\r\n'
)
_ANY_ITEM = re.compile(rb"\* \d+ FETCH \(([^{\r\n]*)\{(\d+)\}\r\n")
_ITEM_END = b")\r\n"
WHOLE_ITEM_MAX = 256 * 1024
"""Items with a literal up to this size are taken whole once all of it arrived
(`take_whole_item`); larger ones are read line by line and literal by literal."""


def take_whole_item(data: bytes, pos: int, items: list[FetchedMessage]) -> int:
    """Take the FETCH item at `pos` of a response stream when it is one piece:
    "* n FETCH (attributes {size}", the literal, ")". Appends it to `items` (when it
    has a UID) and returns where the next response starts.

    Returns `pos` when something else is there (a line-by-line reader handles
    it: other responses, attributes after the literal, a literal over
    WHOLE_ITEM_MAX), and -1 when such an item has only partly arrived.
    The usual answer to the connector's own FETCH is matched by one expression;
    attributes in another order take the general route through `fetch_item`.
    """
    ordinary = _ORDINARY_ITEM.match(data, pos)
    match = ordinary or _ANY_ITEM.match(data, pos)
    if match is None:
        return pos
    size = int(match[match.lastindex or 0])
    body_start = match.end()
    body_end = body_start + size
    if body_end + 3 > len(data):
        return -1 if size <= WHOLE_ITEM_MAX else pos
    if data[body_end : body_end + 3] != _ITEM_END:
        return pos
    body = data[body_start:body_end]
    if ordinary is None:
        item = fetch_item(match[1], body)
        if item is not None:
            items.append(item)
        return body_end + 3
    uid, flags, rfc822_size, date, _ = ordinary.groups()
    date_text = date.decode("ascii", "replace")
    # positional: (uid, flags, modseq, size, internal_date, body)
    items.append(
        FetchedMessage(
            int(uid), _flag_names(flags), 0, int(rfc822_size), parse_internal_date(date_text), body
        )
    )
    return body_end + 3


@functools.lru_cache(maxsize=256)
def _flag_names(flags: bytes) -> tuple[str, ...]:
    return tuple(flags.decode("ascii", "replace").split())


def parse_fetch(lines: Sequence[bytes | bytearray]) -> list[FetchedMessage]:
    """Every FETCH item of a response that carries a UID, in order.

    A literal (the message body) follows the line that announces it with
    `{size}`; the attributes after it arrive on the closing line, so the head
    is that line and the closing one together. Lines that are not FETCH data
    (tagged text, EXISTS, VANISHED) are ignored.
    """
    out: list[FetchedMessage] = []
    i = 0
    count = len(lines)
    while i < count:
        line = lines[i]
        i += 1
        if isinstance(line, bytearray) or not _FETCH_START.match(line):
            continue
        head = bytes(line)
        body: bytes | None = None
        if head.endswith(b"}") and i < count and isinstance(lines[i], bytearray):
            body = bytes(lines[i])
            i += 1
            if i < count and not isinstance(lines[i], bytearray):
                tail = lines[i]
                if not _FETCH_START.match(tail):
                    head += b" " + bytes(tail)
                    i += 1
        item = fetch_item(head, body)
        if item is not None:
            out.append(item)
    return out


def parse_vanished(lines: Sequence[bytes | bytearray]) -> set[int]:
    """UIDs reported by VANISHED / VANISHED (EARLIER) lines."""
    uids: set[int] = set()
    for line in lines:
        if isinstance(line, bytearray):
            continue
        match = _VANISHED.match(line)
        if match:
            uids |= expand_uids(match.group(1).decode("ascii"))
    return uids


def parse_select(lines: Sequence[bytes | bytearray]) -> FolderState:
    """The folder state from a SELECT/EXAMINE response (QRESYNC extras included).

    Updates about the previously selected folder may precede `OK [CLOSED]`
    (RFC 7162 3.2.11); only what follows it describes the new folder.
    """
    closed = [
        i
        for i, line in enumerate(lines)
        if not isinstance(line, bytearray) and line.startswith(b"OK [CLOSED]")
    ]
    if closed:
        lines = lines[closed[-1] + 1 :]
    state = FolderState()
    for line in lines:
        if isinstance(line, bytearray):
            continue
        if line.endswith(b" EXISTS") and line[:-7].isdigit():
            state.exists = int(line[:-7])
        for code, value in _RESP_CODE.findall(line):
            if code == b"UIDVALIDITY":
                state.uidvalidity = int(value)
            elif code == b"UIDNEXT":
                state.uidnext = int(value)
            elif code == b"HIGHESTMODSEQ":
                state.highestmodseq = int(value)
            elif code == b"READ-ONLY":
                state.read_only = True
    state.vanished = parse_vanished(lines)
    state.changed = parse_fetch(lines)
    return state


def parse_search(lines: Sequence[bytes | bytearray]) -> list[int]:
    """The numbers of a SEARCH response (aioimaplib strips the "SEARCH" keyword)."""
    numbers: list[int] = []
    for line in lines[:-1]:
        if isinstance(line, bytearray):
            continue
        text = line[7:] if line.startswith(b"SEARCH") else line
        numbers.extend(int(token) for token in text.split() if token.isdigit())
    return numbers


def parse_status(lines: Sequence[bytes | bytearray]) -> dict[str, int]:
    """STATUS items ({"UIDNEXT": 5, "MESSAGES": 4, ...}) from a STATUS response."""
    for line in lines:
        if isinstance(line, bytearray) or b"(" not in line:
            continue
        inner = line[line.rindex(b"(") + 1 : line.rindex(b")") if b")" in line else None]
        return {k.decode(): int(v) for k, v in _STATUS_ITEM.findall(inner)}
    return {}


def _unquote(text: bytes) -> str:
    if text.startswith(b'"') and text.endswith(b'"'):
        text = re.sub(rb"\\(.)", rb"\1", text[1:-1])
    return text.decode("utf-8", "replace")


def parse_list(lines: Sequence[bytes | bytearray]) -> list[ListedFolder]:
    """Folders of a LIST response; names sent as literals are taken from the next item."""
    folders: list[ListedFolder] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if isinstance(line, bytearray):
            continue
        match = _LIST_LINE.match(line)
        if match is None:
            continue
        attributes, delimiter, name = match.groups()
        if _LITERAL_AT_END.fullmatch(name) and i < len(lines) and isinstance(lines[i], bytearray):
            name = bytes(lines[i])
            i += 1
        folders.append(
            ListedFolder(
                name=decode_mailbox(_unquote(name.strip())),
                attributes=frozenset(a.lower() for a in attributes.decode().split()),
                delimiter=None if delimiter == b"NIL" else _unquote(delimiter),
            )
        )
    return folders


def response_code(lines: Sequence[bytes | bytearray]) -> str | None:
    """The response code of the tagged line ("AUTHENTICATIONFAILED", "NONEXISTENT", ...)."""
    if not lines:
        return None
    last = lines[-1]
    match = _RESP_CODE.search(bytes(last))
    return match.group(1).decode("ascii") if match else None
