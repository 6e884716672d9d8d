"""The CRM → Exchange writer: crm.act.changes → mailbox calendars, contacts and
tasks, two-way once linked, with every link on act.links.

Ownership. The writer is a consumer group of its own on crm.act.changes (keyed by
CRM record id), not a part of the mailbox owners' group on mailbox.config: a
record may go to several mailboxes (the organizer's, attendees' copies) and all
its links must be seen together to be updated or deleted consistently, so the
unit of ownership is the record. Links go to the partition number their record
has on crm.act.changes (the topics must have the same partition count, checked at
start); on assignment the writer reads those partitions of act.links to their end
before it reads any change, so after a restart or a rebalance it knows every item
it already created. Server connections are shared with the mailbox readers of the
same process through the profile gates.

Per change and per mailbox the record belongs in (connectors/act_filters.py):
- not linked: create the item (Graph `transactionId`, or the EWS target's link
  property looked up before CreateItem, makes a retried create return the first
  item), then publish the link;
- linked, and the change is one the link already holds (same or older CRM change
  time and the same field hashes: a replay, or the echo of a mailbox change the
  CRM took over): nothing, not even a read;
- linked: read the item, merge field by field (connectors/act_conflict.py), write
  the CRM-won fields to the mailbox, publish the mailbox-won fields to crm.act (an
  `ActRecord`, origin "exchange", for the CRM to take over), then the new link;
- the item is gone from the mailbox: the delete rules of act_conflict decide (the
  organizer's delete deletes the record: a tombstone on crm.act; an attendee's or
  a contact's only drops the link);
- a deleted record: for each link, the delete rules decide (cancel the
  organizer's meeting, delete the item, or keep it), then the link is dropped.

A link is published only after the server confirmed the write, and the offset is
committed only after the links of its batch were acknowledged: a crash re-reads
the change, finds the link (or, for a create whose link was lost, Graph's
transactionId or the EWS link property finds the item) and writes nothing twice.
Failures are SyncErrors on sync.errors (component "act_writer", scope item); a
transient one is retried `max_attempts` times at once with a growing pause, then
parked on act.retry and retried later by this writer with a growing delay, until
it lands, a newer CRM change supersedes it, or `give_up_after_s` passed (a
permanent SyncError `ActRetryGivenUp`); connectors/act_retry.py holds the rules
and why the parked changes live on a topic. Permanent failures are reported and
not retried. Settings: `[connectors.act_writer]` (schemas/act_sync.py
`ActWriterSettings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from connectors import errors
from connectors.act_conflict import (
    DeleteAction,
    Resolution,
    Role,
    field_hashes,
    on_crm_delete,
    on_exchange_delete,
    resolve,
    sync_fields,
    with_fields,
)
from connectors.act_ews_write import EwsActTarget
from connectors.act_filters import targets
from connectors.act_graph_write import GraphActTarget, ItemRef, MailboxItem
from connectors.act_retry import describe, due, park, same_change, supersedes
from connectors.emitter import Emitter
from connectors.errors import ConnectorError
from connectors.gate import GateRegistry, ServerGate
from connectors.graph_auth import GraphTokens
from connectors.graph_client import GraphClient
from connectors.group import PartitionListener, partition_counts, read_partition
from connectors.outgoing_sender import MailboxDirectory
from schemas import metrics
from schemas.act import (
    ActPayload,
    ActRecord,
    ActSource,
    ActType,
    Appointment,
    Task,
    TaskStatus,
    version_of,
)
from schemas.act_changes import ActLink, ActParked, CrmActChange, link_key
from schemas.act_sync import ActSyncSettings, ActWriterSettings, Side
from schemas.base import utc_now
from schemas.codec import Codec, encode_key
from schemas.config import KafkaConfig
from schemas.errors import DecodeError, ErrorScope, Severity, StopAndAlert, SyncError
from schemas.ids import error_id
from schemas.mailbox import ActSettings, GraphSettings, MailboxConfig, ServerProfile
from schemas.mailbox import Protocol as MailProtocol
from schemas.topics import ACT_LINKS, ACT_RETRY, CRM_ACT, CRM_ACT_CHANGES, codec

log = logging.getLogger(__name__)
COMPONENT = "act_writer"
_CHANGES = codec(CRM_ACT_CHANGES)
_LINKS = codec(ACT_LINKS)
_PARKED = codec(ACT_RETRY)
V = TypeVar("V", bound=msgspec.Struct)
_ACT = codec(CRM_ACT)
FOLDERS = {ActType.APPOINTMENT: "Calendar", ActType.CONTACT: "Contacts", ActType.TASK: "Tasks"}


class ActLayoutError(StopAndAlert):
    """crm.act.changes, act.links and act.retry must have the same number of partitions."""


class ActTarget(Protocol):
    """One mailbox's calendar, contacts and tasks as the writer uses them."""

    async def get(self, kind: ActType, item_id: str) -> MailboxItem | None: ...

    async def create(self, kind: ActType, payload: ActPayload, transaction: str) -> ItemRef: ...

    async def update(
        self,
        kind: ActType,
        ref: ItemRef,
        merged: ActPayload,
        fields: set[str],
        current: ActPayload,
    ) -> ItemRef: ...

    async def delete(self, kind: ActType, item_id: str, cancel: bool) -> None: ...

    async def close(self) -> None: ...


