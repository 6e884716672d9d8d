"""The outgoing sender: outgoing.mail → SMTP, EWS or Graph (whichever the mailbox
uses: connectors/outgoing_transport.py), with each email's status on
outgoing.status (the state machine and the no-resend rule are in
connectors/outgoing.py).

It is a consumer group on outgoing.mail (keyed by activity id). When it is
assigned partitions it first reads the same partitions of outgoing.status (the
compacted log of statuses) up to their end, so it knows every email already
sent, failed, waiting for a retry or left at `sending`, before it reads any
email. Statuses go to the partition number their email has on outgoing.mail,
so that view is complete whatever partitioner the CRM used; the two topics must
have the same partition count (checked at start).

Every email is one task: emails wait for retries without holding up the
others. A partition's offset is committed up to its oldest email not yet sent
or failed, so after a restart those are read again and carry on from their
last status (retry clock included). Mailbox configurations come from
mailbox.config, read whole (every partition) and followed.

On stop or revocation, emails between `sending` and `sent` finish (bounded by
send_timeout_s); the others stop where they are and resume elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from connectors.emitter import Emitter
from connectors.errors import ConnectorError
from connectors.gate import GateRegistry, ServerGate
from connectors.group import PartitionListener, partition_counts, read_partition
from connectors.outgoing import (
    Action,
    TokenCounters,
    advance,
    build_message,
    envelope_recipients,
    first_status,
    plan,
    retry_at,
    retry_delay,
    subject_for,
    user_number,
)
from connectors.outgoing_transport import (
    Choice,
    SendTransport,
    choose,
    imap_access,
    open_transport,
)
from connectors.sent_copy import copy_to_sent
from schemas import metrics
from schemas.base import utc_now
from schemas.codec import encode_key
from schemas.config import CorrelationConfig, KafkaConfig, OutgoingConfig
from schemas.dlq import FloodGuard
from schemas.errors import DecodeError, ErrorScope, Severity, StopAndAlert, SyncError
from schemas.errors import OutgoingErrorCode as Code
from schemas.ids import error_id
from schemas.mailbox import MailboxConfig, ServerProfile
from schemas.outgoing import OutgoingEmail, OutgoingStatus, SendStatus
from schemas.topics import MAILBOX_CONFIG, OUTGOING_MAIL, OUTGOING_STATUS, codec

log = logging.getLogger(__name__)
COMPONENT = "outgoing"
DLQ_MAX_CONSECUTIVE = 100
_MAIL = codec(OUTGOING_MAIL)
_STATUS = codec(OUTGOING_STATUS)
_CONFIG = codec(MAILBOX_CONFIG)


class OutgoingLayoutError(StopAndAlert):
    """outgoing.mail and outgoing.status must have the same number of partitions."""


@dataclass
class _Item:
    """One email being handled: where it sits and whether it is past `sending`."""

    email: OutgoingEmail
    partition: int
    offset: int
    critical: bool = False
    task: asyncio.Task[None] | None = None
    before: asyncio.Task[None] | None = None
    """The task of an earlier record of the same activity, still running."""


@dataclass
class _Book:
    """The offsets of one partition: read so far, and those not yet finished."""

    next_offset: int | None = None
    open: dict[int, _Item] = field(default_factory=dict)
    committed: int | None = None

    def committable(self) -> int | None:
        """The offset to commit: the oldest unfinished one, else the next to read."""
        return min(self.open) if self.open else self.next_offset


class MailboxDirectory:
    """Every mailbox configuration, read from mailbox.config (all partitions) and followed."""

    def __init__(self, kafka: KafkaConfig, prefix: str) -> None:
        self.kafka = kafka
        self.topic = MAILBOX_CONFIG.name(prefix)
        self.configs: dict[str, MailboxConfig] = {}
        self._tps: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self, partitions: int) -> None:
        """Start following the topic's `partitions`; returns at once (`caught_up` waits
        for what was published before it is called)."""
        self._consumer = AIOKafkaConsumer(**self.kafka.consumer_options())
        await self._consumer.start()
        self._tps = [TopicPartition(self.topic, p) for p in range(partitions)]
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)
        self._task = asyncio.create_task(self._follow(), name="outgoing:mailboxes")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def caught_up(self, timeout_s: float = 60.0) -> None:
        """Wait until every configuration published before this call was read."""
        assert self._consumer is not None
        async with asyncio.timeout(timeout_s):
            ends = await self._consumer.end_offsets(self._tps)
            async with self._changed:
                await self._changed.wait_for(
                    lambda: all(self._positions.get(tp, 0) >= end for tp, end in ends.items())
                )

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(*self._tps, timeout_ms=300)
            for tp, messages in batch.items():
                for message in messages:
                    self._apply(tp, message)
            positions = {tp: await self._consumer.position(tp) for tp in self._tps}
            async with self._changed:
                self._positions = positions
                self._changed.notify_all()

    def _apply(self, tp: TopicPartition, message: object) -> None:
        try:
            record = _CONFIG.decode_record(message, tp.topic, tp.partition)
        except DecodeError as exc:
            log.error("outgoing sender ignores an undecodable mailbox configuration: %s", exc)
            return
        if record is None:
            return
        key, config = record
        if config is None:
            self.configs.pop(key, None)
        else:
            self.configs[key] = config


class OutgoingSender:
    """Sends the email on outgoing.mail and reports each one's status."""

    def __init__(
        self,
        kafka: KafkaConfig,
        prefix: str,
        settings: OutgoingConfig,
        correlation: CorrelationConfig,
        profiles: dict[str, ServerProfile],
        *,
        ack_timeout_s: float = 60.0,
        worker: str | None = None,
        gates: GateRegistry | None = None,
    ) -> None:
        self.kafka = kafka
        self.prefix = prefix
        self.settings = settings
        self.correlation = correlation
        self.profiles = profiles
        self.ack_timeout_s = ack_timeout_s
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}"
        self.gates = gates or GateRegistry()
        self.mail_topic = OUTGOING_MAIL.name(prefix)
        self.status_topic = OUTGOING_STATUS.name(prefix)
        self.statuses: dict[str, OutgoingStatus] = {}
        """The latest status of every email of the owned partitions, by activity id."""
        self.directory = MailboxDirectory(kafka, prefix)
        self._partition_of: dict[str, int] = {}
        self._active: dict[str, _Item] = {}
        self._books: dict[int, _Book] = {}
        self._tokens = TokenCounters(correlation, 1)
        self._flood = FloodGuard(DLQ_MAX_CONSECUTIVE)
        self._failure: BaseException | None = None
        self._producer: AIOKafkaProducer | None = None
        self._emitter: Emitter | None = None
        self._consumer: AIOKafkaConsumer | None = None

    # -- lifecycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; emails in their critical section finish first."""
        partitions, config_partitions = await self._check_layout()
        self._tokens = TokenCounters(self.correlation, partitions)
        self._producer = AIOKafkaProducer(**self.kafka.producer_options(linger_ms=0))
        await self._producer.start()
        self._emitter = Emitter(self._producer, self.prefix, self.ack_timeout_s)
        await self.directory.start(config_partitions)
        consumer = self._consumer = AIOKafkaConsumer(
            group_id=self.settings.group_id, **self.kafka.consumer_options()
        )
        consumer.subscribe([self.mail_topic], listener=PartitionListener(self))
        await consumer.start()
        try:
            while not stop.is_set():
                if self._failure is not None:
                    raise self._failure
                batch = await consumer.getmany(timeout_ms=300)
                for tp, messages in batch.items():
                    if tp.partition not in self._books:
                        # Its statuses are not loaded yet: read these again later.
                        consumer.seek(tp, messages[0].offset)
                        continue
                    for message in messages:
                        await self._on_record(tp.partition, message)
                self._throttle()
                await self._commit()
        finally:
            await self._release(set(self._books))
            with contextlib.suppress(KafkaError, OSError):
                await self._commit()
            await consumer.stop()
            await self.directory.stop()
            await self._producer.stop()

    async def _check_layout(self) -> tuple[int, int]:
        """The partition counts of outgoing.mail (= outgoing.status) and mailbox.config."""
        topics = [self.mail_topic, self.status_topic, self.directory.topic]
        counts = await partition_counts(self.kafka, topics)
        mail, status = counts.get(self.mail_topic, 0), counts.get(self.status_topic, 0)
        if not mail or mail != status:
            raise OutgoingLayoutError(
                f"{self.mail_topic} has {mail} partitions but {self.status_topic} has "
                f"{status}; create them alike"
            )
        if not counts.get(self.directory.topic):
            raise OutgoingLayoutError(f"{self.directory.topic} does not exist")
        return mail, counts[self.directory.topic]

    @property
    def in_flight(self) -> int:
        """Emails read but not yet sent or failed."""
        return sum(len(book.open) for book in self._books.values())

    def _throttle(self) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if self.in_flight >= self.settings.max_in_flight:
            self._consumer.pause(*assignment)
        else:
            self._consumer.resume(*assignment)
        metrics.OUTGOING_IN_FLIGHT.set(self.in_flight)

    async def _commit(self) -> None:
        assert self._consumer is not None
        offsets: dict[TopicPartition, int] = {}
        for partition, book in self._books.items():
            offset = book.committable()
            if offset is not None and offset != book.committed:
                offsets[TopicPartition(self.mail_topic, partition)] = offset
        if offsets:
            await self._consumer.commit(offsets)
            for tp, offset in offsets.items():
                self._books[tp.partition].committed = offset

    # -- ownership -------------------------------------------------------------

    async def on_assigned(self, partitions: set[int]) -> None:
        """Rebuild the statuses of newly assigned partitions before reading their email."""
        new = sorted(partitions - set(self._books))
        loaded = await asyncio.gather(*(self._load_statuses(p) for p in new))
        for partition, found in zip(new, loaded, strict=True):
            for status in found:
                self._remember(status, partition)
            self._books[partition] = _Book()
        log.info("outgoing sender %s owns partitions %s", self.worker, sorted(self._books))

    async def on_revoked(self, partitions: set[int]) -> None:
        """Stop the emails of revoked partitions (critical ones finish) and commit."""
        await self._release(partitions & set(self._books))
        with contextlib.suppress(KafkaError, OSError):
            await self._commit()
        for partition in partitions:
            self._books.pop(partition, None)
            self._tokens.forget(partition)
            for activity_id in [a for a, p in self._partition_of.items() if p == partition]:
                del self._partition_of[activity_id]
                self.statuses.pop(activity_id, None)

    async def _release(self, partitions: set[int]) -> None:
        """Cancel the emails of `partitions` that are not past `sending`; wait for the rest."""
        items = [i for p in partitions for i in self._books[p].open.values() if i.task]
        for item in items:
            if not item.critical and item.task is not None:
                item.task.cancel()
        tasks = [i.task for i in items if i.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.send_timeout_s + self.ack_timeout_s)

    async def _load_statuses(self, partition: int, timeout_s: float = 60.0) -> list[OutgoingStatus]:
        """Every status on `partition` of outgoing.status, oldest first, up to its end."""
        found: list[OutgoingStatus] = []
        messages = read_partition(self.kafka, self.status_topic, partition, timeout_s)
        async with contextlib.aclosing(messages):
            async for message in messages:
                status = _STATUS.decode_nullable(
                    message.value, self.status_topic, partition, message.offset
                )
                if status is not None:
                    found.append(status)
        return found

    def _remember(self, status: OutgoingStatus, partition: int) -> None:
        if status.activity_id not in self.statuses and status.tracking_token:
            self._tokens.seen(partition, status.tracking_token)
        self.statuses[status.activity_id] = status
        self._partition_of[status.activity_id] = partition

    # -- one record ------------------------------------------------------------

    async def _on_record(self, partition: int, message: object) -> None:
        assert self._emitter is not None
        offset: int = getattr(message, "offset", -1)
        book = self._books[partition]
        book.next_offset = offset + 1
        value = getattr(message, "value", None)
        if not value:
            return
        try:
            email = _MAIL.decode(value, self.mail_topic, partition, offset)
        except DecodeError as exc:
            await self._emitter.dead_letter(
                getattr(message, "key", None), value, exc, self.settings.group_id
            )
            self._flood.dead_lettered(self.mail_topic)
            return
        self._flood.decoded()
        earlier = self._active.get(email.activity_id)
        item = _Item(email, partition, offset, before=earlier.task if earlier else None)
        self._active[email.activity_id] = item
        book.open[offset] = item
        item.task = asyncio.create_task(self._handle(item), name=f"outgoing:{email.activity_id}")
        item.task.add_done_callback(lambda task: self._finished(item, task))

    def _finished(self, item: _Item, task: asyncio.Task[None]) -> None:
        if self._active.get(item.email.activity_id) is item:
            del self._active[item.email.activity_id]
        book = self._books.get(item.partition)
        if not task.cancelled() and task.exception() is not None:
            # A publish that Kafka did not acknowledge: stop the sender (a restart
            # resumes from the statuses that were acknowledged).
            self._failure = self._failure or task.exception()
            return
        if book is not None and not task.cancelled():
            book.open.pop(item.offset, None)

    async def _handle(self, item: _Item) -> None:
        """Take one email from its last status to sent or failed (after any earlier
        record of the same activity is done with it: the same email is never sent
        twice at once)."""
        if item.before is not None:
            await asyncio.wait([item.before])
        email = item.email
        config = await self._mailbox(email.mailbox_id)
        last = self.statuses.get(email.activity_id)
        wants_copy = config is not None and _wants_copy(config)
        step = plan(last, utc_now(), wants_copy)
        if step.action == Action.DONE:
            return
        if last is not None and step.action == Action.RESOLVE:
            await self._resolve(item, last, config)
            return
        if last is not None and step.action == Action.COPY and config is not None:
            await self._copy(item, last, config)
            return
        problem = _unusable(email, config, self.profiles)
        if problem is not None or config is None:
            base = last or await self._publish(item, first_status(email, None, utc_now()))
            await self._fail(item, base, problem or _unknown_mailbox(email))
            return
        if last is None:
            last = await self._publish(
                item, first_status(email, self._token(item, config), utc_now())
            )
        await self._send_until_done(item, last, config, step.attempt, step.delay_s)

    async def _send_until_done(
        self,
        item: _Item,
        status: OutgoingStatus,
        config: MailboxConfig,
        attempt: int,
        delay_s: float,
    ) -> None:
        while True:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            status, delay = await self._attempt(item, status, config, attempt)
            if delay is None:
                return
            attempt, delay_s = attempt + 1, delay

    async def _attempt(
        self, item: _Item, status: OutgoingStatus, config: MailboxConfig, attempt: int
    ) -> tuple[OutgoingStatus, float | None]:
        """One attempt through the mailbox's transport; the status it left and the
        delay before the next one (None: the email is sent or failed)."""
        email = item.email
        transport = self._transport(config)
        date = utc_now()
        subject = subject_for(email, status.tracking_token, self.correlation)
        data = build_message(email, status.message_id, subject, date)
        sending = advance(status, SendStatus.SENDING, date, attempt=attempt, sent_at=date)

        async def before_data(accepted: list[str]) -> None:
            item.critical = True
            await self._publish(item, sending)

        try:
            delivery = await transport.send(email, data, before_data, self.settings.send_timeout_s)
        except ConnectorError as exc:
            current = sending if item.critical else status
            return await self._after_failure(item, current, attempt, exc, config)
        metrics.OUTGOING_ATTEMPTS.labels("accepted").inc()
        sent = await self._publish(
            item,
            advance(
                sending,
                SendStatus.SENT,
                utc_now(),
                accepted=delivery.accepted,
                refused=sorted(delivery.refused),
                copied_to_sent=delivery.saved_copy,
            ),
        )
        item.critical = False
        metrics.OUTGOING_EMAILS.labels("sent").inc()
        log.info("activity %s sent as <%s>", email.activity_id, sent.message_id)
        if delivery.refused:
            refused = "; ".join(f"{a}: {r}" for a, r in sorted(delivery.refused.items()))
            await self._report(
                item,
                sent,
                Code.RECIPIENTS_PARTLY_REFUSED,
                f"activity {email.activity_id} was sent, but the server refused {refused}",
                Severity.NOTICE,
            )
        if _wants_copy(config) and not delivery.saved_copy:
            await self._copy(item, sent, config)
        return sent, None

    async def _after_failure(
        self,
        item: _Item,
        status: OutgoingStatus,
        attempt: int,
        exc: ConnectorError,
        config: MailboxConfig,
    ) -> tuple[OutgoingStatus, float | None]:
        if exc.code == Code.OUTCOME_UNKNOWN:
            metrics.OUTGOING_ATTEMPTS.labels("unknown").inc()
            await self._resolve(item, status, config, exc.message)
            return status, None
        if exc.permanent:
            metrics.OUTGOING_ATTEMPTS.labels("permanent").inc()
            await self._fail(item, status, exc)
            return status, None
        metrics.OUTGOING_ATTEMPTS.labels("transient").inc()
        delay = retry_delay(attempt, self.settings)
        if delay is None:
            exhausted = ConnectorError(
                str(Code.RETRIES_EXHAUSTED),
                f"{exc.message} (still failing after {attempt} attempts; not sent)",
                Severity.PERMANENT,
            )
            await self._fail(item, status, exhausted)
            return status, None
        now = utc_now()
        pending = advance(
            status,
            SendStatus.PENDING,
            now,
            attempt=attempt,
            error_code=exc.code,
            error_message=exc.message,
            next_attempt_at=retry_at(now, delay),
        )
        await self._publish(item, pending)
        item.critical = False
        await self._report(item, pending, exc.code, exc.message, Severity.TRANSIENT)
        return pending, delay

    # -- outcomes --------------------------------------------------------------

    async def _resolve(
        self,
        item: _Item,
        status: OutgoingStatus,
        config: MailboxConfig | None,
        why: str | None = None,
    ) -> None:
        """An email whose send may have reached the server: sent when the Sent folder
        holds its Message-ID, else failed with OutgoingOutcomeUnknown. Never resent."""
        item.critical = True
        found = await self._look_in_sent(config, status.message_id)
        if found:
            sent = advance(
                status, SendStatus.SENT, utc_now(), copied_to_sent=True, accepted=status.accepted
            )
            await self._publish(item, sent)
            metrics.OUTGOING_EMAILS.labels("sent").inc()
            log.info("activity %s found sent in the Sent folder", status.activity_id)
            return
        where = (
            "its Message-ID is not in the mailbox's Sent folder"
            if found is not None
            else "the mailbox's Sent folder could not be checked (no IMAP Sent folder, "
            "or the server did not answer)"
        )
        message = (
            f"activity {status.activity_id} may or may not have been delivered: "
            f"{why or 'the sender stopped while the server was receiving it'}; {where} "
            f"(<{status.message_id}>). It is not sent again automatically: check with the "
            "recipients and queue it again if it did not arrive"
        )
        await self._fail(
            item, status, ConnectorError(str(Code.OUTCOME_UNKNOWN), message, Severity.PERMANENT)
        )

    async def _look_in_sent(self, config: MailboxConfig | None, message_id: str) -> bool | None:
        """Whether the Sent folder holds `message_id` (Sent Items for EWS and Graph,
        the IMAP Sent folder for SMTP); None when it cannot be checked."""
        if config is None or not isinstance(choose(config, self.profiles), Choice):
            return None
        transport = self._transport(config)
        for attempt in range(1, self.settings.max_retries + 2):
            try:
                return await transport.already_sent(message_id)
            except (ConnectorError, OSError) as exc:
                delay = retry_delay(attempt, self.settings)
                log.warning("Sent folder of %s not readable: %s", config.mailbox_id, exc)
                if delay is None or (isinstance(exc, ConnectorError) and exc.permanent):
                    return None
                await asyncio.sleep(delay)
        return None

    async def _copy(self, item: _Item, sent: OutgoingStatus, config: MailboxConfig) -> None:
        """Append the sent email to the Sent folder (unless there) and record it."""
        imap = imap_access(config, self.profiles)
        if imap is None:
            await self._report(
                item,
                sent,
                Code.SENT_COPY_FAILED,
                f"mailbox {config.mailbox_id} keeps copies of sent email but is not an IMAP "
                "mailbox with a server profile",
                Severity.PERMANENT,
            )
            return
        profile, username, secret = imap
        subject = subject_for(item.email, sent.tracking_token, self.correlation)
        data = build_message(item.email, sent.message_id, subject, sent.sent_at or sent.updated_at)
        try:
            async with self._imap_gate(config, profile).slot():
                appended = await copy_to_sent(
                    profile, config, username, secret, sent.message_id, data, sent.sent_at
                )
        except (ConnectorError, OSError) as exc:
            metrics.OUTGOING_SENT_COPIES.labels("failed").inc()
            await self._report(
                item,
                sent,
                Code.SENT_COPY_FAILED,
                f"activity {sent.activity_id} was sent but not copied to the Sent folder: {exc}",
                Severity.TRANSIENT,
            )
            return
        metrics.OUTGOING_SENT_COPIES.labels("appended" if appended else "present").inc()
        await self._publish(item, advance(sent, SendStatus.SENT, utc_now(), copied_to_sent=True))

    async def _fail(self, item: _Item, status: OutgoingStatus, exc: ConnectorError) -> None:
        failed = advance(
            status, SendStatus.FAILED, utc_now(), error_code=exc.code, error_message=exc.message
        )
        await self._publish(item, failed)
        item.critical = False
        metrics.OUTGOING_EMAILS.labels("failed").inc()
        log.error("activity %s not sent: %s", status.activity_id, exc.message)
        await self._report(item, failed, exc.code, exc.message, Severity.PERMANENT)

    # -- publishing ------------------------------------------------------------

    async def _publish(self, item: _Item, status: OutgoingStatus) -> OutgoingStatus:
        """Write a status to its email's partition and wait for the acknowledgement."""
        assert self._producer is not None
        status = _with_worker(status, self.worker)
        future = await self._producer.send(
            self.status_topic,
            key=encode_key(status.activity_id),
            value=_STATUS.encode(status),
            partition=item.partition,
        )
        async with asyncio.timeout(self.ack_timeout_s):
            await future
        self._remember(status, item.partition)
        return status

    async def _report(
        self, item: _Item, status: OutgoingStatus, code: str, message: str, severity: Severity
    ) -> None:
        assert self._emitter is not None
        error = SyncError(
            error_id=error_id(f"outgoing:{status.activity_id}", code, max(status.attempt, 1)),
            mailbox_id=status.mailbox_id,
            scope=ErrorScope.ITEM,
            severity=severity,
            code=code,
            message=message,
            component=COMPONENT,
            item_id=status.activity_id,
            attempt=max(status.attempt, 1),
            occurred_at=utc_now(),
        )
        await self._emitter.emit_error(error, self._protocol_of(status.mailbox_id))

    # -- helpers ---------------------------------------------------------------

    async def _mailbox(self, mailbox_id: str) -> MailboxConfig | None:
        """The mailbox's configuration; when unknown, once more after reading
        mailbox.config up to its end (it may have been published just before)."""
        config = self.directory.configs.get(mailbox_id)
        if config is None:
            await self.directory.caught_up()
            config = self.directory.configs.get(mailbox_id)
        return config

    def _token(self, item: _Item, config: MailboxConfig) -> str | None:
        if not self.correlation.tracking_token:
            return None
        user = user_number(config, self.correlation.token_user_digits)
        return self._tokens.issue(item.partition, user)

    def _protocol_of(self, mailbox_id: str) -> str:
        """The protocol a mailbox sends through, for metric labels ("smtp" when unknown)."""
        config = self.directory.configs.get(mailbox_id)
        choice = choose(config, self.profiles) if config is not None else None
        return str(choice.protocol) if isinstance(choice, Choice) else "smtp"

    def _transport(self, config: MailboxConfig) -> SendTransport:
        """How `config` sends (its choice checked by `_unusable` before any attempt)."""
        choice = choose(config, self.profiles)
        if isinstance(choice, ConnectorError):
            raise choice
        return open_transport(config, choice, self.profiles, self.gates)

    def _imap_gate(self, config: MailboxConfig, profile: ServerProfile) -> ServerGate:
        """The connection gate of the mailbox's IMAP profile (shared with its reader)."""
        return self.gates.gate(config.server_profile or "", profile.max_connections)


