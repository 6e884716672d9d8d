"""faust's consumer handing fetched records to their streams: without four tasks a
record, and without idling a second after a full stream's queue has room again.

faust's fetcher (`Consumer._drain_messages`) hands every record to the stream that
reads its topic with `await self.wait_first(callback(message),
self.suspend_flow.wait())`: the hand-off, unless the flow is suspended first (a
rebalance). `Service.wait_first` wraps both in tasks, adds two more for the
service's stopped and crashed events, waits for the first with `asyncio.wait`
and cancels the rest: four tasks, an `asyncio.wait` and three cancellations per
record (cProfile of a worker deciding 20,000 emails: 91,000 tasks created; 26,000
with this).

A hand-off usually completes without waiting: it puts the event on the stream's
queue, which has room. `HandoffConsumer.wait_first` runs such a hand-off in
place and returns its result as faust's would; a hand-off that has to wait
(the stream's queue is full) goes on from where it stopped inside faust's own
`wait_first`, so the flow suspending while it waits still cancels it. In the
benchmark 590 hand-offs of 40,000 wait; 6,861 did before the consumer's polls
were bounded to what fits the queue (`processors.max_poll_records`). Any other
wait (other arguments, a timeout, the flow suspended, the service stopped or
crashed) is faust's unchanged. Measured in bench/correlate.py's pipeline part,
interleaved pairs: 11 to 50% less CPU a decision (docs/performance.md).

A stream's queue that is four fifths full pauses its partitions
(`Consumer.on_buffer_full`) until it is down to two fifths. Meanwhile faust's
fetcher polls the other partitions for up to a second (or sleeps a second when
none is left), and only the next poll takes the resumed ones: an agent that
empties its queue within that second waits for the rest of it. In the benchmark
the processor's worker waited so nine times in 11 s, a second each, and a stub
engine deciding nothing got no further than 4,000 events a second. While
partitions are paused, `HandoffConsumer` polls for at most `RESUMED_WITHIN_S`.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport.consumer import RecordMap
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP
from mode.services import WaitArgT, WaitResults

# How soon partitions resumed after a full stream's queue are polled again (faust: 1 s).
RESUMED_WITHIN_S = 0.05


class HandoffConsumer(kafka_driver.Consumer):
    """faust's aiokafka consumer, handing a record to its stream in place when the
    hand-off does not have to wait, and taking partitions resumed after a full
    stream's queue within `RESUMED_WITHIN_S`."""

    async def _wait_next_records(
        self,
        timeout: float,  # noqa: ASYNC109 (faust's signature)
    ) -> tuple[RecordMap | None, set[TP] | None]:
        """faust's next poll; while partitions are paused for a full stream's queue
        it waits at most `RESUMED_WITHIN_S` for the others' records, or sleeps
        that long when none is active (faust: `timeout`, or a second)."""
        if not self.flow_active:
            await self.wait(self.can_resume_flow)  # type: ignore[arg-type]  # as faust does first
        if self._buffered_partitions and not self.app.client_only:
            if not self._get_active_partitions():
                await self.sleep(RESUMED_WITHIN_S)
                return {}, set()
            timeout = min(timeout, RESUMED_WITHIN_S)
        return await super()._wait_next_records(timeout)

    async def wait_first(
        self,
        *coros: WaitArgT,
        timeout: Any = None,  # noqa: ASYNC109 (mode's signature; its default is None)
    ) -> WaitResults:
        """faust's `wait_first`; for the fetcher's hand-off (a coroutine, then the
        flow's wait, no timeout) while the flow runs, the hand-off is first run in
        place: done without waiting, its result is returned at once."""
        if not self._runs_in_place(coros, timeout):
            return await super().wait_first(*coros, timeout=timeout)
        handoff, suspended = coros
        assert isinstance(handoff, types.CoroutineType)
        assert isinstance(suspended, types.CoroutineType)
        try:
            waiting_on = handoff.send(None)
        except StopIteration as returned:
            suspended.close()
            return WaitResults([handoff], [returned.value], False)
        except BaseException:
            suspended.close()
            raise
        going_on = _go_on(handoff, waiting_on)
        results = await super().wait_first(going_on, suspended)
        winners = [handoff if coro is going_on else coro for coro in results.done]
        return results._replace(done=winners)

    def _runs_in_place(self, coros: tuple[WaitArgT, ...], timeout: Any) -> bool:
        return (
            len(coros) == 2
            and timeout is None
            and all(isinstance(coro, types.CoroutineType) for coro in coros)
            and not self.suspend_flow.is_set()
            and not self._stopped.is_set()
            and not self._crashed.is_set()
        )


async def _go_on(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    """Run `coro` on from where it stopped: it had yielded `waiting_on` (what it
    awaits: a future, or None for a bare yield) to the event loop."""
    return await _resumed(coro, waiting_on)


@types.coroutine
def _resumed(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Yield what `coro` waits on to the task running this, and pass back what the
    task sends or throws (a result, or a cancellation), until `coro` returns."""
    while True:
        try:
            sent = yield waiting_on
        except BaseException as thrown:  # a cancellation, or the task's own exception
            try:
                waiting_on = coro.throw(thrown)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = coro.send(sent)
            except StopIteration as done:
                return done.value
