"""The faust app: topics, tables, global views and the agents that wire the pure
stages (changes.handle_change, engine.DecisionEngine) to them.

Two agents:
  parse_changes  mail.changes (by mailbox)   → mail.parsed (by thread key),
                 or, for appointments, contacts and tasks, crm.act and a decision
                 (processors/act.py; table `act-items` per item key on the mailbox's
                 partition: what was tracked, for deletes and untracking),
                 or a final decision (+ sync error) for deletions and unreadable items,
                 or nothing for flags-only updates; claim-checked messages are read
                 from the blob store (in a worker thread) before the pure stage
  decide         mail.parsed (by thread key) → promotion.decisions, crm.activities

Both agents take their input a batch of events at a time (`_batches`): each
event goes through its pure stage, and what the batch produced, its table
changelog included, is handed to the producer together, one record batch per
topic partition (processors/outbox.py), before faust acknowledges the batch's
events; faust flushes the producer before it commits, so delivery is at least
once, and stable ids make the effects exactly once.

Undecodable input goes to the DLQ before its offset is committed; a run of
`dlq_max_consecutive` undecodable messages, or more than `dlq_max_ratio` of the
last `dlq_ratio_window`, stops the worker instead of hiding a systemic fault.

State and partitioning. mail.changes is keyed by mailbox; the parse stage
re-keys every email by its thread key (the root of its reply chain: first
References id, else In-Reply-To, else its own Message-ID) onto mail.parsed.
So the copies of one message in every mailbox, and the replies that carry
their thread's references, meet on one partition, where the partitioned
`tracked` table (Message-ID → activity, correlation, receiving mailboxes)
decides duplicates and In-Reply-To/References links with no remote lookup,
`tracked-items` keeps each copy's last decision once a message has two (by
Message-ID and item, so a message in many mailboxes is not rewritten with
every copy's decision on every copy; a message's only copy stays in its
`tracked` record), and `held-threads` lists, per conversation, the items that wait
for mail not tracked yet, whose emails and last decisions are in `held-items`
(written once per held item, likewise). The tables live in RocksDB (faust's
rocksdb store, rocksdict driver) under this worker's state directory,
changelogged, so a restart resumes from disk and a moved partition is rebuilt
from its changelog.

A tracking token, a Thread-Index or a subject hash says nothing about the
thread key, so those lookups cannot be co-partitioned. They go to a global
activity index each worker builds from crm.activities (compacted) in its own
RocksDB store (processors/directory.py, views.py). Chosen over a second
repartition hop by token, index and hash: one hop per email, no join state
to keep consistent between hops, and the token/index/hash of an activity is
only known once it is decided anyway.

Its limits: every worker stores every tracked email on disk (a few hundred
bytes each; memory is the bounded RocksDB cache), and the global index knows
an activity only once it came back from crm.activities (typically under a
second). A reply that shares no thread key with its parent and is decided in
that gap, or before its parent, is decided by what is known then
(docs/decisions.md, "Order does not matter").
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processors.act import ActLinkIndex, ActMemory, ActOwnerIndex, handle_act, is_act
from processors.changes import StageOutput, handle_change, needs_blob, read_blob
from processors.directory import ActivityIndex, Directory, Mailboxes
from processors.engine import DecisionEngine
from processors.faust_state import Processing, TableState
from processors.index_store import IndexStore
from processors.outbox import Outbox
from processors.recovery import App
from processors.views import CompactedView
from schemas import metrics, producer_drain
from schemas.act_changes import link_key
from schemas.base import utc_now
from schemas.blobs import open_blob_store
from schemas.codec import Codec, encode_key
from schemas.config import TidingsConfig
from schemas.crm import (
    CorrelationMethod,
    DecisionStatus,
    PromotionDecision,
    ReasonCode,
)
from schemas.dlq import DeadLetterFlood, FloodGuard, dead_letter_headers
from schemas.errors import DecodeError
from schemas.mail import MailItemChanged, ParsedEmail
from schemas.topics import (
    ACT_LINKS,
    CRM_ACT,
    CRM_ACTIVITIES,
    CRM_RECORDS,
    DLQ,
    MAIL_CHANGES,
    MAIL_PARSED,
    MAILBOX_CONFIG,
    PROMOTION_DECISIONS,
    SYNC_ERRORS,
    codec,
)

log = logging.getLogger(__name__)
_ACT_MEMORY: Codec[ActMemory] = Codec(ActMemory)


@functools.cache
def _decision_counter(status: DecisionStatus, reason: ReasonCode) -> Any:
    """The decisions counter's child for one status and reason (looked up once:
    `labels()` costs a lock and a tuple per call)."""
    return metrics.PROCESSOR_DECISIONS.labels(status.value, reason.value)


@functools.cache
def _correlation_counter(method: CorrelationMethod) -> Any:
    """The correlations counter's child for one method (looked up once)."""
    return metrics.PROCESSOR_CORRELATIONS.labels(method.value)


