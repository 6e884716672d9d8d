"""The connector's fleet gauges: owned mailboxes by state and overdue polls, computed
when Prometheus scrapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from prometheus_client import REGISTRY

from connectors.fleet import FleetGauges, count_overdue, count_states, mailbox_state
from schemas.base import RecordRef
from schemas.mailbox import MailboxConfig, MailboxDisabled, MailboxStatus, Protocol, SyncState

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(minutes=5)


def config(mailbox_id: str, **changes: object) -> MailboxConfig:
    base = MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef("user", mailbox_id),
        email_address=f"{mailbox_id}@example.com",
        protocol=Protocol.MAILDIR,
    )
    return msgspec.structs.replace(base, **changes)


def status(mailbox_id: str, state: SyncState, next_poll: datetime | None) -> MailboxStatus:
    return MailboxStatus(mailbox_id=mailbox_id, state=state, next_poll_at=next_poll, updated_at=NOW)


def test_state_comes_from_the_configuration_then_the_last_status() -> None:
    disabled = MailboxDisabled(code="AuthFailed", reason="bad password", by="connector", at=NOW)
    assert mailbox_state(config("a", approved=False), None) == SyncState.PENDING_APPROVAL
    assert mailbox_state(config("a", enabled=False), None) == SyncState.APPROVED
    assert mailbox_state(config("a", enabled=False, disabled=disabled), None) == (
        SyncState.DISABLED
    )
    assert mailbox_state(config("a"), None) == SyncState.ENABLED
    assert mailbox_state(config("a"), status("a", SyncState.DISABLED, None)) == (SyncState.DISABLED)
    owned = {"a": config("a"), "b": config("b", approved=False)}
    assert count_states(owned, {}) == {SyncState.ENABLED: 1, SyncState.PENDING_APPROVAL: 1}


def test_overdue_counts_only_enabled_mailboxes_past_the_grace() -> None:
    statuses = [
        status("due-now", SyncState.ENABLED, NOW),
        status("late", SyncState.ENABLED, NOW - GRACE - timedelta(seconds=1)),
        status("just-in-grace", SyncState.ENABLED, NOW - GRACE),
        status("mid-pass", SyncState.ENABLED, None),
        status("disabled", SyncState.DISABLED, NOW - timedelta(hours=3)),
    ]
    assert count_overdue(statuses, NOW, GRACE) == 1


def test_gauges_follow_owned_mailboxes_and_their_last_status() -> None:
    clock = [NOW]
    owned = {"a": config("a"), "b": config("b")}
    fleet = FleetGauges(lambda: owned, GRACE, clock=lambda: clock[0])

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

    owned["a"] = config("a", enabled=False)  # a person turned it off: not overdue
    assert sample("tidings_connector_poll_overdue_mailboxes") == 0
    assert sample("tidings_connector_mailboxes", state="approved") == 1

    owned.clear()  # partitions revoked
    assert sample("tidings_connector_mailboxes", state="disabled") == 0
    assert sample("tidings_connector_mailboxes", state="approved") == 0
