"""Consumer-group lag as the gauge `tidings_consumer_lag{group}`.

Lag belongs to a group, not to one process, so one role reports it for every tidings
group: the sinks process, every `interval_s`. Scaled-out sinks each report the same
figure; dashboards and alerts take `max by (group)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.errors import KafkaError

from pipeline.idle import group_lag, groups_for
from schemas import metrics
from schemas.config import TidingsConfig

log = logging.getLogger(__name__)
ALL_ROLES = ("connectors", "processors", "sinks")


async def report_lag(
    config: TidingsConfig, stop: asyncio.Event, interval_s: float = 10.0, timeout_s: float = 20.0
) -> None:
    """Refresh the lag of every group until `stop` is set. A group whose lag cannot be
    read keeps its last value (the broker being away is another alert's business)."""
    groups = groups_for(config, ALL_ROLES)
    while not stop.is_set():
        for group, topics in groups.items():
            try:
                async with asyncio.timeout(timeout_s):
                    lag = await group_lag(config, group, topics)
            except (KafkaError, TimeoutError, OSError) as exc:
                log.warning("cannot read the lag of group %s: %s", group, exc)
                continue
            metrics.CONSUMER_LAG.labels(group).set(lag)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
