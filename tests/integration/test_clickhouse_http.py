"""One contract suite for ClickHouseStore and ClickHouseSink against embedded chDB
(`chdb://`) and a ClickHouse server over HTTP (`clickhouse://user@127.0.0.1:PORT`).

The server is tests/clickhouse_http.py, the ClickHouse HTTP interface in front of
chDB, on the same chDB data directory (chDB allows one per process); every test
uses a database of its own. The sink runs on the embedded tansu broker, each test
with its own topic prefix and consumer group.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.bootstrap import Infrastructure, bring_up
from pipeline.config import load_config
from pipeline.publish import publish
from pipeline.topics import ensure_topics
from schemas.act import ActRecord, ActSource, ActType, Appointment, Attendee, Contact, Task
from schemas.base import RecordRef
from schemas.config import ClickHouseConfig, SecretRef, SinkConfig, TidingsConfig
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
from schemas.errors import ErrorScope, Severity, StopAndAlert, SyncError
from schemas.mailbox import MailboxCounters, MailboxStatus, RunStatus, SyncState
from schemas.outgoing import OutgoingStatus, SendStatus
from schemas.topics import (
    CRM_ACT,
    CRM_ACTIVITIES,
    DLQ,
    MAILBOX_STATUS,
    OUTGOING_STATUS,
    PROMOTION_DECISIONS,
    SYNC_ERRORS,
)
from sinks.migrations import MIGRATIONS
from sinks.rows import (
    COLUMNS,
    Row,
    act_record_row,
    activity_rows,
    decision_row,
    error_row,
    outgoing_status_row,
    poll_stats_rows,
    status_row,
)
from sinks.store import ClickHouseStore, SchemaMismatch, StoreError, client_options
from sinks.writer import ClickHouseSink
from tests.clickhouse_http import ClickHouseHTTP

PASSWORD = "s3cret-for-tests"
PASSWORD_ENV = "TIDINGS_TEST_CLICKHOUSE_PASSWORD"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
KEYS = {
    "activities": ("activity_id",),
    "activity_parties": ("activity_id", "version", "role", "position", "record_type", "record_id"),
    "promotion_decisions": ("mailbox_id", "item_key"),
    "sync_errors": ("mailbox_id", "error_id"),
    "mailbox_status": ("mailbox_id",),
    "poll_stats": ("mailbox_id", "finished_at", "sync_generation"),
    "outgoing_status": ("activity_id",),
    "act_records": ("record_id",),
}


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb") / "clickhouse"


@pytest.fixture(scope="module")
def server(chdb_path: Path) -> Iterator[ClickHouseHTTP]:
    """The HTTP interface in front of this module's chDB."""
    with ClickHouseHTTP(chdb_path, PASSWORD, user="tidings") as running:
        yield running


@pytest.fixture(autouse=True)
def password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def settings(dsn: str, database: str, **overrides: Any) -> ClickHouseConfig:
    values: dict[str, Any] = {
        "dsn": dsn,
        "database": database,
        "password": SecretRef(env=PASSWORD_ENV),
        "insert_timeout_s": 5.0,
        "query_timeout_s": 5.0,
        **overrides,
    }
    return ClickHouseConfig(**values)


@dataclass(frozen=True)
class Target:
    """Where a test's store points: a DSN and a database of its own."""

    kind: str
    dsn: str
    database: str

    def config(self, **overrides: Any) -> ClickHouseConfig:
        return settings(self.dsn, self.database, **overrides)


@pytest.fixture(params=["chdb", "http"])
def target(request: pytest.FixtureRequest, chdb_path: Path, server: ClickHouseHTTP) -> Target:
    database = f"t_{request.param}_{uuid.uuid4().hex[:10]}"
    dsn = f"chdb://{chdb_path}" if request.param == "chdb" else server.dsn()
    return Target(request.param, dsn, database)


@pytest.fixture
async def store(target: Target) -> AsyncIterator[ClickHouseStore]:
    opened = ClickHouseStore(target.dsn, target.config())
    await opened.open()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infrastructure]:
    """The embedded tansu broker (memory storage) for this module."""
    data_dir = tmp_path_factory.mktemp("broker") / "data"
    env = {"TIDINGS_DATA_DIR": str(data_dir), "TIDINGS_EMBEDDED__STORAGE": "memory"}
    infra = bring_up(load_config(env=env), create_topics=False)
    try:
        yield infra
    finally:
        infra.close()


