"""Produce requests that carry every batch a broker is due, as the Java client sends them.

aiokafka hands a partition's batch to the sender only once that batch's own
linger expired. A producer writing a few records at a time to many partitions
(a processor writes decisions, activities and changelogs over dozens of
partitions) therefore sends one small produce request per partition, each as
its batch expires: about two requests per decision were measured, and the
broker's CPU per decision was more than the worker's decoding.

The Java client (RecordAccumulator.ready, then drain) calls a broker ready as
soon as any batch it leads is ready, and then drains the first batch of every
partition it leads into the one request. `install()` gives aiokafka's
MessageAccumulator that rule; linger keeps its meaning (no batch waits longer
than linger_ms), batches just stop waiting for their own clock once the request
to their broker leaves anyway. Measured on bench/correlate.py's pipeline part:
on memory storage, broker CPU per decision 215 → 95 µs and decisions per second
+35 to 60%; on localbucket storage 1,039 decisions/s against 380 to 725 before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from aiokafka.producer import message_accumulator

log = logging.getLogger(__name__)

_INSTALLED = "_tidings_drains_whole_nodes"
Drain = Callable[..., Any]


def install() -> bool:
    """Make every aiokafka producer of this process drain whole brokers (idempotent).

    Returns False, and leaves aiokafka as it is, when its accumulator does not
    have the shape this was written against (a future aiokafka release)."""
    accumulator = message_accumulator.MessageAccumulator
    if getattr(accumulator, _INSTALLED, False):
        return True
    if not _compatible():
        log.warning("aiokafka %s: produce requests keep the per-partition linger", _version())
        return False
    accumulator.drain_by_nodes = _draining_whole_nodes(accumulator.drain_by_nodes)
    setattr(accumulator, _INSTALLED, True)
    return True


def _draining_whole_nodes(drain: Drain) -> Drain:
    def drain_by_nodes(
        self: Any, ignore_nodes: Collection[int] | None, muted_partitions: Collection[Any] = ()
    ) -> Any:
        ignored = ignore_nodes or ()
        firsts = [
            (batches[0], self._cluster.leader_for_partition(tp))
            for tp, batches in self._batches.items()
            if batches and tp not in muted_partitions
        ]
        ready = {
            leader
            for batch, leader in firsts
            if batch.remaining_linger() is None
            and leader not in (None, -1)
            and leader not in ignored
        }
        for batch, leader in firsts:
            if leader in ready:
                batch._linger_time = 0  # ready now: its broker's request leaves
        return drain(self, ignore_nodes, muted_partitions)

    drain_by_nodes.__doc__ = drain.__doc__
    return drain_by_nodes


def _compatible() -> bool:
    batch = message_accumulator.MessageBatch
    accumulator = message_accumulator.MessageAccumulator
    return (
        callable(getattr(accumulator, "drain_by_nodes", None))
        and callable(getattr(batch, "remaining_linger", None))
        and "_linger_time" in batch.__init__.__code__.co_names
    )


def _version() -> str:
    import aiokafka

    return str(getattr(aiokafka, "__version__", "?"))
