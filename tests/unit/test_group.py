"""The shared rebalance listener: partition numbers forwarded, filtered by topic."""

from __future__ import annotations

from aiokafka import TopicPartition

from connectors.group import PartitionListener


class _Owner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, set[int]]] = []

    async def on_assigned(self, partitions: set[int]) -> None:
        self.calls.append(("assigned", partitions))

    async def on_revoked(self, partitions: set[int]) -> None:
        self.calls.append(("revoked", partitions))


async def test_forwards_partition_numbers_of_every_topic_without_a_filter() -> None:
    owner = _Owner()
    listener = PartitionListener(owner)
    await listener.on_partitions_assigned({TopicPartition("a", 0), TopicPartition("b", 2)})
    await listener.on_partitions_revoked({TopicPartition("a", 0)})
    assert owner.calls == [("assigned", {0, 2}), ("revoked", {0})]


async def test_forwards_only_the_named_topics_partitions() -> None:
    owner = _Owner()
    listener = PartitionListener(owner, "config")
    await listener.on_partitions_assigned({TopicPartition("config", 1), TopicPartition("track", 3)})
    await listener.on_partitions_revoked({TopicPartition("track", 3)})
    assert owner.calls == [("assigned", {1}), ("revoked", set())]