# -- payloads --------------------------------------------------------------------


def activity(n: int, version: int = 1) -> Activity:
    return Activity(
        activity_id=f"act-{n}",
        version=version,
        message_id=f"m{n}@x.example",
        subject=f"Quote {n} — naïve ✓",
        description="line one\nline two\t'quoted'",
        description_truncated=n % 2 == 0,
        direction=Direction.INCOMING,
        parties=[
            ActivityParty(
                role=PartyRole.FROM,
                address=f"dana{n}@contoso.example",
                name="Dana",
                records=[RecordRef("contact", f"c-{n}")],
            ),
            ActivityParty(
                role=PartyRole.TO,
                address="shared@contoso.example",
                records=[RecordRef("contact", "c-2"), RecordRef("account", "a-1")],
            ),
            ActivityParty(role=PartyRole.CC, address="cc@else.example"),
        ],
        sent_at=T0 + timedelta(minutes=n) if n % 3 else None,
        owner=RecordRef("user", "alice"),
        regarding=RecordRef("opportunity", f"opp-{n}") if n % 2 else None,
        conversation_id=f"act-{n}",
        correlation_method=CorrelationMethod.TRACKING_TOKEN,
        tracking_token="CRM:0001001",
        receiving_mailboxes=["mb-alice", "mb-support"],
        queues=[RecordRef("queue", "support")],
        accepting_queue=RecordRef("queue", "support"),
        created_at=T0,
        updated_at=T0 + timedelta(seconds=version, milliseconds=123),
    )


def decision(n: int, version: int = 1) -> PromotionDecision:
    return PromotionDecision(
        item_key=f"mb-{n % 3}|INBOX|{n}",
        mailbox_id=f"mb-{n % 3}",
        folder="INBOX",
        item_id=str(n),
        event_id=f"ev-{n}",
        message_id=f"m{n}@x.example",
        status=DecisionStatus.PROMOTED,
        reason=ReasonCode.SENDER_MATCH,
        explanation="the sender is a contact",
        activity_id=f"act-{n}",
        correlation_method=CorrelationMethod.TRACKING_TOKEN,
        direction=Direction.INCOMING,
        sender=ActivityParty(
            role=PartyRole.FROM,
            address=f"dana{n}@contoso.example",
            records=[RecordRef("contact", f"c-{n}")],
        ),
        version=version,
        decided_at=T0 + timedelta(seconds=n),
    )


def error(n: int) -> SyncError:
    return SyncError(
        error_id=f"err-{n}",
        mailbox_id=f"mb-{n % 3}",
        scope=ErrorScope.ITEM,
        severity=Severity.PERMANENT,
        code="Malformed",
        message="boundary never appears",
        component="processors",
        folder="INBOX" if n % 2 else None,
        item_id=str(n),
        attempt=2,
        occurred_at=T0 + timedelta(seconds=n),
    )


def status(n: int, minutes: int = 0) -> MailboxStatus:
    return MailboxStatus(
        mailbox_id=f"mb-{n}",
        state=SyncState.ENABLED,
        incoming_status=RunStatus.SUCCESS,
        last_sync_started_at=T0 + timedelta(minutes=minutes, seconds=-7),
        last_sync_at=T0 + timedelta(minutes=minutes),
        next_poll_at=None,
        sync_generation=minutes,
        counters=MailboxCounters(items_listed=10 + minutes, created_events=5),
        worker="w-1",
        updated_at=T0 + timedelta(minutes=minutes),
    )


