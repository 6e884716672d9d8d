"""EngineState on faust tables: tracked messages and held conversations, changelogged,
stored in RocksDB (faust's rocksdb store with the rocksdict driver).

Tracked messages are written inside agent processing, so faust puts each
change in the store and on the changelog partition of the event being
processed (the thread's partition). Held conversations carry their partition,
so the expiry timer can delete them outside of any event on the right
changelog partition; it only ever deletes (the store has no partition for a
write made outside of an event)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from schemas.state import HELD_CODEC, TRACKED_CODEC, HeldThread, TrackedMessage


class TableState:
    """Decoded view of the `tracked` and `held` faust tables (values are schema bytes)."""

    def __init__(self, tracked: Any, held: Any) -> None:
        self._tracked = tracked
        self._held = held
        self._expiry: dict[str, tuple[datetime, int, int]] = {}

    def get_tracked(self, key: str) -> TrackedMessage | None:
        raw = self._tracked.get(key)
        return TRACKED_CODEC.decode(raw) if raw else None

    def put_tracked(self, key: str, value: TrackedMessage) -> None:
        self._tracked[key] = TRACKED_CODEC.encode(value)

    def get_held(self, thread_key: str) -> HeldThread | None:
        raw = self._held.get(thread_key)
        return HELD_CODEC.decode(raw) if raw else None

    def put_held(self, thread_key: str, value: HeldThread | None) -> None:
        if value is None:
            old = self._held.data.pop(thread_key, None)
            if old:
                partition = HELD_CODEC.decode(old).partition
                self._held.send_changelog(partition, thread_key, None, value_serializer="raw")
            self._expiry.pop(thread_key, None)
            return
        raw = HELD_CODEC.encode(value)
        self._held.data[thread_key] = raw
        self._held.send_changelog(value.partition, thread_key, raw)
        self._index(thread_key, value)

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
