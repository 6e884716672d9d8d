"""The ClickHouse sink when ClickHouse fails: on the real broker (tansu) into real chDB,
inserts fail N times. The sink pauses its partitions instead of buffering without
bound, commits nothing it has not inserted, resumes by itself, and ends with every
row exactly once; replaying the topic from the start changes no query result."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.bootstrap import Infrastructure, bring_up
from pipeline.config import load_config
from pipeline.publish import publish
from schemas.config import TidingsConfig
from schemas.mailbox import MailboxCounters, MailboxStatus, SyncState
from schemas.topics import MAILBOX_STATUS
from sinks.rows import Row
from sinks.store import ClickHouseStore, StoreError
from sinks.writer import ClickHouseSink

MAILBOXES = 600
FAILURES = 4
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class FailingStore(ClickHouseStore):
    """chDB whose first `failures` inserts fail as a server under stress would."""

    def __init__(self, dsn: str, config: TidingsConfig, failures: int) -> None:
        super().__init__(dsn, config.clickhouse)
        self.failures_left = failures
        self.attempts = 0

    async def insert(self, table: str, rows: Sequence[Row]) -> None:
        self.attempts += 1
        if self.failures_left > 0:
            self.failures_left -= 1
            raise StoreError("ClickHouse failed: Code: 252. Too many parts (test)")
        await super().insert(table, rows)


@pytest.fixture
def infra(tmp_path: Path) -> Iterator[Infrastructure]:
    env = {"TIDINGS_DATA_DIR": str(tmp_path / "data"), "TIDINGS_EMBEDDED__STORAGE": "memory"}
    up = bring_up(load_config(env=env))
    try:
        yield up
    finally:
        up.close()


def status(n: int) -> MailboxStatus:
    finished = T0 + timedelta(seconds=n)
    return MailboxStatus(
        mailbox_id=f"mb-{n:04d}",
        state=SyncState.ENABLED,
        last_sync_started_at=finished - timedelta(seconds=1),
        last_sync_at=finished,
        sync_generation=1,
        counters=MailboxCounters(items_listed=n),
        updated_at=finished,
    )


async def publish_statuses(config: TidingsConfig) -> None:
    statuses = [(f"mb-{n:04d}", status(n)) for n in range(MAILBOXES)]
    await publish(config.kafka, config.topic_prefix, MAILBOX_STATUS, statuses)


@dataclass
class Seen:
    """What the sink went through on the way."""

    paused: bool = False
    paused_at_end: bool = False
    most_buffered: int = 0
    committed_while_failing: list[int] = field(default_factory=list)


async def run_sink(config: TidingsConfig, store: ClickHouseStore, group: str) -> Seen:
    """Run the sink (group `group`) until every status is stored."""
    settings = msgspec.structs.replace(
        config.sinks, batch_max_rows=50, max_buffered_rows=200, group_id=group
    )
    sink = ClickHouseSink(config.kafka, config.topic_prefix, settings, store)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    seen = Seen()
    async with asyncio.timeout(120):
        while True:
            await asyncio.sleep(0.05)
            buffered = sink.buffered_rows
            seen.most_buffered = max(seen.most_buffered, buffered)
            seen.paused |= sink._paused
            if isinstance(store, FailingStore) and store.failures_left > 0 and sink._consumer:
                seen.committed_while_failing += [
                    offset
                    for tp in sink._consumer.assignment()
                    if (offset := await sink._consumer.committed(tp)) is not None
                ]
            rows = await store.query("SELECT count() FROM tidings.mailbox_status FINAL")
            if rows.rows[0][0] >= MAILBOXES and sink.drained:
                break
    seen.paused_at_end = sink._paused
    stop.set()
    await task
    return seen


async def results(store: ClickHouseStore) -> list[list[tuple[object, ...]]]:
    queries = (
        "SELECT count(), uniqExact(mailbox_id), sum(items_listed) "
        "FROM tidings.mailbox_status FINAL",
        "SELECT count(), sum(duration_ms) FROM tidings.poll_stats FINAL",
    )
    return [(await store.query(sql)).rows for sql in queries]


def test_failing_inserts_pause_the_sink_then_it_resumes_and_stores_each_row_once(
    infra: Infrastructure, tmp_path: Path
) -> None:
    config = infra.config
    dsn = f"chdb://{tmp_path / 'clickhouse'}"

    async def scenario() -> None:
        await publish_statuses(config)
        store = FailingStore(dsn, config, FAILURES)
        await store.open()
        try:
            seen = await run_sink(config, store, "sink-faults")
            assert store.attempts > FAILURES
            assert seen.paused, "the sink kept fetching while ClickHouse failed"
            assert not seen.paused_at_end, "the sink did not resume by itself"
            # Bounded: the limit plus what one fetch per partition may bring.
            assert seen.most_buffered <= 200 + 50 * config.kafka.partitions, seen
            assert not any(seen.committed_while_failing), "committed before inserting"
            first = await results(store)
            assert first[0] == [(MAILBOXES, MAILBOXES, sum(range(MAILBOXES)))]
            assert first[1] == [(MAILBOXES, MAILBOXES * 1000)]
        finally:
            store.close()

        # Replay the whole topic into the same tables (a new group reads from the start).
        again = ClickHouseStore(dsn, config.clickhouse)
        await again.open()
        try:
            seen = await run_sink(config, again, "sink-replay")
            assert not seen.paused
            assert await results(again) == first
        finally:
            again.close()

    asyncio.run(scenario())


def test_offsets_follow_inserts(infra: Infrastructure, tmp_path: Path) -> None:
    """After the sink stops, its group's committed offsets are the topic's end: every
    row it committed is in ClickHouse, and nothing is left uncommitted."""
    config = infra.config

    async def scenario() -> None:
        await publish_statuses(config)
        store = ClickHouseStore(f"chdb://{tmp_path / 'clickhouse'}", config.clickhouse)
        await store.open()
        try:
            await run_sink(config, store, "sink-offsets")
        finally:
            store.close()
        topic = MAILBOX_STATUS.name(config.topic_prefix)
        consumer = AIOKafkaConsumer(group_id="sink-offsets", **config.kafka.consumer_options())
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(config.kafka.partitions)]
            ends = await consumer.end_offsets(partitions)
            committed = {tp: await consumer.committed(tp) or 0 for tp in partitions}
        finally:
            await consumer.stop()
        assert committed == ends

    asyncio.run(scenario())
