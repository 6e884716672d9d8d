"""EngineState in an IndexStore: tracked messages and held conversations in RocksDB
without faust (benchmarks and tools that decide outside a worker).

It keeps what the faust tables keep, the same way (schema bytes per key), so a
benchmark on it measures the cost and the memory of the production store.
"""

from __future__ import annotations

from processors.index_store import IndexStore, make_key
from schemas.state import (
    HELD_CODEC,
    HELD_ITEM_CODEC,
    TRACKED_CODEC,
    TRACKED_ITEM_CODEC,
    HeldItem,
    HeldThread,
    TrackedItem,
    TrackedMessage,
)


class DiskState:
    """EngineState on `store` (keys ("tracked", key), ("tracked-item", key, item key),
    ("held", thread key) and ("held-item", thread key, item key))."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store

    def get_tracked(self, key: str) -> TrackedMessage | None:
        raw = self.store.get(make_key("tracked", key))
        return TRACKED_CODEC.decode(raw) if raw else None

    def put_tracked(self, key: str, value: TrackedMessage) -> None:
        self._put(make_key("tracked", key), TRACKED_CODEC.encode(value))

    def get_tracked_item(self, key: str, item_key: str) -> TrackedItem | None:
        raw = self.store.get(make_key("tracked-item", key, item_key))
        return TRACKED_ITEM_CODEC.decode(raw) if raw else None

    def put_tracked_item(self, key: str, item_key: str, value: TrackedItem) -> None:
        self._put(make_key("tracked-item", key, item_key), TRACKED_ITEM_CODEC.encode(value))

    def get_held(self, thread_key: str) -> HeldThread | None:
        raw = self.store.get(make_key("held", thread_key))
        return HELD_CODEC.decode(raw) if raw else None

    def put_held(self, thread_key: str, value: HeldThread | None) -> None:
        raw = HELD_CODEC.encode(value) if value is not None else None
        self._put(make_key("held", thread_key), raw)

    def get_held_item(self, thread_key: str, item_key: str) -> HeldItem | None:
        raw = self.store.get(make_key("held-item", thread_key, item_key))
        return HELD_ITEM_CODEC.decode(raw) if raw else None

    def put_held_item(
        self, thread_key: str, item_key: str, partition: int, value: HeldItem | None
    ) -> None:
        raw = HELD_ITEM_CODEC.encode(value) if value is not None else None
        self._put(make_key("held-item", thread_key, item_key), raw)

    def _put(self, store_key: bytes, raw: bytes | None) -> None:
        """Write (raw None: delete) one key."""
        if raw is None:
            self.store.write({}, [store_key])
        else:
            self.store.write({store_key: raw}, [])