def naive(value: Any) -> Any:
    """A row value as clickhouse-connect reads it back: DateTime64(3, 'UTC') as a naive
    UTC datetime, an Array as a list (rows carry tuples)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, tuple):
        return list(value)
    return value


def expected(rows: list[Row], table: str) -> list[tuple[Any, ...]]:
    """What FINAL shows of `rows`: the last row per key (the highest version, as inserted
    here in version order), ordered by key."""
    index = [COLUMNS[table].index(name) for name in KEYS[table]]
    latest: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        latest[tuple(row[i] for i in index)] = row
    return [tuple(naive(v) for v in latest[key]) for key in sorted(latest)]


async def final(store: ClickHouseStore, table: str) -> list[tuple[Any, ...]]:
    columns = ", ".join(COLUMNS[table])
    order = ", ".join(KEYS[table])
    result = await store.query(
        f"SELECT {columns} FROM {store.database}.{table} FINAL ORDER BY {order}"
    )
    assert result.columns == list(COLUMNS[table])
    return [tuple(naive(v) for v in row) for row in result.rows]


def rows_of(payloads: dict[str, list[Any]]) -> dict[str, list[Row]]:
    """Table rows of the payloads, as the sink builds them."""
    tables: dict[str, list[Row]] = {table: [] for table in COLUMNS}
    for value in payloads["activities"]:
        row, parties = activity_rows(value)
        tables["activities"].append(row)
        tables["activity_parties"].extend(parties)
    tables["promotion_decisions"] = [decision_row(v) for v in payloads["decisions"]]
    tables["sync_errors"] = [error_row(v) for v in payloads["errors"]]
    tables["mailbox_status"] = [status_row(v) for v in payloads["statuses"]]
    tables["poll_stats"] = [row for v in payloads["statuses"] for row in poll_stats_rows(v)]
    tables["outgoing_status"] = [outgoing_status_row(v) for v in payloads["outgoing"]]
    tables["act_records"] = [act_record_row(v) for v in payloads["act"]]
    return tables


def payloads(count: int) -> dict[str, list[Any]]:
    """Every kind of payload, with newer versions of some keys after older ones."""
    return {
        "activities": [activity(n) for n in range(count)] + [activity(0, 2), activity(1, 3)],
        "decisions": [decision(n) for n in range(count)] + [decision(2, 2)],
        "errors": [error(n) for n in range(count)],
        "statuses": [status(n % 3, minutes=n) for n in range(count)],
        "outgoing": [outgoing(n, step) for n in range(count // 4) for step in range(3)],
        "act": [act_record(n) for n in range(count // 4)] + [act_record(0, 2), act_record(1, 3)],
    }


# -- the store -------------------------------------------------------------------


async def test_migrations_are_applied_once(target: Target, store: ClickHouseStore) -> None:
    again = ClickHouseStore(target.dsn, target.config())
    try:
        assert await again.open() == []
    finally:
        again.close()
    result = await store.query(
        f"SELECT version, name FROM {target.database}.schema_migrations FINAL ORDER BY version"
    )
    assert result.rows == [(m.version, m.name) for m in MIGRATIONS]
    tables = await store.query(
        f"SELECT name FROM system.tables WHERE database = '{target.database}' ORDER BY name"
    )
    assert [row[0] for row in tables.rows] == sorted([*COLUMNS, "schema_migrations"])


async def test_a_table_lacking_a_column_the_sinks_write_stops_them_with_what_to_do(
    target: Target, store: ClickHouseStore
) -> None:
    await store.query(
        f"ALTER TABLE {target.database}.activities DROP COLUMN tracking_token", readonly=False
    )
    again = ClickHouseStore(target.dsn, target.config())
    try:
        with pytest.raises(SchemaMismatch) as raised:
            await again.open()
    finally:
        again.close()
    assert isinstance(raised.value, StopAndAlert)  # the supervisor does not restart it
    message = str(raised.value)
    assert "activities: tracking_token" in message
    assert "Drop the database" in message and "clickhouse.database" in message


async def test_every_table_round_trips_and_final_keeps_the_latest(
    store: ClickHouseStore,
) -> None:
    tables = rows_of(payloads(7))
    for table, rows in tables.items():
        await store.insert(table, rows)
        await store.insert(table, rows[:3])  # a replay of a range
    for table, rows in tables.items():
        assert await final(store, table) == expected(rows, table), table
    activities = await final(store, "activities")
    versions = {row[0]: row[1] for row in activities}
    assert (versions["act-0"], versions["act-1"], versions["act-2"]) == (2, 3, 1)


async def test_a_readonly_query_refuses_writes(store: ClickHouseStore) -> None:
    with pytest.raises(StoreError, match=r"READONLY|readonly"):
        await store.query(f"INSERT INTO {store.database}.sync_errors (error_id) VALUES ('x')")
    result = await store.query(f"SELECT count() FROM {store.database}.sync_errors")
    assert result.rows == [(0,)]


async def test_a_bad_statement_is_a_store_error_naming_the_cause(store: ClickHouseStore) -> None:
    with pytest.raises(StoreError, match=r"UNKNOWN_TABLE|does not exist|doesn't exist"):
        await store.query(f"SELECT * FROM {store.database}.no_such_table")
    assert (await store.query("SELECT 1")).rows == [(1,)]


# -- the sink on tansu -------------------------------------------------------------


def outgoing(n: int, step: int = 0) -> OutgoingStatus:
    """Email n's status after `step` writes: pending, sending, then sent (n even) or
    failed (n odd)."""
    final_status = SendStatus.SENT if n % 2 == 0 else SendStatus.FAILED
    status = (SendStatus.PENDING, SendStatus.SENDING, final_status)[step]
    return OutgoingStatus(
        activity_id=f"out-{n}",
        mailbox_id=f"mb-{n % 3}",
        status=status,
        message_id=f"out-{n}@nw.example",
        attempt=1 if step else 0,
        tracking_token="CRM:0001001" if n % 3 else None,
        error_code="RecipientRefused" if status == SendStatus.FAILED else None,
        error_message="550 no such user" if status == SendStatus.FAILED else None,
        sent_at=T0 + timedelta(minutes=n) if status == SendStatus.SENT else None,
        accepted=["dana@contoso.example"] if status == SendStatus.SENT else [],
        refused=["nobody@contoso.example"] if status == SendStatus.FAILED else [],
        copied_to_sent=status == SendStatus.SENT and n % 4 == 0,
        worker="w-1",
        updated_at=T0 + timedelta(minutes=n, seconds=step),
    )


def act_record(n: int, version: int = 1) -> ActRecord:
    """Record n: an appointment, a contact or a task (by n % 3), at `version`."""
    kind = (ActType.APPOINTMENT, ActType.CONTACT, ActType.TASK)[n % 3]
    when = T0 + timedelta(days=n)
    payload: Any
    if kind is ActType.APPOINTMENT:
        payload = Appointment(
            ical_uid=f"uid-{n}",
            subject=f"Review {n} v{version}",
            start=when,
            end=when + timedelta(hours=1),
            location="Room 4",
            organizer=Attendee(address="alice@nw.example", name="Alice"),
            attendees=[Attendee(address="dana@contoso.example")],
            categories=["Tracked to CRM"],
            change_time=when,
        )
    elif kind is ActType.CONTACT:
        payload = Contact(given_name="Dana", surname=f"Scully {n} v{version}", change_time=when)
    else:
        payload = Task(subject=f"Call back {n} v{version}", due=when, change_time=when)
    return ActRecord(
        record_id=f"act-rec-{n}",
        record_type=kind,
        version=version,
        payload=payload,
        owner=RecordRef("user", "alice"),
        source=ActSource(mailbox_id="mb-alice", folder=str(kind), item_id=f"item-{n}"),
        mailboxes=["mb-alice"],
        change_time=when,
        updated_at=when + timedelta(seconds=version),
    )


async def committed(config: TidingsConfig, group: str, topics: list[str]) -> dict[str, int]:
    """The group's committed offsets, summed per topic."""
    consumer = AIOKafkaConsumer(group_id=group, **config.kafka.consumer_options())
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata partitions_for_topic reads
        totals: dict[str, int] = {}
        for topic in topics:
            for partition in consumer.partitions_for_topic(topic) or set():
                offset = await consumer.committed(TopicPartition(topic, partition))
                totals[topic] = totals.get(topic, 0) + (offset or 0)
        return totals
    finally:
        await consumer.stop()


