"""The dead-letter format: the original key and bytes, with headers saying where they
came from; the headers of a replayed or reinserted letter; and the flood guard every
consumer that dead-letters runs."""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Protocol

import msgspec

from schemas.errors import StopAndAlert

HEADER_TOPIC = "tidings.dlq.topic"
HEADER_PARTITION = "tidings.dlq.partition"
HEADER_OFFSET = "tidings.dlq.offset"
HEADER_ERROR = "tidings.dlq.error"
HEADER_CONSUMER = "tidings.dlq.consumer"
HEADER_FAILED_AT = "tidings.dlq.failed_at"
HEADER_REPLAY_ATTEMPTS = "tidings.dlq.replay_attempts"
"""On a letter `tidings dlq replay --policy reinsert` put back: replays it failed so far."""
HEADER_REPLAYED_FROM = "tidings.dlq.replayed_from"
"""On a message replayed to its original topic: the dead letter it came from, `P@O` on the DLQ."""

DEFAULT_MAX_CONSECUTIVE = 100
DEFAULT_MAX_RATIO = 0.5
DEFAULT_RATIO_WINDOW = 200
DEFAULT_RATIO_MIN_MESSAGES = 50


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
    replay_attempts: int = 0

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
            partition=_int(found.get(HEADER_PARTITION), -1),
            offset=_int(found.get(HEADER_OFFSET), -1),
            error=found.get(HEADER_ERROR, ""),
            consumer=found.get(HEADER_CONSUMER, ""),
            failed_at=found.get(HEADER_FAILED_AT, ""),
            key=key,
            value=value,
            dlq_partition=dlq_partition,
            dlq_offset=dlq_offset,
            replay_attempts=_int(found.get(HEADER_REPLAY_ATTEMPTS), 0),
        )

    @property
    def where(self) -> str:
        """Where the letter sits on the DLQ, `dlq[P]@O`."""
        return f"dlq[{self.dlq_partition}]@{self.dlq_offset}"

    @property
    def origin(self) -> str:
        """Where the original message sat, `topic[P]@O`."""
        return f"{self.topic or '?'}[{self.partition}]@{self.offset}"

    def replayed_headers(self) -> list[tuple[str, bytes]]:
        """Headers of the message replayed to the original topic: only where it came
        from on the DLQ (the key and value stay the original bytes)."""
        return [(HEADER_REPLAYED_FROM, f"{self.dlq_partition}@{self.dlq_offset}".encode())]

    def reinsert_headers(self, error: str) -> list[tuple[str, bytes]]:
        """Headers of this letter put back on the DLQ after a failed replay: the same
        origin, consumer and first failure time, the latest error, one more attempt."""
        return [
            (HEADER_TOPIC, self.topic.encode()),
            (HEADER_PARTITION, str(self.partition).encode()),
            (HEADER_OFFSET, str(self.offset).encode()),
            (HEADER_ERROR, error.encode()[:4096]),
            (HEADER_CONSUMER, self.consumer.encode()),
            (HEADER_FAILED_AT, self.failed_at.encode()),
            (HEADER_REPLAY_ATTEMPTS, str(self.replay_attempts + 1).encode()),
        ]


def _int(text: str | None, default: int) -> int:
    """A header's integer, `default` when it is missing or not a number."""
    try:
        return int(text) if text else default
    except ValueError:
        return default


class DeadLetterFlood(StopAndAlert):
    """Too many undecodable messages, in a row or as a share of recent ones: something
    systemic is wrong upstream."""


class FloodSettings(Protocol):
    """The config fields a FloodGuard is built from (ProcessingConfig, SinkConfig)."""

    @property
    def dlq_max_consecutive(self) -> int: ...
    @property
    def dlq_max_ratio(self) -> float: ...
    @property
    def dlq_ratio_window(self) -> int: ...
    @property
    def dlq_ratio_min_messages(self) -> int: ...


class FloodGuard:
    """Stops a consumer that dead-letters too much, by two rules:

    - consecutive: the `limit`-th dead letter in a row raises DeadLetterFlood;
    - ratio: of the last `window` messages, more than `max_ratio` dead-lettered
      raises it too, once at least `min_messages` messages were seen (so the
      first bad message after a start is not 100 %). `max_ratio` 1.0 turns the
      ratio rule off.

    A consumer calls `dead_lettered` after sending a message to the DLQ and
    `decoded` after every message it could read, so isolated bad messages pass
    while a stream of them — or a steady share of them among good ones, as when
    one of several producers is broken — stops the consumer instead of emptying
    a topic into the DLQ. Pure: no clock, no I/O.
    """

    def __init__(
        self,
        limit: int = DEFAULT_MAX_CONSECUTIVE,
        *,
        max_ratio: float = DEFAULT_MAX_RATIO,
        window: int = DEFAULT_RATIO_WINDOW,
        min_messages: int = DEFAULT_RATIO_MIN_MESSAGES,
    ) -> None:
        if limit < 1:
            raise ValueError(f"dlq_max_consecutive must be at least 1, not {limit}")
        if not 0.0 <= max_ratio <= 1.0:
            raise ValueError(f"dlq_max_ratio must be between 0 and 1, not {max_ratio}")
        if window < 1 or min_messages < 1:
            raise ValueError("dlq_ratio_window and dlq_ratio_min_messages must be at least 1")
        self.limit = limit
        self.max_ratio = max_ratio
        self.window = window
        self.min_messages = min(min_messages, window)
        self.in_a_row = 0
        self.dead_in_window = 0
        self._recent: deque[bool] = deque(maxlen=window)

    @classmethod
    def from_settings(cls, settings: FloodSettings) -> FloodGuard:
        """The guard a config section asks for."""
        return cls(
            settings.dlq_max_consecutive,
            max_ratio=settings.dlq_max_ratio,
            window=settings.dlq_ratio_window,
            min_messages=settings.dlq_ratio_min_messages,
        )

    @property
    def seen_in_window(self) -> int:
        """Messages in the sliding window (at most `window`)."""
        return len(self._recent)

    @property
    def ratio(self) -> float:
        """Share of the window's messages that were dead-lettered (0.0 when empty)."""
        return self.dead_in_window / len(self._recent) if self._recent else 0.0

    def decoded(self) -> None:
        """A message was read fine: the run is broken and the window gains a good one."""
        self.in_a_row = 0
        self._record(dead=False)

    def dead_lettered(self, topic: str) -> None:
        """A message went to the DLQ; raises DeadLetterFlood when either rule trips."""
        self.in_a_row += 1
        self._record(dead=True)
        if self.in_a_row >= self.limit:
            raise DeadLetterFlood(
                f"{self.in_a_row} undecodable messages in a row on {topic}; stopping. "
                "Inspect them with `tidings dlq list`, fix the producer, restart, "
                "then `tidings dlq replay`."
            )
        seen = len(self._recent)
        if seen >= self.min_messages and self.dead_in_window > self.max_ratio * seen:
            raise DeadLetterFlood(
                f"{self.dead_in_window} of the last {seen} messages were undecodable "
                f"({self.ratio:.0%}, more than dlq_max_ratio {self.max_ratio:.0%}), "
                f"the latest on {topic}; stopping. Inspect them with `tidings dlq list`, "
                "fix the producer, restart, then `tidings dlq replay`."
            )

    def _record(self, *, dead: bool) -> None:
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self.dead_in_window -= 1
        self._recent.append(dead)
        self.dead_in_window += dead
