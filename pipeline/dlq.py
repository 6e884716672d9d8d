"""Read the dead-letter topic for `tidings dlq list`."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.idle import topic_partitions
from schemas.config import TidingsConfig
from schemas.dlq import DeadLetter
from schemas.topics import DLQ


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


async def _at_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    for tp in partitions:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True
