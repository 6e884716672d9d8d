"""An ordered key-value store on disk (RocksDB through rocksdict) for the indexes that
grow with history, so a processor's memory does not.

Memory is what RocksDB is given: one block cache (`cache_bytes`) and at most two
write buffers of `write_buffer_bytes`; the data lives in files. A store opened
without a path lives in a temporary directory that is removed when it closes
(tests, benchmarks).

Keys are bytes made of parts joined by NUL (`make_key(...)`); a part never holds a
NUL (it is escaped), so a prefix scan of `make_key(a, b)` finds exactly the keys
that start with the parts a and b. The store also keeps the offsets of the
topic partitions it was built from (`offsets`/`save_offsets`), so a restarted
worker resumes reading where it stopped. Writes skip the write-ahead log (the
topics are the log; see IndexStore.__init__).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import rocksdict

_SEPARATOR = b"\x00"
_OFFSETS = "\x01offsets"  # first key part of saved offsets: sorts apart from index keys
UNLOGGED = rocksdict.WriteOptions()
"""Writes without RocksDB's write-ahead log (for stores rebuilt from a topic)."""
UNLOGGED.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; the stub says method


class StateLocked(RuntimeError):
    """Another process holds the state directory."""


def make_key(*parts: str) -> bytes:
    """A store key of text parts; NULs inside a part are escaped, so parts never merge."""
    text = "\x00".join(parts)
    if "\\" in text or text.count("\x00") != len(parts) - 1:
        return _SEPARATOR.join(map(_escaped, parts))
    return text.encode()  # nothing to escape: one join and one encode (most keys)


def _escaped(part: str) -> bytes:
    if "\\" in part or "\x00" in part:
        part = part.replace("\\", "\\\\").replace("\x00", "\\0")
    return part.encode()


def last_part(store_key: bytes) -> str:
    """The last text part of a store key (inverse of `make_key` for that part)."""
    raw = store_key.rsplit(_SEPARATOR, 1)[-1].decode()
    return raw.replace("\\0", "\x00").replace("\\\\", "\\")


class IndexStore:
    """RocksDB with a bounded cache: get, batched writes, prefix scans, saved offsets."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        cache_bytes: int = 64 << 20,
        write_buffer_bytes: int = 16 << 20,
    ) -> None:
        self._temporary = path is None
        self.path = Path(tempfile.mkdtemp(prefix="tidings-index-")) if path is None else path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = rocksdict.Rdict(str(self.path), _options(cache_bytes, write_buffer_bytes))
        except Exception as exc:
            if "lock" in str(exc).lower():
                raise StateLocked(
                    f"{self.path} is in use by another processor worker; give each worker "
                    "its own processors.worker_name (or data directory)"
                ) from exc
            raise
        self._closer = weakref.finalize(self, _close, self._db, self.path, self._temporary)
        # No write-ahead log: what the store holds is rebuilt from topics, and RocksDB
        # recovers a prefix of the writes, so after a crash the saved offsets are
        # never ahead of the data they cover and reading resumes early enough.
        self._db.set_write_options(UNLOGGED)
        self._pending: dict[bytes, bytes | None] | None = None  # writes of a `batched` block

    def get(self, store_key: bytes) -> bytes | None:
        """The value of a key, or None (a write of a `batched` block included)."""
        if self._pending is not None and store_key in self._pending:
            return self._pending[store_key]
        value: bytes | None = self._db.get(store_key)
        return value

    def write(self, puts: Mapping[bytes, bytes], deletes: list[bytes]) -> None:
        """Apply deletes then puts atomically (in a `batched` block: with the block's
        other writes, at its end)."""
        pending = self._pending if self._pending is not None else {}
        for store_key in deletes:
            if store_key not in puts:
                pending[store_key] = None
        pending.update(puts)
        if self._pending is None:
            self._store(pending)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Collect the writes made in the block and store them as one write batch when
        it ends (atomic, and a few microseconds less per write: a view applies many
        records, and saves its offsets, at once). `get` sees them at once; scans see
        them after the block. Not reentrant."""
        self._pending = {}
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            self._store(pending)

    def _store(self, writes: Mapping[bytes, bytes | None]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for store_key, value in writes.items():
            if value is None:
                batch.delete(store_key)
            else:
                batch.put(store_key, value)
        self._db.write(batch)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with `prefix` + separator, in key order."""
        start = prefix + _SEPARATOR
        iterator = self._db.iter()
        iterator.seek(start)
        while iterator.valid():
            found: bytes = iterator.key()
            if not found.startswith(start):
                return
            yield found, iterator.value()
            iterator.next()

    def first(self, prefix: bytes) -> tuple[bytes, bytes] | None:
        """The smallest (key, value) under `prefix`, or None."""
        return next(self.scan(prefix), None)

    def offsets(self, topic: str) -> dict[int, int]:
        """The next offset to read per partition of `topic`, as last saved."""
        found = {}
        for store_key, value in self.scan(make_key(_OFFSETS, topic)):
            found[int(last_part(store_key))] = int(value)
        return found

    def save_offsets(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Remember the next offset to read per partition (after what they cover is written)."""
        self.write(
            {make_key(_OFFSETS, topic, str(p)): str(o).encode() for p, o in offsets.items()}, []
        )

    def compact(self) -> None:
        """Compact everything now (what background compaction reaches in time)."""
        self._db.compact_range(None, None)

    def close(self) -> None:
        """Flush and close; a temporary store is deleted (also when garbage-collected)."""
        self._closer()


def _close(db: rocksdict.Rdict, path: Path, temporary: bool) -> None:
    db.close()
    if temporary:
        shutil.rmtree(path, ignore_errors=True)


def _options(cache_bytes: int, write_buffer_bytes: int) -> rocksdict.Options:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(write_buffer_bytes)
    options.set_max_write_buffer_number(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(cache_bytes))
    table.set_bloom_filter(10, False)
    # Index and filter blocks are partitioned and cached like data: memory stays
    # within the cache however large the files grow, and a lookup reads only the
    # partitions it needs (whole-file filters evicted from a small cache made
    # each lookup re-read megabytes once history passed ~500k activities).
    table.set_index_type(rocksdict.BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_metadata_block_size(4096)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_top_level_index_and_filter(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options.set_block_based_table_factory(table)
    options.increase_parallelism(2)
    # Uncompressed: a cold lookup over 1M activities took 9 µs, 17 µs with lz4.
    options.set_compression_type(rocksdict.DBCompressionType.none())
    return options
