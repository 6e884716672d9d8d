"""Publishing what a batch of events produced, one producer batch per topic partition.

A processor agent works through its input a batch of events at a time
(processors/app.py). Every record it decides on the way (decisions,
activities, records, errors, table changelog entries) goes into an Outbox;
`publish()` then hands them to the producer as one aiokafka record batch per
topic partition.

Why: a record sent on its own (`producer.send`) costs a future, a partitioner
lookup, an accumulator append and a completion callback: with four or five
records per decision that was a quarter of a processor's CPU. Appending to a
batch builder costs a few microseconds, and a batch completes with one future
(bench/correlate.py --only pipeline; docs/performance.md).

Contract:
- `publish()` returns once every record is in the producer's accumulator, in
  the order added within each topic partition. The agent acknowledges its
  events after that and faust flushes the producer before it commits offsets,
  so delivery is at least once, as with `producer.send`.
- A keyed record without a partition goes where the Java client's default
  partitioner puts its key (murmur2, aiokafka's DefaultPartitioner), so it
  lands where any other producer of that key puts it; a record with neither
  goes where aiokafka's DefaultPartitioner puts a keyless record.
- A record queued with `latest=True` (compacted topics: activities, records,
  table changelogs) supersedes the record of the same topic and key queued
  before it in this outbox; it is published at its own place in the order.
  A compacted topic keeps only a key's latest value, so a message whose copies
  in many mailboxes are decided in one batch publishes its activity and its
  table entry once, not once per copy.
- A batch the broker does not take calls `on_failed` with the error (the app
  then crashes the worker, so its input is read again); a delivered batch of a
  topic in `delivered` reports its partition and last offset there (the
  tables record how far their changelog is persisted).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from aiokafka.partitioner import DefaultPartitioner

Delivered = Callable[[int, int], None]
"""Told the partition and the offset of the last record of a delivered batch."""

_KEYLESS = DefaultPartitioner()
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


class Record(NamedTuple):
    """One record to publish; `partition` None: the key's partition."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None


class Outbox:
    """Records to publish together (not thread-safe; one per batch of events)."""

    def __init__(
        self,
        producer: Any,
        on_failed: Callable[[BaseException], None],
        delivered: Mapping[str, Delivered] | None = None,
    ) -> None:
        """`producer`: the aiokafka producer (AIOKafkaProducer) to hand batches to."""
        self._producer = producer
        self._on_failed = on_failed
        self._delivered = delivered or {}
        self._records: list[Record | None] = []  # None: superseded by a later record
        self._positions: dict[tuple[str, bytes], int] = {}
        self._superseded = 0

    def __len__(self) -> int:
        return len(self._records) - self._superseded

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        *,
        latest: bool = False,
    ) -> None:
        """Queue one record (a None value is a tombstone); `latest`: it supersedes a
        record of the same topic and key queued earlier (a keyless record never does)."""
        self._queue(Record(topic, key, value, partition), latest)

    def extend(self, records: Iterable[Record], *, latest: bool = False) -> None:
        """Queue several records, in order (`latest` as for `add`)."""
        for record in records:
            self._queue(record, latest)

    def _queue(self, record: Record, latest: bool) -> None:
        if latest and record.key is not None:
            slot = (record.topic, record.key)
            earlier = self._positions.get(slot)
            if earlier is not None:
                self._records[earlier] = None
                self._superseded += 1
            self._positions[slot] = len(self._records)
        self._records.append(record)

    async def publish(self) -> None:
        """Hand every queued record to the producer and empty the outbox."""
        records = [record for record in self._records if record is not None]
        self._records, self._positions, self._superseded = [], {}, 0
        for (topic, partition), rows in (await self._by_partition(records)).items():
            await self._send(topic, partition, rows)

    async def _by_partition(
        self, records: list[Record]
    ) -> dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]]:
        partitions: dict[str, list[int]] = {}
        grouped: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        for topic, key, value, wanted in records:
            partition = wanted
            if partition is None:
                if topic not in partitions:
                    partitions[topic] = sorted(await self._producer.partitions_for(topic))
                every = partitions[topic]
                partition = (
                    every[key_partition(key, len(every))]
                    if key is not None
                    else _KEYLESS(None, every, every)  # aiokafka's choice for no key
                )
            grouped.setdefault((topic, partition), []).append((key, value))
        return grouped

    async def _send(
        self, topic: str, partition: int, rows: list[tuple[bytes | None, bytes | None]]
    ) -> None:
        builder = self._producer.create_batch()
        count = 0
        for key, value in rows:
            # A builder takes its first record whatever its size, so a record never
            # fails twice.
            if builder.append(key=key, value=value, timestamp=None) is None:
                await self._submit(topic, partition, builder, count)
                builder = self._producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)
                count = 0
            count += 1
        await self._submit(topic, partition, builder, count)

    async def _submit(self, topic: str, partition: int, builder: Any, count: int) -> None:
        sent = await self._producer.send_batch(builder, topic, partition=partition)
        delivered = self._delivered.get(topic)

        def done(future: Any) -> None:
            if future.cancelled():
                return
            error = future.exception()
            if error is not None:
                self._on_failed(error)
                return
            metadata = future.result()  # None when the producer asks for no acks
            if delivered is not None and metadata is not None:
                delivered(partition, metadata.offset + count - 1)

        sent.add_done_callback(done)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition index aiokafka's DefaultPartitioner (the Java client's) gives `key`
    among `partitions`: murmur2, sign bit cleared, modulo."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def murmur2(data: bytes) -> int:
    """The Java client's murmur2 of `data` (`aiokafka.partitioner.murmur2`), reading
    the input a 32-bit word at a time instead of a byte at a time: about a third
    of the cost, and two keyed records per decision pay it."""
    length = len(data)
    h = 0x9747B28C ^ length
    whole = length & ~3
    for word in memoryview(data)[:whole].cast("I") if _LITTLE else _words(data, whole):
        k = (word * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra >= 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h = ((h ^ data[whole]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def _words(data: bytes, whole: int) -> Iterable[int]:
    """Little-endian 32-bit words of data[:whole] (on a big-endian machine)."""
    return (int.from_bytes(data[i : i + 4], "little") for i in range(0, whole, 4))


_LITTLE = sys.byteorder == "little"
