"""Fleet gauges of one connector worker: its owned mailboxes by state, and how many are
overdue for a poll (the "mailbox disabled" and "poll overdue" alerts read these).

The runtime hands every MailboxStatus it publishes to `observe` and lets the gauges
see which mailboxes it owns (with their configuration); the figures are computed when
Prometheus scrapes, so a stuck mailbox counts as overdue although it published
nothing since. No mailbox id becomes a label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

from schemas import metrics
from schemas.base import utc_now
from schemas.mailbox import MailboxConfig, MailboxStatus, SyncState

POLL_OVERDUE_GRACE = timedelta(minutes=5)
"""How far past its next poll a mailbox may be before it counts as overdue. Longer than
the runtime's status heartbeat (60 s), since an unchanged pass publishes no new
`next_poll_at` until the heartbeat."""


def mailbox_state(config: MailboxConfig, last: MailboxStatus | None) -> SyncState:
    """An owned mailbox's state as its configuration says (pending approval, disabled,
    approved, tested), and once enabled, as its last status said (enabled before the
    first status)."""
    if config.disabled is not None:
        return SyncState.DISABLED
    if not config.approved:
        return SyncState.PENDING_APPROVAL
    if not config.enabled:
        tested = config.test is not None and config.test.passed
        return SyncState.TESTED if tested else SyncState.APPROVED
    return last.state if last is not None else SyncState.ENABLED


def count_states(
    owned: Mapping[str, MailboxConfig], last: Mapping[str, MailboxStatus]
) -> Counter[SyncState]:
    """Owned mailboxes per state."""
    return Counter(mailbox_state(config, last.get(m)) for m, config in owned.items())


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
    """The last published status of each owned mailbox, exported as gauges.

    `owned` returns the mailboxes the worker owns now, with their configuration;
    statuses of mailboxes no longer owned are dropped at the next scrape.
    """

    def __init__(
        self,
        owned: Callable[[], Mapping[str, MailboxConfig]],
        grace: timedelta = POLL_OVERDUE_GRACE,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._owned = owned
        self._last: dict[str, MailboxStatus] = {}
        for state in SyncState:
            metrics.CONNECTOR_MAILBOXES.labels(state.value).set_function(self._counter(state))
        metrics.CONNECTOR_POLL_OVERDUE.set_function(self._overdue(grace, clock))

    def observe(self, status: MailboxStatus) -> None:
        """Remember the status the runtime just published."""
        self._last[status.mailbox_id] = status

    def _current(self) -> tuple[Mapping[str, MailboxConfig], dict[str, MailboxStatus]]:
        owned = self._owned()
        for gone in self._last.keys() - owned.keys():
            del self._last[gone]
        return owned, self._last

    def _counter(self, state: SyncState) -> Callable[[], float]:
        return lambda: count_states(*self._current())[state]

    def _overdue(self, grace: timedelta, clock: Callable[[], datetime]) -> Callable[[], float]:
        def overdue() -> float:
            owned, last = self._current()
            runnable = (s for m, s in last.items() if owned[m].enabled and owned[m].approved)
            return count_overdue(runnable, clock(), grace)

        return overdue
