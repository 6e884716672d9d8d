"""Sending what connectors produce: change events, errors, mailbox status.

`emit_changes` returns only when Kafka acknowledged every event of the batch
(or raises), which is what allows a cursor to move past them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from schemas import metrics
from schemas.codec import encode_key
from schemas.errors import SyncError
from schemas.mail import MailItemChanged
from schemas.mailbox import MailboxStatus
from schemas.topics import MAIL_CHANGES, MAILBOX_STATUS, SYNC_ERRORS, codec

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

    async def emit_changes(self, events: Sequence[MailItemChanged], protocol: str) -> None:
        """Send a batch and wait for every acknowledgement (bounded by ack_timeout_s)."""
        if not events:
            return
        started = time.monotonic()
        futures = [
            await self.producer.send(
                self.changes_topic, key=encode_key(event.mailbox_id), value=_CHANGES.encode(event)
            )
            for event in events
        ]
        async with asyncio.timeout(self.ack_timeout_s):
            await asyncio.gather(*futures)
        metrics.CONNECTOR_ACK_SECONDS.observe(time.monotonic() - started)
        for event in events:
            metrics.CONNECTOR_EVENTS.labels(protocol, event.change.value).inc()

    async def emit_error(self, error: SyncError, protocol: str) -> None:
        """Publish one error and wait for its acknowledgement."""
        metrics.CONNECTOR_ERRORS.labels(protocol, error.code, error.severity.value).inc()
        future = await self.producer.send(
            self.errors_topic, key=encode_key(error.mailbox_id), value=_ERRORS.encode(error)
        )
        async with asyncio.timeout(self.ack_timeout_s):
            await future

    async def emit_status(self, status: MailboxStatus) -> None:
        """Publish a mailbox's status and wait for its acknowledgement."""
        future = await self.producer.send(
            self.status_topic, key=encode_key(status.mailbox_id), value=_STATUS.encode(status)
        )
        async with asyncio.timeout(self.ack_timeout_s):
            await future
