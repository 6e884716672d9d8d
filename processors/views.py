"""Global views: every processor worker reads a compacted topic in full (all
partitions, forever) into an index.

crm.records feeds the Directory, mailbox.config the Mailboxes (both in memory,
read from the beginning at every start), crm.activities the ActivityIndex (on
disk: its view saves the offsets it has applied in the same store, in one write
batch with the records they cover (processed together), and resumes from them
after a restart; applying a record again is harmless). `ready` is set once each view
caught up with the end of its topic as it was when reading started; agents
wait for it before deciding.

A resumed view relies on compaction keeping tombstones long enough
(delete.retention.ms) for a stopped worker to read them when it comes back;
a worker stopped for longer should start with an empty state directory.

tansu answers ListOffsets wrongly, so "the end" is the high watermark reported
by fetch responses, never end_offsets().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from processors.index_store import IndexStore
from schemas.codec import Codec
from schemas.config import KafkaConfig
from schemas.errors import DecodeError

log = logging.getLogger(__name__)

Apply = Callable[[str, Any], None]


class CompactedView:
    """Reads one compacted topic into `apply(key, value_or_None)`, forever."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        codec: Codec[Any],
        apply: Apply,
        checkpoint: IndexStore | None = None,
        *,
        optional: bool = False,
    ) -> None:
        """`optional`: the topic may not exist (yet); the view is then ready (and
        empty) at once and takes the topic's records once it appears."""
        self.kafka = kafka
        self.optional = optional
        self.topic = topic
        self.codec = codec
        self.apply = apply
        self.checkpoint = checkpoint
        self.ready = asyncio.Event()
        self.records_applied = 0
        self.undecodable = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self) -> None:
        """Read every partition from the saved offsets (else the beginning), keep
        reading until cancelled. No consumer group: every worker reads everything."""
        consumer = AIOKafkaConsumer(**self.kafka.consumer_options())
        self._consumer = consumer
        await consumer.start()
        try:
            await self._assign(consumer)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                checkpoint = self.checkpoint
                with checkpoint.batched() if checkpoint is not None else contextlib.nullcontext():
                    for tp, messages in batch.items():
                        for message in messages:
                            self._apply(tp, message)
                    if batch and checkpoint is not None:
                        done = {tp.partition: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                        checkpoint.save_offsets(self.topic, done)
                if not self.ready.is_set() and await self._caught_up(consumer):
                    log.info("view %s ready: %d records", self.topic, self.records_applied)
                    self.ready.set()
        finally:
            await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        """Take every partition of the topic; start where the checkpoint says."""
        partitions: set[int] = set()
        while not partitions:
            await consumer.topics()  # refreshes metadata
            partitions = consumer.partitions_for_topic(self.topic) or set()
            if not partitions and self.optional and not self.ready.is_set():
                log.info("view %s: no such topic yet; empty until it appears", self.topic)
                self.ready.set()
            if not partitions:
                await asyncio.sleep(5.0 if self.ready.is_set() else 0.5)
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        saved = self.checkpoint.offsets(self.topic) if self.checkpoint is not None else {}
        for tp in assigned:
            if tp.partition in saved:
                consumer.seek(tp, saved[tp.partition])
        if saved:
            log.info("view %s resumes at %s", self.topic, dict(sorted(saved.items())))

    def _apply(self, tp: TopicPartition, message: Any) -> None:
        try:
            record = self.codec.decode_record(message, tp.topic, tp.partition)
        except DecodeError as exc:
            # A compacted view cannot skip a key silently: the record stays unknown,
            # and the error is counted and logged with where it sits.
            self.undecodable += 1
            log.error("view %s: %s", self.topic, exc)
            return
        if record is None:
            return
        self.apply(*record)
        self.records_applied += 1

    @staticmethod
    async def _caught_up(consumer: AIOKafkaConsumer) -> bool:
        partitions = consumer.assignment()
        if not partitions:
            return False
        for tp in partitions:
            highwater = consumer.highwater(tp)
            if highwater is None or await consumer.position(tp) < highwater:
                return False
        return True
