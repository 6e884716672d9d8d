"""Whole-broker draining of aiokafka's accumulator (schemas/producer_drain.py)."""

from __future__ import annotations

import time
from typing import Any

from aiokafka.producer.message_accumulator import MessageAccumulator
from aiokafka.structs import TopicPartition

from schemas import producer_drain

LINGER_MS = 60_000
FRESH = TopicPartition("decisions", 0)
DUE = TopicPartition("activities", 3)
OTHER_BROKER = TopicPartition("decisions", 1)


class Cluster:
    """Partition 1 of decisions is led by broker 2, everything else by broker 1."""

    def leader_for_partition(self, tp: TopicPartition) -> int:
        return 2 if tp == OTHER_BROKER else 1


async def accumulator_with(*partitions: TopicPartition) -> MessageAccumulator:
    accumulator = MessageAccumulator(Cluster(), 16_384, 0, 30.0, linger_ms=LINGER_MS)
    for tp in partitions:
        await accumulator.add_message(tp, b"key", b"value", timeout=1.0)
    return accumulator


def age(accumulator: Any, tp: TopicPartition) -> None:
    """Make the batch of `tp` older than the linger."""
    accumulator._batches[tp][0]._ctime = time.monotonic() - LINGER_MS


def drained(nodes: dict[int, dict[TopicPartition, Any]]) -> dict[int, set[TopicPartition]]:
    return {node: set(batches) for node, batches in nodes.items() if batches}


def test_install_is_idempotent_and_reports_success() -> None:
    assert producer_drain.install()
    drain = MessageAccumulator.drain_by_nodes
    assert producer_drain.install()
    assert MessageAccumulator.drain_by_nodes is drain


async def test_a_due_batch_takes_every_batch_of_its_broker_along() -> None:
    producer_drain.install()
    accumulator = await accumulator_with(FRESH, DUE, OTHER_BROKER)
    age(accumulator, DUE)
    nodes, unknown = accumulator.drain_by_nodes(ignore_nodes=set())
    assert not unknown
    assert drained(nodes) == {1: {FRESH, DUE}}  # broker 2 has nothing due: it lingers on


async def test_nothing_due_means_nothing_sent_before_the_linger() -> None:
    producer_drain.install()
    accumulator = await accumulator_with(FRESH, DUE)
    nodes, _ = accumulator.drain_by_nodes(ignore_nodes=set())
    assert drained(nodes) == {}


async def test_muted_partitions_and_busy_brokers_are_left_alone() -> None:
    producer_drain.install()
    accumulator = await accumulator_with(FRESH, DUE, OTHER_BROKER)
    age(accumulator, DUE)
    nodes, _ = accumulator.drain_by_nodes(ignore_nodes=set(), muted_partitions={FRESH})
    assert drained(nodes) == {1: {DUE}}
    age(accumulator, OTHER_BROKER)
    nodes, _ = accumulator.drain_by_nodes(ignore_nodes={2}, muted_partitions={FRESH})
    assert drained(nodes) == {}
    assert accumulator._batches[OTHER_BROKER]  # still waiting for broker 2's request
