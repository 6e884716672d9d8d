"""connectors/schedule.py: the poll schedule, driven by a simulated clock (plain seconds)
and fixed or seeded random sources."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import pairwise

import pytest

from connectors.schedule import (
    THROTTLING_CODES,
    PollHistory,
    PollOutcome,
    PollReason,
    backpressure,
    next_poll,
    record,
    woken,
)
from schemas.mailbox import PollingSettings

DEFAULTS = PollingSettings()
NO_JITTER = PollingSettings(jitter=0.0)


def middle() -> float:
    """A random source at the middle of [0, 1): jitter adds nothing."""
    return 0.5


@dataclass
class Mailbox:
    """One mailbox run by the policy on a simulated clock: each poll finds what was
    delivered since the previous one."""

    settings: PollingSettings
    history: PollHistory = field(default_factory=PollHistory)
    now: float = 0.0

    def poll(
        self,
        items: int = 0,
        *,
        latency_s: float = 0.0,
        error: bool = False,
        throttled: bool = False,
        lag: int | None = None,
        retry_delay_s: float | None = None,
    ) -> tuple[float, PollReason]:
        """Poll at `now`, then advance the clock to the next poll; (delay, reason)."""
        self.now += latency_s
        outcome = PollOutcome(
            at=self.now, items=items, latency_s=latency_s, error=error, throttled=throttled
        )
        self.history = record(self.history, outcome)
        decision = next_poll(
            self.history, self.settings, self.now, middle, lag=lag, retry_delay_s=retry_delay_s
        )
        self.now += decision.delay_s
        return decision.delay_s, decision.reason


def test_the_first_poll_is_at_once() -> None:
    decision = next_poll(PollHistory(), DEFAULTS, 0.0, middle)
    assert (decision.delay_s, decision.reason) == (0.0, PollReason.FIRST)


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        # A poll that found items: min_interval_s; each empty poll doubles it up to 2 min.
        ([3], [(30.0, PollReason.ACTIVE)]),
        ([1, 0], [(30.0, PollReason.ACTIVE), (60.0, PollReason.ACTIVE)]),
        ([1, 0, 0, 0, 0], [(30.0,) * 1, (60.0,), (120.0,), (120.0,), (120.0,)]),
        ([1, 0, 0, 2], [(30.0,), (60.0,), (120.0,), (30.0,)]),  # mail again: fast again
    ],
)
def test_active_mailboxes_poll_between_min_and_max_active_interval(
    found: list[int], expected: list[tuple[float, ...]]
) -> None:
    box = Mailbox(NO_JITTER)
    got = [box.poll(items) for items in found]
    for (delay, reason), want in zip(got, expected, strict=True):
        assert delay == want[0]
        assert reason == (want[1] if len(want) > 1 else PollReason.ACTIVE)


def test_an_idle_mailbox_backs_off_gradually_to_six_hours() -> None:
    box = Mailbox(NO_JITTER)
    box.poll(1)  # found mail at t=0
    delays: list[float] = []
    reasons: list[PollReason] = []
    while box.now < 3 * 24 * 3600:
        delay, reason = box.poll(0)
        delays.append(delay)
        reasons.append(reason)
    # Active for the first hour (at most 2 min apart)...
    active = [d for d, r in zip(delays, reasons, strict=True) if r == PollReason.ACTIVE]
    assert active and max(active) == 120.0
    # ...then idle: delays never shrink, grow at most by backoff_factor, end at 6 h.
    idle = [d for d, r in zip(delays, reasons, strict=True) if r == PollReason.IDLE]
    assert idle[0] == 120.0
    assert all(b >= a for a, b in pairwise(idle))
    assert all(b <= a * DEFAULTS.backoff_factor + 1e-6 for a, b in pairwise(idle))
    assert idle[-1] == 6 * 3600.0
    assert 10 <= len(idle) <= 30  # gradually: a dozen steps or so, not one jump


def test_a_mailbox_never_seen_active_backs_off_from_its_first_poll() -> None:
    box = Mailbox(NO_JITTER)
    delays = [box.poll(0)[0] for _ in range(6)]
    assert delays == [120.0, 120.0, 240.0, 480.0, 960.0, 1920.0]


def test_cursors_that_moved_long_ago_start_the_mailbox_at_the_idle_ceiling() -> None:
    box = Mailbox(NO_JITTER, PollHistory(quiet_since=-3 * 24 * 3600.0))
    assert box.poll(0) == (6 * 3600.0, PollReason.IDLE)
    recent = Mailbox(NO_JITTER, PollHistory(quiet_since=-600.0))  # changed 10 minutes ago
    assert recent.poll(0) == (60.0, PollReason.ACTIVE)


def test_jitter_spreads_a_fleet_within_the_fraction() -> None:
    rand = random.Random(7).random
    history = record(PollHistory(), PollOutcome(at=0.0, items=1))
    delays = [next_poll(history, DEFAULTS, 0.0, rand).delay_s for _ in range(2000)]
    assert min(delays) >= 30.0 * 0.9 and max(delays) <= 30.0 * 1.1
    assert max(delays) - min(delays) > 30.0 * 0.18  # really spread, not one value
    assert len({round(d, 3) for d in delays}) > 1000
    edge = next_poll(history, DEFAULTS, 0.0, lambda: 0.0).delay_s
    assert edge == pytest.approx(27.0)


def test_push_and_manual_sync_poll_at_once() -> None:
    assert (woken(True).delay_s, woken(True).reason) == (0.0, PollReason.PUSH)
    assert (woken(False).delay_s, woken(False).reason) == (0.0, PollReason.MANUAL)


def test_throttling_waits_and_doubles_then_recovers() -> None:
    box = Mailbox(NO_JITTER)
    box.poll(1)
    assert box.poll(throttled=True, error=True) == (60.0, PollReason.THROTTLED)
    assert box.poll(throttled=True, error=True) == (120.0, PollReason.THROTTLED)
    assert box.poll(throttled=True, error=True) == (240.0, PollReason.THROTTLED)
    # The retry policy's delay is a floor, never a shortcut.
    assert box.poll(throttled=True, error=True, retry_delay_s=900.0) == (
        900.0,
        PollReason.THROTTLED,
    )
    assert box.poll(2) == (30.0, PollReason.ACTIVE)  # healthy again: back to normal


def test_errors_wait_the_retry_policys_delay() -> None:
    box = Mailbox(NO_JITTER)
    box.poll(1)
    assert box.poll(error=True, retry_delay_s=1.5) == (1.5, PollReason.ERROR)
    assert box.poll(error=True, retry_delay_s=300.0) == (300.0, PollReason.ERROR)
    # Without one, errors back off from min_interval_s.
    box2 = Mailbox(NO_JITTER)
    box2.poll(1)
    assert [box2.poll(error=True)[0] for _ in range(3)] == [30.0, 60.0, 120.0]


def test_an_error_keeps_the_activity_history() -> None:
    box = Mailbox(NO_JITTER)
    box.poll(1)
    box.poll(error=True, retry_delay_s=1.0)
    assert box.history.last_items_at == 0.0
    assert box.poll(0) == (60.0, PollReason.ACTIVE)  # one empty poll since the mail


@pytest.mark.parametrize(
    ("lag", "delay", "reason"),
    [
        (None, 30.0, PollReason.ACTIVE),  # unknown lag slows nothing
        (10_000, 30.0, PollReason.ACTIVE),  # at the threshold: not past it
        (10_001, 120.0, PollReason.BACKPRESSURE),  # past it: times lag_slowdown (4)
    ],
)
def test_processor_lag_past_the_threshold_slows_polling(
    lag: int | None, delay: float, reason: PollReason
) -> None:
    box = Mailbox(NO_JITTER)
    assert box.poll(1, lag=lag) == (delay, reason)
    assert backpressure(lag, DEFAULTS) == (reason == PollReason.BACKPRESSURE)


def test_backpressure_never_exceeds_the_idle_ceiling_nor_delays_retries() -> None:
    box = Mailbox(NO_JITTER, PollHistory(quiet_since=-9e6))
    assert box.poll(0, lag=10**9) == (6 * 3600.0, PollReason.IDLE)  # already at the ceiling
    failing = Mailbox(NO_JITTER)
    failing.poll(1)
    assert failing.poll(error=True, retry_delay_s=2.0, lag=10**9) == (2.0, PollReason.ERROR)


def test_a_slow_server_is_polled_less_often() -> None:
    box = Mailbox(NO_JITTER)
    # 20 s polls at most 10% of the time: 200 s apart, not 30 s.
    assert box.poll(1, latency_s=20.0) == (200.0, PollReason.SLOW)
    fast = Mailbox(NO_JITTER)
    assert fast.poll(1, latency_s=0.2) == (30.0, PollReason.ACTIVE)


def test_fixed_settings_poll_at_one_interval_whatever_happens() -> None:
    fixed = NO_JITTER.fixed(0.5)
    box = Mailbox(fixed)
    delays = [box.poll(items, latency_s=0.3)[0] for items in (0, 1, 0, 0, 0, 0, 0)]
    assert delays == [0.5] * 7


def test_the_same_inputs_give_the_same_decision() -> None:
    history = record(PollHistory(), PollOutcome(at=5.0, items=2, latency_s=0.1))
    first = next_poll(history, DEFAULTS, 5.0, random.Random(1).random, lag=3)
    again = next_poll(history, DEFAULTS, 5.0, random.Random(1).random, lag=3)
    assert first == again


def test_throttling_codes_are_busy_and_refused() -> None:
    assert {"ServerBusy", "ConnectionRefused"} == THROTTLING_CODES


@pytest.mark.parametrize(
    "changes",
    [
        {"min_interval_s": 0.0},
        {"min_interval_s": 300.0, "max_active_interval_s": 120.0},
        {"idle_max_s": 60.0},
        {"jitter": 1.0},
        {"backoff_factor": 0.5},
        {"lag_threshold": 0},
        {"concurrency_floor": 0},
    ],
)
def test_settings_refuse_nonsense(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="polling"):
        PollingSettings(**changes)  # type: ignore[arg-type]


def test_a_simulated_day_of_a_quiet_mailbox_costs_a_handful_of_polls() -> None:
    """Cold start, no mail all day: the fixed 5-minute poller would poll 288 times."""
    box = Mailbox(DEFAULTS)
    polls = 0
    while box.now < 24 * 3600:
        box.poll(0)
        polls += 1
    assert polls <= 20
