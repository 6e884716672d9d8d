"""EngineState on faust tables: tracked messages and their copies, held conversations
and their items, changelogged, stored in RocksDB (faust's rocksdb store with the
rocksdict driver).

Reads and writes made while an event is processed go to the RocksDB database of
the event's partition (faust's store keeps one per partition; it is the
thread's partition; writes through the pending overlay below), under the key
bytes faust's JSON key serializer gives
(`store_key`): faust's item access would serialize the key again per call, take
a lock to remember which partition held it, and read a found key twice (a
contains, then a get). Reads outside of an event (the expiry timer) go through
faust's store, which looks in every partition (after the pending writes).

A write is kept in a pending overlay (reads see it at once) and queues its
changelog record on the same partition. When the agent takes the changelog to
publish it with the rest of its batch's output (`take_changelog`,
processors/outbox.py), the pending writes go to the stores first, one RocksDB
write batch per table and partition: with the write-ahead log, a single put costs
one write(2) of the log (4.5 µs against 1.0 in a batch). A delivered batch then
moves the table's persisted offset (`persisted`), which is what faust's own
changelog sends do one record at a time; the offset waits with the pending
writes and goes into the next write batch. So a table's data is always stored
before the changelog that covers it is published, and its persisted offset
trails both, never ahead. A crash before the batch is stored leaves none of its
writes, and its input, not committed either, is decided again from the state
before it.

Held conversations and items carry their partition, so the expiry timer can
delete them outside of any event on the right partition; it only ever deletes
(outside of an event there is no partition to write to).

The tables' stores keep RocksDB's write-ahead log (`TableStore`, the
`tidings-rocksdb://` store, adds a bloom filter on the memory table). Without
the log, each table's database kept a different prefix of its writes after a
crash (a database flushes its memory table when it fills, on its own), so the
re-read input met one table ahead of another and was decided again as a
duplicate of itself (the fault suite's `kill -9` step, docs/performance.md).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import rocksdict
from faust.serializers import codecs
from faust.stores import rocksdb
from faust.streams import _current_event, current_event

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

_OFFSET_KEY: bytes = rocksdb.Store.offset_key  # where faust keeps a partition's persisted offset
MEMTABLE_BLOOM_RATIO = 0.1  # of the write buffer, RocksDB's usual choice


class _TableOptions(rocksdb.RocksDBOptions):
    """faust's RocksDB options, with a bloom filter on the memory table too: most
    reads of the tables ask for keys that are not there (a Message-ID in each of
    its qualified forms, a message not tracked yet), and without it each such read
    walks the memory table's skip list (its seeks were 4% of the processor's CPU
    in a perf profile; a miss costs 0.37 µs with the filter, 1.2 without)."""

    def as_options(self) -> Any:
        options = super().as_options()
        options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO)
        options.set_memtable_whole_key_filtering(True)
        return options


class TableStore(rocksdb.Store):
    """faust's RocksDB table store with a bloom filter on each partition database's
    memory table (`_TableOptions`). Registered as the `tidings-rocksdb` store
    (entry point `faust.stores`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = dict(self.options or {})
        self.rocksdb_options = _TableOptions(**options, use_rocksdict=self.use_rocksdict)


_TRACKED, _TRACKED_ITEMS, _HELD, _HELD_ITEMS = range(4)  # TableState's tables, in order
_Writes = dict[bytes, bytes | None]  # pending writes: store key → value bytes, None: delete


class TableState:
    """Decoded view of the tracked-message, tracked-item, held-thread and held-item
    faust tables (values are schema bytes)."""

    def __init__(self, tracked: Any, tracked_items: Any, held: Any, held_items: Any) -> None:
        self._tables = (tracked, tracked_items, held, held_items)
        self._changelogs = tuple(t.changelog_topic.get_topic_name() for t in self._tables)
        self._expiry: dict[str, tuple[datetime, int, int]] = {}
        self._changelog: list[Record] = []
        # Writes not stored yet, per (table number, partition).
        self._pending: dict[tuple[int, int], _Writes] = {}
        # The event whose partition's databases `_dbs` and pending writes `_overlay`
        # are held (one per table, in `_tables` order); looked up once per event.
        self._event: Any = None
        self._partition = -1
        self._dbs: tuple[Any, ...] = ()
        self._overlay: tuple[_Writes, ...] = ()
        # `_dbs` and `_overlay` of each partition an event of this batch came from (a
        # rebalance may close databases between batches, never within one).
        self._partitions: dict[int, tuple[tuple[Any, ...], tuple[_Writes, ...]]] = {}

    def get_tracked(self, key: str) -> TrackedMessage | None:
        raw = self._read(_TRACKED, key)
        return TRACKED_CODEC.decode(raw) if raw else None

    def put_tracked(self, key: str, value: TrackedMessage) -> None:
        """Store `value` on the partition of the event being processed."""
        self._write(_TRACKED, self._event_partition(), key, TRACKED_CODEC.encode(value))

    def get_tracked_item(self, key: str, item_key: str) -> TrackedItem | None:
        raw = self._read(_TRACKED_ITEMS, member_key(key, item_key))
        return TRACKED_ITEM_CODEC.decode(raw) if raw else None

    def put_tracked_item(self, key: str, item_key: str, value: TrackedItem) -> None:
        """Store `value` on the partition of the event being processed."""
        raw = TRACKED_ITEM_CODEC.encode(value)
        self._write(_TRACKED_ITEMS, self._event_partition(), member_key(key, item_key), raw)

    def get_held(self, thread_key: str) -> HeldThread | None:
        raw = self._read(_HELD, thread_key)
        return HELD_CODEC.decode(raw) if raw else None

    def put_held(self, thread_key: str, value: HeldThread | None) -> None:
        if value is None:
            old = self._read(_HELD, thread_key)
            if old:
                self._write(_HELD, HELD_CODEC.decode(old).partition, thread_key, None)
            self._expiry.pop(thread_key, None)
            return
        if self._event_partition() != value.partition:
            raise RuntimeError(
                "a held thread is written while an event of its partition is processed"
            )
        self._write(_HELD, value.partition, thread_key, HELD_CODEC.encode(value))
        self._index(thread_key, value)

    def get_held_item(self, thread_key: str, item_key: str) -> HeldItem | None:
        raw = self._read(_HELD_ITEMS, member_key(thread_key, item_key))
        return HELD_ITEM_CODEC.decode(raw) if raw else None

    def put_held_item(
        self, thread_key: str, item_key: str, partition: int, value: HeldItem | None
    ) -> None:
        """Store (None: delete) a held item on its thread's partition; a delete may come
        outside of any event (the expiry timer)."""
        raw = HELD_ITEM_CODEC.encode(value) if value is not None else None
        self._write(_HELD_ITEMS, partition, member_key(thread_key, item_key), raw)

    def take_changelog(self) -> list[Record]:
        """Store the pending writes, then return the changelog records of the writes
        since the last call, in order (to be published after this call)."""
        self._store_pending()
        self._partitions.clear()
        records, self._changelog = self._changelog, []
        return records

    def persisted(self) -> dict[str, Delivered]:
        """For each changelog topic: record that a partition's changelog is delivered up
        to an offset, so recovery reads on from there. The offset waits with the
        pending writes and is stored in the next write batch of its table and
        partition (faust's own `set_persisted_offset` is a logged put of its own):
        it may be behind the changelog for a while, never ahead of the data."""
        return {
            topic: functools.partial(self._delivered, table)
            for table, topic in enumerate(self._changelogs)
        }

    def _delivered(self, table: int, partition: int, offset: int) -> None:
        self._writes(table, partition)[_OFFSET_KEY] = str(offset).encode()

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

    def _read(self, table: int, key: str) -> bytes | None:
        """The value of `key` in table number `table`, pending writes first: in the
        current event's partition, or, outside of an event, wherever it is."""
        stored = store_key(key)
        dbs = self._bound()
        if dbs is None:
            return self._read_anywhere(table, key, stored)
        overlay = self._overlay[table]
        if stored in overlay:
            return overlay[stored]
        value: bytes | None = dbs[table].get(stored)
        return value

    def _read_anywhere(self, table: int, key: str, stored: bytes) -> bytes | None:
        """`_read` outside of an event: a pending write on any partition, else what
        faust's store finds in any of them."""
        for (number, _), pending in self._pending.items():
            if number == table and stored in pending:
                return pending[stored]
        raw: bytes | None = self._tables[table].data.get(key)
        return raw

    def _write(self, table: int, partition: int, key: str, raw: bytes | None) -> None:
        """Put (raw None: delete) `key` in table number `table` on `partition`: pending
        until `take_changelog`; queue its changelog record."""
        stored = store_key(key)
        if self._bound() is not None and partition == self._partition:
            pending = self._overlay[table]
        else:
            pending = self._writes(table, partition)
        pending[stored] = raw
        self._changelog.append(Record(self._changelogs[table], stored, raw, partition))

    def _writes(self, table: int, partition: int) -> _Writes:
        """The pending writes of table number `table` on `partition` (cleared in place
        when stored, never replaced: `_overlay` keeps them)."""
        return self._pending.setdefault((table, partition), {})

    def _store_pending(self) -> None:
        """Write the pending writes to the stores: one write batch per table and
        partition (atomic in its database), then forget them."""
        for (table, partition), pending in self._pending.items():
            store = self._tables[table].data
            if partition not in store._dbs:
                # Not open: the partition was revoked since its changelog was
                # delivered, and its data stored before. Its offset stays behind.
                pending.pop(_OFFSET_KEY, None)
            if not pending:
                continue
            batch = rocksdict.WriteBatch(raw_mode=True)
            for stored, raw in pending.items():
                if raw is None:
                    batch.delete(stored)
                else:
                    batch.put(stored, raw)
            store._db_for_partition(partition).write(batch)
            pending.clear()

    def _bound(self) -> tuple[Any, ...] | None:
        """The databases of the current event's partition (None outside of an event),
        and its pending writes in `_overlay`; kept per partition for the batch. Within
        a batch nothing can close the databases: a rebalance waits for its events."""
        event = current_event()
        if event is None:
            return None
        if event is not self._event:
            partition: int = event.message.partition
            bound = self._partitions.get(partition)
            if bound is None:
                bound = self._partitions[partition] = (
                    tuple(table.data._db_for_partition(partition) for table in self._tables),
                    tuple(self._writes(table, partition) for table in range(len(self._tables))),
                )
            self._dbs, self._overlay = bound
            self._event, self._partition = event, partition
        return self._dbs

    def _event_partition(self) -> int:
        """The partition of the event being processed (where state is written)."""
        if self._bound() is None:
            raise RuntimeError("state is written while an event is processed")
        return self._partition

    def _index(self, thread_key: str, value: HeldThread) -> None:
        expires = value.latest_expiry()
        if expires is None:
            self._expiry.pop(thread_key, None)
        else:
            self._expiry[thread_key] = (expires, value.partition, len(value.items))

    def _index_recovered(self) -> None:
        """Index conversations restored from the changelog (written by an earlier run)."""
        store = self._tables[_HELD].data
        for key in list(store.keys()):
            if key not in self._expiry:
                raw = store.get(key)
                if raw:
                    self._index(key, HELD_CODEC.decode(raw))


def store_key(key: str) -> bytes:
    """The bytes faust's JSON key serializer makes of `key` (what the tables' stores
    and changelogs hold), without its per-call cost for plain printable ASCII."""
    if key.isascii() and key.isprintable() and '"' not in key and "\\" not in key:
        return b'"' + key.encode() + b'"'
    return codecs.dumps("json", key)


class Processing:
    """Make `event` faust's current event (what `faust.current_event()` returns, in
    this task only) while the block runs: faust's stores and tables put a write
    on the current event's partition. A batch of events taken from a stream
    (`Stream.take_events`) has no current event of its own; the stream's
    `_set_current_event` is no help, as it also sets the attribute the stream's
    buffering task reads. (A class, not a generator: entered once per event,
    0.6 µs against 1.3.)"""

    __slots__ = ("_event", "_token")

    def __init__(self, event: Any) -> None:
        self._event = event

    def __enter__(self) -> None:
        self._token = _current_event.set(weakref.ref(self._event))

    def __exit__(self, *exc_info: object) -> None:
        _current_event.reset(self._token)
