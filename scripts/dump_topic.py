"""Print every message of a topic (debugging aid): partition, offset, key, value head."""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.bootstrap import bring_up
from pipeline.config import load_config


async def dump(bootstrap_config, topic: str, width: int) -> None:
    consumer = AIOKafkaConsumer(**bootstrap_config.kafka.consumer_options())
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(bootstrap_config.kafka.partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for tp, messages in sorted(batch.items()):
                for m in messages:
                    value = (m.value or b"<tombstone>")[:width]
                    print(f"p{tp.partition}@{m.offset} key={m.key!r} {value!r}")
    finally:
        await consumer.stop()


if __name__ == "__main__":
    infra = bring_up(load_config(), create_topics=False)
    try:
        asyncio.run(dump(infra.config, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 160))
    finally:
        infra.close()
