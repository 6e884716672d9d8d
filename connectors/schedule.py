"""When to poll a mailbox next: a pure policy over what its recent polls saw.

No I/O and no clock of its own: times are plain seconds on whatever monotonic
clock the caller runs (the runtime's, or a benchmark's simulated one), and
jitter comes from an injected random source, so the policy is tested and
benchmarked with a simulated clock.

The inputs are a mailbox's `PollHistory` (folded from each poll's
`PollOutcome` by `record`): when a poll last found items, empty polls in a
row, poll time, errors and throttling answers in a row; plus the processors'
consumer lag on mail.changes and the server profile's `PollingSettings`
(schemas/mailbox.py, defaults there and in docs/polling.md):

- active (found items within `active_window_s`, 1 h): `min_interval_s` (30 s)
  after a poll that found items, times `active_backoff` (2) per empty poll,
  at most `max_active_interval_s` (2 min);
- idle: wait (`backoff_factor` - 1) times as long as the mailbox has been quiet
  beyond its active window (never-active mailboxes: since their first poll, or
  since their cursors last moved), at least `max_active_interval_s`, at most
  `idle_max_s` (6 h) — successive delays grow by about `backoff_factor` (2);
- slow server: never less than poll time / `max_busy_fraction` (10%);
- throttled: `throttle_delay_s` (60 s), doubling per throttled poll in a row;
- error: the retry policy's delay (connectors/retry.py), which the caller passes;
- backpressure: processor lag over `lag_threshold` (10,000) multiplies the
  delay by `lag_slowdown` (4), up to `idle_max_s`;
- every delay is spread by +-`jitter` (10%);
- push (IMAP IDLE) and manual sync poll at once: `woken`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from connectors import errors
from schemas.mailbox import PollingSettings

THROTTLING_CODES = frozenset({errors.SERVER_BUSY, errors.CONNECTION_REFUSED})
"""Failure codes that mean the server sheds load: busy / unavailable / in use / too many
connections (IMAP [UNAVAILABLE], [INUSE], [LIMIT]; POP3 [IN-USE], [SYS/TEMP]) and
refused connections. They slow the mailbox down and shrink the profile's connection limit."""
LATENCY_WEIGHT = 0.3
"""Weight of the newest poll time in the moving average (older ones decay)."""


class PollReason(StrEnum):
    """Why a poll happens when it does (the `reason` label of the poll metrics)."""

    FIRST = "first"  # the mailbox's first poll on this worker: at once
    ACTIVE = "active"
    IDLE = "idle"  # idle backoff
    SLOW = "slow-server"  # stretched because polls take long
    THROTTLED = "throttled"
    ERROR = "error"
    BACKPRESSURE = "backpressure"  # processor lag slowed it down
    PUSH = "push"  # the server said the mailbox changed (IMAP IDLE)
    MANUAL = "manual"  # `tidings mailbox sync ID` or a track request


@dataclass(frozen=True)
class PollOutcome:
    """What one poll did: when it ended (caller's clock, seconds), items it found
    (created + updated + deleted), how long it took, and whether it failed or the
    server throttled it (a throttling failure is also an error)."""

    at: float
    items: int = 0
    latency_s: float = 0.0
    error: bool = False
    throttled: bool = False


@dataclass(frozen=True)
class PollHistory:
    """What the policy remembers of one mailbox's polls.

    `quiet_since` is when the mailbox was last known to change before this
    worker polled it (e.g. its cursors' newest update), or None; it stands in
    for `last_items_at` until a poll finds items.
    """

    polls: int = 0
    first_poll_at: float | None = None
    last_items_at: float | None = None
    quiet_since: float | None = None
    consecutive_empty: int = 0
    consecutive_errors: int = 0
    consecutive_throttled: int = 0
    latency_s: float = 0.0


@dataclass(frozen=True)
class PollDecision:
    """The delay before the next poll (seconds) and why."""

    delay_s: float
    reason: PollReason


Random = Callable[[], float]
"""A source of floats in [0, 1): `random.random`, or a seeded / fixed one in tests."""


