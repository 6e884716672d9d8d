"""A client-side fix for tansu's ListOffsets answer, installed when the broker is tansu.

tansu answers ListOffsets(latest) with the base offset of the partition's last
record batch plus one, not the offset after its last record: with a last batch
of four records at offsets 8-11 it says 9, not 12. Fetch responses carry the
right high watermark. Everything built on end offsets goes wrong with the bad
answer — faust restores only part of a table from its changelog, `seek_to_end`
lands inside the last batch, lag looks smaller than it is.

A second quirk: tansu answers a waiting Fetch about a third of
`fetch.max.wait` after new data arrives (measured: 490 ms at faust's fixed
1,500 ms, 170 ms at 500 ms, 135 ms at 200 ms), and below 200 ms it may return
nothing for large batches stored in S3. `install()` therefore caps every
consumer's fetch_max_wait_ms at 200.

A third: tansu on S3 storage answers a Produce with UNKNOWN_SERVER_ERROR when
another producer appended to the same partition at the same moment (its
conditional write lost the race); nothing is written. Three producers sending
1,200 records to one partition together had 340 of them refused. Kafka clients
do not retry that code, so faust's sends were lost and the connectors' batches
failed. `install()` makes aiokafka retry it like any retriable error (with its
backoff, within the request timeout); a duplicate, should tansu have written
after all, is harmless since every record's id is stable. (The race itself was
made visible by localbucket ignoring If-Match, fixed in localbucket_server; a
consumer reading while two appends race can still miss one of them, so the
embedded broker is for one worker per role: see the README.)

`install()` also wraps aiokafka's ListOffsets handling: for the partitions asked for
their latest offset, it also sends a Fetch at the reported offsets and answers
with the larger of the reported offset and the fetched high watermark. Earliest
offsets and offsets by timestamp are left alone. Real Kafka needs none of this;
the pipeline installs it only for tansu (`kafka.broker = "tansu"`, the default
for the embedded broker).
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.consumer.consumer import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher, OffsetResetStrategy
from aiokafka.errors import UnknownError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)
FETCH_MAX_WAIT_MS = 200


def install() -> None:
    """Patch aiokafka once in this process (idempotent)."""
    original = Fetcher._proc_offset_request
    if getattr(original, "tidings_tansu_compat", False):
        return
    _cap_fetch_wait()
    UnknownError.retriable = True  # see the module docstring: a lost append race

    async def proc_offset_request(self: Any, node_id: int, topic_data: dict[str, Any]) -> Any:
        offsets = await original(self, node_id, topic_data)
        latest = [
            TopicPartition(topic, partition)
            for topic, parts in topic_data.items()
            for partition, timestamp in parts
            if timestamp == OffsetResetStrategy.LATEST
        ]
        if latest:
            await _correct_latest(self._client, node_id, latest, offsets)
        return offsets

    proc_offset_request.tidings_tansu_compat = True  # type: ignore[attr-defined]
    Fetcher._proc_offset_request = proc_offset_request


def _cap_fetch_wait() -> None:
    original_init = AIOKafkaConsumer.__init__

    def init(self: Any, *topics: Any, **kwargs: Any) -> None:
        wait = kwargs.get("fetch_max_wait_ms", 500)
        kwargs["fetch_max_wait_ms"] = min(int(wait), FETCH_MAX_WAIT_MS)
        original_init(self, *topics, **kwargs)

    AIOKafkaConsumer.__init__ = init


async def _correct_latest(
    client: Any, node_id: int, partitions: list[TopicPartition], offsets: dict[Any, Any]
) -> None:
    """Raise each latest offset in `offsets` to the high watermark a Fetch reports."""
    by_topic: dict[str, list[tuple[int, int, int]]] = {}
    for tp in partitions:
        reported = offsets.get(tp, (0, None))[0]
        by_topic.setdefault(tp.topic, []).append((tp.partition, max(0, reported), 1))
    # tansu answers a Fetch with max_wait 0 with no partitions at all; 100 ms and
    # min_bytes 1 get an answer (at once when data exists, after 100 ms at the end).
    request = FetchRequest(100, 1, 1, 0, list(by_topic.items()))
    response = await client.send(node_id, request)
    for topic, parts in response.topics:
        for part in parts:
            partition, highwater = part[0], part[2]
            tp = TopicPartition(topic, partition)
            reported, timestamp = offsets.get(tp, (None, None))
            if reported is not None and highwater is not None and highwater > reported:
                log.debug(
                    "tansu ListOffsets %s said %s; high watermark is %s", tp, reported, highwater
                )
                offsets[tp] = (highwater, timestamp)
