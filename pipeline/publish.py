"""Publish records to a topic from the CLI (CRM import, mailbox admin), acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.codec import encode_key
from schemas.config import KafkaConfig
from schemas.topics import TopicSpec, codec


async def publish(
    kafka: KafkaConfig,
    prefix: str,
    spec: TopicSpec[Any],
    records: Iterable[tuple[str, Any | None]],
    timeout_s: float = 60.0,
) -> int:
    """Send (key, value) pairs (None = tombstone), wait for every ack; returns the count."""
    value_codec = codec(spec)
    producer = AIOKafkaProducer(**kafka.producer_options())
    await producer.start()
    try:
        futures = [
            await producer.send(
                spec.name(prefix),
                key=encode_key(key),
                value=None if value is None else value_codec.encode(value),
            )
            for key, value in records
        ]
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()
