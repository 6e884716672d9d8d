"""The connector runtime: which mailboxes this worker owns, and a sync loop for each.

Ownership is consumer-group membership on mailbox.config: the worker owns the
mailboxes on its assigned partitions, so adding a worker spreads the fleet and a
crashed worker's mailboxes move to the others. The configuration topic is read
from the beginning on every assignment (nothing is committed) and followed
afterwards, so new, changed and removed mailboxes take effect at once.

Manual tracking requests (mail.track) ride on the same subscription: mail.track
is keyed by mailbox id and has as many partitions as mailbox.config, and the
range assignor gives one worker partition N of both, so the worker that owns a
mailbox reads its requests. Each request waits in its mailbox's loop, which
looks the message up between sync passes (see connectors/tracking.py); its
offset is committed once the events or the error it ended in were acknowledged.
A request of kind "sync" (`tidings mailbox sync`) wakes its mailbox's loop for an
immediate poll instead, or ends in a notice saying why it cannot.

Server profiles: tidings.toml's are the base; the worker reads the whole
server.profiles topic before it joins the group and follows it afterwards
(connectors/profiles_view.py), restarting the mailboxes whose profile changed.

Which mailboxes run: only those both approved and enabled (Dynamics: pending
approval → approved → tested → enabled; the test is the operator's check, not a
condition). A permanent error (or transient ones past the retry policy) disables
the mailbox: the runtime publishes its configuration with `enabled` off and
`disabled` saying why, a status in state disabled with the error, and the error
on sync.errors marked as an alert. `tidings mailbox enable` clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError

from connectors import errors
from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.errors import ConnectorError
from connectors.fleet import FleetGauges
from connectors.gate import GateRegistry
from connectors.group import PartitionListener, partition_counts
from connectors.lag import ProcessorLag
from connectors.profiles_view import ProfilesView
from connectors.retry import RetryTracker
from connectors.schedule import (
    THROTTLING_CODES,
    PollDecision,
    PollHistory,
    PollOutcome,
    PollReason,
    backpressure,
    next_poll,
    record,
)
from connectors.source import (
    ItemFinder,
    MailboxSource,
    PassResult,
    item_lookup_refusal,
    item_not_found_reason,
    tracked_event,
)
from connectors.sources import SourceKit, open_source, polling_settings, retry_policy
from connectors.tracking import (
    TRACK_INVALID,
    TRACK_MISROUTED,
    TRACK_NOT_FOUND,
    TRACK_REFUSED,
    PendingTrack,
    TrackInbox,
    not_found_error,
    track_error,
    unknown_mailbox_error,
)
from schemas import metrics
from schemas.base import utc_now
from schemas.config import ConnectorConfig, KafkaConfig
from schemas.dlq import FloodGuard
from schemas.errors import DecodeError, ErrorScope, Severity, StopAndAlert, SyncError
from schemas.ids import error_id
from schemas.mailbox import (
    Cursor,
    MailboxConfig,
    MailboxDisabled,
    MailboxStatus,
    RunStatus,
    ServerProfile,
    SyncState,
    cursor_key,
)
from schemas.topics import CONNECTOR_CURSORS, MAIL_TRACK, MAILBOX_CONFIG, codec
from schemas.track import (
    RequestKind,
    TrackRequest,
    TrackTarget,
    track_message_id,
    track_target,
)

log = logging.getLogger(__name__)
STATUS_HEARTBEAT = timedelta(seconds=60)
DLQ_MAX_CONSECUTIVE = 100
"""Undecodable track requests in a row that stop the worker (a systemic fault upstream)."""
SYNC_REFUSED = "SyncRefused"
"""A manual sync request for a mailbox that is not read (not approved, disabled, stopped)."""
SYNC_UNKNOWN_MAILBOX = "SyncUnknownMailbox"
"""A manual sync request for a mailbox that is not configured."""


class TopicLayoutError(StopAndAlert):
    """mailbox.config, connector.cursors and mail.track must have the same number of
    partitions."""


@dataclass
class OwnedMailbox:
    """A mailbox this worker runs: its loop's task and what reaches the loop."""

    config: MailboxConfig
    partition: int
    task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to make the loop poll (or stop) at once; cleared when a pass begins, so a
    wake-up while a pass runs ends the wait after it."""
    tracks: list[PendingTrack] = field(default_factory=list)
    """Manual tracking requests waiting for the mailbox's loop, oldest first."""


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
        self.profiles = profiles if profiles is not None else {}
        """Server profiles by name, kept up to date in place from server.profiles."""
        self.gates = GateRegistry()
        """Connection limits per server profile, shared by this worker's mailboxes."""
        self.lag = ProcessorLag(kafka, prefix, settings)
        """The processors' lag on mail.changes, which slows polling down past a threshold."""
        self.worker = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.config_topic = MAILBOX_CONFIG.name(prefix)
        self.track_topic = MAIL_TRACK.name(prefix)
        self._owned: dict[str, OwnedMailbox] = {}
        self._inbox: TrackInbox | None = None
        self._flood = FloodGuard(DLQ_MAX_CONSECUTIVE)
        self._replacing: set[str] = set()
        """Mailboxes being restarted with a new configuration (their requests wait)."""
        self._cursors: dict[int, dict[str, Cursor]] = {}
        self._cursors_loaded: dict[int, asyncio.Event] = {}
        self._assigned: set[int] = set()
        self._producer: AIOKafkaProducer | None = None
        self._emitter: Emitter | None = None
        self._store: CursorStore | None = None
        self._kit: SourceKit | None = None
        self.fleet = FleetGauges(lambda: {m: o.config for m, o in self._owned.items()})

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
        self.lag.start()
        profiles = ProfilesView(self.kafka, self.prefix, self.profiles, self._profiles_changed)
        await profiles.load()
        follow = asyncio.get_running_loop().create_task(profiles.follow(stop))
        consumer = AIOKafkaConsumer(
            group_id=self.settings.group_id,
            # Partition N of mailbox.config and of mail.track go to the same worker.
            # Round robin is only a fallback while older workers (which knew no
            # other) are still in the group: their requests wait until then.
            partition_assignment_strategy=(RangePartitionAssignor, RoundRobinPartitionAssignor),
            **self.kafka.consumer_options(),
        )
        consumer.subscribe(
            [self.config_topic, self.track_topic],
            listener=PartitionListener(self, self.config_topic),
        )
        self._inbox = TrackInbox(consumer, self.config_topic, self.track_topic)
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                # Configurations first: a request is routed against what they say.
                for tp, messages in sorted(
                    batch.items(), key=lambda i: i[0].topic != self.config_topic
                ):
                    for message in messages:
                        if tp.topic == self.track_topic:
                            await self._on_track(tp, message)
                        else:
                            self._on_config(tp, message)
                await self._route_unrouted()
                await self._inbox.commit()
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
            await profiles.close()
            await self._stop_mailboxes(list(self._owned))
            with contextlib.suppress(KafkaError, OSError):
                await self._inbox.commit()
            await consumer.stop()
            await self._producer.stop()
            await self.lag.stop()

    def sync_now(self, mailbox_id: str) -> bool:
        """Poll a mailbox at once (manual sync); False when this worker does not own it."""
        owned = self._owned.get(mailbox_id)
        if owned is None:
            return False
        owned.wake.set()
        return True

    def _profiles_changed(self, names: set[str]) -> None:
        """Restart the mailboxes reading through a server profile that changed."""
        for mailbox_id, owned in list(self._owned.items()):
            if owned.config.server_profile in names and mailbox_id not in self._replacing:
                log.info("mailbox %s: profile %s changed, restarting", mailbox_id, names)
                self._replacing.add(mailbox_id)
                asyncio.get_running_loop().create_task(
                    self._replace(mailbox_id, owned.partition, owned.config)
                )

    @property
    def owned_mailboxes(self) -> list[str]:
        """Ids of the mailboxes this worker runs."""
        return sorted(m for m, o in self._owned.items() if o.task is not None)

    async def _check_layout(self) -> None:
        cursors_topic = CONNECTOR_CURSORS.name(self.prefix)
        topics = [self.config_topic, cursors_topic, self.track_topic]
        counts = await partition_counts(self.kafka, topics)
        expected = counts.get(self.config_topic, 0)
        for topic in topics[1:]:
            if counts.get(topic, 0) != expected or not expected:
                raise TopicLayoutError(
                    f"{self.config_topic} has {expected} partitions but {topic} has "
                    f"{counts.get(topic, 0)}; create them alike"
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
        """Stop (after their current batch) the mailboxes of revoked partitions; their
        track requests in hand are left to the next owner (not committed)."""
        gone = [m for m, owned in self._owned.items() if owned.partition in partitions]
        await self._stop_mailboxes(gone)
        if self._inbox is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._inbox.commit()  # what the stopped loops finished
            self._inbox.forget(partitions)
        self._assigned -= partitions
        for partition in partitions:
            self._cursors.pop(partition, None)
            self._cursors_loaded.pop(partition, None)

    def _on_config(self, tp: TopicPartition, message: object) -> None:
        try:
            record = codec(MAILBOX_CONFIG).decode_record(message, tp.topic, tp.partition)
        except DecodeError as exc:
            log.error("ignoring undecodable mailbox configuration: %s", exc)
            return
        if record is None:
            return
        key, config = record
        current = self._owned.get(key)
        if current is not None and (config is None or current.config != config):
            self._replacing.add(key)
            asyncio.get_running_loop().create_task(self._replace(key, tp.partition, config))
        elif current is None and config is not None:
            self._start(config, tp.partition)

    async def _replace(self, mailbox_id: str, partition: int, config: MailboxConfig | None) -> None:
        """Restart a mailbox with its new configuration (or stop a removed one); its track
        requests in hand are routed again (to the new loop, or to an error)."""
        old = self._owned.get(mailbox_id)
        try:
            await self._stop_mailboxes([mailbox_id])
            if config is not None:
                self._start(config, partition)
        finally:
            self._replacing.discard(mailbox_id)
        for pending in old.tracks if old is not None else []:
            await self._route(pending)

    def _start(self, config: MailboxConfig, partition: int) -> None:
        owned = OwnedMailbox(config=config, partition=partition)
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

    # -- manual tracking ---------------------------------------------------------

    async def _on_track(self, tp: TopicPartition, message: object) -> None:
        """One record of mail.track: an undecodable one goes to the DLQ, an invalid one
        ends in an error, a valid one is routed to its mailbox."""
        assert self._emitter is not None and self._inbox is not None
        book = self._inbox.book
        offset: int = getattr(message, "offset", -1)
        value = getattr(message, "value", None)
        if not value:  # a tombstone asks nothing
            book.passed(tp.partition, offset)
            return
        try:
            request = codec(MAIL_TRACK).decode(value, tp.topic, tp.partition, offset)
        except DecodeError as exc:
            await self._emitter.dead_letter(
                getattr(message, "key", None), value, exc, self.settings.group_id
            )
            book.passed(tp.partition, offset)
            self._flood.dead_lettered(tp.topic)
            return
        self._flood.decoded()
        if request.kind == RequestKind.SYNC:
            book.passed(tp.partition, offset)
            await self._on_sync(request, tp.partition)
            return
        pending = book.open(request, tp.partition, offset)
        try:
            target = track_target(request.message_id, request.item_id, request.ical_uid)
            message_id = request.message_id
            if target == TrackTarget.MESSAGE:
                message_id = track_message_id(message_id)
        except ValueError as exc:
            await self._end_track(pending, track_error(request, TRACK_INVALID, str(exc), utc_now()))
            return
        request = msgspec.structs.replace(request, message_id=message_id)
        await self._route(dataclasses.replace(pending, request=request))

    async def _on_sync(self, request: TrackRequest, partition: int) -> None:
        """A manual sync request: wake the mailbox's loop (it polls at once), or publish
        a notice saying why it cannot be served. A mailbox whose configuration is not
        read yet is left alone: it syncs as soon as it starts."""
        assert self._inbox is not None and self._emitter is not None
        mailbox_id = request.mailbox_id
        owned = self._owned.get(mailbox_id)
        if mailbox_id in self._replacing or (owned is not None and _refusal(owned) is None):
            if owned is not None:
                owned.wake.set()
            metrics.CONNECTOR_SYNC_REQUESTS.labels("woken").inc()
            log.info("mailbox %s: sync request %s", mailbox_id, request.request_id)
            return
        if owned is None and not await self._inbox.read_up(partition):
            return
        metrics.CONNECTOR_SYNC_REQUESTS.labels("refused").inc()
        if owned is None:
            code, why = SYNC_UNKNOWN_MAILBOX, f"no mailbox {mailbox_id} is configured"
        else:
            code, why = SYNC_REFUSED, _refusal(owned) or ""
        error = SyncError(
            error_id=error_id(f"sync|{mailbox_id}|{request.request_id}", code),
            mailbox_id=mailbox_id,
            scope=ErrorScope.MAILBOX,
            severity=Severity.NOTICE,
            code=code,
            message=f"sync request {request.request_id}: {why}",
            component="connectors",
            occurred_at=utc_now(),
        )
        log.warning("%s", error.message)
        protocol = str(owned.config.protocol) if owned is not None else "unknown"
        await self._emitter.emit_error(error, protocol)

    async def _route(self, pending: PendingTrack) -> None:
        """Hand a request to its mailbox's loop, or end it in an error saying why it
        cannot be served; keep it aside while the mailbox's configuration may still
        be on its way."""
        assert self._inbox is not None
        inbox, request = self._inbox, pending.request
        owned = self._owned.get(request.mailbox_id)
        if owned is None or request.mailbox_id in self._replacing:
            if request.mailbox_id in self._replacing or not await inbox.read_up(pending.partition):
                inbox.unrouted.append(pending)
                return
            home = inbox.home_partition(request.mailbox_id)
            if home is not None and home != pending.partition:
                why = (
                    f"it arrived on partition {pending.partition} of {inbox.track_topic}, but "
                    f"mailbox {request.mailbox_id} is configured on partition {home}; key "
                    "mail.track records by mailbox id with Kafka's default partitioner"
                )
                await self._end_track(
                    pending, track_error(request, TRACK_MISROUTED, why, utc_now())
                )
            else:
                await self._end_track(pending, unknown_mailbox_error(request, utc_now()))
            return
        refusal = _refusal(owned)
        if refusal is not None:
            error = track_error(request, TRACK_REFUSED, refusal, utc_now())
            await self._end_track(pending, error, str(owned.config.protocol))
            return
        owned.tracks.append(pending)
        owned.wake.set()

    async def _route_unrouted(self) -> None:
        """Route again the requests that waited for their mailbox's configuration."""
        assert self._inbox is not None
        waiting, self._inbox.unrouted = self._inbox.unrouted, []
        for pending in waiting:
            await self._route(pending)

    async def _serve_tracks(self, owned: OwnedMailbox, source: MailboxSource) -> None:
        """Look up the mailbox's waiting requests, oldest first, and send what each found
        (marked created events) or a TrackNotFound error. A ConnectorError leaves the
        request waiting for the next pass (the loop's retry rules apply)."""
        assert self._emitter is not None
        while owned.tracks and not owned.stop.is_set():
            pending = owned.tracks[0]
            request = pending.request
            if request.message_id:
                found = await source.find_message(request.message_id)
            elif (why := item_lookup_refusal(source)) is not None:
                owned.tracks.pop(0)
                await self._end_track(pending, track_error(request, TRACK_REFUSED, why, utc_now()))
                continue
            else:
                assert isinstance(source, ItemFinder)
                found = await source.find_item(request.item_id, request.ical_uid)
            if found:
                marked = [tracked_event(event, request) for event in found]
                await self._emitter.emit_changes(marked, source.protocol)
                log.info(
                    "mailbox %s: track request %s sent %d item(s)",
                    request.mailbox_id,
                    request.request_id,
                    len(marked),
                )
            else:
                error = (
                    not_found_error(request, utc_now())
                    if request.message_id
                    else track_error(
                        request, TRACK_NOT_FOUND, item_not_found_reason(request), utc_now()
                    )
                )
                log.warning("%s", error.message)
                await self._emitter.emit_error(error, source.protocol)
            owned.tracks.pop(0)
            self._close(pending)

    async def _refuse_tracks(self, owned: OwnedMailbox, why: str) -> None:
        """End every waiting request of a mailbox whose loop stopped for good."""
        waiting, owned.tracks = owned.tracks, []
        for pending in waiting:
            error = track_error(pending.request, TRACK_REFUSED, why, utc_now())
            await self._end_track(pending, error, str(owned.config.protocol))

    async def _end_track(
        self, pending: PendingTrack, error: SyncError, protocol: str = "unknown"
    ) -> None:
        """Publish the error a request ended in; its offset may then be committed."""
        assert self._emitter is not None
        log.warning("%s", error.message)
        await self._emitter.emit_error(error, protocol)
        self._close(pending)

    def _close(self, pending: PendingTrack) -> None:
        if self._inbox is not None:
            self._inbox.book.close(pending)

    # -- one mailbox -----------------------------------------------------------

    async def _mailbox_loop(self, owned: OwnedMailbox) -> None:
        """Sync, wait for push or the next poll, repeat; retry transient failures on the
        policy's schedule and stop (mailbox disabled) on a permanent one.

        When to poll next is connectors/schedule.py's decision, from what the
        mailbox's polls saw, the server's throttling and the processors' lag."""
        assert self._kit is not None
        config = owned.config
        await self._loaded(owned.partition).wait()
        tracker = _StatusTracker(config.mailbox_id, self.worker)
        retries = RetryTracker(retry_policy(config, self.profiles))
        history = PollHistory(quiet_since=self._quiet_since(owned))
        reason = PollReason.FIRST
        source: MailboxSource | None = None
        try:
            while not owned.stop.is_set():
                # A wake-up from here on (sync request, track request, stop) asks
                # for what this pass may miss: the wait after it ends at once.
                owned.wake.clear()
                metrics.CONNECTOR_POLLS.labels(str(config.protocol), str(reason)).inc()
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
                    await self._serve_tracks(owned, source)
                except Exception as exc:  # an unexpected one too: retried, never silent
                    failure = _as_connector_error(exc, config.mailbox_id)
                    delay = None if failure.permanent else retries.failed()
                    if delay is None:
                        final = _final(failure, retries)
                        await self._fail(config, tracker, final, retries.failures)
                        await self._refuse_tracks(
                            owned,
                            f"mailbox {config.mailbox_id} stopped on a permanent error "
                            f"({final.code}); fix it (see `tidings mailbox list`), then track "
                            "again",
                        )
                        return
                    await self._fail(config, tracker, failure, retries.failures)
                    kind = "reconnect" if retries.reconnecting else "retry"
                    metrics.CONNECTOR_RETRIES.labels(config.protocol, kind).inc()
                    throttled = self._note_throttling(config, failure)
                    history, decision = self._scheduled(
                        config, history, clock, error=True, throttled=throttled, retry_delay_s=delay
                    )
                    reason = await pause(owned, decision)
                    continue
                retries.succeeded()
                metrics.CONNECTOR_POLL_SECONDS.labels(source.protocol).observe(
                    time.monotonic() - clock
                )
                found = result.created + result.updated + result.deleted
                history, decision = self._scheduled(config, history, clock, items=found)
                due_at = utc_now() + timedelta(seconds=decision.delay_s)
                status = tracker.completed(started, result, due_at)
                if status is not None:
                    await self._publish(status)
                reason = await wait_for_change(owned, source, decision)
        finally:
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.close()

    def _scheduled(
        self,
        config: MailboxConfig,
        history: PollHistory,
        started: float,
        *,
        items: int = 0,
        error: bool = False,
        throttled: bool = False,
        retry_delay_s: float | None = None,
    ) -> tuple[PollHistory, PollDecision]:
        """Fold a poll that began at `started` (monotonic) into the mailbox's history and
        ask the schedule when to poll next, with the profile's current settings and
        the processors' last known lag; a healthy poll counts toward the profile's
        connection limit growing back. Recorded in the metrics."""
        now = time.monotonic()
        outcome = PollOutcome(
            at=now, items=items, latency_s=now - started, error=error, throttled=throttled
        )
        history = record(history, outcome)
        if not error:
            gate = self.gates.get(config.server_profile or "")
            if gate is not None:
                gate.healthy()
        polling = polling_settings(config, self.settings, self.profiles)
        lag = self.lag.current
        decision = next_poll(
            history, polling, now, random.random, lag=lag, retry_delay_s=retry_delay_s
        )
        metrics.CONNECTOR_BACKPRESSURE.set(1 if backpressure(lag, polling) else 0)
        metrics.CONNECTOR_NEXT_POLL_SECONDS.labels(str(decision.reason)).observe(decision.delay_s)
        return history, decision

    def _quiet_since(self, owned: OwnedMailbox) -> float | None:
        """When the mailbox last changed as its cursors tell (their newest update), on
        the monotonic clock; None when it has no cursors yet."""
        prefix = cursor_key(owned.config.mailbox_id, "")
        cursors = self._cursors.get(owned.partition, {})
        times = [c.updated_at for key, c in cursors.items() if key.startswith(prefix)]
        if not times:
            return None
        age = (utc_now() - max(times)).total_seconds()
        return time.monotonic() - max(0.0, age)

    def _note_throttling(self, config: MailboxConfig, failure: ConnectorError) -> bool:
        """True when `failure` is the server throttling; then the profile's connection
        limit shrinks."""
        if failure.code not in THROTTLING_CODES:
            return False
        profile = config.server_profile or ""
        metrics.CONNECTOR_THROTTLING_ANSWERS.labels(profile, failure.code).inc()
        gate = self.gates.get(profile)
        if gate is not None:
            gate.throttled()
        return True

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
        """Report a failure: a SyncError event and the mailbox's status. A permanent one
        disables the mailbox: the error is an alert, the status says disabled and
        why, and the mailbox's configuration is published with `enabled` off and
        the reason (so it stays off across restarts until `tidings mailbox enable`)."""
        assert self._emitter is not None
        now = utc_now()
        log.error("mailbox %s: %s", config.mailbox_id, failure.message)
        message = failure.message
        if failure.permanent:
            message = (
                f"{message} — mailbox disabled; fix it, then "
                f"`tidings mailbox enable {config.mailbox_id}`"
            )
            metrics.CONNECTOR_MAILBOXES_DISABLED.labels(str(config.protocol), failure.code).inc()
        error = SyncError(
            error_id=error_id(f"{config.mailbox_id}@{now.isoformat()}", failure.code, attempt),
            mailbox_id=config.mailbox_id,
            scope=ErrorScope.MAILBOX,
            severity=failure.severity,
            code=failure.code,
            message=message,
            component="connectors",
            folder=failure.folder,
            item_id=failure.item_id,
            attempt=max(attempt, 1),
            alert=failure.permanent,
            occurred_at=now,
        )
        with contextlib.suppress(Exception):
            await self._emitter.emit_error(error, str(config.protocol))
            await self._publish(
                tracker.failed(now, failure.code, failure.message, failure.severity)
            )
        if failure.permanent:
            await self._disable(config, failure, now)

    async def _disable(self, config: MailboxConfig, failure: ConnectorError, now: datetime) -> None:
        """Publish the mailbox's configuration disabled, with the failure as the reason —
        unless it changed meanwhile (a person's newer configuration wins)."""
        assert self._producer is not None
        owned = self._owned.get(config.mailbox_id)
        if owned is None or owned.config != config or config.mailbox_id in self._replacing:
            return
        note = MailboxDisabled(code=failure.code, reason=failure.message, by=self.worker, at=now)
        disabled = msgspec.structs.replace(config, enabled=False, disabled=note, updated_at=now)
        try:
            async with asyncio.timeout(self.settings.ack_timeout_s):
                await self._producer.send_and_wait(
                    self.config_topic,
                    key=config.mailbox_id.encode("utf-8"),
                    value=codec(MAILBOX_CONFIG).encode(disabled),
                )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("mailbox %s: cannot publish it disabled: %s", config.mailbox_id, exc)

    async def _publish(self, status: MailboxStatus) -> None:
        assert self._emitter is not None
        await self._emitter.emit_status(status)
        self.fleet.observe(status)


async def pause(owned: OwnedMailbox, decision: PollDecision) -> PollReason:
    """Sleep as decided, unless the mailbox is woken (manual sync, track request, stop)
    first, or was since its last pass began; why the next poll happens."""
    try:
        async with asyncio.timeout(decision.delay_s):
            await owned.wake.wait()
    except TimeoutError:
        return decision.reason
    return PollReason.MANUAL


async def wait_for_change(
    owned: OwnedMailbox, source: MailboxSource, decision: PollDecision
) -> PollReason:
    """Until the source sees a change (push), the poll is due, or the mailbox is woken
    (manual sync, track request, stop), now or since its last pass began; why the
    next poll happens."""
    if owned.tracks or owned.wake.is_set():
        return PollReason.MANUAL
    due = time.monotonic() + decision.delay_s
    while (left := due - time.monotonic()) > 0:
        change = asyncio.create_task(source.wait_for_change(left))
        woken = asyncio.create_task(owned.wake.wait())
        try:
            await asyncio.wait({change, woken}, return_when=asyncio.FIRST_COMPLETED)
            if woken.done():
                return PollReason.MANUAL
            if change.done() and not change.cancelled() and change.result():
                return PollReason.PUSH
        finally:
            for task in (change, woken):
                task.cancel()
            await asyncio.gather(change, woken, return_exceptions=True)
        # The source came back without a push (an IDLE re-issue): wait the rest.
    return decision.reason


def _refusal(owned: OwnedMailbox) -> str | None:
    """Why a mailbox cannot serve a track request (it is not read), or None when it can."""
    config = owned.config
    if not config.approved:
        return (
            f"mailbox {config.mailbox_id} is not approved, so tidings does not read it; "
            "approve it, then track again"
        )
    if not config.enabled:
        return f"mailbox {config.mailbox_id} is disabled, so tidings does not read it"
    if owned.task is None or owned.task.done():
        return (
            f"mailbox {config.mailbox_id} stopped on a permanent error; fix it "
            "(see `tidings mailbox list`), then track again"
        )
    return None


def _as_connector_error(exc: Exception, mailbox_id: str) -> ConnectorError:
    """A failure of a sync pass as a ConnectorError. An OSError is a transient read
    failure; any other unexpected exception (a bug, a library's surprise) is a
    transient InternalError, logged with its traceback, so the mailbox retries on
    its policy and, if it keeps failing, stops with an alert instead of its task
    ending unseen."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, OSError):
        return errors.transient("ReadFailed", f"reading the mailbox failed: {exc.strerror or exc}")
    log.error(
        "mailbox %s: unexpected %s in a sync pass", mailbox_id, type(exc).__name__, exc_info=exc
    )
    return errors.transient(
        errors.INTERNAL_ERROR, f"unexpected {type(exc).__name__} in tidings: {str(exc)[:200]}"
    )


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
            last_pass_items=result.created + result.updated + result.deleted,
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
