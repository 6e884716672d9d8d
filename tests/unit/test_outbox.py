"""The outbox: one producer batch per topic partition, in order, keyed records on the
default partitioner's partition, failures and deliveries reported."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.structs import RecordMetadata, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from processors.outbox import Outbox, Record, murmur2


class FakeBuilder:
    """Takes `room` records (the first whatever its size), then reports itself full."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.rows: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: Any) -> Any:
        if self.rows and len(self.rows) >= self.room:
            return None
        self.rows.append((key, value))
        return object()


class FakeProducer:
    """aiokafka's batch API: records what was sent; the test resolves the futures."""

    def __init__(self, partitions: int = 4, room: int = 100) -> None:
        self.partitions = partitions
        self.room = room
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []
        self.futures: list[asyncio.Future[Any]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(self.room)

    async def send_batch(self, batch: FakeBuilder, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.rows))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def key_partition(key: bytes, partitions: int = 4) -> int:
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


async def test_records_go_out_as_one_batch_per_topic_partition_in_order() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, on_failed=lambda error: None)
    outbox.add("decisions", b"a", b"1")
    outbox.add("decisions", b"b", b"2")
    outbox.add("decisions", b"a", b"3")
    outbox.extend([Record("changelog", b"k", b"v", 2), Record("changelog", b"k", None, 2)])
    await outbox.publish()

    batches = {(topic, partition): rows for topic, partition, rows in producer.sent}
    assert batches[("changelog", 2)] == [(b"k", b"v"), (b"k", None)]
    assert batches[("decisions", key_partition(b"a"))][:1] == [(b"a", b"1")]
    assert (b"a", b"3") in batches[("decisions", key_partition(b"a"))]
    rows_of_a = [row for row in batches[("decisions", key_partition(b"a"))] if row[0] == b"a"]
    assert rows_of_a == [(b"a", b"1"), (b"a", b"3")]
    assert sum(len(rows) for _, _, rows in producer.sent) == 5
    assert len(producer.sent) == len(batches)
    assert len(outbox) == 0


async def test_a_full_batch_is_sent_and_the_rest_follows_in_a_new_one() -> None:
    producer = FakeProducer(room=2)
    outbox = Outbox(producer, on_failed=lambda error: None)
    outbox.extend(Record("t", None, str(n).encode(), 0) for n in range(5))
    await outbox.publish()
    assert [rows for _, _, rows in producer.sent] == [
        [(None, b"0"), (None, b"1")],
        [(None, b"2"), (None, b"3")],
        [(None, b"4")],
    ]


async def test_a_delivered_batch_reports_its_last_offset_and_a_failed_one_the_error() -> None:
    producer = FakeProducer(room=2)
    delivered: list[tuple[int, int]] = []
    failed: list[BaseException] = []
    outbox = Outbox(
        producer,
        on_failed=failed.append,
        delivered={"changelog": lambda partition, offset: delivered.append((partition, offset))},
    )
    outbox.extend(Record("changelog", b"k", b"v", 1) for _ in range(3))
    outbox.add("other", b"x", b"y", 0)
    await outbox.publish()
    first, second, other = producer.futures
    tp = TopicPartition("changelog", 1)
    first.set_result(RecordMetadata("changelog", 1, tp, 40, -1, 0, 0))
    second.set_result(RecordMetadata("changelog", 1, tp, 42, -1, 0, 0))
    error = RuntimeError("broker said no")
    other.set_exception(error)
    await asyncio.sleep(0)
    assert delivered == [(1, 41), (1, 42)]
    assert failed == [error]


@pytest.mark.parametrize("partitions", [1, 3, 12])
async def test_keyed_records_land_where_the_default_partitioner_puts_their_key(
    partitions: int,
) -> None:
    producer = FakeProducer(partitions=partitions)
    outbox = Outbox(producer, on_failed=lambda error: None)
    keys = [f"thread-{n}".encode() for n in range(50)]
    for key in keys:
        outbox.add("t", key, b"v")
    await outbox.publish()
    placed = {key: partition for _, partition, rows in producer.sent for key, _ in rows}
    assert placed == {key: key_partition(key, partitions) for key in keys}


@given(st.binary(max_size=200))
def test_murmur2_is_the_java_clients_as_aiokafka_computes_it(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


async def test_a_latest_record_supersedes_the_earlier_one_of_its_topic_and_key() -> None:
    producer = FakeProducer()
    outbox = Outbox(producer, on_failed=lambda error: None)
    outbox.add("activities", b"a", b"v1", 0, latest=True)
    outbox.add("activities", b"b", b"v1", 0, latest=True)
    outbox.add("decisions", b"a", b"d1", 0)
    outbox.add("decisions", b"a", b"d2", 0)  # not latest: both go out
    outbox.add("activities", b"a", b"v2", 0, latest=True)
    outbox.extend(
        [Record("changelog", b"k", b"v", 1), Record("changelog", b"k", None, 1)], latest=True
    )
    outbox.add("activities", None, b"keyless", 0, latest=True)
    outbox.add("activities", None, b"keyless", 0, latest=True)
    assert len(outbox) == 7
    await outbox.publish()

    batches = {(topic, partition): rows for topic, partition, rows in producer.sent}
    assert batches[("activities", 0)] == [
        (b"b", b"v1"),
        (b"a", b"v2"),
        (None, b"keyless"),
        (None, b"keyless"),
    ]
    assert batches[("decisions", 0)] == [(b"a", b"d1"), (b"a", b"d2")]
    assert batches[("changelog", 1)] == [(b"k", None)]
    assert len(outbox) == 0
    outbox.add("activities", b"a", b"v3", 0, latest=True)  # a new batch starts afresh
    await outbox.publish()
    assert producer.sent[-1] == ("activities", 0, [(b"a", b"v3")])
