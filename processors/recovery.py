"""A faust app whose start-up (and rebalance) recovery drops no input.

faust-streaming 0.15 restores the tables first, with the stream partitions
(mail.changes, mail.parsed) paused, and then resumes them. It can lose stream
records in two places on the way, both seen here as the kill -9 fault test
(tests/faults/test_sync_faults.py) failing about one full run in three: a
restarted processor with changelog to replay and a backlog to read left whole
partitions undecided, or lost a run of changes while committing past them.

1. The fetch during recovery. faust hands aiokafka its live set of active
   partitions, and aiokafka reads an empty set as "every partition". When
   recovery is done reading the changelogs it pauses them, the set empties while
   a fetch waits, and aiokafka returns records of the paused stream partitions.
   faust drops them as not active, but aiokafka's position has moved past them.
   faust counts on the seek to the committed offsets to fetch them again, and
   that seek does nothing on a partition with no committed offset yet (aiokafka
   seeks only to a committed offset above 0): a worker killed before its first
   commit, or a new topic. `ConsumerThread` fetches over a copy of the set taken
   when the fetch starts, and fetches nothing when it is empty.
2. The order of the last step (`Recovery.on_recovery_completed`, with the
   consumer's flow already on to read the changelogs): resume the stream
   partitions, then await their seek, then resume the app's flow control, which
   clears every stream queue. Records fetched in between reach the agents'
   queues and are cleared, while the fetcher counts them as read. faust then
   commits past them, or, when they were at the head of what it must commit,
   never commits that partition again (faust-streaming/faust#596).
   `GaplessRecovery` seeks while the stream partitions are still paused,
   resumes flow control (clearing queues nothing of the streams can be in yet),
   and only then resumes the stream partitions and the consumer's flow.

`App` is faust's App with both: its transport's consumer uses `ConsumerThread`,
and its `TableManager` (faust's documented setting) uses `GaplessRecovery`. (It
also hands records to streams as processors/handoff.py does, and leaves faust's
Monitor out of its sensors: see `App`.)
tests/faults/test_processor_recovery.py holds the window open and checks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as kafka_driver

from processors.handoff import HandoffConsumer


class ConsumerThread(kafka_driver.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, fetching only what is active when the
    fetch starts."""

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109 (faust calls it so)
        max_records: int | None = None,
    ) -> Any:
        """Records of the partitions active now (a copy of faust's live set); none
        when no partition is active, where aiokafka would return every partition's."""
        partitions = set(active_partitions or ())
        if not partitions:
            return {}
        return await super()._fetch_records(
            consumer, partitions, timeout=timeout, max_records=max_records
        )


class Consumer(HandoffConsumer):
    """faust's aiokafka consumer on `ConsumerThread`, handing records to their streams
    as processors/handoff.py does."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(kafka_driver.Transport):
    """faust's aiokafka transport with `Consumer`."""

    Consumer = Consumer


class GaplessRecovery(Recovery):
    """faust's Recovery, but a stream partition is resumed only after it was
    seeked to its committed offset and the stream queues were cleared."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """The tables are restored: seek the (paused) stream partitions to their
        committed offsets, clear the stream queues, then resume those partitions
        and the flow. Returns without resuming when another rebalance started."""
        app: Any = self.app
        consumer = app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        await self._tables_recovered()
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again: generation %r, recovered %r",
                app.consumer_generation_id,
                generation_id,
            )
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        self.completed.set()
        app.flow_control.resume()  # clears the stream queues: nothing can be in them yet
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _tables_recovered(self) -> None:
        """Tell every table its partitions are recovered (faust's table callbacks)."""
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)


class TableManager(FaustTableManager):
    """faust's TableManager with `GaplessRecovery` as its recovery service."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = GaplessRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class App(faust.App):
    """faust's App on `Transport` and `TableManager` (takes faust.App's settings), and
    without faust's Monitor among its sensors.

    faust's Monitor keeps statistics for faust's own debug pages (/stats) through
    sensor callbacks on every message and stream event: dictionaries, weak
    references and clocks, 5 to 8% of a processor's CPU per decision (three
    interleaved pairs of bench/correlate.py's pipeline part). tidings reads none of
    them: it exports its own metrics (/metrics). The Monitor stays the app's
    `monitor` (faust calls a few of its methods directly); it no longer gets the
    sensor callbacks, and the debug pages that show it are off (`web_stats_enabled`)."""

    def __init__(self, id: str, **settings: Any) -> None:
        super().__init__(id, TableManager=TableManager, web_stats_enabled=False, **settings)

    def on_init_dependencies(self) -> Any:
        """faust's dependencies; faust adds its Monitor to the sensors here, this takes
        it out again."""
        dependencies = super().on_init_dependencies()
        if self.monitor in set(self.sensors):
            self.sensors.remove(self.monitor)
        return dependencies

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)
