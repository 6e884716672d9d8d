"""Cursors on connector.cursors, co-partitioned with mailbox.config.

A mailbox's cursors go to the partition number its configuration has on
mailbox.config, so the worker that owns partition p of mailbox.config reads
its cursors from partition p of connector.cursors alone.
"""

from __future__ import annotations

import asyncio
import zlib
from datetime import datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import decode_key, encode_key
from schemas.config import KafkaConfig
from schemas.mailbox import Cursor, CursorPosition, cursor_key
from schemas.topics import CONNECTOR_CURSORS, codec

_CODEC = codec(CONNECTOR_CURSORS)


class CursorStore:
    """Reads a partition's cursors and writes new ones (after their events were acked)."""

    def __init__(self, kafka: KafkaConfig, prefix: str, producer: AIOKafkaProducer) -> None:
        self.kafka = kafka
        self.topic = CONNECTOR_CURSORS.name(prefix)
        self.producer = producer

    async def load(self, partition: int, timeout_s: float = 60.0) -> dict[str, Cursor]:
        """The latest cursor of every key on `partition`, read up to its high watermark."""
        consumer = AIOKafkaConsumer(**self.kafka.consumer_options())
        await consumer.start()
        cursors: dict[str, Cursor] = {}
        try:
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            async with asyncio.timeout(timeout_s):
                while True:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    for message in batch.get(tp, []):
                        key = decode_key(message.key)
                        value = _CODEC.decode_nullable(
                            message.value, self.topic, partition, message.offset
                        )
                        if key is not None:
                            if value is None:
                                cursors.pop(key, None)
                            else:
                                cursors[key] = value
                    highwater = consumer.highwater(tp)
                    if highwater is not None and await consumer.position(tp) >= highwater:
                        return cursors
        finally:
            await consumer.stop()

    async def save(
        self,
        mailbox_id: str,
        folder: str,
        position: CursorPosition,
        partition: int,
        now: datetime,
    ) -> Cursor:
        """Write a folder's new position and wait until Kafka acknowledged it."""
        cursor = Cursor(mailbox_id=mailbox_id, folder=folder, position=position, updated_at=now)
        await (
            await self.producer.send(
                self.topic,
                key=encode_key(cursor_key(mailbox_id, folder)),
                value=_CODEC.encode(cursor),
                partition=partition,
            )
        )
        return cursor


def pack_names(names: set[str]) -> bytes:
    """A set of item names as a cursor stores it: sorted, newline-joined, zlib.

    Names that came from undecodable bytes (surrogate escapes) survive the trip.
    """
    return zlib.compress("\n".join(sorted(names)).encode("utf-8", "surrogateescape"), 6)


def unpack_names(packed: bytes, count: int) -> set[str]:
    """The set of names `pack_names` packed (`count` of them)."""
    if count == 0:
        return set()
    return set(zlib.decompress(packed).decode("utf-8", "surrogateescape").split("\n"))
