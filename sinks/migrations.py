"""Versioned ClickHouse DDL, applied in order at start; the same DDL runs on chDB and
on a ClickHouse server.

Every table is a ReplacingMergeTree keyed by the record's stable id, so a replay
inserts rows that collapse into the ones already there. Queries that must not
see not-yet-merged copies use FINAL (see docs/clickhouse.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TS = "DateTime64(3, 'UTC')"


@dataclass(frozen=True)
class Migration:
    """One schema version: its number, what it does, and its statements ({db} = database)."""

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "activities, parties, decisions, errors, mailbox status",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.activities (
                activity_id String,
                version UInt64,
                activity_type LowCardinality(String),
                message_id String,
                subject String,
                description String,
                description_truncated UInt8,
                direction LowCardinality(String),
                sender String,
                to_addresses Array(String),
                cc_addresses Array(String),
                sent_at Nullable({TS}),
                owner String,
                regarding String,
                parent_activity_id String,
                conversation_id String,
                correlation_method LowCardinality(String),
                correlated_activity_id String,
                tracking_token String,
                in_reply_to String,
                receiving_mailboxes Array(String),
                source LowCardinality(String),
                created_at {TS},
                updated_at {TS}
            ) ENGINE = ReplacingMergeTree(version) ORDER BY activity_id""",
            """CREATE TABLE IF NOT EXISTS {db}.activity_parties (
                activity_id String,
                version UInt64,
                role LowCardinality(String),
                position UInt16,
                address String,
                name String,
                record_type LowCardinality(String),
                record_id String
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (activity_id, version, role, position, record_type, record_id)""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.promotion_decisions (
                item_key String,
                mailbox_id LowCardinality(String),
                folder String,
                item_id String,
                event_id String,
                message_id String,
                status LowCardinality(String),
                reason LowCardinality(String),
                explanation String,
                activity_id String,
                correlation_method LowCardinality(String),
                correlated_activity_id String,
                direction LowCardinality(String),
                sender String,
                sender_records Array(String),
                version UInt64,
                decided_at {TS}
            ) ENGINE = ReplacingMergeTree(version) ORDER BY (mailbox_id, item_key)""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.sync_errors (
                error_id String,
                mailbox_id LowCardinality(String),
                scope LowCardinality(String),
                severity LowCardinality(String),
                code LowCardinality(String),
                message String,
                component LowCardinality(String),
                folder String,
                item_id String,
                event_id String,
                attempt UInt32,
                occurred_at {TS}
            ) ENGINE = ReplacingMergeTree ORDER BY (mailbox_id, error_id)""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.mailbox_status (
                mailbox_id String,
                state LowCardinality(String),
                incoming_status LowCardinality(String),
                outgoing_status LowCardinality(String),
                act_status LowCardinality(String),
                last_sync_started_at Nullable({TS}),
                last_sync_at Nullable({TS}),
                last_success_at Nullable({TS}),
                next_poll_at Nullable({TS}),
                sync_generation UInt64,
                pending_items UInt64,
                items_listed UInt64,
                created_events UInt64,
                updated_events UInt64,
                deleted_events UInt64,
                errors UInt64,
                last_error_code String,
                last_error String,
                worker String,
                updated_at {TS}
            ) ENGINE = ReplacingMergeTree(updated_at) ORDER BY mailbox_id""",
        ),
    ),
    Migration(
        2,
        "activities.conversation_index (the Thread-Index, hex)",
        (
            "ALTER TABLE {db}.activities ADD COLUMN IF NOT EXISTS "
            "conversation_index String AFTER in_reply_to",
        ),
    ),
    Migration(
        3,
        "activities.queues and accepting_queue",
        (
            "ALTER TABLE {db}.activities ADD COLUMN IF NOT EXISTS "
            "queues Array(String) AFTER receiving_mailboxes",
            "ALTER TABLE {db}.activities ADD COLUMN IF NOT EXISTS "
            "accepting_queue String AFTER queues",
        ),
    ),
    Migration(
        4,
        "poll_stats: one row per sync pass a mailbox reported, ended or failed",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.poll_stats (
                mailbox_id String,
                sync_generation UInt64,
                started_at Nullable({TS}),
                finished_at {TS},
                duration_ms UInt64,
                state LowCardinality(String),
                incoming_status LowCardinality(String),
                pending_items UInt64,
                items_listed UInt64,
                created_events UInt64,
                updated_events UInt64,
                deleted_events UInt64,
                errors UInt64,
                error_code String,
                next_poll_at Nullable({TS}),
                worker String,
                updated_at {TS}
            ) ENGINE = ReplacingMergeTree(updated_at)
            ORDER BY (mailbox_id, finished_at, sync_generation)""",
        ),
    ),
    Migration(
        5,
        "outgoing_status: where each outgoing email stands (pending, sending, sent, failed)",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.outgoing_status (
                activity_id String,
                mailbox_id String,
                status LowCardinality(String),
                message_id String,
                attempt UInt32,
                tracking_token String,
                error_code String,
                error_message String,
                next_attempt_at Nullable({TS}),
                sent_at Nullable({TS}),
                accepted Array(String),
                refused Array(String),
                copied_to_sent UInt8,
                worker String,
                updated_at {TS}
            ) ENGINE = ReplacingMergeTree(updated_at) ORDER BY activity_id""",
        ),
    ),
    Migration(
        6,
        "act_records: appointments, contacts and tasks tracked from mailboxes (crm.act)",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.act_records (
                record_id String,
                record_type LowCardinality(String),
                version Int64,
                subject String,
                start_at Nullable({TS}),
                end_at Nullable({TS}),
                location String,
                organizer String,
                attendees Array(String),
                recurrence String,
                exceptions UInt32,
                is_cancelled UInt8,
                categories Array(String),
                owner String,
                party_records Array(String),
                mailbox_id String,
                item_id String,
                origin LowCardinality(String),
                change_time Nullable({TS}),
                payload String,
                updated_at {TS}
            ) ENGINE = ReplacingMergeTree(version) ORDER BY record_id""",
        ),
    ),
)


def apply_migrations(client: Any, database: str) -> list[int]:
    """Create the database and apply every migration not applied yet; returns those applied."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        f"(version UInt32, name String, applied_at {TS} DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {
        int(row[0])
        for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows
    }
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement.replace("{db}", database))
        client.insert(
            f"{database}.schema_migrations",
            [(migration.version, migration.name)],
            column_names=["version", "name"],
        )
        applied.append(migration.version)
    return applied


def missing_columns(
    client: Any, database: str, expected: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """The columns of `expected` (table → columns) that `database` does not have, by
    table (a missing table lists all its columns); empty when the schema fits."""
    found: dict[str, set[str]] = {}
    rows = client.query(
        f"SELECT table, name FROM system.columns WHERE database = '{database}'"
    ).result_rows
    for table, column in rows:
        found.setdefault(str(table), set()).add(str(column))
    gaps = {
        table: [column for column in columns if column not in found.get(table, set())]
        for table, columns in expected.items()
    }
    return {table: columns for table, columns in gaps.items() if columns}


def schema_version(client: Any, database: str) -> int:
    """The highest applied migration (0 when none)."""
    rows = client.query(f"SELECT max(version) FROM {database}.schema_migrations").result_rows
    return int(rows[0][0] or 0) if rows else 0
