"""The dead-letter topic from the command line: `tidings dlq list` and `tidings dlq replay`.

Replay re-publishes dead letters to their original topic (named in their headers),
with the same key and the same bytes, once they decode with that topic's codec.
Progress is a consumer group on the DLQ (`REPLAY_GROUP`): the offset after a letter is
committed only once what the letter turned into (a re-publish, a reinsert, a drop) is
acknowledged, so a second replay starts where the first ended and a replay stopped
half way resumes. One replay reads up to the end of the DLQ as it was when it
started: letters it puts back (reinsert, other topics) wait for the next replay.
Run one replay at a time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.idle import topic_partitions
from schemas.config import TidingsConfig
from schemas.dlq import DeadLetter
from schemas.errors import DecodeError
from schemas.topics import DLQ, Cleanup, codec, spec_by_name

REPLAY_GROUP = "tidings-dlq-replay"
"""The consumer group whose committed offsets on the DLQ are the replay's progress."""

ACK_TIMEOUT_S = 60.0
"""Longest wait for one publish's acknowledgement or one offset commit."""

IDLE_TIMEOUT_S = 60.0
"""Longest wait for the next letter below the end the replay is reading to."""


class Policy(StrEnum):
    """What replay does with a letter that still does not decode."""

    STOP_ON_ERROR = "stop-on-error"
    REINSERT = "reinsert"
    DROP = "drop"


class Action(StrEnum):
    """What replay does with one letter."""

    REPLAY = "replayed"
    REINSERT = "reinserted"
    DROP = "dropped"
    KEEP = "kept"
    """A letter for a topic other than `--topic`: put back on the DLQ unchanged."""
    STOP = "stopped"


def letter_problem(letter: DeadLetter, prefix: str) -> str | None:
    """None when `letter` decodes now with its original topic's codec; else why not.

    A tombstone (no value) is fine on a compacted topic and undecodable on the others.
    """
    if not letter.topic:
        return "it has no original-topic header"
    spec = spec_by_name(letter.topic, prefix)
    if spec is None or spec.value_type is None:
        return f"{letter.topic} is not a tidings topic under prefix {prefix!r}"
    if not letter.value:
        if spec.cleanup is Cleanup.COMPACT:
            return None
        return f"it has no value (a tombstone) and {letter.topic} is not compacted"
    try:
        codec(spec).decode(letter.value, letter.topic, letter.partition, letter.offset)
    except DecodeError as exc:
        return exc.reason
    return None


def matches_topic(letter: DeadLetter, wanted: str | None, prefix: str) -> bool:
    """Whether `letter` came from `wanted` (a full topic name or one without the prefix)."""
    return wanted is None or letter.topic in (wanted, f"{prefix}{wanted}")


def plan(
    letter: DeadLetter, policy: Policy, prefix: str, wanted: str | None = None
) -> tuple[Action, str | None]:
    """The action for one letter and, when it does not decode, why."""
    if not matches_topic(letter, wanted, prefix):
        return Action.KEEP, None
    problem = letter_problem(letter, prefix)
    if problem is None:
        return Action.REPLAY, None
    action = {
        Policy.STOP_ON_ERROR: Action.STOP,
        Policy.REINSERT: Action.REINSERT,
        Policy.DROP: Action.DROP,
    }[policy]
    return action, problem


@dataclass
class ReplayReport:
    """What one replay did (or, dry, would do)."""

    pending: int = 0
    """Letters between the group's committed offsets and the DLQ's end at the start."""
    counts: Counter[Action] = field(default_factory=Counter)
    by_topic: dict[Action, Counter[str]] = field(default_factory=dict)
    stopped_at: DeadLetter | None = None
    stop_reason: str = ""
    interrupted: bool = False
    """Asked to stop (SIGINT, SIGTERM) before every pending letter was handled."""

    def add(self, letter: DeadLetter, action: Action) -> None:
        """Count one letter's action, by original topic too."""
        self.counts[action] += 1
        self.by_topic.setdefault(action, Counter())[letter.topic or "?"] += 1

    @property
    def handled(self) -> int:
        """Letters replay dealt with (every action but a stop)."""
        return sum(n for action, n in self.counts.items() if action is not Action.STOP)


Progress = Callable[[DeadLetter, Action], None]


async def replay_dead_letters(
    config: TidingsConfig,
    policy: Policy = Policy.STOP_ON_ERROR,
    *,
    topic: str | None = None,
    dry_run: bool = False,
    group: str = REPLAY_GROUP,
    on_start: Callable[[int], None] | None = None,
    on_letter: Progress | None = None,
    stop: asyncio.Event | None = None,
) -> ReplayReport:
    """Replay the DLQ's letters from `group`'s committed offsets up to the end the DLQ
    had at the start, partition by partition; see the module docstring.

    `on_start` gets the number of pending letters, `on_letter` each letter and its
    action. A dry run reads and decides but publishes and commits nothing. Setting
    `stop` ends the replay after the letter in hand (published, acknowledged and
    committed), so an interrupted replay resumes with the next one.
    """
    dlq_topic = DLQ.name(config.topic_prefix)
    partitions = await topic_partitions(config, dlq_topic)
    consumer = AIOKafkaConsumer(group_id=group, **config.kafka.consumer_options())
    producer = None if dry_run else AIOKafkaProducer(**config.kafka.producer_options(linger_ms=0))
    report = ReplayReport()
    await consumer.start()
    try:
        if producer is not None:
            await producer.start()
        consumer.assign(partitions)
        ranges = await _pending_ranges(consumer, partitions)
        report.pending = sum(end - start for start, end in ranges.values())
        if on_start is not None:
            on_start(report.pending)
        replayer = _Replayer(config.topic_prefix, consumer, producer, policy, topic)
        for tp, (start, end) in ranges.items():
            if start >= end:
                continue
            consumer.seek(tp, start)
            async for message in _read_until(consumer, tp, end):
                if stop is not None and stop.is_set():
                    report.interrupted = True
                    return report
                letter = DeadLetter.from_headers(
                    list(message.headers), message.key, message.value, tp.partition, message.offset
                )
                action, problem = plan(letter, policy, config.topic_prefix, topic)
                if action is Action.STOP:
                    report.add(letter, action)
                    report.stopped_at, report.stop_reason = letter, problem or ""
                    if on_letter is not None:
                        on_letter(letter, action)
                    return report
                await replayer.apply(tp, message, letter, action, problem)
                report.add(letter, action)
                if on_letter is not None:
                    on_letter(letter, action)
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
    return report


