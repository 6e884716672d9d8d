"""Email server profiles at run time: every connector worker reads the whole
`server.profiles` topic (compacted, one partition, keyed by profile name) outside
any consumer group, and keeps its profiles dict up to date.

tidings.toml's `[server_profiles.NAME]` are the base; a published profile replaces
the file's of the same name, a tombstone removes the published one (the file's is
in force again). The dict the runtime and its sources (and the outgoing sender)
share is updated in place, between awaits, so each reader sees either the old or
the new set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.config import KafkaConfig
from schemas.errors import DecodeError
from schemas.mailbox import ServerProfile, merged_profiles
from schemas.topics import SERVER_PROFILES, codec

log = logging.getLogger(__name__)


def apply_record(
    published: dict[str, ServerProfile], name: str, profile: ServerProfile | None
) -> None:
    """One record of server.profiles: a profile replaces `name`'s, a tombstone removes it."""
    if profile is None:
        published.pop(name, None)
    else:
        published[name] = profile


def replace_in_place(
    target: dict[str, ServerProfile], merged: Mapping[str, ServerProfile]
) -> set[str]:
    """Make `target` equal `merged`; returns the names whose profile changed (added,
    replaced or removed)."""
    changed = {n for n in target.keys() | merged.keys() if target.get(n) != merged.get(n)}
    if changed:
        target.clear()
        target.update(merged)
    return changed


class ProfilesView:
    """Reads server.profiles from the beginning and follows it.

    `target` is the dict the connector's parts look profiles up in; it is set
    to the file's profiles (`base`) merged with the published ones after each
    batch. `on_change` is called with the names whose profile changed after the
    initial load.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        prefix: str,
        target: dict[str, ServerProfile],
        on_change: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = SERVER_PROFILES.name(prefix)
        self.target = target
        self.base = dict(target)
        self.published: dict[str, ServerProfile] = {}
        self.on_change = on_change
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    async def load(self, timeout_s: float = 60.0) -> None:
        """Read the topic to its end and apply it (before any mailbox starts)."""
        consumer = AIOKafkaConsumer(**self.kafka.consumer_options())
        await consumer.start()
        self._consumer = consumer
        try:
            async with asyncio.timeout(timeout_s):
                await consumer.topics()  # metadata, so the partitions are known
                numbers = sorted(consumer.partitions_for_topic(self.topic) or {0})
                self._partitions = [TopicPartition(self.topic, p) for p in numbers]
                consumer.assign(self._partitions)
                await consumer.seek_to_beginning(*self._partitions)
                while not await self._read_up():
                    await self._poll(200)
        except BaseException:
            await self.close()
            raise
        replace_in_place(self.target, merged_profiles(self.base, self.published))
        if self.published:
            log.info("server profiles published on %s: %s", self.topic, sorted(self.published))

    async def follow(self, stop: asyncio.Event) -> None:
        """Apply new records until `stop` is set (call `load` first)."""
        while not stop.is_set():
            await self._poll(500)

    async def close(self) -> None:
        """Stop the consumer."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def _read_up(self) -> bool:
        assert self._consumer is not None
        for tp in self._partitions:
            highwater = self._consumer.highwater(tp)
            if highwater is None or await self._consumer.position(tp) < highwater:
                return False
        return True

    async def _poll(self, timeout_ms: int) -> None:
        assert self._consumer is not None
        batch = await self._consumer.getmany(*self._partitions, timeout_ms=timeout_ms)
        if not batch:
            return
        value_codec = codec(SERVER_PROFILES)
        for tp, messages in batch.items():
            for message in messages:
                try:
                    record = value_codec.decode_record(message, tp.topic, tp.partition)
                except DecodeError as exc:
                    log.error("ignoring undecodable server profile: %s", exc)
                    continue
                if record is not None:
                    name, value = record
                    apply_record(self.published, name, value.profile if value else None)
        changed = replace_in_place(self.target, merged_profiles(self.base, self.published))
        if changed:
            log.info("server profiles changed: %s", sorted(changed))
            if self.on_change is not None:
                self.on_change(changed)
