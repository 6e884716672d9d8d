"""The connector runtime: which mailboxes this worker owns, and a sync loop for each.

Ownership is consumer-group membership on mailbox.config: the worker owns the
mailboxes on its assigned partitions, so adding a worker spreads the fleet and a
crashed worker's mailboxes move to the others. The configuration topic is read
from the beginning on every assignment (nothing is committed) and followed
afterwards, so new, changed and removed mailboxes take effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from connectors import errors
from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.errors import ConnectorError
from connectors.gate import GateRegistry
from connectors.retry import RetryTracker
from connectors.source import MailboxSource, PassResult
from connectors.sources import SourceKit, open_source, poll_interval, retry_policy
from schemas import metrics
from schemas.base import utc_now
from schemas.codec import decode_key
from schemas.config import ConnectorConfig, KafkaConfig
from schemas.errors import DecodeError, ErrorScope, Severity, StopAndAlert, SyncError
from schemas.ids import error_id
from schemas.mailbox import (
    Cursor,
    MailboxConfig,
    MailboxStatus,
    RunStatus,
    ServerProfile,
    SyncState,
)
from schemas.topics import CONNECTOR_CURSORS, MAILBOX_CONFIG, codec

log = logging.getLogger(__name__)
STATUS_HEARTBEAT = timedelta(seconds=60)


class TopicLayoutError(StopAndAlert):
    """mailbox.config and connector.cursors must have the same number of partitions."""


@dataclass
class _Owned:
    config: MailboxConfig
    partition: int
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ConnectorRuntime:
    """Owns mailboxes through the consumer group and runs one sync loop per mailbox."""

    def __init__(
        self,
        kafka: KafkaConfig,
        prefix: str,
        settings: ConnectorConfig,
        *,
        claim_check: ClaimCheck,
        profiles: dict[str, ServerProfile] | None = None,
    ) -> None:
        self.kafka = kafka
        self.prefix = prefix
        self.settings = settings
        self.claim_check = claim_check
        self.profiles = profiles or {}
        self.gates = GateRegistry()
        """Connection limits per server profile, shared by this worker's mailboxes."""
        self.worker = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.config_topic = MAILBOX_CONFIG.name(prefix)
        self._owned: dict[str, _Owned] = {}
        self._cursors: dict[int, dict[str, Cursor]] = {}
        self._cursors_loaded: dict[int, asyncio.Event] = {}
        self._assigned: set[int] = set()
        self._producer: AIOKafkaProducer | None = None
        self._emitter: Emitter | None = None
        self._store: CursorStore | None = None
        self._kit: SourceKit | None = None

    # -- lifecycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then let every mailbox finish its batch and flush."""
        self._producer = AIOKafkaProducer(**self.kafka.producer_options(linger_ms=0))
        await self._producer.start()
        self._emitter = Emitter(self._producer, self.prefix, self.settings.ack_timeout_s)
        self._store = CursorStore(self.kafka, self.prefix, self._producer)
        self._kit = SourceKit(
            emitter=self._emitter,
            store=self._store,
            claim_check=self.claim_check,
            settings=self.settings,
            profiles=self.profiles,
            gates=self.gates,
        )
        await self._check_layout()
        consumer = AIOKafkaConsumer(
            group_id=self.settings.group_id, **self.kafka.consumer_options()
        )
        consumer.subscribe([self.config_topic], listener=_Listener(self))
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for tp, messages in batch.items():
                    for message in messages:
                        self._on_config(tp, message)
        finally:
            await self._stop_mailboxes(list(self._owned))
            await consumer.stop()
            await self._producer.stop()

    def sync_now(self, mailbox_id: str) -> bool:
        """Poll a mailbox at once (manual sync); False when this worker does not own it."""
        owned = self._owned.get(mailbox_id)
        if owned is None:
            return False
        owned.wake.set()
        return True

    @property
    def owned_mailboxes(self) -> list[str]:
        """Ids of the mailboxes this worker runs."""
        return sorted(m for m, o in self._owned.items() if o.task is not None)

    async def _check_layout(self) -> None:
        cursors_topic = CONNECTOR_CURSORS.name(self.prefix)
        admin = AIOKafkaAdminClient(**self.kafka.common_options())
        await admin.start()
        try:
            described = await admin.describe_topics([self.config_topic, cursors_topic])
        finally:
            await admin.close()
        counts = {d["topic"]: len(d.get("partitions") or []) for d in described}
        if counts.get(self.config_topic) != counts.get(cursors_topic) or not counts.get(
            cursors_topic
        ):
            raise TopicLayoutError(
                f"{self.config_topic} has {counts.get(self.config_topic, 0)} partitions but "
                f"{cursors_topic} has {counts.get(cursors_topic, 0)}; create them alike"
            )

    # -- ownership -------------------------------------------------------------

    def _loaded(self, partition: int) -> asyncio.Event:
        return self._cursors_loaded.setdefault(partition, asyncio.Event())

    async def on_assigned(self, partitions: set[int]) -> None:
        """Load the cursors of newly assigned partitions.

        Their configurations may stream in while this runs; each mailbox's loop
        waits for its partition's cursors before it reads anything.
        """
        assert self._store is not None
        for partition in sorted(partitions - self._assigned):
            self._cursors[partition] = await self._store.load(partition)
            self._loaded(partition).set()
        self._assigned |= partitions
        log.info("%s owns mailbox.config partitions %s", self.worker, sorted(self._assigned))

    async def on_revoked(self, partitions: set[int]) -> None:
        """Stop (after their current batch) the mailboxes of revoked partitions."""
        gone = [m for m, owned in self._owned.items() if owned.partition in partitions]
        await self._stop_mailboxes(gone)
        self._assigned -= partitions
        for partition in partitions:
            self._cursors.pop(partition, None)
            self._cursors_loaded.pop(partition, None)

    def _on_config(self, tp: TopicPartition, message: object) -> None:
        key = decode_key(getattr(message, "key", None))
        if key is None:
            return
        try:
            config = codec(MAILBOX_CONFIG).decode_nullable(
                getattr(message, "value", None),
                tp.topic,
                tp.partition,
                getattr(message, "offset", -1),
            )
        except DecodeError as exc:
            log.error("ignoring undecodable mailbox configuration: %s", exc)
            return
        current = self._owned.get(key)
        if current is not None and (config is None or current.config != config):
            asyncio.get_running_loop().create_task(self._replace(key, tp.partition, config))
        elif current is None and config is not None:
            self._start(config, tp.partition)

    async def _replace(self, mailbox_id: str, partition: int, config: MailboxConfig | None) -> None:
        await self._stop_mailboxes([mailbox_id])
        if config is not None:
            self._start(config, partition)

    def _start(self, config: MailboxConfig, partition: int) -> None:
        owned = _Owned(config=config, partition=partition)
        self._owned[config.mailbox_id] = owned
        if self._runnable(config):
            owned.task = asyncio.get_running_loop().create_task(
                self._mailbox_loop(owned), name=f"mailbox:{config.mailbox_id}"
            )
        metrics.CONNECTOR_MAILBOXES_OWNED.set(len(self.owned_mailboxes))

    def _runnable(self, config: MailboxConfig) -> bool:
        return config.enabled and config.approved

    async def _stop_mailboxes(self, mailbox_ids: list[str]) -> None:
        stopping = [self._owned.pop(m) for m in mailbox_ids if m in self._owned]
        for owned in stopping:
            owned.stop.set()
            owned.wake.set()
        tasks = [o.task for o in stopping if o.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        metrics.CONNECTOR_MAILBOXES_OWNED.set(len(self.owned_mailboxes))

    # -- one mailbox -----------------------------------------------------------

    async def _mailbox_loop(self, owned: _Owned) -> None:
        """Sync, wait for push or the next poll, repeat; retry transient failures on the
        policy's schedule and stop (mailbox disabled) on a permanent one."""
        assert self._kit is not None
        config = owned.config
        await self._loaded(owned.partition).wait()
        tracker = _StatusTracker(config.mailbox_id, self.worker)
        retries = RetryTracker(retry_policy(config, self.profiles))
        interval = poll_interval(config, self.settings)
        source: MailboxSource | None = None
        try:
            while not owned.stop.is_set():
                started = utc_now()
                clock = time.monotonic()
                try:
                    if source is None:
                        source = open_source(
                            config,
                            owned.partition,
                            self._cursors.get(owned.partition, {}),
                            self._kit,
                        )
                    result = await source.sync_pass(self._progress_reporter(tracker, started))
                except (ConnectorError, OSError) as exc:
                    failure = _as_connector_error(exc)
                    delay = None if failure.permanent else retries.failed()
                    if delay is None:
                        await self._fail(
                            config, tracker, _final(failure, retries), retries.failures
                        )
                        return
                    await self._fail(config, tracker, failure, retries.failures)
                    kind = "reconnect" if retries.reconnecting else "retry"
                    metrics.CONNECTOR_RETRIES.labels(config.protocol, kind).inc()
                    await self._pause(owned, delay)
                    continue
                retries.succeeded()
                metrics.CONNECTOR_POLL_SECONDS.labels(source.protocol).observe(
                    time.monotonic() - clock
                )
                next_poll = utc_now() + timedelta(seconds=interval)
                status = tracker.completed(started, result, next_poll)
                if status is not None:
                    await self._publish(status)
                await self._wait_for_change(owned, source, interval)
        finally:
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.close()

    async def _pause(self, owned: _Owned, seconds: float) -> None:
        """Sleep, unless the mailbox is stopped or woken (manual sync) first."""
        owned.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await owned.wake.wait()

    async def _wait_for_change(self, owned: _Owned, source: MailboxSource, interval: float) -> None:
        """Until the source sees a change (push) or the poll is due, or a wake-up."""
        owned.wake.clear()
        change = asyncio.create_task(source.wait_for_change(interval))
        woken = asyncio.create_task(owned.wake.wait())
        try:
            await asyncio.wait({change, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (change, woken):
                task.cancel()
            await asyncio.gather(change, woken, return_exceptions=True)

    def _progress_reporter(
        self, tracker: _StatusTracker, started: datetime
    ) -> Callable[[PassResult], Awaitable[None]]:
        async def report(result: PassResult) -> None:
            await self._publish(tracker.progress(started, result))

        return report

    async def _fail(
        self,
        config: MailboxConfig,
        tracker: _StatusTracker,
        failure: ConnectorError,
        attempt: int,
    ) -> None:
        """Report a failure: a SyncError event and the mailbox's status (disabled
        when permanent)."""
        assert self._emitter is not None
        now = utc_now()
        log.error("mailbox %s: %s", config.mailbox_id, failure.message)
        error = SyncError(
            error_id=error_id(f"{config.mailbox_id}@{now.isoformat()}", failure.code, attempt),
            mailbox_id=config.mailbox_id,
            scope=ErrorScope.MAILBOX,
            severity=failure.severity,
            code=failure.code,
            message=failure.message,
            component="connectors",
            folder=failure.folder,
            item_id=failure.item_id,
            attempt=max(attempt, 1),
            occurred_at=now,
        )
        with contextlib.suppress(Exception):
            await self._emitter.emit_error(error, str(config.protocol))
            await self._publish(
                tracker.failed(now, failure.code, failure.message, failure.severity)
            )

    async def _publish(self, status: MailboxStatus) -> None:
        assert self._emitter is not None
        await self._emitter.emit_status(status)


def _as_connector_error(exc: ConnectorError | OSError) -> ConnectorError:
    if isinstance(exc, ConnectorError):
        return exc
    return errors.transient("ReadFailed", f"reading the mailbox failed: {exc.strerror or exc}")


def _final(failure: ConnectorError, retries: RetryTracker) -> ConnectorError:
    """A permanent failure as is; a transient one that exhausted its retries, as permanent."""
    if failure.permanent:
        return failure
    return errors.permanent(
        errors.RETRIES_EXHAUSTED,
        f"{failure.message} (still failing after {retries.failures} attempts; "
        "the mailbox is disabled until its configuration changes)",
        folder=failure.folder,
    )


class _StatusTracker:
    """Builds MailboxStatus updates; publishes only on change or heartbeat."""

    def __init__(self, mailbox_id: str, worker: str) -> None:
        self.mailbox_id = mailbox_id
        self.worker = worker
        self.generation = 0
        self.last: MailboxStatus | None = None
        self.last_published_at: datetime | None = None
        self.last_success_at: datetime | None = None

    def progress(self, started: datetime, result: PassResult) -> MailboxStatus:
        return self._status(started, result, None, state=SyncState.ENABLED, run=RunStatus.SUCCESS)

    def completed(
        self, started: datetime, result: PassResult, next_poll: datetime
    ) -> MailboxStatus | None:
        self.generation += 1
        now = utc_now()
        self.last_success_at = now
        status = self._status(started, result, next_poll, SyncState.ENABLED, RunStatus.SUCCESS)
        status = _replace(status, last_sync_at=now, sync_generation=self.generation)
        if not self._worth_publishing(status, now):
            return None
        self.last = status
        self.last_published_at = now
        return status

    def failed(self, now: datetime, code: str, message: str, severity: Severity) -> MailboxStatus:
        state = SyncState.DISABLED if severity == Severity.PERMANENT else SyncState.ENABLED
        return MailboxStatus(
            mailbox_id=self.mailbox_id,
            state=state,
            incoming_status=RunStatus.FAILURE,
            last_sync_at=now,
            last_success_at=self.last_success_at,
            sync_generation=self.generation,
            last_error_code=code,
            last_error=message,
            worker=self.worker,
            updated_at=now,
        )

    def _status(
        self,
        started: datetime,
        result: PassResult,
        next_poll: datetime | None,
        state: SyncState,
        run: RunStatus,
    ) -> MailboxStatus:
        return MailboxStatus(
            mailbox_id=self.mailbox_id,
            state=state,
            incoming_status=run,
            last_sync_started_at=started,
            last_sync_at=self.last.last_sync_at if self.last else None,
            last_success_at=self.last_success_at,
            next_poll_at=next_poll,
            sync_generation=self.generation,
            pending_items=max(0, result.pending),
            counters=result.counters,
            worker=self.worker,
            updated_at=utc_now(),
        )

    def _worth_publishing(self, status: MailboxStatus, now: datetime) -> bool:
        if self.last is None or self.last_published_at is None:
            return True
        changed = (status.counters, status.state, status.pending_items) != (
            self.last.counters,
            self.last.state,
            self.last.pending_items,
        )
        return changed or now - self.last_published_at >= STATUS_HEARTBEAT


def _replace(status: MailboxStatus, **changes: object) -> MailboxStatus:
    return msgspec.structs.replace(status, **changes)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards group rebalances of mailbox.config to the runtime."""

    def __init__(self, runtime: ConnectorRuntime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.runtime.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.runtime.on_assigned({tp.partition for tp in assigned})
