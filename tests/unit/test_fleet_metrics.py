"""The connector's fleet gauges: mailboxes by state and overdue polls, read at scrape time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from connectors.fleet import FleetGauges, count_in_state, count_overdue
from schemas.mailbox import MailboxStatus, SyncState

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(minutes=5)


def status(mailbox_id: str, state: SyncState, next_poll: datetime | None) -> MailboxStatus:
    return MailboxStatus(mailbox_id=mailbox_id, state=state, next_poll_at=next_poll, updated_at=NOW)


def test_overdue_counts_only_enabled_mailboxes_past_the_grace() -> None:
    statuses = [
        status("due-now", SyncState.ENABLED, NOW),
        status("late", SyncState.ENABLED, NOW - GRACE - timedelta(seconds=1)),
        status("just-in-grace", SyncState.ENABLED, NOW - GRACE),
        status("mid-pass", SyncState.ENABLED, None),
        status("disabled", SyncState.DISABLED, NOW - timedelta(hours=3)),
    ]
    assert count_overdue(statuses, NOW, GRACE) == 1
    assert count_in_state(statuses, SyncState.DISABLED) == 1
    assert count_in_state(statuses, SyncState.ENABLED) == 4


def test_gauges_follow_the_last_status_and_forget_revoked_mailboxes() -> None:
    clock = [NOW]
    fleet = FleetGauges(GRACE, clock=lambda: clock[0])

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    fleet.observe(status("a", SyncState.ENABLED, NOW + timedelta(minutes=1)))
    fleet.observe(status("b", SyncState.ENABLED, NOW))
    fleet.observe(status("b", SyncState.DISABLED, None))
    assert sample("tidings_connector_mailboxes", state="enabled") == 1
    assert sample("tidings_connector_mailboxes", state="disabled") == 1
    assert sample("tidings_connector_mailboxes", state="pending-approval") == 0
    assert sample("tidings_connector_poll_overdue_mailboxes") == 0

    clock[0] = NOW + timedelta(minutes=10)  # "a" published nothing since: stuck
    assert sample("tidings_connector_poll_overdue_mailboxes") == 1

    fleet.forget(["a", "b"])
    assert sample("tidings_connector_poll_overdue_mailboxes") == 0
    assert sample("tidings_connector_mailboxes", state="disabled") == 0
