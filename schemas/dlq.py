"""The dead-letter format: the original key and bytes, with headers saying where they came from."""

from __future__ import annotations

from datetime import datetime

import msgspec

HEADER_TOPIC = "tidings.dlq.topic"
HEADER_PARTITION = "tidings.dlq.partition"
HEADER_OFFSET = "tidings.dlq.offset"
HEADER_ERROR = "tidings.dlq.error"
HEADER_CONSUMER = "tidings.dlq.consumer"
HEADER_FAILED_AT = "tidings.dlq.failed_at"


def dead_letter_headers(
    *, topic: str, partition: int, offset: int, error: str, consumer: str, failed_at: datetime
) -> list[tuple[str, bytes]]:
    """Kafka headers for a dead letter: origin, error and the consumer that gave up."""
    return [
        (HEADER_TOPIC, topic.encode()),
        (HEADER_PARTITION, str(partition).encode()),
        (HEADER_OFFSET, str(offset).encode()),
        (HEADER_ERROR, error.encode()[:4096]),
        (HEADER_CONSUMER, consumer.encode()),
        (HEADER_FAILED_AT, failed_at.isoformat().encode()),
    ]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A dead letter read back from the dlq topic."""

    topic: str
    partition: int
    offset: int
    error: str
    consumer: str
    failed_at: str
    key: bytes | None
    value: bytes | None
    dlq_partition: int
    dlq_offset: int

    @classmethod
    def from_headers(
        cls,
        headers: list[tuple[str, bytes]],
        key: bytes | None,
        value: bytes | None,
        dlq_partition: int,
        dlq_offset: int,
    ) -> DeadLetter:
        """Rebuild a dead letter from its Kafka headers; missing headers read as empty."""
        found = {name: raw.decode(errors="replace") for name, raw in headers}
        return cls(
            topic=found.get(HEADER_TOPIC, ""),
            partition=int(found.get(HEADER_PARTITION) or -1),
            offset=int(found.get(HEADER_OFFSET) or -1),
            error=found.get(HEADER_ERROR, ""),
            consumer=found.get(HEADER_CONSUMER, ""),
            failed_at=found.get(HEADER_FAILED_AT, ""),
            key=key,
            value=value,
            dlq_partition=dlq_partition,
            dlq_offset=dlq_offset,
        )
