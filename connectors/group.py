"""What the consumer-group services (connector runtime, outgoing sender, act writer)
share about their topics: a rebalance listener that hands them partition numbers, the
partition counts they check their topic layout with, and reading one partition from its
start (the state of a newly assigned partition)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.config import KafkaConfig


class PartitionOwner(Protocol):
    """A service that takes over and gives up partitions of its group's topic."""

    async def on_assigned(self, partitions: set[int]) -> None: ...

    async def on_revoked(self, partitions: set[int]) -> None: ...


class PartitionListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards a group's rebalances to `owner` as partition numbers; with `topic`,
    only that topic's partitions (the consumer may subscribe to more than one)."""

    def __init__(self, owner: PartitionOwner, topic: str | None = None) -> None:
        self.owner = owner
        self.topic = topic

    def _numbers(self, tps: Iterable[TopicPartition]) -> set[int]:
        return {tp.partition for tp in tps if self.topic is None or tp.topic == self.topic}

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner.on_revoked(self._numbers(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.owner.on_assigned(self._numbers(assigned))


async def partition_counts(kafka: KafkaConfig, topics: list[str]) -> dict[str, int]:
    """How many partitions each of `topics` has; a topic that does not exist is
    missing from the answer (or counts 0)."""
    admin = AIOKafkaAdminClient(**kafka.common_options())
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {d["topic"]: len(d.get("partitions") or []) for d in described}


async def read_partition(
    kafka: KafkaConfig, topic: str, partition: int, timeout_s: float = 60.0
) -> AsyncGenerator[Any, None]:
    """Every message of one partition, from its start to its end (the end offset is
    read again after each poll), in offset order; TimeoutError after `timeout_s` in
    all. Its own unassigned consumer, stopped when the iteration ends (iterate it
    under `contextlib.aclosing` when it may end early)."""
    consumer = AIOKafkaConsumer(**kafka.consumer_options())
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        async with asyncio.timeout(timeout_s):
            while True:
                end = (await consumer.end_offsets([tp]))[tp]
                if await consumer.position(tp) >= end:
                    return
                batch = await consumer.getmany(tp, timeout_ms=300)
                for message in batch.get(tp, []):
                    yield message
    finally:
        await consumer.stop()
