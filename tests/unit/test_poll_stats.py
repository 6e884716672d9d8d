"""sinks.rows.poll_stats_rows: one row per completed sync pass, from mailbox.status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.mailbox import MailboxCounters, MailboxStatus, RunStatus, SyncState
from sinks.rows import poll_stats_rows
from tests.unit.test_rows import as_dict, assert_nulls_only_in_nullable_columns

STARTED = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
FINISHED = STARTED + timedelta(seconds=2, milliseconds=345)


def test_no_row_before_the_first_completed_pass() -> None:
    status = MailboxStatus(
        mailbox_id="mb", state=SyncState.ENABLED, last_sync_started_at=STARTED, updated_at=STARTED
    )
    assert poll_stats_rows(status) == []


def test_a_completed_pass_is_one_row_keyed_by_its_generation() -> None:
    status = MailboxStatus(
        mailbox_id="mb",
        state=SyncState.ENABLED,
        incoming_status=RunStatus.SUCCESS,
        last_sync_started_at=STARTED,
        last_sync_at=FINISHED,
        next_poll_at=FINISHED + timedelta(seconds=30),
        sync_generation=7,
        pending_items=1,
        counters=MailboxCounters(items_listed=40, created_events=38, errors=2),
        last_error_code="MessageTooLarge",
        worker="w-1",
        updated_at=FINISHED,
    )
    [row] = poll_stats_rows(status)
    assert as_dict("poll_stats", row) == {
        "mailbox_id": "mb",
        "sync_generation": 7,
        "started_at": STARTED,
        "finished_at": FINISHED,
        "duration_ms": 2345,
        "state": "enabled",
        "incoming_status": "success",
        "pending_items": 1,
        "items_listed": 40,
        "created_events": 38,
        "updated_events": 0,
        "deleted_events": 0,
        "errors": 2,
        "error_code": "MessageTooLarge",
        "next_poll_at": FINISHED + timedelta(seconds=30),
        "worker": "w-1",
        "updated_at": FINISHED,
    }
    assert_nulls_only_in_nullable_columns("poll_stats", row)


def test_no_row_while_the_next_pass_runs() -> None:
    status = MailboxStatus(
        mailbox_id="mb",
        state=SyncState.ENABLED,
        last_sync_started_at=FINISHED + timedelta(minutes=1),  # the next pass is running
        last_sync_at=FINISHED,
        updated_at=FINISHED + timedelta(minutes=1),
    )
    assert poll_stats_rows(status) == []  # generation 0's row stays as its end wrote it
