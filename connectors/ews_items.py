"""Pure decisions of the EWS connector: what a SyncFolderItems page means for the
events to emit, what the cursor remembers, and how an EWS item becomes a change
event's content. No I/O here; connectors/ews.py does the talking.

Identity: an EWS item is its ItemId (stable while the item stays in its folder; a
move is a delete here and a create there). Its version is its ChangeKey, which
Exchange changes on every modification, so an `updated` event's id is derived from
(item, ChangeKey) and a re-read change carries the same event id.

The cursor remembers every item emitted (and not since deleted) with a short hash
of the ChangeKey it was emitted at. That makes a full resync after an expired sync
state (ErrorInvalidSyncStateData) exact: an item already known at the same
ChangeKey is skipped, one known at another ChangeKey is `updated`, a new one is
`created`, and a known one the resync never reported is `deleted`.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

CATEGORY_FLAG_PREFIX = "category:"
"""Exchange categories travel in an event's flags as "category:NAME"."""
SEEN_FLAG = "\\Seen"
"""A read item carries this flag (the IMAP name, so processors treat both alike)."""


class SyncKind(StrEnum):
    """The change types of SyncFolderItems."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    READ_FLAG = "read_flag_change"


@dataclass(frozen=True)
class SyncChange:
    """One entry of a SyncFolderItems answer."""

    kind: SyncKind
    item_id: str
    change_key: str = ""


@dataclass(frozen=True)
class EwsMessage:
    """What GetItem returned for one message (the properties the connector asks for).

    `mime` is None when MimeContent was not asked for (updates) or not returned."""

    item_id: str
    change_key: str
    mime: bytes | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    references: str | None = None
    conversation_index: bytes | None = None
    categories: tuple[str, ...] = ()
    is_read: bool = False
    received: datetime | None = None
    size: int = 0


def change_key_hash(change_key: str) -> str:
    """A short, stable digest of a ChangeKey (what the cursor keeps per item)."""
    return hashlib.blake2b(change_key.encode(), digest_size=6).hexdigest()


def pack_known(known: dict[str, str]) -> bytes:
    """Item id -> ChangeKey hash, as the cursor stores it: sorted "id\\thash" lines, zlib."""
    text = "\n".join(f"{item}\t{ck}" for item, ck in sorted(known.items()))
    return zlib.compress(text.encode(), 6)


def unpack_known(packed: bytes, count: int) -> dict[str, str]:
    """The mapping `pack_known` packed (`count` entries); ValueError when corrupt."""
    if count == 0 or not packed:
        return {}
    try:
        lines = zlib.decompress(packed).decode().split("\n")
    except (zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"EWS cursor item list is corrupt: {exc}") from None
    known: dict[str, str] = {}
    for line in lines:
        item, sep, ck = line.partition("\t")
        if not sep:
            raise ValueError("EWS cursor item list is corrupt: a line without a tab")
        known[item] = ck
    return known


@dataclass
class PagePlan:
    """What to do with one page of changes, given what the cursor knew.

    `fetch_new` are read in full (MIME and properties) and become `created` events;
    `fetch_changed` are read as properties and become `updated` events (those
    already known); `deleted` become `deleted` events; `skipped` are already
    emitted at the same ChangeKey (a resync re-reporting them)."""

    fetch_new: list[SyncChange] = field(default_factory=list)
    fetch_changed: list[SyncChange] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: int = 0


def plan_page(changes: Sequence[SyncChange], known: dict[str, str]) -> PagePlan:
    """Sort a page's changes into reads and events (pure; `known` is not changed).

    An item is fetched once even when the page reports it twice; an update or read
    flag change of an item never emitted is read as new (the first event an item
    gets is always `created`); the deletion of an item never emitted is nothing."""
    plan = PagePlan()
    seen: set[str] = set()
    for change in changes:
        if change.item_id in seen:
            continue
        seen.add(change.item_id)
        previous = known.get(change.item_id)
        if change.kind == SyncKind.DELETE:
            if previous is not None:
                plan.deleted.append(change.item_id)
            continue
        if previous is None:
            plan.fetch_new.append(change)
        elif change.change_key and previous == change_key_hash(change.change_key):
            plan.skipped += 1
        else:
            plan.fetch_changed.append(change)
    return plan


def vanished(known: Iterable[str], reported: set[str]) -> list[str]:
    """Items the cursor knew that a completed full resync did not report (deleted
    while the sync state was expired), sorted."""
    return sorted(item for item in known if item not in reported)


def event_flags(message: EwsMessage) -> list[str]:
    """The flags an event carries: \\Seen when read, then each category."""
    flags = [SEEN_FLAG] if message.is_read else []
    flags.extend(f"{CATEGORY_FLAG_PREFIX}{name}" for name in sorted(set(message.categories)))
    return flags


def _header_names(raw: bytes) -> set[str]:
    end = raw.find(b"\r\n\r\n")
    if end == -1:
        end = raw.find(b"\n\n")
    block = raw if end == -1 else raw[:end]
    names = set()
    for line in block.splitlines():
        if line and line[:1] not in (b" ", b"\t"):
            name, sep, _ = line.partition(b":")
            if sep:
                names.add(name.strip().decode("latin-1").lower())
    return names


def complete_mime(message: EwsMessage) -> bytes:
    """The message's MIME with the EWS properties its headers lack added on top
    (Message-ID, In-Reply-To, References, Thread-Index from ConversationIndex), so
    the processors correlate it as Exchange does; MIME that has them is unchanged."""
    raw = message.mime or b""
    present = _header_names(raw)
    newline = b"\r\n" if b"\r\n" in raw[:2048] or not raw else b"\n"
    extra: list[bytes] = []
    wanted = [
        ("message-id", "Message-ID", message.message_id),
        ("in-reply-to", "In-Reply-To", message.in_reply_to),
        ("references", "References", message.references),
    ]
    if message.conversation_index:
        index = base64.b64encode(message.conversation_index).decode()
        wanted.append(("thread-index", "Thread-Index", index))
    for key, name, value in wanted:
        if value and key not in present and _safe_header(value):
            extra.append(f"{name}: {value}".encode() + newline)
    return b"".join(extra) + raw


def _safe_header(value: str) -> bool:
    return "\r" not in value and "\n" not in value and value.isascii()
