"""The conversation index (the `Thread-Index` header, Exchange's ConversationIndex).

Layout ([MS-OXOMSG] 2.2.1.3, base64 in the header): a 22-byte header block —
one reserved byte (0x01), 40 more bits of a FILETIME, big-endian, and the
conversation's GUID — then one 5-byte child block per reply or forward: a
time-difference code bit, 31 bits of time delta, 4 random bits and a 4-bit
sequence count. A reply's index is its parent's plus one child block, so the
nearest tracked ancestor of a message is found by dropping child blocks from
the end.

Pure functions; anything that does not decode to that layout is None, never
an exception.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

HEADER_BYTES = 22
CHILD_BYTES = 5
_RESERVED = 0x01
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
_MAX_CHILDREN = 64
"""Deeper threads exist only in broken or hostile headers; they are not followed."""


@dataclass(frozen=True)
class ConversationIndex:
    """A decoded conversation index: the raw bytes and what they say."""

    raw: bytes

    @property
    def key(self) -> str:
        """The index as lower-case hex: how tracked messages are looked up."""
        return self.raw.hex()

    @property
    def depth(self) -> int:
        """How many replies or forwards deep the message is (0: it started the thread)."""
        return (len(self.raw) - HEADER_BYTES) // CHILD_BYTES

    @property
    def conversation_guid(self) -> uuid.UUID:
        """The GUID every message of the conversation shares."""
        return uuid.UUID(bytes=self.raw[6:HEADER_BYTES])

    @property
    def started_at(self) -> datetime | None:
        """When the conversation started, to 6.5 ms; None when not representable.

        The first six bytes are the top 48 bits of a FILETIME: for any date
        between 1829 and 2057 its top byte is the reserved 0x01, which is how
        Outlook's headers read (the spec's "40 bits" count after that byte).
        """
        ticks = int.from_bytes(self.raw[:6], "big") << 16
        try:
            return _FILETIME_EPOCH + timedelta(microseconds=ticks // 10)
        except OverflowError:
            return None

    def ancestor_keys(self) -> list[str]:
        """Keys of the indexes this one extends, nearest first (parent, grandparent, …,
        the thread's first message)."""
        return [self.raw[:end].hex() for end in range(len(self.raw) - CHILD_BYTES, 21, -5)]

    def child(self, sequence: int = 0) -> ConversationIndex:
        """The index of a reply to this message (a new child block, zero time delta)."""
        block = ((secrets.randbits(4) << 4) | (sequence & 0x0F)).to_bytes(1, "big")
        return ConversationIndex(self.raw + bytes(4) + block)


def parse_thread_index(header: str | None) -> ConversationIndex | None:
    """The conversation index in a `Thread-Index` header, or None when it is missing or
    not a header block plus whole child blocks."""
    if not header:
        return None
    text = "".join(header.split())
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    children, rest = divmod(len(raw) - HEADER_BYTES, CHILD_BYTES)
    if len(raw) < HEADER_BYTES or rest or children > _MAX_CHILDREN or raw[0] != _RESERVED:
        return None
    return ConversationIndex(raw)


def new_conversation_index(started: datetime, guid: uuid.UUID | None = None) -> ConversationIndex:
    """The index of a message that starts a conversation at `started`."""
    ticks = (started - _FILETIME_EPOCH) // timedelta(microseconds=1) * 10
    return ConversationIndex((ticks >> 16).to_bytes(6, "big") + (guid or uuid.uuid4()).bytes)


def thread_index_header(index: ConversationIndex) -> str:
    """`index` as a `Thread-Index` header value."""
    return base64.b64encode(index.raw).decode("ascii")
