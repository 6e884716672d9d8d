"""processors/handoff.py: the fetcher's hand-off of a record to its stream runs in
place when it does not wait, and is faust's own `wait_first` otherwise, on the
processor's real consumer (built by its faust app; nothing connects).
tests/integration/test_processor_workers.py and the fault tests run it on tansu."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP
from mode.utils.queues import FlowControlQueue

from pipeline.config import ConfigError, load_config
from processors.app import ProcessorApp
from processors.handoff import RESUMED_WITHIN_S, HandoffConsumer
from processors.recovery import App
from schemas.config import TidingsConfig


@pytest.fixture
async def consumer() -> AsyncIterator[HandoffConsumer]:
    app = App("handoff-test", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)
    found = app.consumer
    assert isinstance(found, HandoffConsumer)
    yield found


class Handoff:
    """A hand-off that records the task it ran in and, told to, waits on a future."""

    def __init__(self, waits_on: asyncio.Future[str] | None = None) -> None:
        self.waits_on = waits_on
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.cancelled = False

    async def __call__(self, value: str) -> str:
        self.tasks.append(asyncio.current_task())
        if self.waits_on is None:
            return value
        try:
            return value + await self.waits_on
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_a_handoff_that_does_not_wait_runs_in_place(consumer: HandoffConsumer) -> None:
    handoff = Handoff()
    call = handoff("record")
    tasks_before = len(asyncio.all_tasks())
    flow = consumer.suspend_flow.wait()
    result = await consumer.wait_first(call, flow)
    assert result.done == [call] and result.results == ["record"] and not result.stopped
    assert handoff.tasks == [asyncio.current_task()]  # this task: none of its own
    assert len(asyncio.all_tasks()) == tasks_before
    assert flow.cr_frame is None  # the flow's wait is closed, never left unawaited


async def test_a_handoff_that_waits_goes_on_where_it_stopped(consumer: HandoffConsumer) -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    handoff = Handoff(waits_on=future)
    call = handoff("record")
    waiting = asyncio.ensure_future(consumer.wait_first(call, consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    future.set_result(" delivered")
    result = await waiting
    assert result.done == [call]  # the hand-off itself, as faust's wait_first says
    assert result.results == ["record delivered"] and not result.stopped
    assert len(handoff.tasks) == 1 and not handoff.cancelled


async def test_the_flow_suspending_cancels_a_waiting_handoff(consumer: HandoffConsumer) -> None:
    handoff = Handoff(waits_on=asyncio.get_running_loop().create_future())
    flow = consumer.suspend_flow.wait()
    waiting = asyncio.ensure_future(consumer.wait_first(handoff("record"), flow))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    result = await waiting
    assert result.done == [flow] and result.results == [True]
    assert handoff.cancelled


async def test_a_suspended_flow_is_faust_s_wait(consumer: HandoffConsumer) -> None:
    consumer.suspend_flow.set()
    handoff = Handoff()
    flow = consumer.suspend_flow.wait()
    result = await consumer.wait_first(handoff("record"), flow)
    assert flow in result.done
    assert handoff.tasks and handoff.tasks[0] is not asyncio.current_task()  # a task of its own


async def test_a_stopped_consumer_is_faust_s_wait(consumer: HandoffConsumer) -> None:
    consumer._stopped.set()
    handoff = Handoff()
    result = await consumer.wait_first(handoff("record"), consumer.suspend_flow.wait())
    assert result.stopped and result.done == []


async def test_other_waits_are_faust_s(consumer: HandoffConsumer) -> None:
    single, timed = Handoff(), Handoff()
    result = await consumer.wait_first(single("one"))
    assert result.results == ["one"] and single.tasks[0] is not asyncio.current_task()
    result = await consumer.wait_first(timed("two"), consumer.suspend_flow.wait(), timeout=5)
    assert result.results == ["two"] and timed.tasks[0] is not asyncio.current_task()


async def test_a_failing_handoff_raises_its_error(consumer: HandoffConsumer) -> None:
    async def failing() -> None:
        raise ValueError("undeliverable")

    flow = consumer.suspend_flow.wait()
    with pytest.raises(ValueError, match="undeliverable"):
        await consumer.wait_first(failing(), flow)
    assert flow.cr_frame is None


class Polls:
    """The consumer's polls of its active partitions: the timeout each was given."""

    def __init__(self, consumer: HandoffConsumer) -> None:
        self.timeouts: list[float] = []
        consumer._getmany = self  # type: ignore[method-assign]

    async def __call__(
        self,
        active_partitions: set[TP],
        timeout: float,  # noqa: ASYNC109 (faust's signature)
    ) -> dict[TP, list[Any]]:
        self.timeouts.append(timeout)
        return {}