TargetFactory = Callable[[MailboxConfig, ServerProfile, ServerGate], ActTarget]
"""The writer's access to one mailbox, given its profile and the profile's gate."""


def default_target(config: MailboxConfig, profile: ServerProfile, gate: ServerGate) -> ActTarget:
    """The writer's access to a mailbox, by its protocol: EWS (connectors/act_ews_write.py)
    or Microsoft Graph (connectors/act_graph_write.py)."""
    if config.protocol is MailProtocol.EWS and profile.protocol is MailProtocol.EWS:
        return EwsActTarget(config, profile, gate)
    if config.protocol is MailProtocol.GRAPH and profile.graph is not None:
        settings = config.graph or GraphSettings()
        user = settings.user or config.email_address
        return GraphActTarget(
            GraphClient(profile, GraphTokens(profile, settings, user), user), user
        )
    raise errors.permanent(
        errors.CONFIGURATION,
        f"mailbox {config.mailbox_id}: CRM → Exchange writes need an ews mailbox with an ews "
        f"profile, or a graph mailbox with a graph profile; {config.protocol} is not written to",
    )


# -- pure decisions ---------------------------------------------------------------------


def settings_of(config: MailboxConfig) -> ActSyncSettings:
    """The mailbox's CRM → Exchange settings (defaults when it has none)."""
    return config.act.crm_to_exchange if config.act is not None else ActSyncSettings()


def is_replay(change: CrmActChange, link: ActLink) -> bool:
    """Whether the link already holds every field of this CRM version: a replayed
    change, or the CRM re-emitting what tidings merged (the echo of a mailbox
    change). Nothing is written then; a mailbox-side edit since reaches the CRM
    through the Exchange → CRM path, or merges with the next CRM change."""
    if change.payload is None:
        return False
    if link.owner is not None and link.owner != change.owner:
        return False  # the CRM gave the record another owner: the link must learn it
    mine = field_hashes(sync_fields(change.record_type, change.payload))
    return all(link.synced.get(name) == value for name, value in mine.items())


def is_stale(change: CrmActChange, link: ActLink) -> bool:
    """Whether the change is older than the CRM version the link already holds."""
    return link.crm_change_time is not None and change.crm_change_time < link.crm_change_time


def merge(
    change: CrmActChange, link: ActLink, current: MailboxItem, settings: ActSyncSettings
) -> Resolution:
    """The field-by-field merge of the CRM version and the mailbox's."""
    assert change.payload is not None
    return resolve(
        sync_fields(change.record_type, change.payload),
        sync_fields(change.record_type, current.payload),
        link.synced,
        crm_time=change.crm_change_time,
        exchange_time=current.ref.change_time,
        direction=settings.direction,
        tie=settings.tie_winner,
    )


