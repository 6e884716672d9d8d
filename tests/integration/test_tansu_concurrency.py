"""Several producers appending to one partition of the embedded broker at once.

tansu on S3 storage refused about a third of such appends (UNKNOWN_SERVER_ERROR,
not retried by Kafka clients) and, behind localbucket, two appends could be
given the same offsets. pipeline/tansu_compat.py retries the refusal and
pipeline/localbucket_server.py honours If-Match, so every send is acknowledged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaProducer

from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from schemas.config import TidingsConfig
from schemas.topics import SYNC_ERRORS

PRODUCERS = 3
RECORDS = 300


async def produce(config: TidingsConfig, name: int) -> int:
    """Send RECORDS records to partition 0; how many were acknowledged."""
    producer = AIOKafkaProducer(**config.kafka.producer_options(linger_ms=5))
    await producer.start()
    try:
        futures = []
        for n in range(RECORDS):
            key = f"{name}-{n}".encode()
            topic = SYNC_ERRORS.name(config.topic_prefix)
            futures.append(await producer.send(topic, key=key, value=b"x" * 300, partition=0))
            if n % 20 == 0:
                await asyncio.sleep(0.01)
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await producer.stop()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"producer {name}: {len(failures)} refused, e.g. {failures[0]!r}"
    return len(results)


async def produce_together(config: TidingsConfig) -> list[int]:
    return list(await asyncio.gather(*(produce(config, n) for n in range(PRODUCERS))))


def test_concurrent_appends_to_one_partition_are_all_acknowledged(tmp_path: Path) -> None:
    config = load_config(env={"TIDINGS_DATA_DIR": str(tmp_path / "data")})
    infra = bring_up(config)
    try:
        assert infra.config.kafka.is_tansu
        assert asyncio.run(produce_together(infra.config)) == [RECORDS] * PRODUCERS
    finally:
        infra.close()