def _wants_copy(config: MailboxConfig) -> bool:
    return config.outgoing is not None and config.outgoing.save_to_sent


def _with_worker(status: OutgoingStatus, worker: str) -> OutgoingStatus:
    return msgspec.structs.replace(status, worker=worker)


def _unknown_mailbox(email: OutgoingEmail) -> ConnectorError:
    return ConnectorError(
        str(Code.MAILBOX_UNKNOWN),
        f"activity {email.activity_id} names mailbox {email.mailbox_id}, which is not "
        "configured (mailbox.config)",
        Severity.PERMANENT,
    )


def _unusable(
    email: OutgoingEmail, config: MailboxConfig | None, profiles: dict[str, ServerProfile]
) -> ConnectorError | None:
    """Why `email` cannot be sent through its mailbox, or None when it can."""
    if config is None:
        return _unknown_mailbox(email)
    mailbox = config.mailbox_id
    if not (config.approved and config.enabled):
        state = "not approved" if not config.approved else "disabled"
        return ConnectorError(
            str(Code.MAILBOX_DISABLED),
            f"mailbox {mailbox} is {state}, so it sends no email",
            Severity.PERMANENT,
        )
    choice = choose(config, profiles)
    if isinstance(choice, ConnectorError):
        return choice
    if not envelope_recipients(email):
        return ConnectorError(
            str(Code.NO_RECIPIENTS),
            f"activity {email.activity_id} has no recipients",
            Severity.PERMANENT,
        )
    return None
