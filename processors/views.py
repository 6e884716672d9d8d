"""Global views: every processor worker reads a compacted topic in full (all
partitions, from the beginning, forever) into an in-memory index.

crm.records feeds the Directory, mailbox.config the Mailboxes, crm.activities
the ActivityIndex. `ready` is set once each view caught up with the end of its
topic as it was when reading started; agents wait for it before deciding.

tansu answers ListOffsets wrongly, so "the end" is the high watermark reported
by fetch responses, never end_offsets().
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import Codec, decode_key
from schemas.config import KafkaConfig
from schemas.errors import DecodeError

log = logging.getLogger(__name__)

Apply = Callable[[str, Any], None]


class CompactedView:
    """Reads one compacted topic into `apply(key, value_or_None)`, forever."""

    def __init__(self, kafka: KafkaConfig, topic: str, codec: Codec[Any], apply: Apply) -> None:
        self.kafka = kafka
        self.topic = topic
        self.codec = codec
        self.apply = apply
        self.ready = asyncio.Event()
        self.records_applied = 0
        self.undecodable = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self) -> None:
        """Read every partition from the beginning, keep reading until cancelled.

        No consumer group: subscribing without one assigns every partition, and
        with nothing committed reading starts at the beginning.
        """
        consumer = AIOKafkaConsumer(**self.kafka.consumer_options())
        self._consumer = consumer
        await consumer.start()
        try:
            consumer.subscribe([self.topic])
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, messages in batch.items():
                    for message in messages:
                        self._apply(tp, message)
                if not self.ready.is_set() and await self._caught_up(consumer):
                    log.info("view %s ready: %d records", self.topic, self.records_applied)
                    self.ready.set()
        finally:
            await consumer.stop()

    def _apply(self, tp: TopicPartition, message: Any) -> None:
        key = decode_key(message.key)
        if key is None:
            return
        try:
            value = self.codec.decode_nullable(
                message.value, tp.topic, tp.partition, message.offset
            )
        except DecodeError as exc:
            # A compacted view cannot skip a key silently: the record stays unknown,
            # and the error is counted and logged with where it sits.
            self.undecodable += 1
            log.error("view %s: %s", self.topic, exc)
            return
        self.apply(key, value)
        self.records_applied += 1

    @staticmethod
    async def _caught_up(consumer: AIOKafkaConsumer) -> bool:
        partitions = consumer.assignment()
        if not partitions:
            return False
        for tp in partitions:
            highwater = consumer.highwater(tp)
            if highwater is None or await consumer.position(tp) < highwater:
                return False
        return True
