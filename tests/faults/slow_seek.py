"""`python -m tests.faults.slow_seek ARGS` runs `tidings ARGS` with faust's seek of
the stream partitions to their committed offsets made `DELAY_S` slower.

That seek is the window in which faust's own recovery lost input (see
processors/recovery.py): a few milliseconds in a normal start, too short to hit
on purpose. Slowed down, a test can hold it open every time."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from pipeline.cli import main

DELAY_S = 2.0


def slow_down_seek(delay_s: float = DELAY_S) -> None:
    """Make every faust consumer of this process wait `delay_s` before it seeks its
    partitions to their committed offsets."""
    seek = AIOKafkaConsumerThread.seek_to_committed

    async def slow_seek(self: Any) -> Any:
        await asyncio.sleep(delay_s)
        return await seek(self)

    AIOKafkaConsumerThread.seek_to_committed = slow_seek  # type: ignore[method-assign]


if __name__ == "__main__":
    slow_down_seek()
    main()
