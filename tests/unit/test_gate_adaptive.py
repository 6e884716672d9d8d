"""connectors/gate.py: the adaptive (AIMD) connection limit per server profile."""

from __future__ import annotations

import asyncio

import pytest

from connectors.gate import GateRegistry, ServerGate, grown, shrunk
from schemas import metrics
from schemas.mailbox import PollingSettings


@pytest.mark.parametrize(
    ("limit", "floor", "expected"),
    [(10, 1, 5), (5, 1, 2), (2, 1, 1), (1, 1, 1), (10, 4, 5), (6, 4, 4), (1, 0, 1)],
)
def test_shrunk_halves_down_to_the_floor_and_never_to_zero(
    limit: int, floor: int, expected: int
) -> None:
    assert shrunk(limit, floor) == expected


@pytest.mark.parametrize(
    ("limit", "step", "ceiling", "expected"),
    [(1, 1, 10, 2), (9, 1, 10, 10), (10, 1, 10, 10), (8, 3, 10, 10)],
)
def test_grown_adds_the_step_up_to_max_connections(
    limit: int, step: int, ceiling: int, expected: int
) -> None:
    assert grown(limit, step, ceiling) == expected


def limit_gauge(profile: str) -> float:
    value = metrics.CONNECTOR_CONCURRENCY_LIMIT.labels(profile)._value.get()
    return float(value)


def test_throttling_halves_and_a_healthy_streak_grows_back_one_by_one() -> None:
    gate = ServerGate("aimd", 8, PollingSettings(recovery_streak=3))
    assert gate.limit == 8 and limit_gauge("aimd") == 8
    gate.throttled()
    assert gate.limit == 4
    gate.throttled()
    gate.throttled()
    gate.throttled()
    assert gate.limit == 1  # never below 1
    assert limit_gauge("aimd") == 1
    for _ in range(2):
        gate.healthy()
    assert gate.limit == 1  # the streak is not complete yet
    gate.healthy()
    assert gate.limit == 2
    gate.healthy()
    gate.throttled()  # a throttling answer breaks the streak
    gate.healthy()
    gate.healthy()
    assert gate.limit == 1
    for _ in range(3 * 20):
        gate.healthy()
    assert gate.limit == 8  # never above max_connections
    assert limit_gauge("aimd") == 8


def test_the_floor_is_the_profiles_concurrency_floor() -> None:
    gate = ServerGate("floor", 10, PollingSettings(concurrency_floor=3))
    for _ in range(5):
        gate.throttled()
    assert gate.limit == 3


async def test_a_shrunk_limit_holds_new_connections_until_enough_are_given_back() -> None:
    gate = ServerGate("shrink", 4, PollingSettings(recovery_streak=1))
    for _ in range(4):
        await gate.acquire()
    gate.throttled()
    assert gate.limit == 2 and gate.in_use == 4  # held connections are not cut
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()
    gate.release()
    await asyncio.sleep(0)
    assert not waiter.done()  # 2 in use = the new limit: still waiting
    assert gate.contended.is_set()
    gate.release()
    await asyncio.wait_for(waiter, 1.0)
    assert gate.in_use == 2
    gate.healthy()  # the limit grows to 3: room for one more at once
    await asyncio.wait_for(gate.acquire(), 1.0)
    assert gate.in_use == 3


async def test_growing_the_limit_wakes_a_waiter() -> None:
    gate = ServerGate("grow", 2, PollingSettings(recovery_streak=1))
    gate.throttled()
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.healthy()
    await asyncio.wait_for(waiter, 1.0)
    assert gate.in_use == 2 and not gate.contended.is_set()


async def test_the_peak_stays_within_the_adaptive_limit_under_load() -> None:
    gate = ServerGate("load", 6, PollingSettings(recovery_streak=2))
    held = peak_after_throttle = 0
    throttled = asyncio.Event()

    async def worker(i: int) -> None:
        nonlocal held, peak_after_throttle
        async with gate.slot():
            held += 1
            if throttled.is_set():
                peak_after_throttle = max(peak_after_throttle, held)
            await asyncio.sleep(0.001 * (i % 3))
            held -= 1

    first = [asyncio.create_task(worker(i)) for i in range(12)]
    await asyncio.sleep(0)
    gate.throttled()
    gate.throttled()  # 6 → 3 → 1
    await asyncio.gather(*first)
    throttled.set()
    await asyncio.gather(*(worker(i) for i in range(12)))
    assert peak_after_throttle == 1
    assert gate.in_use == 0 and not gate.contended.is_set()


def test_the_registry_keeps_the_first_callers_polling_settings() -> None:
    registry = GateRegistry()
    corp = registry.gate("corp", 4, PollingSettings(concurrency_floor=2))
    assert registry.gate("corp", 9) is corp
    assert registry.get("corp") is corp and registry.get("none") is None
    for _ in range(3):
        corp.throttled()
    assert corp.limit == 2
