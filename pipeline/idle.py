"""Is the pipeline idle? Every mailbox synced since a moment, every topic drained.

"Synced": every enabled, approved mailbox reported a completed sync pass after
`since` with nothing pending (or was disabled by a permanent error).
"Drained": each consumer group's committed offsets reached the high watermark
of its input topics (for connectors: mail.track, whose requests are committed
once handled). High watermarks come from fetch responses (tansu answers
ListOffsets wrongly).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas.codec import decode_key
from schemas.config import TidingsConfig
from schemas.errors import DecodeError
from schemas.mailbox import MailboxConfig, MailboxStatus, Protocol, SyncState
from schemas.topics import (
    CRM_ACTIVITIES,
    MAIL_CHANGES,
    MAIL_PARSED,
    MAIL_TRACK,
    MAILBOX_CONFIG,
    MAILBOX_STATUS,
    PROMOTION_DECISIONS,
    SYNC_ERRORS,
    TopicSpec,
    codec,
)

SUPPORTED_PROTOCOLS = frozenset({Protocol.MAILDIR, Protocol.IMAP, Protocol.POP3})
T = TypeVar("T", bound=msgspec.Struct)


@dataclass
class IdleReport:
    """Where the pipeline stands: unsynced mailboxes and lag per consumer group, or why
    it could not be told (`problem`, e.g. the broker is restarting)."""

    unsynced: list[str] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)
    problem: str | None = None

    @property
    def idle(self) -> bool:
        """True when every mailbox is synced and no group lags."""
        return self.problem is None and not self.unsynced and not any(self.lag.values())

    def describe(self) -> str:
        """One line for logs and progress output."""
        if self.problem is not None:
            return f"cannot tell: {self.problem}"
        lag = ", ".join(f"{group} {count}" for group, count in self.lag.items())
        return f"{len(self.unsynced)} mailboxes syncing; lag: {lag or 'none'}"


def groups_for(config: TidingsConfig, roles: Sequence[str]) -> dict[str, list[str]]:
    """The consumer groups (and their input topics) whose lag matters for `roles`."""
    prefix = config.topic_prefix

    def names(*specs: TopicSpec[Any]) -> list[str]:
        return [spec.name(prefix) for spec in specs]

    groups: dict[str, list[str]] = {}
    if "connectors" in roles:
        groups[config.connectors.group_id] = names(MAIL_TRACK)
    if {"processors", "sinks"} & set(roles):
        groups[config.processors.group_id] = names(MAIL_CHANGES, MAIL_PARSED)
    if "sinks" in roles:
        groups[config.sinks.group_id] = names(
            PROMOTION_DECISIONS, CRM_ACTIVITIES, SYNC_ERRORS, MAILBOX_STATUS
        )
    return groups


class IdleProbe:
    """Checks synced mailboxes and group lag on demand."""

    def __init__(self, config: TidingsConfig, roles: Sequence[str], since: datetime) -> None:
        self.config = config
        self.since = since
        self.groups = groups_for(config, roles)

    async def check_safely(self, timeout_s: float = 15.0) -> IdleReport:
        """Like `check`, but a broker that does not answer yields a report with a problem."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self.check()
        except (KafkaError, TimeoutError, OSError) as exc:
            return IdleReport(problem=f"{type(exc).__name__}: {exc}".strip()[:200])
        except asyncio.CancelledError:
            # aiokafka's consumer.stop() awaits fetch tasks it cancelled itself when
            # the broker is gone; that CancelledError is not ours unless we are
            # being cancelled.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return IdleReport(problem="the broker connection was lost while checking")

    async def check(self) -> IdleReport:
        """One look at mailboxes and lag."""
        configs = await read_compacted(self.config, MAILBOX_CONFIG)
        statuses = await read_compacted(self.config, MAILBOX_STATUS)
        report = IdleReport(unsynced=unsynced_mailboxes(configs, statuses, self.since))
        for group, topics in self.groups.items():
            report.lag[group] = await group_lag(self.config, group, topics)
        return report

    async def wait(self, stop: asyncio.Event | None = None, interval_s: float = 1.0) -> bool:
        """Return True once idle twice in a row; False if `stop` was set first."""
        streak = 0
        while stop is None or not stop.is_set():
            report = await self.check_safely()
            streak = streak + 1 if report.idle else 0
            if streak >= 2:
                return True
            await asyncio.sleep(interval_s)
        return False


