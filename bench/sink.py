"""Sink benchmark: rows per second into chDB through the ClickHouse sink, next to a raw
clickhouse-connect insert of the same rows, in the same run.

An embedded tansu broker (localbucket S3 storage by default, or memory) in a
temporary data directory holds N items' worth of sink input, as the processors
and connectors write it: a PromotionDecision per item, an Activity (three
parties, one of them resolved to two records) for 60% of them, a SyncError for
5%, and a MailboxStatus per 20 items (which also yields a poll_stats row). One
chDB engine in this process then takes, one after the other:

* raw: `client.insert(table, rows, column_names=...)` of the very rows the sink
  writes (built with sinks/rows.py beforehand, not timed), in batches of the
  sink's batch size per table, into a database of its own; run before and
  after the sink, its rate is the mean;
* store: ClickHouseStore.insert of the same rows in the same batches (the
  sink's insert path without Kafka);
* sink: ClickHouseSink (sinks/writer.py, default SinkConfig) consuming the four
  topics from offset 0 and inserting through ClickHouseStore into chDB, timed
  from the start of its first insert to the commit that covers the last offset
  of every partition (start-up and group join excluded).

Prints rows/s for each, the sink / raw ratio (aim: at least 0.7), CPU per row
of this process over each span (chDB's threads included; before each phase the
bench waits for chDB's background merges of the previous one to finish) and the
broker's CPU per row while the sink ran. `--profile FILE` samples this process with py-spy
while the sink runs (collapsed stacks). Figures go to bench/results/sink.json.

    python bench/sink.py [--items N] [--storage s3|memory] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clickhouse_connect
from aiokafka import AIOKafkaConsumer, TopicPartition

import sinks.writer
from bench.pipeline_rate import bench_env, broker_processes, cpu_seconds, py_spy
from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from pipeline.publish import publish
from schemas.base import RecordRef
from schemas.config import ClickHouseConfig, TidingsConfig
from schemas.crm import (
    Activity,
    ActivityParty,
    CorrelationMethod,
    DecisionStatus,
    Direction,
    PartyRole,
    PromotionDecision,
    ReasonCode,
)
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.mailbox import MailboxCounters, MailboxStatus, RunStatus, SyncState
from schemas.topics import CRM_ACTIVITIES, MAILBOX_STATUS, PROMOTION_DECISIONS, SYNC_ERRORS
from sinks.migrations import apply_migrations
from sinks.rows import (
    COLUMNS,
    Row,
    activity_rows,
    decision_row,
    error_row,
    poll_stats_rows,
    status_row,
)
from sinks.store import ClickHouseStore
from sinks.writer import ClickHouseSink

RESULTS = Path(__file__).resolve().parent / "results" / "sink.json"
console = Console()
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MAILBOXES = 50
SINK_TIMEOUT_S = 900.0


# -- the input -------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """The sink's input per topic, and the rows it becomes per table."""

    decisions: list[PromotionDecision]
    activities: list[Activity]
    errors: list[SyncError]
    statuses: list[MailboxStatus]

    def rows(self) -> dict[str, list[Row]]:
        tables: dict[str, list[Row]] = {table: [] for table in COLUMNS}
        for activity in self.activities:
            row, parties = activity_rows(activity)
            tables["activities"].append(row)
            tables["activity_parties"].extend(parties)
        tables["promotion_decisions"] = [decision_row(d) for d in self.decisions]
        tables["sync_errors"] = [error_row(e) for e in self.errors]
        for status in self.statuses:
            tables["mailbox_status"].append(status_row(status))
            tables["poll_stats"].extend(poll_stats_rows(status))
        return tables


