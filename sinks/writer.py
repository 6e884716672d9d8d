"""The ClickHouse sink: decisions, activities, errors and mailbox status into tables.

Consumes promotion.decisions, crm.activities, sync.errors, mailbox.status and
outgoing.status in one consumer group. Rows are buffered per partition and flushed when a
partition's batch is full (`batch_max_rows`) or old (`batch_max_age_s`); the
offsets of a partition are committed (offset+1) only after ClickHouse confirmed
every row up to them. When inserts fail or the buffer reaches
`max_buffered_rows`, the sink pauses its partitions (backpressure) and resumes
by itself once an insert succeeds. Undecodable messages go to the DLQ before
their offset is committed; a run of them stops the sink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import metrics
from schemas.base import utc_now
from schemas.codec import Codec
from schemas.config import KafkaConfig, SinkConfig
from schemas.dlq import FloodGuard, dead_letter_headers
from schemas.errors import DecodeError
from schemas.topics import (
    CRM_ACT,
    CRM_ACTIVITIES,
    DLQ,
    MAILBOX_STATUS,
    OUTGOING_STATUS,
    PROMOTION_DECISIONS,
    SYNC_ERRORS,
    TopicSpec,
    codec,
)
from sinks.rows import (
    Row,
    act_record_row,
    activity_rows,
    decision_row,
    error_row,
    outgoing_status_row,
    poll_stats_rows,
    status_row,
)
from sinks.store import ClickHouseStore, StoreError

log = logging.getLogger(__name__)

TableRows = dict[str, list[Row]]


def _activity_table_rows(value: Any) -> TableRows:
    row, parties = activity_rows(value)
    return {"activities": [row], "activity_parties": parties}


@dataclass(frozen=True)
class _Route:
    codec: Codec[Any]
    to_rows: Callable[[Any], TableRows]


def routes(prefix: str) -> dict[str, _Route]:
    """How each consumed topic becomes rows."""
    table: list[tuple[TopicSpec[Any], Callable[[Any], TableRows]]] = [
        (PROMOTION_DECISIONS, lambda v: {"promotion_decisions": [decision_row(v)]}),
        (CRM_ACTIVITIES, _activity_table_rows),
        (SYNC_ERRORS, lambda v: {"sync_errors": [error_row(v)]}),
        (
            MAILBOX_STATUS,
            lambda v: {"mailbox_status": [status_row(v)], "poll_stats": poll_stats_rows(v)},
        ),
        (OUTGOING_STATUS, lambda v: {"outgoing_status": [outgoing_status_row(v)]}),
        (CRM_ACT, lambda v: {"act_records": [act_record_row(v)]}),
    ]
    return {spec.name(prefix): _Route(codec(spec), to_rows) for spec, to_rows in table}


@dataclass
class _Batch:
    rows: TableRows = field(default_factory=dict)
    count: int = 0
    next_offset: int | None = None
    opened_at: float = 0.0

    def add(self, table_rows: TableRows, offset: int) -> None:
        if self.count == 0:
            self.opened_at = time.monotonic()
        for table, rows in table_rows.items():
            self.rows.setdefault(table, []).extend(rows)
            self.count += len(rows)
        self.next_offset = offset + 1


@dataclass
class _Flight:
    """Batches detached for one insert; `task` is None while a failed insert waits to retry."""

    batches: dict[TopicPartition, _Batch]
    task: asyncio.Task[bool] | None = None

    @property
    def count(self) -> int:
        return sum(b.count for b in self.batches.values())


class ClickHouseSink:
    """Consumes the result topics into ClickHouse with commit-after-insert."""

    def __init__(
        self, kafka: KafkaConfig, prefix: str, settings: SinkConfig, store: ClickHouseStore
    ) -> None:
        self.kafka = kafka
        self.prefix = prefix
        self.settings = settings
        self.store = store
        self.routes = routes(prefix)
        self.dlq_topic = DLQ.name(prefix)
        self._batches: dict[TopicPartition, _Batch] = {}
        self._flight: _Flight | None = None
        self._flood = FloodGuard.from_settings(settings)
        self._paused = False
        self._failures = 0
        self._retry_at = 0.0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.rows_written = 0

    @property
    def buffered_rows(self) -> int:
        """Rows taken from Kafka and not yet confirmed by ClickHouse (buffered or in flight)."""
        flying = self._flight.count if self._flight is not None else 0
        return flying + sum(b.count for b in self._batches.values())

    @property
    def drained(self) -> bool:
        """True when every row taken so far is stored and its offset committed."""
        return self._flight is None and not self._batches

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then flush what is buffered and commit it."""
        self._producer = AIOKafkaProducer(**self.kafka.producer_options())
        await self._producer.start()
        consumer = AIOKafkaConsumer(
            *self.routes,
            group_id=self.settings.group_id,
            max_poll_records=self.settings.batch_max_rows,
            **self.kafka.consumer_options(),
        )
        self._consumer = consumer
        await consumer.start()
        try:
            while not stop.is_set():
                # while an insert is in flight, look again soon: its end frees the next
                fetched = await consumer.getmany(timeout_ms=100 if self._flight is None else 5)
                for tp, messages in fetched.items():
                    await self._take(tp, messages)
                await self._flush(caught_up=not fetched)
            await self._drain(retries=3)
        finally:
            if self._flight is not None and self._flight.task is not None:
                self._flight.task.cancel()
            await consumer.stop()
            await self._producer.stop()

    async def _take(self, tp: TopicPartition, messages: list[Any]) -> None:
        """Decode `messages` of one partition into its batch. A tombstone (a removed
        mailbox's status, say) changes no table: the rows keep the last state known."""
        route = self.routes[tp.topic]
        batch = self._batches.setdefault(tp, _Batch())
        for message in messages:
            if message.value is None:
                batch.next_offset = message.offset + 1
                continue
            try:
                value = route.codec.decode(message.value, tp.topic, tp.partition, message.offset)
            except DecodeError as exc:
                await self._dead_letter(message, exc)
                batch.next_offset = message.offset + 1
                continue
            self._flood.decoded()
            batch.add(route.to_rows(value), message.offset)
        self._update_buffer_metrics()

    def _due(self, batch: _Batch) -> bool:
        age = time.monotonic() - batch.opened_at
        return batch.count >= self.settings.batch_max_rows or (
            batch.next_offset is not None
            and (batch.count == 0 or age >= self.settings.batch_max_age_s)
        )

    async def _flush(self, caught_up: bool = False) -> None:
        """Settle the insert in flight; then, when none is, start one for the due batches:
        full or old ones, or every one when the last fetch brought nothing (`caught_up`:
        no more rows would join them by waiting).

        One insert is in flight at a time, on the store's thread, while this loop
        goes on fetching and decoding; its partitions' offsets are committed once
        ClickHouse confirmed it. A failed insert is retried alone, first (0.5 s
        doubling, at most 30 s), so a partition's offsets are committed in order;
        meanwhile new rows only buffer, and the partitions pause at
        `max_buffered_rows`.
        """
        if self._flight is not None and not await self._settle(wait=False):
            self._apply_backpressure(failed=self._failures > 0)
            return
        due = self._take_due(due_only=not caught_up)
        if due:
            self._flight = _Flight(due)
            self._flight.task = asyncio.create_task(self._insert_all(due))
        self._apply_backpressure(failed=False)

    async def _drain(self, retries: int) -> None:
        """At stop: settle the insert in flight, then insert and commit everything buffered."""
        if self._flight is None:
            due = self._take_due(due_only=False)
            self._flight = _Flight(due) if due else None
        attempts = 0
        while self._flight is not None and attempts < retries:
            if self._flight.task is None:
                await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
                attempts += 1
            if await self._settle(wait=True) and self._batches:
                self._flight = _Flight(self._take_due(due_only=False))

    async def _settle(self, wait: bool) -> bool:
        """Finish the insert in flight if it is done (or `wait`): commit its offsets on
        success; start its retry when due. True when nothing is in flight any more."""
        flight = self._flight
        assert flight is not None and self._consumer is not None
        if flight.task is None:
            if time.monotonic() < self._retry_at and not wait:
                return False
            flight.task = asyncio.create_task(self._insert_all(flight.batches))
        if not (wait or flight.task.done()):
            return False
        if not await flight.task:
            flight.task = None
            return False
        offsets = {tp: b.next_offset for tp, b in flight.batches.items() if b.next_offset}
        await self._consumer.commit(offsets)
        self._flight = None
        return True

    def _take_due(self, due_only: bool) -> dict[TopicPartition, _Batch]:
        """Detach the batches due for insertion (all of them when not `due_only`)."""
        due = {
            tp: b
            for tp, b in self._batches.items()
            if b.next_offset is not None and (not due_only or self._due(b))
        }
        for tp in due:
            del self._batches[tp]
        return due

    async def _insert_all(self, due: dict[TopicPartition, _Batch]) -> bool:
        merged: TableRows = {}
        for batch in due.values():
            for table, rows in batch.rows.items():
                merged.setdefault(table, []).extend(rows)
        try:
            for table, rows in merged.items():
                await self._insert(table, rows)
        except StoreError as exc:
            self._failures += 1
            self._retry_at = time.monotonic() + min(30.0, 0.5 * 2 ** (self._failures - 1))
            log.error("ClickHouse insert failed (%d in a row): %s", self._failures, exc)
            self._apply_backpressure(failed=True)
            return False
        self._failures = 0
        self._retry_at = 0.0
        self.rows_written += sum(len(rows) for rows in merged.values())
        return True

    async def _insert(self, table: str, rows: list[Row]) -> None:
        started = time.monotonic()
        try:
            await self.store.insert(table, rows)
        except StoreError:
            metrics.SINK_INSERT_FAILURES.labels(table).inc()
            raise
        metrics.SINK_INSERT_SECONDS.labels(table).observe(time.monotonic() - started)
        metrics.SINK_ROWS.labels(table).inc(len(rows))

    def _apply_backpressure(self, failed: bool) -> None:
        assert self._consumer is not None
        buffered = self._update_buffer_metrics()
        should_pause = failed or buffered >= self.settings.max_buffered_rows
        if should_pause and not self._paused:
            self._consumer.pause(*self._consumer.assignment())
            self._paused = True
            metrics.SINK_PAUSED.set(1)
            log.warning("sink paused: %d rows buffered, inserts failing: %s", buffered, failed)
        elif not should_pause and self._paused:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False
            metrics.SINK_PAUSED.set(0)
            log.info("sink resumed")

    def _update_buffer_metrics(self) -> int:
        buffered = self.buffered_rows
        metrics.SINK_BUFFERED_ROWS.set(buffered)
        return buffered

    async def _dead_letter(self, message: Any, exc: DecodeError) -> None:
        assert self._producer is not None
        headers = dead_letter_headers(
            topic=exc.topic,
            partition=exc.partition,
            offset=exc.offset,
            error=exc.reason,
            consumer=self.settings.group_id,
            failed_at=utc_now(),
        )
        await (
            await self._producer.send(
                self.dlq_topic, key=message.key, value=message.value, headers=headers
            )
        )
        metrics.DLQ_MESSAGES.labels(exc.topic, self.settings.group_id).inc()
        log.error("dead-lettered %s", exc)
        self._flood.dead_lettered(exc.topic)
