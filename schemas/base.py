"""The base every topic payload derives from, and shared small value types."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import msgspec


class Record(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """A payload on a topic. `schema_version` grows when a field's meaning changes.

    Unknown fields are ignored on decode, so older readers accept newer writers
    that only added fields. Payloads are trees of values, never cycles, so they stay
    out of the cyclic garbage collector (`gc=False`): a consumer that decodes
    thousands a second does not pay for the collector walking them.
    """

    schema_version: int = 1


class RecordType(StrEnum):
    """CRM record types that can own an email address."""

    USER = "user"
    QUEUE = "queue"
    CONTACT = "contact"
    ACCOUNT = "account"
    LEAD = "lead"
    OTHER = "other"


class RecordRef(msgspec.Struct, frozen=True, gc=False):
    """A pointer to a CRM record: its type and id."""

    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> RecordRef:
        """Parse `type:id`; raises ValueError when the colon or a part is missing."""
        kind, sep, ident = text.partition(":")
        if not sep or not kind or not ident:
            raise ValueError(f"expected TYPE:ID, got {text!r}")
        return cls(type=kind.strip().lower(), id=ident.strip())


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (every timestamp on a topic is)."""
    return datetime.now(UTC)