PARSED = [TP("mail.parsed", partition) for partition in range(2)]
CHANGES = TP("mail.changes", 0)


async def test_polls_wait_faust_s_second_while_no_partition_is_paused(
    consumer: HandoffConsumer,
) -> None:
    polls = Polls(consumer)
    consumer._active_partitions = {*PARSED, CHANGES}
    assert await consumer._wait_next_records(1.0) == ({}, {*PARSED, CHANGES})
    assert polls.timeouts == [1.0]


async def test_while_a_full_queue_pauses_partitions_the_others_are_polled_briefly(
    consumer: HandoffConsumer,
) -> None:
    """The paused partitions resume when their queue has room; the next poll takes
    them, so a poll of the others must not wait faust's second."""
    polls = Polls(consumer)
    consumer._active_partitions = {CHANGES}
    consumer._buffered_partitions = set(PARSED)  # paused by on_buffer_full
    await consumer._wait_next_records(1.0)
    assert polls.timeouts == [RESUMED_WITHIN_S]
    for tp in PARSED:
        consumer.on_buffer_drop(tp)  # the queue has room again
    assert await consumer._wait_next_records(1.0) == ({}, {*PARSED, CHANGES})
    assert polls.timeouts == [RESUMED_WITHIN_S, 1.0]


async def test_with_every_partition_paused_the_consumer_sleeps_briefly(
    consumer: HandoffConsumer,
) -> None:
    polls = Polls(consumer)
    consumer._active_partitions = set()
    consumer._buffered_partitions = set(PARSED)
    started = asyncio.get_running_loop().time()
    assert await consumer._wait_next_records(1.0) == ({}, set())
    assert asyncio.get_running_loop().time() - started < 0.5  # faust sleeps a second
    assert polls.timeouts == []  # nothing to poll


async def test_a_stopped_flow_still_waits_as_faust_does(consumer: HandoffConsumer) -> None:
    polls = Polls(consumer)
    consumer._active_partitions = {CHANGES}
    consumer._buffered_partitions = set(PARSED)
    consumer.stop_flow()
    waiting = asyncio.ensure_future(consumer._wait_next_records(1.0))
    await asyncio.sleep(RESUMED_WITHIN_S * 2)
    assert not waiting.done() and polls.timeouts == []  # waits for the flow to resume
    consumer.resume_flow()
    await waiting
    assert polls.timeouts == [RESUMED_WITHIN_S]


def processor_config(tmp_path: Path, **env: str) -> TidingsConfig:
    return load_config(
        env={
            "TIDINGS_DATA_DIR": str(tmp_path),
            "TIDINGS_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
            **{f"TIDINGS_PROCESSORS__{name.upper()}": value for name, value in env.items()},
        }
    )


def test_a_poll_of_the_processor_fits_the_room_left_when_fetching_stops(tmp_path: Path) -> None:
    """A stream's partitions stop being fetched once its queue is four fifths full;
    what one poll returned still goes in, and has to fit, or its events wait
    for room, each with several tasks."""
    config = processor_config(tmp_path)
    processor = ProcessorApp(config)
    processor.index_store.close()
    conf = processor.app.conf
    assert conf.broker_max_poll_records == config.processors.max_poll_records == 500
    size = conf.stream_buffer_maxsize
    room = size - math.floor(size / FlowControlQueue.pressure_high_ratio)
    assert room >= 800  # the largest max_poll_records the configuration takes
    with pytest.raises(ConfigError, match="max_poll_records"):
        processor_config(tmp_path, max_poll_records="801")
    assert processor_config(tmp_path, max_poll_records="800").processors.max_poll_records == 800