def delete_decision(
    link: ActLink, current: ActPayload, settings: ActSyncSettings, now: datetime
) -> DeleteAction:
    """What a CRM delete does to a linked item the mailbox still holds."""
    role = Role.ORGANIZER if link.organizer else Role.ATTENDEE
    if isinstance(current, Appointment):
        decision = on_crm_delete(
            "appointment",
            role,
            now=now,
            end=current.end,
            has_attendees=bool(current.attendees) and settings.send_invitations,
            delete_past=settings.delete_past_appointments,
        )
    elif isinstance(current, Task):
        decision = on_crm_delete(
            "task",
            role,
            now=now,
            completed=current.status is TaskStatus.COMPLETED,
            due=current.due,
        )
    else:
        decision = on_crm_delete("contact", role, now=now)
    return decision.action


# -- the service ------------------------------------------------------------------------


@dataclass
class _Stats:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    to_crm: int = 0
    failed: int = 0
    parked: int = 0
    retried: int = 0


@dataclass
class _Owned:
    """The links and parked changes of the owned partitions."""

    links: dict[str, ActLink] = field(default_factory=dict)
    parked: dict[str, ActParked] = field(default_factory=dict)
    partitions: set[int] = field(default_factory=set)

    def of_record(self, record_id: str) -> list[ActLink]:
        return [v for k, v in self.links.items() if k.startswith(f"{record_id}|")]

    def parked_of(self, record_id: str) -> list[ActParked]:
        return [v for k, v in self.parked.items() if k.startswith(f"{record_id}|")]