def activity(n: int) -> Activity:
    mailbox = f"mb-{n % MAILBOXES}"
    return Activity(
        activity_id=f"act-{n:08d}",
        version=1,
        message_id=f"m{n}@contoso.example",
        subject=f"RE: Quote {n} for the spring order",
        description="Thanks, the quote looks fine. " * 8,
        direction=Direction.INCOMING,
        parties=[
            ActivityParty(
                role=PartyRole.FROM,
                address=f"contact{n % 2000}@contoso.example",
                name=f"Contact {n % 2000}",
                records=[RecordRef("contact", f"c-{n % 2000}")],
            ),
            ActivityParty(
                role=PartyRole.TO,
                address=f"user{n % MAILBOXES}@nw.example",
                name=f"User {n % MAILBOXES}",
                records=[RecordRef("user", f"u-{n % MAILBOXES}"), RecordRef("queue", "sales")],
            ),
            ActivityParty(role=PartyRole.CC, address="someone@else.example"),
        ],
        sent_at=T0 + timedelta(seconds=n),
        owner=RecordRef("user", f"u-{n % MAILBOXES}"),
        regarding=RecordRef("opportunity", f"opp-{n % 300}"),
        conversation_id=f"act-{n - n % 4:08d}",
        correlation_method=CorrelationMethod.IN_REPLY_TO,
        correlated_activity_id=f"act-{max(0, n - 1):08d}",
        in_reply_to=f"m{max(0, n - 1)}@contoso.example",
        receiving_mailboxes=[mailbox],
        created_at=T0 + timedelta(seconds=n),
        updated_at=T0 + timedelta(seconds=n),
    )


def decision(n: int, promoted: bool) -> PromotionDecision:
    mailbox = f"mb-{n % MAILBOXES}"
    return PromotionDecision(
        item_key=f"{mailbox}|INBOX|{n}",
        mailbox_id=mailbox,
        folder="INBOX",
        item_id=str(n),
        event_id=f"ev-{n:08d}",
        message_id=f"m{n}@contoso.example",
        status=DecisionStatus.PROMOTED if promoted else DecisionStatus.SKIPPED,
        reason=ReasonCode.CORRELATION_MATCH if promoted else ReasonCode.NO_CORRELATION_MATCH,
        explanation="replies to tracked email" if promoted else "no tracked email to answer",
        activity_id=f"act-{n:08d}" if promoted else None,
        correlation_method=CorrelationMethod.IN_REPLY_TO if promoted else CorrelationMethod.NONE,
        direction=Direction.INCOMING,
        sender=ActivityParty(
            role=PartyRole.FROM,
            address=f"contact{n % 2000}@contoso.example",
            records=[RecordRef("contact", f"c-{n % 2000}")],
        ),
        decided_at=T0 + timedelta(seconds=n),
    )


def error(n: int) -> SyncError:
    return SyncError(
        error_id=f"err-{n:08d}",
        mailbox_id=f"mb-{n % MAILBOXES}",
        scope=ErrorScope.ITEM,
        severity=Severity.PERMANENT,
        code="Malformed",
        message="the MIME boundary never appears",
        component="processors",
        folder="INBOX",
        item_id=str(n),
        event_id=f"ev-{n:08d}",
        occurred_at=T0 + timedelta(seconds=n),
    )


def status(n: int) -> MailboxStatus:
    finished = T0 + timedelta(seconds=n)
    return MailboxStatus(
        mailbox_id=f"mb-{n % MAILBOXES}",
        state=SyncState.ENABLED,
        incoming_status=RunStatus.SUCCESS,
        last_sync_started_at=finished - timedelta(seconds=2),
        last_sync_at=finished,
        last_success_at=finished,
        next_poll_at=finished + timedelta(minutes=5),
        sync_generation=n,
        counters=MailboxCounters(items_listed=n, created_events=n),
        worker="w-1",
        updated_at=finished,
    )


def make_input(items: int) -> Input:
    """Decisions for `items` items: 60% promoted (with an activity), 5% with an error,
    and a mailbox status per 20 items."""
    promoted = [n % 5 < 3 for n in range(items)]
    return Input(
        decisions=[decision(n, promoted[n]) for n in range(items)],
        activities=[activity(n) for n in range(items) if promoted[n]],
        errors=[error(n) for n in range(items) if n % 20 == 7],
        statuses=[status(n) for n in range(0, items, 20)],
    )


