"""Sending what connectors produce: change events, errors, mailbox status, and the
dead letters of input they could not decode.

`emit_changes` returns only when Kafka acknowledged every event of the batch
(or raises), which is what allows a cursor to move past them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from schemas import metrics
from schemas.base import utc_now
from schemas.codec import encode_key
from schemas.dlq import dead_letter_headers
from schemas.errors import DecodeError, SyncError
from schemas.mail import MailItemChanged
from schemas.mailbox import MailboxStatus
from schemas.topics import DLQ, MAIL_CHANGES, MAILBOX_STATUS, SYNC_ERRORS, codec

_CHANGES = codec(MAIL_CHANGES)
_ERRORS = codec(SYNC_ERRORS)
_STATUS = codec(MAILBOX_STATUS)


class Emitter:
    """Publishes to mail.changes, sync.errors and mailbox.status with one producer."""

    def __init__(self, producer: AIOKafkaProducer, prefix: str, ack_timeout_s: float) -> None:
        self.producer = producer
        self.ack_timeout_s = ack_timeout_s
        self.changes_topic = MAIL_CHANGES.name(prefix)
        self.errors_topic = SYNC_ERRORS.name(prefix)
        self.status_topic = MAILBOX_STATUS.name(prefix)
        self.dlq_topic = DLQ.name(prefix)
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}

    async def emit_changes(self, events: Sequence[MailItemChanged], protocol: str) -> None:
        """Send a batch and wait for every acknowledgement (bounded by ack_timeout_s).

        Events of one mailbox share a key, hence a partition (the one Kafka's
        default partitioner picks for the key, as for any keyed send), so they
        travel as record batches: one future per batch, not per event.
        """
        if not events:
            return
        started = time.monotonic()
        futures = []
        for mailbox_id, group in _by_mailbox(events).items():
            key = encode_key(mailbox_id)
            partition = await self._partition(self.changes_topic, key)
            batch = self.producer.create_batch()
            for event in group:
                value = _CHANGES.encode(event)
                if batch.append(key=key, value=value, timestamp=None) is not None:
                    continue
                if batch.record_count():
                    futures.append(await self._send(batch, partition))
                    batch = self.producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    # Larger than a whole record batch: send it on its own.
                    futures.append(
                        await self.producer.send(
                            self.changes_topic, key=key, value=value, partition=partition
                        )
                    )
            if batch.record_count():
                futures.append(await self._send(batch, partition))
        async with asyncio.timeout(self.ack_timeout_s):
            await asyncio.gather(*futures)
        metrics.CONNECTOR_ACK_SECONDS.observe(time.monotonic() - started)
        for change, count in Counter(event.change.value for event in events).items():
            metrics.CONNECTOR_EVENTS.labels(protocol, change).inc(count)

    async def _send(self, batch: Any, partition: int) -> asyncio.Future[Any]:
        batch.close()
        future: asyncio.Future[Any] = await self.producer.send_batch(
            batch, self.changes_topic, partition=partition
        )
        return future

    async def _partition(self, topic: str, key: bytes) -> int:
        """The partition Kafka's default partitioner assigns `key` on `topic`."""
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = sorted(await self.producer.partitions_for(topic))
            self._partitions[topic] = partitions
        chosen: int = self._partitioner(key, partitions, partitions)
        return chosen

    async def emit_error(self, error: SyncError, protocol: str) -> None:
        """Publish one error and wait for its acknowledgement."""
        metrics.CONNECTOR_ERRORS.labels(protocol, error.code, error.severity.value).inc()
        future = await self.producer.send(
            self.errors_topic, key=encode_key(error.mailbox_id), value=_ERRORS.encode(error)
        )
        async with asyncio.timeout(self.ack_timeout_s):
            await future

    async def dead_letter(
        self, key: bytes | None, value: bytes, error: DecodeError, consumer: str
    ) -> None:
        """Send an undecodable record's original bytes to the DLQ, with headers naming
        where it sat and why, and wait for the acknowledgement."""
        headers = dead_letter_headers(
            topic=error.topic,
            partition=error.partition,
            offset=error.offset,
            error=error.reason,
            consumer=consumer,
            failed_at=utc_now(),
        )
        future = await self.producer.send(self.dlq_topic, key=key, value=value, headers=headers)
        async with asyncio.timeout(self.ack_timeout_s):
            await future
        metrics.DLQ_MESSAGES.labels(error.topic, consumer).inc()

    async def emit_status(self, status: MailboxStatus) -> None:
        """Publish a mailbox's status and wait for its acknowledgement."""
        future = await self.producer.send(
            self.status_topic, key=encode_key(status.mailbox_id), value=_STATUS.encode(status)
        )
        async with asyncio.timeout(self.ack_timeout_s):
            await future


def _by_mailbox(events: Sequence[MailItemChanged]) -> dict[str, list[MailItemChanged]]:
    """Events grouped by mailbox (their key), in order."""
    groups: dict[str, list[MailItemChanged]] = {}
    for event in events:
        groups.setdefault(event.mailbox_id, []).append(event)
    return groups