def unsynced_mailboxes(
    configs: Mapping[str, MailboxConfig],
    statuses: Mapping[str, MailboxStatus],
    since: datetime,
) -> list[str]:
    """Mailboxes that should sync but have not completed a pass since `since`."""
    waiting = []
    for mailbox_id, config in sorted(configs.items()):
        if not (config.enabled and config.approved) or config.protocol not in SUPPORTED_PROTOCOLS:
            continue
        status = statuses.get(mailbox_id)
        if status is not None and status.state == SyncState.DISABLED and status.updated_at >= since:
            continue
        synced = (
            status is not None
            and status.last_sync_at is not None
            and status.last_sync_at >= since
            and status.pending_items == 0
        )
        if not synced:
            waiting.append(mailbox_id)
    return waiting


async def read_compacted(config: TidingsConfig, spec: TopicSpec[T]) -> dict[str, T]:
    """The latest value of every key of a (small) compacted topic, tombstones applied."""
    topic = spec.name(config.topic_prefix)
    values: dict[str, T] = {}
    consumer = AIOKafkaConsumer(**config.kafka.consumer_options())
    await consumer.start()
    try:
        tps = await topic_partitions(config, topic)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        value_codec = codec(spec)
        async for tp, message in drain(consumer, tps):
            key = decode_key(message.key)
            try:
                value = value_codec.decode_nullable(
                    message.value, topic, tp.partition, message.offset
                )
            except DecodeError:
                continue
            if key is not None:
                if value is None:
                    values.pop(key, None)
                else:
                    values[key] = value
    finally:
        await consumer.stop()
    return values


async def group_lag(config: TidingsConfig, group: str, topics: Sequence[str]) -> int:
    """Messages on `topics` not yet committed by consumer group `group`."""
    consumer = AIOKafkaConsumer(group_id=group, **config.kafka.consumer_options())
    await consumer.start()
    try:
        tps = [tp for topic in topics for tp in await topic_partitions(config, topic)]
        committed = {tp: (await consumer.committed(tp)) or 0 for tp in tps}
        consumer.assign(tps)
        for tp, offset in committed.items():
            consumer.seek(tp, offset)
        highwater = await _highwaters(consumer, tps)
        return sum(max(0, highwater[tp] - committed[tp]) for tp in tps)
    finally:
        await consumer.stop()


async def topic_partitions(config: TidingsConfig, topic: str) -> list[TopicPartition]:
    """The partitions of `topic`, as the broker describes them."""
    admin = AIOKafkaAdminClient(**config.kafka.common_options())
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    numbers = sorted(p["partition"] for d in described for p in d.get("partitions") or [])
    return [TopicPartition(topic, p) for p in numbers]


async def _highwaters(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float = 30.0
) -> dict[TopicPartition, int]:
    async with asyncio.timeout(timeout_s):
        while any(consumer.highwater(tp) is None for tp in tps):
            await consumer.getmany(*tps, timeout_ms=200, max_records=1)
    return {tp: int(consumer.highwater(tp)) for tp in tps}


async def drain(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float = 60.0
) -> AsyncIterator[tuple[TopicPartition, Any]]:
    """Yield (tp, message) from the consumer's positions up to each partition's high
    watermark (raises TimeoutError after `timeout_s`)."""
    async with asyncio.timeout(timeout_s):
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=300)
            for tp, messages in batch.items():
                for message in messages:
                    yield tp, message
            done = True
            for tp in tps:
                highwater = consumer.highwater(tp)
                if highwater is None or await consumer.position(tp) < highwater:
                    done = False
            if done:
                return
