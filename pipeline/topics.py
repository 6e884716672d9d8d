"""Create tidings' topics (from the topic table) that do not exist yet.

Topics must exist before any client asks for them: tansu, like Kafka with
auto-creation on, would otherwise create them with its default partition count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.config import KafkaConfig
from schemas.topics import TOPICS, TopicSpec


def partitions_for(spec: TopicSpec[Any], kafka: KafkaConfig) -> int:
    """The partition count of a topic: its own, else the configured default."""
    return spec.partitions or kafka.partitions


async def ensure_topics(
    kafka: KafkaConfig,
    prefix: str,
    specs: Iterable[TopicSpec[Any]] = TOPICS,
    timeout_s: float = 60.0,
) -> list[str]:
    """Create the missing topics of `specs`; returns the names created. Retries until the
    broker answers or `timeout_s` passes."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(**kafka.common_options())
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [spec for spec in specs if spec.name(prefix) not in existing]
            if missing:
                await _create(admin, missing, kafka, prefix)
            return [spec.name(prefix) for spec in missing]
        except KafkaError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


async def _create(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec[Any]], kafka: KafkaConfig, prefix: str
) -> None:
    new_topics = [
        NewTopic(
            spec.name(prefix),
            partitions_for(spec, kafka),
            kafka.replication_factor,
            topic_configs=spec.configs(),
        )
        for spec in specs
    ]
    try:
        response = await admin.create_topics(new_topics)
    except TopicAlreadyExistsError:
        return
    for name, code, message in _errors(response):
        if code not in (0, TopicAlreadyExistsError.errno):
            raise KafkaError(f"cannot create topic {name}: error {code} {message or ''}".strip())


def _errors(response: Any) -> list[tuple[str, int, str | None]]:
    found: list[tuple[str, int, str | None]] = []
    for entry in getattr(response, "topic_errors", []):
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        found.append((name, code, message))
    return found
