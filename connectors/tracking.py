"""Manual tracking on the connector side: reading a message's Message-ID, the errors a
request can end in, and which mail.track offsets may be committed.

The connector that owns a mailbox reads its requests (mail.track is keyed and
partitioned like mailbox.config, and the runtime is assigned partition N of both
together), asks the mailbox's source for the message between sync passes
(`MailboxSource.find_message`), and sends what it found as created events marked
with the request (`source.tracked_event`), or one SyncError saying why not. A
request's offset is committed only after those were acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from connectors.claimcheck import header_block
from schemas.codec import encode_key
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.ids import error_id, normalize_message_id
from schemas.track import TrackRequest

TRACK_NOT_FOUND = "TrackNotFound"
"""The mailbox holds no message with the requested Message-ID (in the folders read)."""
TRACK_UNKNOWN_MAILBOX = "TrackUnknownMailbox"
"""No mailbox with the requested id is configured."""
TRACK_REFUSED = "TrackRefused"
"""The mailbox is not read: not approved, disabled, or stopped by a permanent error."""
TRACK_INVALID = "TrackInvalid"
"""The request's Message-ID is not one (empty, or not printable ASCII)."""
TRACK_MISROUTED = "TrackMisrouted"
"""The request sits on another partition than its mailbox's configuration."""

log = logging.getLogger(__name__)
_HEADERS = BytesHeaderParser(policy=compat32)


def header_message_id(raw: bytes) -> str | None:
    """The normalized Message-ID of a message (or of its header block) as the
    processors' parser reads it: the first Message-ID field, unfolded, encoded
    words decoded; None when there is none."""
    block = header_block(raw)
    if block.startswith(b"From "):  # an mbox separator line
        block = block.split(b"\n", 1)[1] if b"\n" in block else b""
    message = _HEADERS.parsebytes(block.lstrip(b"\r\n"))
    value = next((str(v) for k, v in message.raw_items() if k.lower() == "message-id"), None)
    if value is None:
        return None
    text = " ".join(value.split())
    if "=?" in text:
        with contextlib.suppress(LookupError, UnicodeError, ValueError):
            text = str(make_header(decode_header(text)))
    return normalize_message_id(text)


@dataclass(frozen=True)
class PendingTrack:
    """A request in hand: where it sits on mail.track, and the assignment it was read
    under (`epoch`; a request read before its partition was revoked is stale)."""

    request: TrackRequest
    partition: int
    offset: int
    epoch: int


