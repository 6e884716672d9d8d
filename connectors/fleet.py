"""Fleet gauges of one connector worker: its owned mailboxes by state, and how many are
overdue for a poll (the "mailbox disabled" and "poll overdue" alerts read these).

The runtime hands every MailboxStatus it publishes to `observe`; the gauges are
computed when Prometheus scrapes, so a stuck mailbox counts as overdue although it
published nothing since. No mailbox id becomes a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from schemas import metrics
from schemas.base import utc_now
from schemas.mailbox import MailboxStatus, SyncState

POLL_OVERDUE_GRACE = timedelta(minutes=5)
"""How far past its next poll a mailbox may be before it counts as overdue. Longer than
the runtime's status heartbeat (60 s), since an unchanged pass publishes no new
`next_poll_at` until the heartbeat."""


def count_in_state(statuses: Iterable[MailboxStatus], state: SyncState) -> int:
    """Statuses whose state is `state`."""
    return sum(1 for status in statuses if status.state == state)


def count_overdue(statuses: Iterable[MailboxStatus], now: datetime, grace: timedelta) -> int:
    """Enabled mailboxes whose announced next poll is more than `grace` before `now`
    (mailboxes mid-pass or retrying announce no next poll and never count)."""
    return sum(
        1
        for status in statuses
        if status.state == SyncState.ENABLED
        and status.next_poll_at is not None
        and now - status.next_poll_at > grace
    )


class FleetGauges:
    """The last published status of each owned mailbox, exported as gauges."""

    def __init__(
        self,
        grace: timedelta = POLL_OVERDUE_GRACE,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._last: dict[str, MailboxStatus] = {}
        for state in SyncState:
            metrics.CONNECTOR_MAILBOXES.labels(state.value).set_function(self._counter(state))
        metrics.CONNECTOR_POLL_OVERDUE.set_function(
            lambda: count_overdue(self._last.values(), clock(), grace)
        )

    def _counter(self, state: SyncState) -> Callable[[], float]:
        return lambda: count_in_state(self._last.values(), state)

    def observe(self, status: MailboxStatus) -> None:
        """Remember the status the runtime just published."""
        self._last[status.mailbox_id] = status

    def forget(self, mailbox_ids: Iterable[str]) -> None:
        """Drop mailboxes this worker no longer runs (revoked, removed, reconfigured)."""
        for mailbox_id in mailbox_ids:
            self._last.pop(mailbox_id, None)