async def run_sink_until(sink: ClickHouseSink, rows: int, limit_s: float = 90.0) -> None:
    """Run the sink until it wrote `rows` rows, then stop it (it flushes and commits)."""
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    deadline = time.monotonic() + limit_s
    while sink.rows_written < rows:
        if task.done():
            task.result()
            raise AssertionError("the sink stopped early")
        assert time.monotonic() < deadline, f"{sink.rows_written} of {rows} rows written"
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_the_sink_writes_every_topic_commits_after_insert_and_replays_harmlessly(
    target: Target, store: ClickHouseStore, broker: Infrastructure
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = broker.config
    await ensure_topics(config.kafka, prefix)
    sent = payloads(40)
    await publish(
        config.kafka, prefix, CRM_ACTIVITIES, [(a.activity_id, a) for a in sent["activities"]]
    )
    await publish(
        config.kafka, prefix, PROMOTION_DECISIONS, [(d.item_key, d) for d in sent["decisions"]]
    )
    await publish(config.kafka, prefix, SYNC_ERRORS, [(e.mailbox_id, e) for e in sent["errors"]])
    await publish(
        config.kafka, prefix, MAILBOX_STATUS, [(s.mailbox_id, s) for s in sent["statuses"]]
    )
    await publish(
        config.kafka, prefix, OUTGOING_STATUS, [(s.activity_id, s) for s in sent["outgoing"]]
    )
    await publish(config.kafka, prefix, CRM_ACT, [(r.record_id, r) for r in sent["act"]])
    producer = AIOKafkaProducer(**config.kafka.producer_options())
    await producer.start()
    try:
        await producer.send_and_wait(SYNC_ERRORS.name(prefix), key=b"mb-0", value=b"{not json")
        # a tombstone (a removed mailbox) changes no row and is no dead letter
        await producer.send_and_wait(MAILBOX_STATUS.name(prefix), key=b"mb-1", value=None)
    finally:
        await producer.stop()
    tables = rows_of(sent)
    total = sum(len(rows) for rows in tables.values())
    topics = [
        spec.name(prefix)
        for spec in (
            CRM_ACTIVITIES,
            PROMOTION_DECISIONS,
            SYNC_ERRORS,
            MAILBOX_STATUS,
            OUTGOING_STATUS,
            CRM_ACT,
        )
    ]

    group = f"sink-{uuid.uuid4().hex[:8]}"
    sink_settings = SinkConfig(group_id=group, batch_max_rows=50, batch_max_age_s=0.1)
    await run_sink_until(ClickHouseSink(config.kafka, prefix, sink_settings, store), total)
    for table, rows in tables.items():
        assert await final(store, table) == expected(rows, table), table
    offsets = await committed(config, group, topics)
    assert offsets == {
        CRM_ACTIVITIES.name(prefix): len(sent["activities"]),
        PROMOTION_DECISIONS.name(prefix): len(sent["decisions"]),
        SYNC_ERRORS.name(prefix): len(sent["errors"]) + 1,  # and the dead-lettered one
        MAILBOX_STATUS.name(prefix): len(sent["statuses"]) + 1,  # and the tombstone
        OUTGOING_STATUS.name(prefix): len(sent["outgoing"]),
        CRM_ACT.name(prefix): len(sent["act"]),
    }
    assert await dead_letters(config, DLQ.name(prefix)) == 1

    # A replay of everything from offset 0 in a new group changes no query result.
    replay = SinkConfig(group_id=f"{group}-replay", batch_max_rows=5000, batch_max_age_s=0.1)
    await run_sink_until(ClickHouseSink(config.kafka, prefix, replay, store), total)
    for table, rows in tables.items():
        assert await final(store, table) == expected(rows, table), table
    raw = await store.query(f"SELECT count() FROM {store.database}.promotion_decisions")
    assert raw.rows[0][0] >= len(sent["decisions"])  # duplicates until merged; FINAL hides them


async def dead_letters(config: TidingsConfig, topic: str) -> int:
    consumer = AIOKafkaConsumer(topic, **config.kafka.consumer_options())
    await consumer.start()
    try:
        found = 0
        deadline = time.monotonic() + 20
        while not found and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            found += sum(len(messages) for messages in batch.values())
        return found
    finally:
        await consumer.stop()


# -- a server over HTTP only: passwords, outages -------------------------------------


async def test_a_wrong_password_is_a_clear_store_error(
    server: ClickHouseHTTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    store = ClickHouseStore(server.dsn(), settings(server.dsn(), "t_wrong_password"))
    try:
        with pytest.raises(StoreError, match="516") as raised:
            await store.open()
        assert "Authentication failed" in str(raised.value)
        assert "not-the-password" not in str(raised.value)
    finally:
        store.close()


async def test_a_missing_password_reference_is_a_store_error(
    server: ClickHouseHTTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    store = ClickHouseStore(server.dsn(), settings(server.dsn(), "t_no_password"))
    try:
        with pytest.raises(StoreError, match=f"env:{PASSWORD_ENV}"):
            store.open_sync()
    finally:
        store.close()


async def test_a_server_that_stops_answering_gives_a_store_error_within_the_insert_timeout(
    server: ClickHouseHTTP, chdb_path: Path
) -> None:
    database = f"t_stall_{uuid.uuid4().hex[:8]}"
    config = settings(server.dsn(), database, insert_timeout_s=2.0, query_timeout_s=2.0)
    store = ClickHouseStore(server.dsn(), config)
    await store.open()
    rows = [error_row(error(n)) for n in range(3)]
    try:
        server.stall()
        started = time.monotonic()
        with pytest.raises(StoreError, match="did not answer within 2s"):
            await store.insert("sync_errors", rows)
        # bounded by the 2 s insert timeout, not the HTTP client's own (minutes);
        # the slack is for a loaded machine
        assert time.monotonic() - started < 15
    finally:
        server.resume()
    try:
        # The HTTP client gave up too: the store's thread is free for the retry.
        started = time.monotonic()
        await store.insert("sync_errors", rows)
        assert time.monotonic() - started < 15
        result = await store.query(f"SELECT count() FROM {database}.sync_errors FINAL")
        assert result.rows == [(3,)]
    finally:
        store.close()


async def test_a_server_that_went_away_gives_a_store_error_within_the_insert_timeout(
    chdb_path: Path,
) -> None:
    with ClickHouseHTTP(chdb_path, PASSWORD, user="tidings") as going:
        dsn = going.dsn()
        config = settings(dsn, f"t_gone_{uuid.uuid4().hex[:8]}", insert_timeout_s=3.0)
        store = ClickHouseStore(dsn, config)
        await store.open()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"Connection refused|NewConnectionError|Max retries"):
            await store.insert("sync_errors", [error_row(error(1))])
        assert time.monotonic() - started < 15  # refused, not timed out; slack for load
    finally:
        store.close()


async def test_nothing_listening_fails_open_with_a_store_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"clickhouse://tidings@127.0.0.1:{port}"
    store = ClickHouseStore(dsn, settings(dsn, "t_nothing", query_timeout_s=2.0))
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"Connection refused|NewConnectionError"):
            await store.open()
        assert time.monotonic() - started < 15
    finally:
        store.close()


# -- DSNs ------------------------------------------------------------------------


def test_server_dsns_become_http_client_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    config = settings("", "tidings", insert_timeout_s=30.0, query_timeout_s=12.5)
    options = client_options("clickhouse://sync@ch.example:8123/tidings?compress=zstd", config)
    assert options == {
        "interface": "http",
        "host": "ch.example",
        "port": 8123,
        "username": "sync",
        "password": PASSWORD,
        "connect_timeout": 10,
        "send_receive_timeout": 33,  # the store's 30 s limit speaks first
        "autogenerate_session_id": False,
        "compress": "zstd",
    }
    secure = client_options("clickhouses://ch.example", config)
    assert (secure["interface"], secure["username"], "port" in secure) == (
        "https",
        "default",
        False,
    )
    assert client_options("chdb:///var/lib/tidings/clickhouse", config) == {
        "dsn": "chdb:///var/lib/tidings/clickhouse"
    }


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("clickhouse://sync:hunter2@ch.example:8123", "holds a password"),
        ("clickhouse://sync@ch.example:8123/crm", "names database 'crm'"),
        ("mysql://ch.example", "scheme 'mysql'"),
    ],
)
def test_unusable_dsns_are_refused_without_echoing_secrets(dsn: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as raised:
        client_options(dsn, settings(dsn, "tidings"))
    assert "hunter2" not in str(raised.value)