async def _pending_ranges(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition, [committed offset (or the earliest kept), end offset now)."""
    async with asyncio.timeout(ACK_TIMEOUT_S):
        ends = await consumer.end_offsets(partitions)
        beginnings = await consumer.beginning_offsets(partitions)
        ranges = {}
        for tp in partitions:
            committed = await consumer.committed(tp)
            start = max(committed or 0, beginnings[tp])
            ranges[tp] = (start, max(start, ends[tp]))
    return ranges


async def _read_until(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> Any:
    """The messages of `tp` from the consumer's position up to (not including) `end`."""
    while True:
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500)
                if batch.get(tp):
                    break
                if await consumer.position(tp) >= end:
                    return
        for message in batch[tp]:
            if message.offset >= end:
                return
            yield message
        if await consumer.position(tp) >= end:
            return


class _Replayer:
    """Carries out one letter's action, then commits the offset after it."""

    def __init__(
        self,
        prefix: str,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer | None,
        policy: Policy,
        wanted: str | None,
    ) -> None:
        self.prefix = prefix
        self.consumer = consumer
        self.producer = producer
        self.policy = policy
        self.wanted = wanted
        self._partitions: dict[str, int] = {}

    async def apply(
        self,
        tp: TopicPartition,
        message: Any,
        letter: DeadLetter,
        action: Action,
        problem: str | None,
    ) -> None:
        """Publish what `action` asks for, wait for the ack, commit the letter's offset
        (nothing at all in a dry run)."""
        if self.producer is None:
            return
        if action is Action.REPLAY:
            partition = await self._original_partition(letter)
            await self._send(
                letter.topic, letter.key, letter.value, letter.replayed_headers(), partition
            )
        elif action is Action.REINSERT:
            headers = letter.reinsert_headers(problem or "")
            await self._send(tp.topic, letter.key, letter.value, headers, tp.partition)
        elif action is Action.KEEP:
            await self._send(
                tp.topic, letter.key, letter.value, list(message.headers), tp.partition
            )
        async with asyncio.timeout(ACK_TIMEOUT_S):
            await self.consumer.commit({tp: message.offset + 1})

    async def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> None:
        assert self.producer is not None
        async with asyncio.timeout(ACK_TIMEOUT_S):
            sent = await self.producer.send(
                topic, key=key, value=value, headers=headers, partition=partition
            )
            await sent

    async def _original_partition(self, letter: DeadLetter) -> int | None:
        """A keyed letter goes where the partitioner puts its key today (as its producer
        did); an unkeyed one back to its original partition while that exists."""
        if letter.key is not None or letter.partition < 0:
            return None
        if letter.topic not in self._partitions:
            assert self.producer is not None
            async with asyncio.timeout(ACK_TIMEOUT_S):
                found = await self.producer.partitions_for(letter.topic)
            self._partitions[letter.topic] = len(found)
        return letter.partition if letter.partition < self._partitions[letter.topic] else None


async def read_dead_letters(config: TidingsConfig, timeout_s: float = 30.0) -> list[DeadLetter]:
    """Every dead letter on the DLQ topic, oldest first per partition."""
    topic = DLQ.name(config.topic_prefix)
    partitions = await topic_partitions(config, topic)
    consumer = AIOKafkaConsumer(**config.kafka.consumer_options())
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        async with asyncio.timeout(timeout_s):
            while not await _at_end(consumer, partitions):
                batch = await consumer.getmany(*partitions, timeout_ms=300)
                for tp, messages in sorted(batch.items()):
                    letters += [
                        DeadLetter.from_headers(
                            list(m.headers), m.key, m.value, tp.partition, m.offset
                        )
                        for m in messages
                    ]
    finally:
        await consumer.stop()
    return letters


async def replay_positions(
    config: TidingsConfig, group: str = REPLAY_GROUP, timeout_s: float = 30.0
) -> dict[int, int]:
    """Per DLQ partition, the offset replay resumes from (letters below it are handled)."""
    topic = DLQ.name(config.topic_prefix)
    partitions = await topic_partitions(config, topic)
    consumer = AIOKafkaConsumer(group_id=group, **config.kafka.consumer_options())
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            return {tp.partition: (await consumer.committed(tp)) or 0 for tp in partitions}
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    for tp in partitions:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True
