"""EngineState on faust tables: tracked messages and their copies, held conversations
and their items, changelogged, stored in RocksDB (faust's rocksdb store with the
rocksdict driver).

Reads and writes made while an event is processed go straight to the RocksDB
database of the event's partition (faust's store keeps one per partition; it is
the thread's partition), under the key bytes faust's JSON key serializer gives
(`store_key`): faust's item access would serialize the key again per call, take
a lock to remember which partition held it, and read a found key twice (a
contains, then a get). Reads outside of an event (the expiry timer) go through
faust's store, which looks in every partition.

A write goes to the store at once and queues its changelog record on the same
partition; the agent publishes the queue (`take_changelog`) with the rest of its
batch's output (processors/outbox.py), and a delivered batch moves the table's
persisted offset (`persisted`), which is what faust's own changelog sends do one
record at a time. Held conversations and items carry their partition, so the
expiry timer can delete them outside of any event on the right partition; it
only ever deletes (outside of an event there is no partition to write to).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from faust.serializers import codecs
from faust.streams import _current_event, current_event
from faust.types import TP

from processors.outbox import Delivered, Record
from schemas.state import (
    HELD_CODEC,
    HELD_ITEM_CODEC,
    TRACKED_CODEC,
    TRACKED_ITEM_CODEC,
    HeldItem,
    HeldThread,
    TrackedItem,
    TrackedMessage,
    member_key,
)


class TableState:
    """Decoded view of the tracked-message, tracked-item, held-thread and held-item
    faust tables (values are schema bytes)."""

    def __init__(self, tracked: Any, tracked_items: Any, held: Any, held_items: Any) -> None:
        self._tracked = tracked
        self._tracked_items = tracked_items
        self._held = held
        self._held_items = held_items
        self._expiry: dict[str, tuple[datetime, int, int]] = {}
        self._changelog: list[Record] = []
        self._tracked_changelog = tracked.changelog_topic.get_topic_name()
        self._tracked_items_changelog = tracked_items.changelog_topic.get_topic_name()
        self._held_changelog = held.changelog_topic.get_topic_name()
        self._held_items_changelog = held_items.changelog_topic.get_topic_name()

    def get_tracked(self, key: str) -> TrackedMessage | None:
        raw = _read(self._tracked, key)
        return TRACKED_CODEC.decode(raw) if raw else None

    def put_tracked(self, key: str, value: TrackedMessage) -> None:
        """Store `value` on the partition of the event being processed."""
        raw = TRACKED_CODEC.encode(value)
        self._write(self._tracked, self._tracked_changelog, _event_partition(), key, raw)

    def get_tracked_item(self, key: str, item_key: str) -> TrackedItem | None:
        raw = _read(self._tracked_items, member_key(key, item_key))
        return TRACKED_ITEM_CODEC.decode(raw) if raw else None

    def put_tracked_item(self, key: str, item_key: str, value: TrackedItem) -> None:
        """Store `value` on the partition of the event being processed."""
        raw = TRACKED_ITEM_CODEC.encode(value)
        stored = member_key(key, item_key)
        topic = self._tracked_items_changelog
        self._write(self._tracked_items, topic, _event_partition(), stored, raw)

    def get_held(self, thread_key: str) -> HeldThread | None:
        raw = _read(self._held, thread_key)
        return HELD_CODEC.decode(raw) if raw else None

    def put_held(self, thread_key: str, value: HeldThread | None) -> None:
        if value is None:
            old = _read(self._held, thread_key)
            if old:
                partition = HELD_CODEC.decode(old).partition
                self._write(self._held, self._held_changelog, partition, thread_key, None)
            self._expiry.pop(thread_key, None)
            return
        if _event_partition() != value.partition:
            raise RuntimeError(
                "a held thread is written while an event of its partition is processed"
            )
        raw = HELD_CODEC.encode(value)
        self._write(self._held, self._held_changelog, value.partition, thread_key, raw)
        self._index(thread_key, value)

    def get_held_item(self, thread_key: str, item_key: str) -> HeldItem | None:
        raw = _read(self._held_items, member_key(thread_key, item_key))
        return HELD_ITEM_CODEC.decode(raw) if raw else None

    def put_held_item(
        self, thread_key: str, item_key: str, partition: int, value: HeldItem | None
    ) -> None:
        """Store (None: delete) a held item on its thread's partition; a delete may come
        outside of any event (the expiry timer)."""
        raw = HELD_ITEM_CODEC.encode(value) if value is not None else None
        key = member_key(thread_key, item_key)
        self._write(self._held_items, self._held_items_changelog, partition, key, raw)

    def take_changelog(self) -> list[Record]:
        """The changelog records of the writes since the last call, in order."""
        records, self._changelog = self._changelog, []
        return records

    def persisted(self) -> dict[str, Delivered]:
        """For each changelog topic: record that a partition's changelog is delivered up
        to an offset (so recovery reads on from there)."""
        return {
            self._tracked_changelog: _persisting(self._tracked, self._tracked_changelog),
            self._tracked_items_changelog: _persisting(
                self._tracked_items, self._tracked_items_changelog
            ),
            self._held_changelog: _persisting(self._held, self._held_changelog),
            self._held_items_changelog: _persisting(self._held_items, self._held_items_changelog),
        }

    def due_threads(self, now: datetime, partitions: Iterable[int]) -> list[str]:
        """Held conversations on `partitions` whose every item is past its expiry."""
        self._index_recovered()
        wanted = set(partitions)
        return [
            key
            for key, (expires, partition, _) in self._expiry.items()
            if partition in wanted and expires <= now
        ]

    def held_item_count(self) -> int:
        """Items held on this worker."""
        return sum(count for _, _, count in self._expiry.values())

    def _write(self, table: Any, topic: str, partition: int, key: str, raw: bytes | None) -> None:
        """Put (raw None: delete) `key` in the partition's store and queue its changelog
        record."""
        stored = store_key(key)
        db = table.data._db_for_partition(partition)
        if raw is None:
            db.delete(stored)
        else:
            db.put(stored, raw)
        self._changelog.append(Record(topic, stored, raw, partition))

    def _index(self, thread_key: str, value: HeldThread) -> None:
        expires = value.latest_expiry()
        if expires is None:
            self._expiry.pop(thread_key, None)
        else:
            self._expiry[thread_key] = (expires, value.partition, len(value.items))

    def _index_recovered(self) -> None:
        """Index conversations restored from the changelog (written by an earlier run)."""
        for key in list(self._held.data.keys()):
            if key not in self._expiry:
                raw = self._held.data.get(key)
                if raw:
                    self._index(key, HELD_CODEC.decode(raw))


def store_key(key: str) -> bytes:
    """The bytes faust's JSON key serializer makes of `key` (what the tables' stores
    and changelogs hold), without its per-call cost for plain printable ASCII."""
    if key.isascii() and key.isprintable() and '"' not in key and "\\" not in key:
        return b'"' + key.encode() + b'"'
    return codecs.dumps("json", key)


def _read(table: Any, key: str) -> bytes | None:
    """The stored value of `key`: in the current event's partition, or, outside of an
    event, wherever faust's store finds it."""
    event = current_event()
    if event is None:
        raw: bytes | None = table.data.get(key)
        return raw
    value: bytes | None = table.data._db_for_partition(event.message.partition).get(store_key(key))
    return value


def _event_partition() -> int:
    """The partition of the event being processed (where state is written)."""
    event = current_event()
    if event is None:
        raise RuntimeError("state is written while an event is processed")
    partition: int = event.message.partition
    return partition


def _persisting(table: Any, topic: str) -> Delivered:
    def persisted(partition: int, offset: int) -> None:
        table.data.set_persisted_offset(TP(topic, partition), offset)

    return persisted


@contextmanager
def processing(event: Any) -> Iterator[None]:
    """Make `event` faust's current event (what `faust.current_event()` returns, in
    this task only) while the block runs: faust's stores and tables put a write
    on the current event's partition. A batch of events taken from a stream
    (`Stream.take_events`) has no current event of its own; the stream's
    `_set_current_event` is no help, as it also sets the attribute the stream's
    buffering task reads."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
