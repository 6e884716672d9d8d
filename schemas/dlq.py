"""The dead-letter format: the original key and bytes, with headers saying where they came from."""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.errors import StopAndAlert

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


class DeadLetterFlood(StopAndAlert):
    """Too many undecodable messages in a row: something systemic is wrong upstream."""


class FloodGuard:
    """Counts dead letters in a row; the `limit`-th one raises DeadLetterFlood.

    A consumer calls `dead_lettered` after sending a message to the DLQ and
    `decoded` after every message it could read, so isolated bad messages pass
    while a stream of them stops the consumer instead of emptying a topic into
    the DLQ.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0

    def decoded(self) -> None:
        """A message was read fine: the run is broken."""
        self.in_a_row = 0

    def dead_lettered(self, topic: str) -> None:
        """A message went to the DLQ; raises DeadLetterFlood at the limit."""
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise DeadLetterFlood(
                f"{self.in_a_row} undecodable messages in a row on {topic}; stopping. "
                "Inspect them with `tidings dlq list`, fix the producer, then restart."
            )
