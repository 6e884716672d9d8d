"""`tidings mailbox reconcile ID`: compare what a mail server holds (UIDs / UIDLs /
file names since the mailbox's start date) with what the connectors emitted to
mail.changes, and report every gap as a sync.errors event.

An item the server holds but mail.changes never received is a gap (`missing`);
an item emitted as present that the server no longer holds is `stale` (its
deleted event is still due, or was lost). Run it when the mailbox is caught up
(`tidings mailbox list`): mail that arrived after the last pass shows as
missing until the next one. mail.changes is a delete-policy topic: keep its
retention longer than the mailbox's history, or older items show as missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.source import ServerListing
from connectors.sources import SourceKit, open_source
from pipeline.idle import drain, read_compacted, topic_partitions
from schemas.base import utc_now
from schemas.blobs import open_blob_store
from schemas.codec import decode_key, encode_key
from schemas.config import TidingsConfig
from schemas.errors import DecodeError, ErrorScope, Severity, SyncError
from schemas.ids import error_id
from schemas.mail import ChangeKind
from schemas.mailbox import MailboxConfig
from schemas.topics import MAIL_CHANGES, MAILBOX_CONFIG, codec

MAX_ITEM_ERRORS = 1000
"""Gap events per run; beyond that one summary event says how many more there are."""


@dataclass
class FolderReport:
    """One folder's comparison."""

    folder: str
    on_server: int = 0
    emitted: int = 0
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


@dataclass
class ReconcileReport:
    """Every folder of one mailbox; `clean` when nothing is missing or stale."""

    mailbox_id: str
    folders: list[FolderReport] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when the server and mail.changes agree."""
        return not any(f.missing or f.stale for f in self.folders)


def compare(
    mailbox_id: str, server: ServerListing, emitted: dict[str, set[str]]
) -> ReconcileReport:
    """Pure: the gaps between the server's items and the items emitted as present."""
    report = ReconcileReport(mailbox_id)
    for folder in sorted(set(server.items) | set(emitted)):
        held = server.items.get(folder, set())
        sent = emitted.get(folder, set())
        report.folders.append(
            FolderReport(
                folder=folder,
                on_server=len(held),
                emitted=len(sent),
                missing=sorted(held - sent),
                stale=sorted(sent - held),
            )
        )
    return report


def gap_errors(report: ReconcileReport) -> list[SyncError]:
    """One item-scoped SyncError per gap (bounded), plus a summary when cut short."""
    now = utc_now()
    errors: list[SyncError] = []
    total = 0
    for folder in report.folders:
        for kind, items, text in (
            ("ReconcileMissing", folder.missing, "is on the server but was never emitted"),
            ("ReconcileStale", folder.stale, "was emitted but the server no longer has it"),
        ):
            for item in items:
                total += 1
                if len(errors) < MAX_ITEM_ERRORS:
                    errors.append(
                        SyncError(
                            error_id=error_id(f"{report.mailbox_id}|{folder.folder}|{item}", kind),
                            mailbox_id=report.mailbox_id,
                            scope=ErrorScope.ITEM,
                            severity=Severity.PERMANENT,
                            code=kind,
                            message=f"{folder.folder}/{item} {text} (tidings mailbox reconcile)",
                            component="reconcile",
                            folder=folder.folder,
                            item_id=item,
                            occurred_at=now,
                        )
                    )
    if total > len(errors):
        errors.append(
            SyncError(
                error_id=error_id(f"{report.mailbox_id}@{now.isoformat()}", "ReconcileTruncated"),
                mailbox_id=report.mailbox_id,
                scope=ErrorScope.MAILBOX,
                severity=Severity.PERMANENT,
                code="ReconcileTruncated",
                message=f"{total - len(errors)} more gaps than reported individually",
                component="reconcile",
                occurred_at=now,
            )
        )
    return errors


async def emitted_items(
    config: TidingsConfig, mailbox_id: str, timeout_s: float = 600.0
) -> dict[str, set[str]]:
    """Per folder, the items whose latest event on mail.changes says they exist."""
    topic = MAIL_CHANGES.name(config.topic_prefix)
    partitions = await topic_partitions(config, topic)
    key = encode_key(mailbox_id)
    chosen = DefaultPartitioner()(key, [tp.partition for tp in partitions], [])
    tp = TopicPartition(topic, chosen)
    consumer = AIOKafkaConsumer(**config.kafka.consumer_options())
    await consumer.start()
    latest: dict[tuple[str, str], ChangeKind] = {}
    value_codec = codec(MAIL_CHANGES)
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        async for _, message in drain(consumer, [tp], timeout_s):
            if decode_key(message.key) != mailbox_id or message.value is None:
                continue
            try:
                event = value_codec.decode(message.value, topic, tp.partition, message.offset)
            except DecodeError:
                continue
            if event.manual_track is not None:  # sent on request, not by the sync
                continue
            latest[(event.folder, event.item_id)] = event.change
    finally:
        await consumer.stop()
    present: dict[str, set[str]] = {}
    for (folder, item), change in latest.items():
        if change != ChangeKind.DELETED:
            present.setdefault(folder, set()).add(item)
    return present


async def reconcile(config: TidingsConfig, mailbox_id: str) -> ReconcileReport:
    """List the server, scan mail.changes, compare, and publish the gaps."""
    configs = await read_compacted(config, MAILBOX_CONFIG)
    mailbox: MailboxConfig | None = configs.get(mailbox_id)
    if mailbox is None:
        raise LookupError(f"no mailbox {mailbox_id!r} (see `tidings mailbox list`)")
    producer = AIOKafkaProducer(**config.kafka.producer_options(linger_ms=0))
    await producer.start()
    try:
        emitter = Emitter(producer, config.topic_prefix, config.connectors.ack_timeout_s)
        kit = SourceKit(
            emitter=emitter,
            store=CursorStore(config.kafka, config.topic_prefix, producer),
            claim_check=ClaimCheck(
                open_blob_store(config.blob_url(), config.blobs), config.connectors
            ),
            settings=config.connectors,
            profiles=config.server_profiles,
        )
        source = open_source(mailbox, 0, {}, kit)
        try:
            listing = await source.list_server_items()
        finally:
            await source.close()
        report = compare(mailbox_id, listing, await emitted_items(config, mailbox_id))
        for error in gap_errors(report):
            await emitter.emit_error(error, str(mailbox.protocol))
        return report
    finally:
        await producer.stop()
