"""Microsoft Graph messages as change events: pure decoding and decisions, no I/O.

A delta round lists, per folder, items that are new or changed (with the
properties `DELTA_SELECT` names) and items that left the folder (`@removed`).
What the connector already emitted is the folder's `Known` map (item id to a
short hash of its changeKey), so a listed item is `created` when unknown,
`updated` when its changeKey moved, and nothing when it is the same again (a
full re-enumeration after an expired delta link lists everything again: no
duplicate events). A removed item is `deleted` only when it was known.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from connectors.cursors import pack_names, unpack_names

DELTA_SELECT = (
    "id,changeKey,internetMessageId,conversationId,conversationIndex,receivedDateTime,"
    "isRead,flag,categories,parentFolderId"
)
"""The properties a delta round asks for: identity, version, threading and flags
(the message itself comes as MIME from `$value`)."""

BATCH_LIMIT = 20
"""Requests Graph accepts in one JSON batch."""


class Removed(msgspec.Struct, frozen=True):
    """`@removed` of a delta item: "deleted" or "changed" (moved out, soft-deleted)."""

    reason: str = "deleted"


class FollowupFlag(msgspec.Struct, frozen=True, rename="camel"):
    """A message's follow-up flag."""

    flag_status: str = "notFlagged"


class DeltaItem(msgspec.Struct, frozen=True, rename="camel"):
    """One entry of a messages delta page (only what `DELTA_SELECT` asks for)."""

    id: str
    change_key: str | None = None
    internet_message_id: str | None = None
    conversation_id: str | None = None
    conversation_index: str | None = None
    received_date_time: datetime | None = None
    is_read: bool | None = None
    flag: FollowupFlag | None = None
    categories: list[str] | None = None
    removed: Removed | None = msgspec.field(default=None, name="@removed")


class DeltaPage(msgspec.Struct, frozen=True):
    """A page of a delta round: its items and either the next page or the delta link."""

    value: list[DeltaItem] = msgspec.field(default_factory=list)
    next_link: str | None = msgspec.field(default=None, name="@odata.nextLink")
    delta_link: str | None = msgspec.field(default=None, name="@odata.deltaLink")


class GraphErrorBody(msgspec.Struct, frozen=True):
    """The `error` object of a Graph error answer."""

    code: str = ""
    message: str = ""


class GraphError(msgspec.Struct, frozen=True):
    """A Graph error answer: {"error": {"code": ..., "message": ...}}."""

    error: GraphErrorBody = msgspec.field(default_factory=GraphErrorBody)


class BatchAnswer(msgspec.Struct, frozen=True):
    """One response of a JSON batch; `body` is JSON, or base64 text for a non-JSON
    body such as the MIME of `$value`."""

    id: str
    status: int
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: object = None


class BatchReply(msgspec.Struct, frozen=True):
    """The answer to POST /$batch."""

    responses: list[BatchAnswer] = msgspec.field(default_factory=list)


class HeaderPair(msgspec.Struct, frozen=True):
    """One of a message's `internetMessageHeaders`."""

    name: str
    value: str


class MessageHeaders(msgspec.Struct, frozen=True, rename="camel"):
    """A message with `$select=internetMessageHeaders,internetMessageId`."""

    id: str = ""
    internet_message_id: str | None = None
    internet_message_headers: list[HeaderPair] = msgspec.field(default_factory=list)


DELTA_PAGE = msgspec.json.Decoder(DeltaPage)
BATCH_REPLY = msgspec.json.Decoder(BatchReply)
GRAPH_ERROR = msgspec.json.Decoder(GraphError)
MESSAGE_HEADERS = msgspec.json.Decoder(MessageHeaders)


def change_hash(change_key: str | None) -> str:
    """A short, stable stand-in for a changeKey (kept per item in the cursor)."""
    if not change_key:
        return "-"
    return hashlib.blake2s(change_key.encode(), digest_size=5).hexdigest()


Known = dict[str, str]
"""Item id → change_hash of the changeKey last emitted."""


def pack_known(known: Known) -> bytes:
    """The known map as a cursor stores it (see GraphFolderPosition.known_z)."""
    return pack_names({f"{item}\t{ck}" for item, ck in known.items()})


def unpack_known(packed: bytes, count: int) -> Known:
    """The known map `pack_known` packed (`count` entries)."""
    known: Known = {}
    for line in unpack_names(packed, count):
        item, _, ck = line.partition("\t")
        known[item] = ck
    return known


@dataclass
class Plan:
    """What a run of delta items means against what is known."""

    created: list[DeltaItem] = field(default_factory=list)
    updated: list[DeltaItem] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def latest(items: Iterable[DeltaItem]) -> list[DeltaItem]:
    """Items in first-seen order, each as its last entry says (a round may list an
    item more than once)."""
    last: dict[str, DeltaItem] = {}
    for item in items:
        last[item.id] = item
    return list(last.values())


def classify(items: Sequence[DeltaItem], known: Known) -> Plan:
    """Created, updated and deleted among `items`, compared with `known`.

    Does not change `known`; the caller records what it emitted."""
    plan = Plan()
    for item in latest(items):
        before = known.get(item.id)
        if item.removed is not None:
            if before is not None:
                plan.deleted.append(item.id)
        elif before is None:
            plan.created.append(item)
        elif before != change_hash(item.change_key):
            plan.updated.append(item)
    return plan


def swept(known_at_start: Iterable[str], seen: set[str]) -> list[str]:
    """Ids a full re-enumeration did not list again: they are gone."""
    return sorted(item for item in known_at_start if item not in seen)


def flags(item: DeltaItem) -> list[str]:
    """IMAP-style flags of a message: \\Seen when read, \\Flagged when flagged, and
    each category by name (e.g. "Tracked to CRM")."""
    found: list[str] = []
    if item.is_read:
        found.append("\\Seen")
    if item.flag is not None and item.flag.flag_status == "flagged":
        found.append("\\Flagged")
    found.extend(sorted(item.categories or ()))
    return found


def header_block(pairs: Sequence[HeaderPair]) -> bytes:
    """`internetMessageHeaders` as a raw RFC 5322 header block (blank line included)."""
    lines = [f"{pair.name}: {pair.value}" for pair in pairs if pair.name]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")


def batch_body_bytes(body: object) -> bytes | None:
    """The bytes of a non-JSON batch response body (base64 text); None when the
    body is not base64 text."""
    if not isinstance(body, str):
        return None
    try:
        return base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError):
        return None


def retry_after_s(value: str | None, default: float, ceiling: float) -> float:
    """Seconds a Retry-After header asks for (delta seconds), within [0, ceiling];
    `default` when it is missing or not a number."""
    if value is None:
        return min(default, ceiling)
    try:
        seconds = float(value.strip())
    except ValueError:
        return min(default, ceiling)
    return max(0.0, min(seconds, ceiling))


def message_path(user: str, item_id: str, suffix: str = "") -> str:
    """The API path of a message of `user` (ids are URL-safe as Graph issues them)."""
    return f"/users/{user}/messages/{item_id}{suffix}"


def batch_requests(paths: Sequence[str]) -> list[dict[str, str]]:
    """A JSON batch's `requests` for GETs of `paths`, ids "0".. in order."""
    return [{"id": str(n), "method": "GET", "url": path} for n, path in enumerate(paths)]
