"""Processor state kept in faust tables (changelog topics).

Like every topic payload these are versioned Structs, encoded only here.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.base import Record, RecordRef
from schemas.codec import Codec
from schemas.crm import CorrelationMethod, Direction, PromotionDecision
from schemas.mail import ParsedEmail


class TrackedItem(Record, frozen=True, kw_only=True):
    """One mailbox item (a copy) linked to a tracked message, and the last decision it
    got. A message's only copy is kept in its TrackedMessage (`items`); once it
    has two, each is kept by (tracking key, item key), apart from the message,
    so a message in N mailboxes is not rewritten with every copy's decision on
    every copy (N² bytes)."""

    item_key: str
    mailbox_id: str
    decision: PromotionDecision


class QueueCopy(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A promoted copy of a tracked message in a queue's mailbox: what picks the
    accepting queue (the first by: passed its own mailbox's rules before a
    Duplicate, then earliest decided, then mailbox id)."""

    item_key: str
    mailbox_id: str
    duplicate: bool
    decided_at: datetime


class TrackedMessage(Record, frozen=True, kw_only=True):
    """A message that is a CRM activity, and what later email inherits from it.

    Keyed by the tracking key (normalized Message-ID, plus a direction
    qualifier when internal email is tracked twice). Holds no body: duplicates
    carry their own copy of the content.
    """

    message_id: str
    activity_id: str
    version: int
    created_at: datetime
    direction: Direction
    owner: RecordRef | None = None
    regarding: RecordRef | None = None
    parent_activity_id: str | None = None
    conversation_id: str
    correlation_method: CorrelationMethod = CorrelationMethod.NONE
    correlated_to: str | None = None
    correlation_rank: int = 1_000_000
    tracking_token: str | None = None
    mailboxes: list[str] = msgspec.field(default_factory=list)
    queue_copies: list[QueueCopy] = msgspec.field(default_factory=list)
    items: list[TrackedItem] = msgspec.field(default_factory=list)
    """The message's copies when kept inline: its only copy (one record for a
    message in one mailbox, the usual case), or every copy as builds before
    TrackedItem records kept them. A second copy moves them out to their own
    records, where every later copy goes; the list is then empty."""


class HeldItem(Record, frozen=True, kw_only=True):
    """An item whose decision may still improve, as it was last decided: kept by
    (thread key, item key) while its thread lists it (HeldEntry), written when it
    is first held or decided differently, never when its thread changes."""

    email: ParsedEmail
    decision: PromotionDecision


class HeldEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An item held in a conversation: it referenced messages not yet tracked (or
    whose tracking may still change), or it was skipped and a copy elsewhere may
    still be tracked.

    Re-decided when one of `waiting_on` becomes tracked or changes; dropped after
    `held_until`. Its email and last decision are its HeldItem.
    """

    item_key: str
    waiting_on: list[str]
    held_until: datetime


class HeldThread(Record, frozen=True, kw_only=True):
    """The held items of one conversation (keyed by thread key) on one partition.

    Lists the items only: a conversation with many held copies is rewritten at
    the size of a few ids per item, not of every held email."""

    partition: int
    items: list[HeldEntry] = msgspec.field(default_factory=list)

    def latest_expiry(self) -> datetime | None:
        """When the last of the held items expires, or None when none are held."""
        return max((item.held_until for item in self.items), default=None)


def member_key(group: str, item_key: str) -> str:
    """The key of an item kept apart from its group (a held item of a thread, a copy
    of a tracked message): the group's key, length-prefixed so no two pairs
    meet, and the item key."""
    return f"{len(group)}:{group}|{item_key}"


TRACKED_CODEC: Codec[TrackedMessage] = Codec(TrackedMessage)
HELD_CODEC: Codec[HeldThread] = Codec(HeldThread)
HELD_ITEM_CODEC: Codec[HeldItem] = Codec(HeldItem)
TRACKED_ITEM_CODEC: Codec[TrackedItem] = Codec(TrackedItem)
