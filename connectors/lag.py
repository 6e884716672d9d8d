"""How far the processors are behind on mail.changes, read every few seconds so the
poll scheduler can slow down when they cannot keep up (backpressure).

Lag is the sum over mail.changes partitions of end offset minus the processors'
consumer group's committed offset (a partition the group has not committed
counts from 0). Each read is bounded by a timeout; a failed read is logged and
makes the lag unknown (None), which slows nothing: the scheduler must never stop
polling because the broker's admin API is away. A group that has committed
nothing at all (the processors never ran) is unknown too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas import metrics
from schemas.config import ConnectorConfig, KafkaConfig, ProcessingConfig
from schemas.topics import MAIL_CHANGES

log = logging.getLogger(__name__)


def total_lag(committed: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]) -> int:
    """Messages between each partition's committed offset (-1 or missing: 0) and its end."""
    return sum(max(0, end - max(0, committed.get(tp, 0))) for tp, end in ends.items())


class ProcessorLag:
    """Samples the processors' lag on mail.changes; `current` is the last reading."""

    def __init__(self, kafka: KafkaConfig, prefix: str, settings: ConnectorConfig) -> None:
        self.kafka = kafka
        self.topic = MAIL_CHANGES.name(prefix)
        self.group = settings.processors_group_id or ProcessingConfig().group_id
        self.interval_s = settings.lag_interval_s
        self.timeout_s = settings.lag_timeout_s
        self.current: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sample in the background until `stop` (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="processor-lag")

    async def stop(self) -> None:
        """Stop sampling; the lag becomes unknown."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.current = None
        metrics.CONNECTOR_PROCESSOR_LAG.set(-1)

    async def _run(self) -> None:
        admin: AIOKafkaAdminClient | None = None
        consumer: AIOKafkaConsumer | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        if admin is None or consumer is None:
                            admin, consumer = await _clients(self.kafka)
                        self.current = await self._read(admin, consumer)
                except (KafkaError, TimeoutError, OSError) as exc:
                    log.warning(
                        "cannot read the lag of %s on %s (polling is not slowed): %s",
                        self.group,
                        self.topic,
                        exc or type(exc).__name__,
                    )
                    self.current = None
                    admin, consumer = await _close(admin, consumer)
                metrics.CONNECTOR_PROCESSOR_LAG.set(-1 if self.current is None else self.current)
                await asyncio.sleep(self.interval_s)
        finally:
            await _close(admin, consumer)

    async def _read(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> int | None:
        described = await admin.describe_topics([self.topic])
        numbers = sorted(p["partition"] for d in described for p in d.get("partitions") or [])
        tps = [TopicPartition(self.topic, n) for n in numbers]
        if not tps:
            return None
        offsets = await admin.list_consumer_group_offsets(self.group, partitions=tps)
        committed = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        if not committed:
            return None
        ends = await consumer.end_offsets(tps)
        return total_lag(committed, ends)


async def _clients(kafka: KafkaConfig) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
    admin = AIOKafkaAdminClient(**kafka.common_options())
    consumer = AIOKafkaConsumer(**kafka.consumer_options())
    try:
        await admin.start()
        await consumer.start()
    except BaseException:
        await _close(admin, consumer)
        raise
    return admin, consumer


async def _close(
    admin: AIOKafkaAdminClient | None, consumer: AIOKafkaConsumer | None
) -> tuple[None, None]:
    with contextlib.suppress(Exception):
        if consumer is not None:
            await consumer.stop()
    with contextlib.suppress(Exception):
        if admin is not None:
            await admin.close()
    return None, None