@dataclass
class OffsetBook:
    """The mail.track requests in hand per partition, and how far each partition may be
    committed: up to the oldest request not finished yet (at least once: a crash
    before the commit hands the finished ones out again, with the same ids)."""

    _open: dict[int, set[int]] = field(default_factory=dict)
    _next: dict[int, int] = field(default_factory=dict)
    _committed: dict[int, int] = field(default_factory=dict)
    _epochs: dict[int, int] = field(default_factory=dict)

    def open(self, request: TrackRequest, partition: int, offset: int) -> PendingTrack:
        """Record a request read at `offset`; finish it with `close`."""
        self._open.setdefault(partition, set()).add(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)
        return PendingTrack(request, partition, offset, self._epochs.get(partition, 0))

    def passed(self, partition: int, offset: int) -> None:
        """A record that asked nothing (a tombstone, or dead-lettered): nothing to wait for."""
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def close(self, pending: PendingTrack) -> None:
        """The request's events or error were acknowledged (stale requests are ignored)."""
        if self._epochs.get(pending.partition, 0) == pending.epoch:
            self._open.get(pending.partition, set()).discard(pending.offset)

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions were revoked: their requests in hand no longer count."""
        for partition in partitions:
            self._open.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
            self._epochs[partition] = self._epochs.get(partition, 0) + 1

    def committable(self) -> dict[int, int]:
        """The offset to commit per partition whose commit point moved since `committed`."""
        moved: dict[int, int] = {}
        for partition, following in self._next.items():
            waiting = self._open.get(partition)
            point = min(waiting) if waiting else following
            if point > self._committed.get(partition, -1):
                moved[partition] = point
        return moved

    def committed(self, positions: dict[int, int]) -> None:
        """Kafka took these commits."""
        for partition, offset in positions.items():
            if partition in self._next:
                self._committed[partition] = offset


class TrackInbox:
    """The Kafka side of mail.track in one connector worker: the requests in hand
    (`book`), those waiting for their mailbox's configuration (`unrouted`), and
    what the consumer of mailbox.config and mail.track knows about both."""

    def __init__(self, consumer: AIOKafkaConsumer, config_topic: str, track_topic: str) -> None:
        self.consumer = consumer
        self.config_topic = config_topic
        self.track_topic = track_topic
        self.book = OffsetBook()
        self.unrouted: list[PendingTrack] = []
        """Requests for a mailbox whose partition of mailbox.config is not read up yet."""

    async def read_up(self, partition: int) -> bool:
        """True when the worker read its partition of mailbox.config to the end, so a
        mailbox it does not know there is not configured there."""
        tp = TopicPartition(self.config_topic, partition)
        if tp not in self.consumer.assignment():
            return False
        highwater = self.consumer.highwater(tp)
        return highwater is not None and await self.consumer.position(tp) >= highwater

    def home_partition(self, mailbox_id: str) -> int | None:
        """The partition of mailbox.config Kafka's default partitioner gives `mailbox_id`
        (the one its requests must be on), or None when the topic is not known yet."""
        partitions = self.consumer.partitions_for_topic(self.config_topic)
        if not partitions:
            return None
        ordered = sorted(partitions)
        chosen: int = DefaultPartitioner()(encode_key(mailbox_id), ordered, ordered)
        return chosen

    def forget(self, partitions: set[int]) -> None:
        """Partitions were revoked: their requests are left to the next owner."""
        self.book.forget(partitions)
        self.unrouted = [p for p in self.unrouted if p.partition not in partitions]

    async def commit(self) -> None:
        """Commit mail.track up to the oldest request not finished, per partition; a
        refused commit (a rebalance) is left to the next owner, who reads them again."""
        moved = self.book.committable()
        if not moved:
            return
        offsets = {TopicPartition(self.track_topic, p): offset for p, offset in moved.items()}
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("cannot commit %s offsets %s: %s", self.track_topic, moved, exc)
            return
        self.book.committed(moved)


def track_error(request: TrackRequest, code: str, why: str, now: datetime) -> SyncError:
    """The permanent error a request ends in, one line naming the request, keyed by its
    mailbox; the same request failing the same way has the same id."""
    asked = f" by {request.requested_by}" if request.requested_by else ""
    return SyncError(
        error_id=error_id(f"track|{request.mailbox_id}|{request.request_id}", code),
        mailbox_id=request.mailbox_id,
        scope=ErrorScope.MAILBOX if code == TRACK_UNKNOWN_MAILBOX else ErrorScope.ITEM,
        severity=Severity.PERMANENT,
        code=code,
        message=f"track request {request.request_id}{asked}: {why}",
        component="connectors",
        occurred_at=now,
    )


def not_found_error(request: TrackRequest, now: datetime) -> SyncError:
    """The mailbox holds no message with the requested Message-ID."""
    return track_error(
        request,
        TRACK_NOT_FOUND,
        f"mailbox {request.mailbox_id} holds no message with Message-ID "
        f"<{request.message_id}> in the folders tidings reads; check the id and the folder",
        now,
    )


def unknown_mailbox_error(request: TrackRequest, now: datetime) -> SyncError:
    """No such mailbox."""
    return track_error(
        request,
        TRACK_UNKNOWN_MAILBOX,
        f"no mailbox {request.mailbox_id} is configured (see `tidings mailbox list`)",
        now,
    )