def record(history: PollHistory, outcome: PollOutcome) -> PollHistory:
    """The history after one more poll."""
    first = history.first_poll_at if history.first_poll_at is not None else outcome.at
    latency = (
        outcome.latency_s
        if history.polls == 0
        else (1 - LATENCY_WEIGHT) * history.latency_s + LATENCY_WEIGHT * outcome.latency_s
    )
    if outcome.error or outcome.throttled:
        return dataclasses.replace(
            history,
            polls=history.polls + 1,
            first_poll_at=first,
            consecutive_errors=history.consecutive_errors + 1,
            consecutive_throttled=history.consecutive_throttled + 1 if outcome.throttled else 0,
            latency_s=latency,
        )
    found = outcome.items > 0
    return dataclasses.replace(
        history,
        polls=history.polls + 1,
        first_poll_at=first,
        last_items_at=outcome.at if found else history.last_items_at,
        consecutive_empty=0 if found else history.consecutive_empty + 1,
        consecutive_errors=0,
        consecutive_throttled=0,
        latency_s=latency,
    )


def next_poll(
    history: PollHistory,
    settings: PollingSettings,
    now: float,
    rand: Random,
    *,
    lag: int | None = None,
    retry_delay_s: float | None = None,
) -> PollDecision:
    """The delay before the mailbox's next poll, `now` being when its last poll
    ended. `lag` is the processors' consumer lag (None: unknown, slows nothing);
    `retry_delay_s` the retry policy's delay when the last poll failed."""
    if history.polls == 0:
        return PollDecision(0.0, PollReason.FIRST)
    delay, reason = _base_delay(history, settings, now, retry_delay_s)
    delay = _jittered(delay, settings.jitter, rand)
    if lag is not None and lag > settings.lag_threshold and reason != PollReason.ERROR:
        slowed = min(settings.idle_max_s, delay * settings.lag_slowdown)
        if slowed > delay:
            return PollDecision(slowed, PollReason.BACKPRESSURE)
    return PollDecision(delay, reason)


def woken(pushed: bool) -> PollDecision:
    """The decision for a mailbox woken before its poll was due: a server push, or a
    manual sync / track request (`pushed` False). Polls at once."""
    return PollDecision(0.0, PollReason.PUSH if pushed else PollReason.MANUAL)


def backpressure(lag: int | None, settings: PollingSettings) -> bool:
    """True when `lag` (None: unknown) is past the profile's threshold."""
    return lag is not None and lag > settings.lag_threshold


def _base_delay(
    history: PollHistory, settings: PollingSettings, now: float, retry_delay_s: float | None
) -> tuple[float, PollReason]:
    if history.consecutive_throttled:
        steps = min(history.consecutive_throttled - 1, 30)
        delay = min(settings.idle_max_s, settings.throttle_delay_s * 2.0**steps)
        return max(delay, retry_delay_s or 0.0), PollReason.THROTTLED
    if history.consecutive_errors:
        if retry_delay_s is not None:
            return retry_delay_s, PollReason.ERROR
        steps = min(history.consecutive_errors - 1, 30)
        return min(settings.idle_max_s, settings.min_interval_s * 2.0**steps), PollReason.ERROR
    delay, reason = _activity_delay(history, settings, now)
    floor = history.latency_s / settings.max_busy_fraction
    if floor > delay:
        return min(settings.idle_max_s, floor), PollReason.SLOW
    return delay, reason


def _activity_delay(
    history: PollHistory, settings: PollingSettings, now: float
) -> tuple[float, PollReason]:
    """Active cadence while the mailbox found items recently, idle backoff after."""
    last = history.last_items_at if history.last_items_at is not None else history.quiet_since
    if last is not None and now - last < settings.active_window_s:
        steps = min(history.consecutive_empty, 60)
        delay = settings.min_interval_s * settings.active_backoff**steps
        return min(settings.max_active_interval_s, delay), PollReason.ACTIVE
    if last is not None:
        quiet_from = last + settings.active_window_s
    else:
        quiet_from = history.first_poll_at if history.first_poll_at is not None else now
    quiet = max(0.0, now - quiet_from)
    delay = quiet * (settings.backoff_factor - 1)
    return min(settings.idle_max_s, max(settings.max_active_interval_s, delay)), PollReason.IDLE


def _jittered(delay: float, jitter: float, rand: Random) -> float:
    return max(0.0, delay * (1 + jitter * (2 * rand() - 1)))