async def preload(config: TidingsConfig, data: Input) -> None:
    prefix, kafka = config.topic_prefix, config.kafka
    await publish(
        kafka, prefix, PROMOTION_DECISIONS, [(d.item_key, d) for d in data.decisions], 600
    )
    await publish(kafka, prefix, CRM_ACTIVITIES, [(a.activity_id, a) for a in data.activities], 600)
    await publish(kafka, prefix, SYNC_ERRORS, [(e.mailbox_id, e) for e in data.errors], 600)
    await publish(kafka, prefix, MAILBOX_STATUS, [(s.mailbox_id, s) for s in data.statuses], 600)


# -- measuring ---------------------------------------------------------------------


@dataclass
class Span:
    """Rows written between two instants, with this process's CPU over them."""

    rows: int
    wall_s: float
    cpu_s: float
    inserts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def cpu_us_per_row(self) -> float:
        return self.cpu_s / self.rows * 1e6

    def figures(self) -> dict[str, Any]:
        return {
            "rows_per_s": round(self.per_s),
            "rows": self.rows,
            "seconds": round(self.wall_s, 3),
            "cpu_us_per_row": round(self.cpu_us_per_row, 2),
            "inserts": self.inserts,
            **self.extra,
        }


def batches(rows: Sequence[Row], size: int) -> Iterator[Sequence[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def quiesce(client: Any, limit_s: float = 60.0) -> None:
    """Wait until chDB runs no merge, so a phase's CPU is not the previous phase's merges."""
    deadline = time.monotonic() + limit_s
    while client.command("SELECT count() FROM system.merges") and time.monotonic() < deadline:
        time.sleep(0.1)


def raw_insert(client: Any, database: str, tables: dict[str, list[Row]], size: int) -> Span:
    """clickhouse-connect's plain row insert of every table's rows, `size` rows at a time."""
    inserts = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for table, rows in tables.items():
        for batch in batches(rows, size):
            client.insert(f"{database}.{table}", batch, column_names=list(COLUMNS[table]))
            inserts += 1
    total = sum(len(rows) for rows in tables.values())
    return Span(total, time.perf_counter() - wall, time.process_time() - cpu, inserts)


async def store_insert(store: ClickHouseStore, tables: dict[str, list[Row]], size: int) -> Span:
    """ClickHouseStore.insert of the same rows in the same batches."""
    inserts = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for table, rows in tables.items():
        for batch in batches(rows, size):
            await store.insert(table, batch)
            inserts += 1
    total = sum(len(rows) for rows in tables.values())
    return Span(total, time.perf_counter() - wall, time.process_time() - cpu, inserts)


class TimedStore(ClickHouseStore):
    """ClickHouseStore that notes when the first insert started and counts inserts."""

    first_insert_at: float | None = None
    first_insert_cpu: float = 0.0
    inserts: int = 0

    async def insert(self, table: str, rows: Sequence[Row]) -> None:
        if self.first_insert_at is None:
            self.first_insert_at = time.perf_counter()
            self.first_insert_cpu = time.process_time()
        self.inserts += 1
        await super().insert(table, rows)


class CommitWatch:
    """The sink's consumer class, noting when its commits covered every end offset."""

    def __init__(self, end_offsets: dict[TopicPartition, int]) -> None:
        self.end_offsets = end_offsets
        self.committed: dict[TopicPartition, int] = {}
        self.done = asyncio.Event()
        self.done_at = 0.0
        self.done_cpu = 0.0
        self.commits = 0

    def consumer_class(self) -> type[AIOKafkaConsumer]:
        watch = self

        class WatchedConsumer(AIOKafkaConsumer):  # type: ignore[misc]
            async def commit(self, offsets: Any = None) -> None:
                await super().commit(offsets)
                watch.saw(offsets or {})

        return WatchedConsumer

    def saw(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits += 1
        self.committed.update(offsets)
        if not self.done.is_set() and all(
            self.committed.get(tp, 0) >= end for tp, end in self.end_offsets.items() if end
        ):
            self.done_at, self.done_cpu = time.perf_counter(), time.process_time()
            self.done.set()


async def end_offsets(config: TidingsConfig, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**config.kafka.consumer_options())
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def run_sink(
    config: TidingsConfig, store: TimedStore, rows: int, broker_pids: dict[str, int]
) -> Span:
    """The sink from offset 0 until it committed the end of every partition."""
    prefix = config.topic_prefix
    topics = [
        s.name(prefix) for s in (PROMOTION_DECISIONS, CRM_ACTIVITIES, SYNC_ERRORS, MAILBOX_STATUS)
    ]
    watch = CommitWatch(await end_offsets(config, topics))
    vars(sinks.writer)["AIOKafkaConsumer"] = watch.consumer_class()  # the sink builds this
    sink = ClickHouseSink(config.kafka, prefix, config.sinks, store)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    broker_started: dict[str, float] = {}
    try:
        deadline = time.monotonic() + SINK_TIMEOUT_S
        while not watch.done.is_set():
            if task.done():
                task.result()
                raise RuntimeError("the sink stopped before committing every row")
            if store.first_insert_at is not None and not broker_started:
                broker_started = {name: cpu_seconds(pid) for name, pid in broker_pids.items()}
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sink wrote {sink.rows_written:,} of {rows:,} rows")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.done.wait(), 0.05)
        broker_cpu = {
            name: cpu_seconds(pid) - broker_started.get(name, 0.0)
            for name, pid in broker_pids.items()
        }
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        vars(sinks.writer)["AIOKafkaConsumer"] = AIOKafkaConsumer
    assert store.first_insert_at is not None
    if sink.rows_written != rows:
        raise RuntimeError(f"the sink wrote {sink.rows_written:,} rows, expected {rows:,}")
    return Span(
        rows,
        watch.done_at - store.first_insert_at,
        watch.done_cpu - store.first_insert_cpu,
        store.inserts,
        extra={
            "commits": watch.commits,
            "rows_per_insert": round(rows / max(1, store.inserts)),
            "broker_cpu_us_per_row": {
                name: round(seconds / rows * 1e6, 2) for name, seconds in broker_cpu.items()
            },
        },
    )


@dataclass(frozen=True)
class Result:
    storage: str
    items: int
    rows_by_table: dict[str, int]
    messages: int
    preload_s: float
    raw: list[Span]
    store: Span
    sink: Span

    @property
    def raw_per_s(self) -> float:
        return sum(span.per_s for span in self.raw) / len(self.raw)

    @property
    def raw_cpu_us(self) -> float:
        return sum(span.cpu_us_per_row for span in self.raw) / len(self.raw)

    @property
    def ratio(self) -> float:
        return self.sink.per_s / self.raw_per_s


def measure(items: int, storage: str, profile: Path | None) -> Result:
    data = make_input(items)
    tables = data.rows()
    messages = len(data.decisions) + len(data.activities) + len(data.errors) + len(data.statuses)
    # The input lives in this process only because the bench made it; a sink process
    # holds no such heap. Freeze it out of the cyclic collector, so every path pays
    # only for the objects it makes itself.
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-sink-") as tmp:
        data_dir = Path(tmp) / "data"
        env = bench_env(data_dir, storage)
        infra = bring_up(load_config(env=env))
        try:
            config = infra.config
            console.print(f"[dim]tansu ({storage}) up; publishing {messages:,} messages[/]")
            began = time.monotonic()
            asyncio.run(preload(config, data))
            preload_s = time.monotonic() - began
            result = asyncio.run(
                measure_inserts(config, tables, broker_processes(infra.broker), profile, Path(tmp))
            )
        finally:
            infra.close()
    raw, store, sink = result
    rows_by_table = {table: len(rows) for table, rows in tables.items()}
    return Result(storage, items, rows_by_table, messages, preload_s, raw, store, sink)


async def measure_inserts(
    config: TidingsConfig,
    tables: dict[str, list[Row]],
    broker_pids: dict[str, int],
    profile: Path | None,
    tmp: Path,
) -> tuple[list[Span], Span, Span]:
    """Raw, store, sink, raw again, on one chDB engine (separate databases)."""
    dsn = config.clickhouse_dsn()
    size = config.sinks.batch_max_rows
    total = sum(len(rows) for rows in tables.values())
    client = clickhouse_connect.get_client(dsn=dsn)
    try:
        raw: list[Span] = []
        for n in (1, 2):
            apply_migrations(client, f"bench_raw{n}")
        console.print("[dim]raw clickhouse-connect insert[/]")
        quiesce(client)
        raw.append(raw_insert(client, "bench_raw1", tables, size))

        console.print("[dim]ClickHouseStore.insert[/]")
        store = ClickHouseStore(dsn, ClickHouseConfig(database="bench_store"))
        await store.open()
        quiesce(client)
        try:
            stored = await store_insert(store, tables, size)
        finally:
            store.close()

        console.print("[dim]sink (ClickHouseSink on tansu)[/]")
        timed = TimedStore(dsn, config.clickhouse)
        await timed.open()
        quiesce(client)
        try:
            with contextlib.ExitStack() as sampling:
                if profile is not None:
                    sampling.enter_context(py_spy(os.getpid(), profile, tmp))
                sink = await run_sink(config, timed, total, broker_pids)
            counts = await timed.query(
                f"SELECT count() FROM {timed.database}.promotion_decisions FINAL"
            )
            sink.extra["decisions_in_clickhouse"] = counts.rows[0][0]
        finally:
            timed.close()

        console.print("[dim]raw clickhouse-connect insert, again[/]")
        quiesce(client)
        raw.append(raw_insert(client, "bench_raw2", tables, size))
    finally:
        client.close()
    return raw, stored, sink


# -- output ----------------------------------------------------------------------


def print_result(result: Result) -> None:
    rows = sum(result.rows_by_table.values())
    table = Table(
        title=f"rows into chDB: {result.items:,} items, {rows:,} rows, "
        f"{result.messages:,} messages on tansu ({result.storage})"
    )
    for name in ("path", "rows/s", "seconds", "inserts", "CPU µs/row"):
        table.add_column(name, justify="left" if name == "path" else "right")
    lines = [
        (f"raw clickhouse-connect insert, run {n}", span) for n, span in enumerate(result.raw, 1)
    ]
    lines += [
        ("ClickHouseStore.insert (no Kafka)", result.store),
        ("sink (tansu → chDB)", result.sink),
    ]
    for name, span in lines:
        table.add_row(
            name,
            f"{span.per_s:,.0f}",
            f"{span.wall_s:.2f}",
            f"{span.inserts:,}",
            f"{span.cpu_us_per_row:.1f}",
        )
    console.print(table)
    console.print(
        f"ratio sink / raw (mean {result.raw_per_s:,.0f} rows/s): [bold]{result.ratio:.2f}[/]"
        "  (aim >= 0.7)"
    )
    broker = result.sink.extra["broker_cpu_us_per_row"]
    console.print(
        "[dim]broker CPU µs per row while the sink ran: "
        + ", ".join(f"{name} {us:.1f}" for name, us in broker.items())
        + f"; rows by table: {dict(result.rows_by_table)}[/]"
    )


def figures(result: Result) -> dict[str, Any]:
    return {
        "benchmark": "sink (rows/s into chDB through ClickHouseSink vs raw clickhouse-connect)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "broker_storage": result.storage,
        "items": result.items,
        "messages": result.messages,
        "rows": sum(result.rows_by_table.values()),
        "rows_by_table": result.rows_by_table,
        "preload_s": round(result.preload_s, 2),
        "raw": {
            "rows_per_s": round(result.raw_per_s),
            "cpu_us_per_row": round(result.raw_cpu_us, 2),
            "runs": [span.figures() for span in result.raw],
        },
        "store": result.store.figures(),
        "sink": result.sink.figures(),
        "ratio": round(result.ratio, 3),
        "aim": ">= 0.7",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50_000, help="mailbox items decided")
    parser.add_argument(
        "--storage",
        choices=["s3", "memory"],
        default="s3",
        help="embedded broker storage (s3 = localbucket, the default)",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="FILE", help="py-spy this process while the sink runs"
    )
    args = parser.parse_args()
    result = measure(args.items, args.storage, args.profile)
    print_result(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures(result), indent=2) + "\n")
    console.print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