class ProcessorApp:
    """The faust app and everything its agents share."""

    def __init__(self, config: TidingsConfig) -> None:
        self.config = config
        self.settings = config.processors
        producer_drain.install()  # one produce request per broker, not per partition
        self.blobs = open_blob_store(config.blob_url(), config.blobs)
        self.state_dir = config.data_path / "processors" / self.settings.worker_id()
        self.index_store = IndexStore(
            self.state_dir / "activity-index", cache_bytes=self.settings.state_cache_mb << 20
        )
        prefix = config.topic_prefix
        kafka = config.kafka
        self.app = App(  # faust's, with a recovery that drops no input (processors/recovery.py)
            self.settings.group_id,
            broker=[f"kafka://{server}" for server in kafka.bootstrap_servers],
            store="tidings-rocksdb://",  # faust_state.TableStore
            autodiscover=False,
            topic_partitions=kafka.partitions,
            topic_replication_factor=kafka.replication_factor,
            topic_allow_declare=True,
            producer_acks=-1,
            producer_linger_ms=kafka.linger_ms,
            producer_max_batch_size=kafka.max_batch_bytes,
            producer_max_request_size=kafka.max_request_bytes,
            producer_request_timeout=kafka.request_timeout_ms / 1000,
            consumer_auto_offset_reset="earliest",
            consumer_max_fetch_size=kafka.max_request_bytes,
            broker_commit_interval=1.0,
            broker_max_poll_records=self.settings.max_poll_records,
            # A crashed worker's partitions move after 10 s, not faust's default 60 s.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=3.0,
            broker_rebalance_timeout=30.0,
            broker_client_id=f"{kafka.client_id}-processors",
            datadir=str(self.state_dir),
            web_enabled=True,
            # /metrics and /healthz where the configuration says (loopback by default;
            # 0.0.0.0 in a container, so Prometheus can scrape it)
            web_bind=config.metrics.host,
            web_host=config.metrics.host,
            web_port=self.settings.web_port or 6066,
            web_in_thread=False,
            table_standby_replicas=0,
        )
        self.topics = {
            spec.suffix: self.app.topic(
                spec.name(prefix),
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                internal=False,
            )
            for spec in (
                MAIL_CHANGES,
                MAIL_PARSED,
                PROMOTION_DECISIONS,
                CRM_ACTIVITIES,
                CRM_RECORDS,
                SYNC_ERRORS,
                DLQ,
                CRM_ACT,
            )
        }
        self.tracked = self._table("tracked")
        self.tracked_items = self._table("tracked-items")
        self.held = self._table("held-threads")
        self.held_items = self._table("held-items")
        self.act_items = self._table("act-items")
        self.act_links = ActLinkIndex()  # CRM → Exchange links: item → CRM record id
        self.act_owners = ActOwnerIndex()  # crm.act: meeting → owner (a stable owner)
        self.directory = Directory()
        self.mailboxes = Mailboxes()
        correlation = self.settings.correlation
        self.activity_index = ActivityIndex(
            correlation.smart if correlation.smart_matching else None, self.index_store
        )
        self.views = [
            CompactedView(
                kafka, CRM_RECORDS.name(prefix), codec(CRM_RECORDS), self.directory.apply
            ),
            CompactedView(
                kafka, MAILBOX_CONFIG.name(prefix), codec(MAILBOX_CONFIG), self.mailboxes.apply
            ),
            CompactedView(
                kafka,
                CRM_ACTIVITIES.name(prefix),
                codec(CRM_ACTIVITIES),
                self.activity_index.apply,
                checkpoint=self.index_store,
            ),
            CompactedView(
                kafka,
                ACT_LINKS.name(prefix),
                codec(ACT_LINKS),
                self.act_links.apply,
                optional=True,
            ),
            CompactedView(kafka, CRM_ACT.name(prefix), codec(CRM_ACT), self.act_owners.apply),
        ]
        self.state = TableState(self.tracked, self.tracked_items, self.held, self.held_items)
        self.engine = DecisionEngine(
            self.state, self.directory, self.mailboxes, self.activity_index, self.settings
        )
        self._flood = FloodGuard.from_settings(self.settings)
        self._views_ready = False
        self._topic_names = {
            suffix: topic.get_topic_name() for suffix, topic in self.topics.items()
        }
        self._crashing: asyncio.Future[None] | None = None
        self._persisted = self.state.persisted()
        self._register()

    def _table(self, name: str) -> Any:
        """A partitioned table with str keys (JSON) and schema-encoded bytes values (raw),
        in RocksDB with a small cache per partition."""
        prefix = self.config.topic_prefix
        cache = max(1, self.settings.state_cache_mb // 8) << 20
        return self.app.Table(
            name,
            default=None,
            options={
                "driver": "rocksdict",
                "block_cache_size": cache,
                "write_buffer_size": cache,
                "max_write_buffer_number": 2,
            },
            key_type=str,
            value_type=bytes,
            partitions=self.config.kafka.partitions,
            changelog_topic=self.app.topic(
                f"{prefix}processors.{name}-changelog",
                key_type=str,
                value_type=bytes,
                key_serializer="json",
                value_serializer="raw",
                partitions=self.config.kafka.partitions,
                compacting=True,
                internal=True,
            ),
        )

    async def views_ready(self) -> None:
        """Wait until every global view caught up with its topic (at once once they
        have: a view never goes back to not ready)."""
        if not self._views_ready:
            await asyncio.gather(*(view.ready.wait() for view in self.views))
            self._views_ready = True

    # -- wiring ----------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        changes_codec: Codec[MailItemChanged] = codec(MAIL_CHANGES)
        parsed_codec: Codec[ParsedEmail] = codec(MAIL_PARSED)

        @app.task
        async def run_views() -> None:
            await asyncio.gather(*(view.run() for view in self.views))

        @app.agent(self.topics[MAIL_CHANGES.suffix], concurrency=1)
        async def parse_changes(stream: Any) -> AsyncIterator[None]:
            async def on_event(event: Any, outbox: Outbox) -> None:
                change = await self._decode(event, changes_codec, "parse_changes")
                if change is not None:
                    await self._on_change(change, outbox)

            async for _ in self._batches("parse_changes", stream, on_event):
                yield None

        @app.agent(self.topics[MAIL_PARSED.suffix], concurrency=1)
        async def decide(stream: Any) -> AsyncIterator[None]:
            async def on_event(event: Any, outbox: Outbox) -> None:
                parsed = await self._decode(event, parsed_codec, "decide")
                if parsed is not None:
                    self._on_parsed(parsed, event.message.partition, outbox)

            async for _ in self._batches("decide", stream, on_event):
                yield None

        @app.timer(interval=15.0)
        async def expire_held() -> None:
            now = utc_now()
            active = {
                tp.partition
                for tp in app.assignor.assigned_actives()
                if tp.topic == MAIL_PARSED.name(self.config.topic_prefix)
            }
            for thread_key in self.state.due_threads(now, active):
                self.engine.expire(thread_key, now)
            await self._publish(self._outbox())
            metrics.PROCESSOR_HELD_ITEMS.set(self.state.held_item_count())

        @app.page("/metrics")
        async def metrics_page(web: Any, request: Any) -> Any:
            # aiohttp refuses a charset in content_type; the header carries it whole.
            return web.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        @app.page("/healthz")
        async def health_page(web: Any, request: Any) -> Any:
            ready = all(view.ready.is_set() for view in self.views)
            return web.json({"ready": ready}, status=200 if ready else 503)

        self.agents = (
            parse_changes,
            decide,
            run_views,
            expire_held,
            metrics_page,
            health_page,
        )

    async def _batches(
        self, agent: str, stream: Any, on_event: Callable[[Any, Outbox], Awaitable[None]]
    ) -> AsyncIterator[None]:
        """Run `on_event` over the stream a batch at a time (up to `batch_max_events`,
        waiting at most `batch_max_wait_ms` for more), then publish what the batch
        produced and its table changelog as one outbox; yields once per batch, after
        which faust acknowledges the batch's events.

        Each event is faust's current event while `on_event` runs: faust's tables put
        a write on the current event's partition. The views are awaited per batch,
        once the stream is being read: an agent that does not read its stream while
        faust recovers tables at start-up can lose the first event delivered in that
        window (seen as a stuck partition after a restart; processors/recovery.py
        closes the windows in faust's own recovery)."""
        settings = self.settings
        batch_size = metrics.PROCESSOR_BATCH_EVENTS.labels(agent)
        async for events in stream.take_events(
            settings.batch_max_events, within=settings.batch_max_wait_ms / 1000
        ):
            await self.views_ready()
            batch_size.observe(len(events))
            outbox = self._outbox()
            for event in events:
                with Processing(event):
                    await on_event(event, outbox)
            await self._publish(outbox)
            yield None

    def _outbox(self) -> Outbox:
        """An outbox onto faust's own aiokafka producer (the one faust flushes before
        it commits)."""
        transport: Any = self.app.producer
        return Outbox(transport._ensure_producer(), self._publish_failed, self._persisted)

    async def _publish(self, outbox: Outbox) -> None:
        """Publish `outbox` with the table changelog of the writes made meanwhile (a
        key's latest write only: the changelogs are compacted)."""
        outbox.extend(self.state.take_changelog(), latest=True)
        await outbox.publish()

    async def _on_change(self, change: MailItemChanged, outbox: Outbox) -> None:
        if is_act(change):
            self._on_act(change, outbox)
            return
        blob = (
            await asyncio.to_thread(read_blob, change.blob_ref, self.blobs.get)
            if needs_blob(change) and change.blob_ref is not None
            else None
        )
        now = utc_now()
        mailbox = self.mailboxes.get(change.mailbox_id)
        out = handle_change(change, mailbox, self.settings, now, blob, self.mailboxes.by_address)
        self._emit_stage(out, outbox)

    def _on_act(self, change: MailItemChanged, outbox: Outbox) -> None:
        """An appointment, contact or task: the pure stage, then its record or tombstone
        on crm.act, its decision, and what to remember of the item."""
        stored = self.act_items.get(change.item_key)
        memory = _ACT_MEMORY.decode(stored) if stored else None
        out = handle_act(
            change,
            self.mailboxes.get(change.mailbox_id),
            memory,
            self.directory.resolve,
            utc_now(),
            leave_ambiguous=self.settings.leave_ambiguous_recipients_unresolved,
            links=self.act_links.lookup,
            owners=self.act_owners.lookup,
        )
        if out.record is not None:
            self._send(outbox, CRM_ACT.suffix, out.record.record_id, out.record, codec(CRM_ACT))
        if out.tombstone is not None:
            outbox.add(self._topic_names[CRM_ACT.suffix], encode_key(out.tombstone), None)
        if out.link is not None and out.link.partition is not None:
            # A linked item deleted in the mailbox: its link, marked deleted, where the
            # writer reads it (the partition its record has on crm.act.changes).
            outbox.add(
                ACT_LINKS.name(self.config.topic_prefix),
                encode_key(link_key(out.link.record_id, out.link.mailbox_id)),
                codec(ACT_LINKS).encode(out.link),
                out.link.partition,
            )
        self._send_decision(outbox, out.decision)
        if out.memory is not None:
            self.act_items[change.item_key] = _ACT_MEMORY.encode(out.memory)
        elif stored:
            del self.act_items[change.item_key]

    def _emit_stage(self, out: StageOutput, outbox: Outbox) -> None:
        """Queue what the parse stage decided; an empty output (a flags-only update:
        the item's decision stands) publishes nothing."""
        for forwarded in out.forwarded:
            self._emit_stage(forwarded, outbox)
        if out.parsed is not None:
            self._send(
                outbox, MAIL_PARSED.suffix, out.parsed.thread_key, out.parsed, codec(MAIL_PARSED)
            )
        if out.error is not None:
            metrics.PROCESSOR_PARSE_FAILURES.labels(out.error.code).inc()
            error = out.error
            self._send(outbox, SYNC_ERRORS.suffix, error.mailbox_id, error, codec(SYNC_ERRORS))
        if out.decision is not None:
            self._send_decision(outbox, out.decision)

    def _on_parsed(self, parsed: ParsedEmail, partition: int, outbox: Outbox) -> None:
        now = utc_now()
        emission = self.engine.process(parsed, partition, now)
        if emission.redecided:
            metrics.PROCESSOR_REDECISIONS.inc(emission.redecided)
        # Compacted topics: a later version of a record or activity in this batch
        # supersedes the earlier one (copies of one message, each adding its mailbox).
        for record in emission.records:
            self._send(
                outbox,
                CRM_RECORDS.suffix,
                record.record_id,
                record,
                codec(CRM_RECORDS),
                latest=True,
            )
        for activity in emission.activities:
            self._send(
                outbox,
                CRM_ACTIVITIES.suffix,
                activity.activity_id,
                activity,
                codec(CRM_ACTIVITIES),
                latest=True,
            )
        for decision in emission.decisions:
            self._send_decision(outbox, decision)
        metrics.PROCESSOR_LATENCY_SECONDS.observe(
            max(0.0, (now - parsed.observed_at).total_seconds())
        )

    def _send_decision(self, outbox: Outbox, decision: PromotionDecision) -> None:
        _decision_counter(decision.status, decision.reason).inc()
        if decision.status == DecisionStatus.PROMOTED and decision.correlated_activity_id:
            _correlation_counter(decision.correlation_method).inc()
        self._send(
            outbox,
            PROMOTION_DECISIONS.suffix,
            decision.item_key,
            decision,
            codec(PROMOTION_DECISIONS),
        )

    def _send(
        self,
        outbox: Outbox,
        suffix: str,
        key: str,
        value: Any,
        value_codec: Codec[Any],
        latest: bool = False,
    ) -> None:
        """Queue one record for the batch's outbox (`latest`: it supersedes an earlier
        record of its key there; for compacted topics)."""
        outbox.add(
            self._topic_names[suffix], encode_key(key), value_codec.encode(value), latest=latest
        )

    def _publish_failed(self, error: BaseException) -> None:
        """A batch the producer gave up on: crash the worker, so its input is read
        again instead of being committed."""
        if self._crashing is not None:
            return
        log.critical("records could not be published; stopping: %s", error)
        self._crashing = asyncio.ensure_future(self.app.crash(error))

    async def _decode(self, event: Any, value_codec: Codec[Any], consumer: str) -> Any:
        message = event.message
        try:
            value = value_codec.decode(
                event.value, message.topic, message.partition, message.offset
            )
        except DecodeError as exc:
            await self._dead_letter(event, exc, consumer)
            return None
        self._flood.decoded()
        return value

    async def _dead_letter(self, event: Any, exc: DecodeError, consumer: str) -> None:
        message = event.message
        headers = dead_letter_headers(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            error=exc.reason,
            consumer=f"{self.settings.group_id}/{consumer}",
            failed_at=utc_now(),
        )
        await self.topics[DLQ.suffix].send(key=message.key, value=event.value, headers=headers)
        metrics.DLQ_MESSAGES.labels(message.topic, consumer).inc()
        log.error("dead-lettered %s", exc)
        try:
            self._flood.dead_lettered(message.topic)
        except DeadLetterFlood as flood:
            log.critical("%s", flood)
            await self.app.crash(flood)