class ActWriter:
    """Writes crm.act.changes into mailboxes and keeps act.links (module docstring)."""

    def __init__(
        self,
        kafka: KafkaConfig,
        prefix: str,
        profiles: dict[str, ServerProfile],
        *,
        group_id: str | None = None,
        ack_timeout_s: float = 60.0,
        worker: str | None = None,
        gates: GateRegistry | None = None,
        target_factory: TargetFactory = default_target,
        settings: ActWriterSettings | None = None,
        max_attempts: int | None = None,
        retry_pause_s: float | None = None,
    ) -> None:
        """`settings` holds the retries (`max_attempts` / `retry_pause_s`, when given,
        override its immediate ones)."""
        self.kafka = kafka
        self.prefix = prefix
        self.profiles = profiles
        self.group_id = group_id or f"{prefix}act-writer"
        self.ack_timeout_s = ack_timeout_s
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}"
        self.gates = gates or GateRegistry()
        self.target_factory = target_factory
        settings = settings or ActWriterSettings()
        overrides: dict[str, Any] = {}
        if max_attempts is not None:
            overrides["max_attempts"] = max_attempts
        if retry_pause_s is not None:
            overrides["retry_pause_s"] = retry_pause_s
        self.settings = msgspec.structs.replace(settings, **overrides)
        self.changes_topic = CRM_ACT_CHANGES.name(prefix)
        self.links_topic = ACT_LINKS.name(prefix)
        self.retry_topic = ACT_RETRY.name(prefix)
        self.parking = self.settings.park  # off too when act.retry does not exist
        self.directory = MailboxDirectory(kafka, prefix)
        self.owned = _Owned()
        self.stats = _Stats()
        self._targets: dict[str, ActTarget] = {}
        self._producer: AIOKafkaProducer | None = None
        self._emitter: Emitter | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._link_partitions: dict[str, int] = {}
        self._parked_partitions: dict[str, int] = {}

    # -- lifecycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set. Without a crm.act.changes topic (a deployment
        created before it existed) the writer idles with a warning instead of
        stopping the connectors; partition counts that differ stop it with an alert."""
        config_partitions = await self._check_layout()
        if config_partitions == 0:
            log.warning(
                "act writer idle: topic %s does not exist (create the topics to write CRM "
                "appointments, contacts and tasks into mailboxes)",
                self.changes_topic,
            )
            await stop.wait()
            return
        self._producer = AIOKafkaProducer(**self.kafka.producer_options(linger_ms=0))
        await self._producer.start()
        self._emitter = Emitter(self._producer, self.prefix, self.ack_timeout_s)
        await self.directory.start(config_partitions)
        consumer = self._consumer = AIOKafkaConsumer(
            group_id=self.group_id, **self.kafka.consumer_options()
        )
        consumer.subscribe([self.changes_topic], listener=PartitionListener(self))
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=300)
                offsets: dict[TopicPartition, int] = {}
                for tp, messages in batch.items():
                    if tp.partition not in self.owned.partitions:
                        consumer.seek(tp, messages[0].offset)
                        continue
                    for message in messages:
                        await self._on_record(tp.partition, message)
                    offsets[tp] = messages[-1].offset + 1
                if offsets:
                    await consumer.commit(offsets)
                await self._retry_due()
        finally:
            await consumer.stop()
            await self.directory.stop()
            for target in self._targets.values():
                with contextlib.suppress(Exception):
                    await target.close()
            self._targets.clear()
            await self._producer.stop()

    async def _check_layout(self) -> int:
        topics = [self.changes_topic, self.links_topic, self.retry_topic, self.directory.topic]
        counts = await partition_counts(self.kafka, topics)
        changes, links = counts.get(self.changes_topic, 0), counts.get(self.links_topic, 0)
        if not changes:
            return 0
        if changes != links:
            raise ActLayoutError(
                f"{self.changes_topic} has {changes} partitions but {self.links_topic} has "
                f"{links}; create them alike"
            )
        retry = counts.get(self.retry_topic, 0)
        if retry and retry != changes:
            raise ActLayoutError(
                f"{self.changes_topic} has {changes} partitions but {self.retry_topic} has "
                f"{retry}; create them alike"
            )
        if not retry and self.parking:
            log.warning(
                "act writer: topic %s does not exist, so a change that fails after %d "
                "attempts is reported and skipped, not retried later (create the topics)",
                self.retry_topic,
                self.settings.max_attempts,
            )
            self.parking = False
        if not counts.get(self.directory.topic):
            raise ActLayoutError(f"{self.directory.topic} does not exist")
        return counts[self.directory.topic]

    # -- ownership --------------------------------------------------------------------

    async def on_assigned(self, partitions: set[int]) -> None:
        """Load the links and parked changes of newly assigned partitions before
        reading their changes."""
        new = sorted(partitions - self.owned.partitions)
        loaded = await asyncio.gather(*(self._load_links(p) for p in new))
        for found in loaded:
            self.owned.links.update(found)
        if self.parking:
            parked = await asyncio.gather(*(self._load_parked(p) for p in new))
            for entries in parked:
                self.owned.parked.update(entries)
            metrics.ACT_WRITER_PARKED.set(len(self.owned.parked))
        self.owned.partitions |= set(new)
        log.info("act writer %s owns partitions %s", self.worker, sorted(self.owned.partitions))

    async def on_revoked(self, partitions: set[int]) -> None:
        """Forget the links of revoked partitions."""
        self.owned.partitions -= partitions
        revoked = {k for k, v in self._link_partitions.items() if v in partitions}
        for key in revoked:
            self.owned.links.pop(key, None)
            self._link_partitions.pop(key, None)
        for key in [k for k, v in self._parked_partitions.items() if v in partitions]:
            self.owned.parked.pop(key, None)
            self._parked_partitions.pop(key, None)
        metrics.ACT_WRITER_PARKED.set(len(self.owned.parked))

    async def _load_links(self, partition: int) -> dict[str, ActLink]:
        return await self._load(self.links_topic, _LINKS, partition, self._link_partitions, "link")

    async def _load_parked(self, partition: int) -> dict[str, ActParked]:
        return await self._load(
            self.retry_topic, _PARKED, partition, self._parked_partitions, "parked change"
        )

    async def _load(
        self,
        topic: str,
        value_codec: Codec[V],
        partition: int,
        partitions: dict[str, int],
        what: str,
        timeout_s: float = 60.0,
    ) -> dict[str, V]:
        """The latest value per key of one partition of a compacted topic, read to its
        end (a tombstone removes its key); each key read is noted in `partitions`."""
        found: dict[str, V] = {}
        messages = read_partition(self.kafka, topic, partition, timeout_s)
        async with contextlib.aclosing(messages):
            async for message in messages:
                try:
                    record = value_codec.decode_record(message, topic, partition)
                except DecodeError as exc:
                    log.error("act writer ignores an undecodable %s: %s", what, exc)
                    continue
                if record is None:
                    continue
                key, value = record
                if value is None:
                    found.pop(key, None)
                else:
                    found[key] = value
                partitions[key] = partition
        return found

    # -- one change -------------------------------------------------------------------

    async def _on_record(self, partition: int, message: Any) -> None:
        try:
            record = _CHANGES.decode_record(message, self.changes_topic, partition)
        except DecodeError as exc:
            log.error("act writer skips an undecodable change: %s", exc)
            await self._report(None, "", "InvalidChange", str(exc), Severity.PERMANENT, 1)
            return
        if record is None or record[1] is None:
            return  # a tombstone: the CRM compacted a deleted record away
        await self.apply(record[1], partition)

    async def apply(self, change: CrmActChange, partition: int) -> None:
        """Write one CRM change into every mailbox it belongs in."""
        if change.deleted:
            linked: set[str] = set()
            for link in self.owned.of_record(change.record_id):
                linked.add(link.mailbox_id)
                if link.deleted:
                    self.stats.unchanged += 1
                    continue
                await self._attempt(link.mailbox_id, change, partition, self._delete, link)
            await self._supersede(change, partition, keep=linked)
            return
        configs = list(self.directory.configs.values())
        if not configs:
            await self.directory.caught_up()
            configs = list(self.directory.configs.values())
        wanted = targets(change, configs)
        for mailbox_id, role in sorted(wanted.items()):
            await self._attempt(mailbox_id, change, partition, self._write, role)
        await self._supersede(change, partition, keep=set(wanted))

    async def _supersede(self, change: CrmActChange, partition: int, keep: set[str]) -> None:
        """End the parked changes of the record in mailboxes this newer change does
        not go to (a parked create must not resurrect a deleted record, nor write
        into a mailbox the record left)."""
        for entry in self.owned.parked_of(change.record_id):
            if entry.mailbox_id in keep or not supersedes(change, entry):
                continue
            log.info(
                "act writer: a newer change of %s ends its parked change in %s",
                change.record_id,
                entry.mailbox_id,
            )
            metrics.ACT_WRITER_RETRIES.labels("superseded").inc()
            await self._unpark(link_key(entry.record_id, entry.mailbox_id), partition)

    async def _attempt(
        self, mailbox_id: str, change: CrmActChange, partition: int, step: Any, arg: Any
    ) -> None:
        """Write one change into one mailbox: `max_attempts` at once, then park it
        (connectors/act_retry.py). A parked newer version of the record wins over
        an older change."""
        key = link_key(change.record_id, mailbox_id)
        parked = self.owned.parked.get(key)
        if parked is not None and not supersedes(change, parked):
            log.info(
                "act writer: %s in %s: a newer parked version waits; this one is older",
                change.record_id,
                mailbox_id,
            )
            self.stats.unchanged += 1
            return
        failure = await self._try(
            mailbox_id, change, partition, step, arg, self.settings.max_attempts, first=1
        )
        await self._settle(key, partition, mailbox_id, change, failure, parked)

    async def _try(
        self,
        mailbox_id: str,
        change: CrmActChange,
        partition: int,
        step: Any,
        arg: Any,
        attempts: int,
        *,
        first: int,
    ) -> ConnectorError | None:
        """Up to `attempts` attempts (numbered from `first` in the SyncErrors);
        the last failure, or None when the change landed."""
        for n in range(attempts):
            attempt = first + n
            try:
                await step(mailbox_id, change, partition, arg)
                return None
            except ConnectorError as exc:
                last = n + 1 >= attempts or exc.permanent
                final = exc.permanent or (last and not self.parking)
                severity = Severity.PERMANENT if final else Severity.TRANSIENT
                await self._report(
                    mailbox_id,
                    change.record_id,
                    exc.code,
                    exc.message,
                    severity,
                    attempt,
                    change.crm_change_time,
                )
                await self._drop_target(mailbox_id)
                if last:
                    return exc
                await asyncio.sleep(self.settings.retry_pause_s * (n + 1))
        return None  # pragma: no cover (attempts >= 1)

    async def _settle(
        self,
        key: str,
        partition: int,
        mailbox_id: str,
        change: CrmActChange,
        failure: ConnectorError | None,
        parked: ActParked | None,
    ) -> None:
        """After the attempts at `change`: end, keep or replace the parked entry."""
        later = parked is not None and same_change(parked.change, change)
        if failure is None or failure.permanent:
            if failure is not None:
                self.stats.failed += 1
            if parked is not None:
                outcome = ("written" if failure is None else "failed") if later else "superseded"
                metrics.ACT_WRITER_RETRIES.labels(outcome).inc()
                await self._unpark(key, partition)
            return
        if not self.parking:
            self.stats.failed += 1
            return
        now = utc_now()
        entry = park(change, mailbox_id, failure.code, failure.message, now, parked, self.settings)
        if entry is None:
            assert parked is not None
            self.stats.failed += 1
            metrics.ACT_WRITER_RETRIES.labels("gave_up").inc()
            await self._report(
                mailbox_id,
                change.record_id,
                "ActRetryGivenUp",
                f"given up after {parked.retries + 1} later retries since "
                f"{parked.first_failed_at:%Y-%m-%d %H:%M}Z; last {failure.code}: "
                f"{failure.message}",
                Severity.PERMANENT,
                self.settings.max_attempts + parked.retries + 1,
                change.crm_change_time,
            )
            await self._unpark(key, partition)
            return
        if not later:
            if parked is not None:
                metrics.ACT_WRITER_RETRIES.labels("superseded").inc()
            metrics.ACT_WRITER_RETRIES.labels("parked").inc()
            self.stats.parked += 1
            await self._report(
                mailbox_id,
                change.record_id,
                "ActChangeParked",
                describe(entry, self.settings),
                Severity.TRANSIENT,
                self.settings.max_attempts,
                change.crm_change_time,
            )
        await self._park(key, partition, entry)

    async def _retry_due(self) -> None:
        """Retry the parked changes that are due (one attempt each, at most one per
        mailbox per round)."""
        if not self.owned.parked:
            return
        for entry in due(self.owned.parked.values(), utc_now()):
            key = link_key(entry.record_id, entry.mailbox_id)
            partition = self._parked_partitions.get(key)
            if partition is None or partition not in self.owned.partitions:
                continue
            await self._retry(key, partition, entry)

    async def _retry(self, key: str, partition: int, entry: ActParked) -> None:
        change, mailbox_id = entry.change, entry.mailbox_id
        metrics.ACT_WRITER_RETRIES.labels("retried").inc()
        self.stats.retried += 1
        step: Any
        arg: Any
        if change.deleted:
            link = self.owned.links.get(key)
            if link is None or link.deleted:  # nothing left to delete
                metrics.ACT_WRITER_RETRIES.labels("written").inc()
                await self._unpark(key, partition)
                return
            step, arg = self._delete, link
        else:
            configs = list(self.directory.configs.values())
            role = targets(change, configs).get(mailbox_id)
            if role is None:
                log.info(
                    "act writer: %s no longer goes to %s; its parked change is dropped",
                    change.record_id,
                    mailbox_id,
                )
                metrics.ACT_WRITER_RETRIES.labels("dropped").inc()
                await self._unpark(key, partition)
                return
            step, arg = self._write, role
        log.info("act writer: retry %d of %s in %s", entry.retries + 1, key, mailbox_id)
        failure = await self._try(
            mailbox_id,
            change,
            partition,
            step,
            arg,
            1,
            first=self.settings.max_attempts + entry.retries + 1,
        )
        await self._settle(key, partition, mailbox_id, change, failure, entry)

    async def _park(self, key: str, partition: int, entry: ActParked) -> None:
        await self._send(self.retry_topic, key, _PARKED.encode(entry), partition)
        self.owned.parked[key] = entry
        self._parked_partitions[key] = partition
        metrics.ACT_WRITER_PARKED.set(len(self.owned.parked))

    async def _unpark(self, key: str, partition: int) -> None:
        """Tombstone a parked entry (it landed, was superseded, failed or given up)."""
        await self._send(self.retry_topic, key, None, partition)
        self.owned.parked.pop(key, None)
        self._parked_partitions.pop(key, None)
        metrics.ACT_WRITER_PARKED.set(len(self.owned.parked))

    async def _write(
        self, mailbox_id: str, change: CrmActChange, partition: int, role: Role
    ) -> None:
        assert change.payload is not None
        config = self.directory.configs[mailbox_id]
        settings = settings_of(config)
        target = self._target(config)
        kind = change.record_type
        key = link_key(change.record_id, mailbox_id)
        link = self.owned.links.get(key)
        fields = sync_fields(kind, change.payload)
        if link is None:
            tracked = (config.act or ActSettings()).tracked_category
            payload = _for_mailbox(change.payload, role, settings, tracked)
            ref = await target.create(kind, payload, transaction=_transaction(key))
            self.stats.created += 1
            await self._link(
                partition,
                ActLink(
                    record_id=change.record_id,
                    mailbox_id=mailbox_id,
                    record_type=kind,
                    item_id=ref.item_id,
                    change_key=ref.change_key,
                    ical_uid=ref.ical_uid or getattr(change.payload, "ical_uid", ""),
                    crm_change_time=change.crm_change_time,
                    exchange_change_time=ref.change_time,
                    synced=field_hashes(fields),
                    origin=Side.CRM,
                    organizer=role is Role.ORGANIZER,
                    updated_at=utc_now(),
                    owner=change.owner,
                ),
            )
            log.info("act writer created %s %s in %s", kind, change.record_id, mailbox_id)
            return
        if link.deleted or is_stale(change, link) or is_replay(change, link):
            self.stats.unchanged += 1
            return
        current = await target.get(kind, link.item_id)
        if current is None:
            await self._gone_from_mailbox(link, change, partition)
            return
        resolution = merge(change, link, current, settings)
        ref = current.ref
        if resolution.to_exchange:
            merged = with_fields(current.payload, resolution.to_exchange)
            ref = await target.update(
                kind, ref, merged, set(resolution.to_exchange), current.payload
            )
            self.stats.updated += 1
        else:
            self.stats.unchanged += 1
        if resolution.to_crm:
            await self._to_crm(change, mailbox_id, current, resolution)
        for conflict in resolution.conflicts:
            log.info(
                "act writer: %s of %s in %s: %s",
                conflict.name,
                change.record_id,
                mailbox_id,
                conflict.reason,
            )
        await self._link(
            partition,
            msgspec.structs.replace(
                link,
                change_key=ref.change_key,
                crm_change_time=max(
                    change.crm_change_time, link.crm_change_time or change.crm_change_time
                ),
                exchange_change_time=ref.change_time,
                synced=resolution.synced,
                updated_at=utc_now(),
                owner=change.owner,
            ),
        )

    async def _gone_from_mailbox(self, link: ActLink, change: CrmActChange, partition: int) -> None:
        role = Role.ORGANIZER if link.organizer else Role.ATTENDEE
        decision = on_exchange_delete(str(link.record_type), role)
        log.info(
            "act writer: %s gone from %s: %s", link.record_id, link.mailbox_id, decision.reason
        )
        if decision.action is DeleteAction.DELETE_IN_CRM:
            await self._send(_act_topic(self.prefix), link.record_id, None, None)
        await self._unlink(link, partition)

    async def _delete(
        self, mailbox_id: str, change: CrmActChange, partition: int, link: ActLink
    ) -> None:
        config = self.directory.configs.get(mailbox_id)
        if config is None:
            await self._unlink(link, partition)
            return
        target = self._target(config)
        current = await target.get(link.record_type, link.item_id)
        if current is not None:
            action = delete_decision(link, current.payload, settings_of(config), utc_now())
            if action in (DeleteAction.DELETE_IN_EXCHANGE, DeleteAction.CANCEL_IN_EXCHANGE):
                await target.delete(
                    link.record_type, link.item_id, cancel=action is DeleteAction.CANCEL_IN_EXCHANGE
                )
                self.stats.deleted += 1
            log.info(
                "act writer: %s deleted in the CRM: %s in %s", link.record_id, action, mailbox_id
            )
        await self._unlink(link, partition, change.crm_change_time)

    async def _to_crm(
        self, change: CrmActChange, mailbox_id: str, current: MailboxItem, resolution: Resolution
    ) -> None:
        assert change.payload is not None
        payload = with_fields(change.payload, resolution.to_crm)
        stamp = current.ref.change_time or utc_now()
        record = ActRecord(
            record_id=change.record_id,
            record_type=change.record_type,
            version=version_of(stamp),
            payload=payload,
            owner=change.owner,
            regarding=change.regarding,
            source=ActSource(
                mailbox_id=mailbox_id,
                folder=FOLDERS[change.record_type],
                item_id=current.ref.item_id,
            ),
            mailboxes=[mailbox_id],
            origin="exchange",
            change_time=stamp,
            updated_at=utc_now(),
        )
        await self._send(_act_topic(self.prefix), change.record_id, _ACT.encode(record), None)
        self.stats.to_crm += 1

    # -- helpers --------------------------------------------------------------------

    def _target(self, config: MailboxConfig) -> ActTarget:
        target = self._targets.get(config.mailbox_id)
        if target is None:
            profile = self.profiles.get(config.server_profile or "")
            if profile is None:
                raise errors.permanent(
                    errors.CONFIGURATION,
                    f"mailbox {config.mailbox_id} names server profile "
                    f"{config.server_profile!r}, which is not configured",
                )
            gate = self.gates.gate(config.server_profile or "", profile.max_connections)
            target = self._targets[config.mailbox_id] = self.target_factory(config, profile, gate)
        return target

    async def _drop_target(self, mailbox_id: str) -> None:
        """Forget a mailbox's connection after a failure (the next attempt opens anew)."""
        target = self._targets.pop(mailbox_id, None)
        if target is not None:
            with contextlib.suppress(Exception):
                await target.close()

    async def _link(self, partition: int, link: ActLink) -> None:
        key = link_key(link.record_id, link.mailbox_id)
        if link.partition != partition:
            link = msgspec.structs.replace(link, partition=partition)
        await self._send(self.links_topic, key, _LINKS.encode(link), partition)
        self.owned.links[key] = link
        self._link_partitions[key] = partition

    async def _unlink(self, link: ActLink, partition: int, when: datetime | None = None) -> None:
        """Mark the link deleted (kept, so replays of older versions create nothing)."""
        crm_time = max((t for t in (when, link.crm_change_time) if t is not None), default=None)
        gone = msgspec.structs.replace(
            link, deleted=True, crm_change_time=crm_time, updated_at=utc_now()
        )
        await self._link(partition, gone)

    async def _send(self, topic: str, key: str, value: bytes | None, partition: int | None) -> None:
        assert self._producer is not None
        future = await self._producer.send(
            topic, key=encode_key(key), value=value, partition=partition
        )
        async with asyncio.timeout(self.ack_timeout_s):
            await future

    async def _report(
        self,
        mailbox_id: str | None,
        record_id: str,
        code: str,
        message: str,
        severity: Severity,
        attempt: int,
        version: datetime | None = None,
    ) -> None:
        """One SyncError; `version` (the CRM change time) keeps the errors of two
        versions of a record apart (the error id is stable per version and attempt)."""
        log.warning("act writer: %s %s: %s", mailbox_id or "-", record_id, message)
        if self._emitter is None:
            return
        scope = f"act:{record_id}:{mailbox_id}" + (f":{version.isoformat()}" if version else "")
        error = SyncError(
            error_id=error_id(scope, code, attempt),
            mailbox_id=mailbox_id or "",
            scope=ErrorScope.ITEM,
            severity=severity,
            code=code,
            message=message,
            component=COMPONENT,
            item_id=record_id or None,
            attempt=attempt,
            occurred_at=utc_now(),
        )
        with contextlib.suppress(KafkaError, TimeoutError):
            await self._emitter.emit_error(error, "act")


def _act_topic(prefix: str) -> str:
    return CRM_ACT.name(prefix)


def _transaction(key: str) -> str:
    """A stable client transaction id for creating the item of a link (Graph
    `transactionId`): a retried create returns the first item."""
    import hashlib

    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _for_mailbox(
    payload: ActPayload, role: Role, settings: ActSyncSettings, tracked_category: str
) -> ActPayload:
    """What is created in a mailbox: the item carries the mailbox's tracked category
    (as Dynamics marks the items it syncs, so the mailbox side tracks it back); an
    attendee's copy carries no attendees (no invitations go out from it); without
    `send_invitations` neither does the organizer's."""
    if tracked_category.casefold() not in {c.casefold() for c in payload.categories}:
        payload = msgspec.structs.replace(
            payload, categories=[*payload.categories, tracked_category]
        )
    if isinstance(payload, Appointment) and (
        role is not Role.ORGANIZER or not settings.send_invitations
    ):
        return msgspec.structs.replace(payload, attendees=[])
    return payload
