"""The topic table: every topic tidings reads or writes, its key, value, cleanup policy
and partitions, and the codec that is the only way its values are encoded."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar, cast

import msgspec

from schemas.act import ActRecord
from schemas.act_changes import ActLink, ActParked, CrmActChange
from schemas.codec import Codec
from schemas.crm import Activity, CrmRecord, PromotionDecision
from schemas.errors import SyncError
from schemas.mail import MailItemChanged, ParsedEmail
from schemas.mailbox import Cursor, MailboxConfig, MailboxStatus, ServerProfileConfig
from schemas.outgoing import OutgoingEmail, OutgoingStatus
from schemas.track import TrackRequest

T = TypeVar("T", bound=msgspec.Struct)


class Cleanup(StrEnum):
    """Kafka cleanup.policy."""

    COMPACT = "compact"
    DELETE = "delete"


@dataclass(frozen=True)
class TopicSpec(Generic[T]):
    """One topic: name (without prefix), key, value type and policy.

    `partitions` None means the configured default. `value_type` None means the
    topic carries other topics' bytes (the DLQ).
    """

    suffix: str
    key: str
    value_type: type[T] | None
    cleanup: Cleanup
    writers: str
    readers: str
    description: str
    partitions: int | None = None
    internal: bool = False
    max_message_bytes: int = 8 * 1024 * 1024

    def name(self, prefix: str) -> str:
        """The full topic name under `prefix` (e.g. "tidings.")."""
        return f"{prefix}{self.suffix}"

    def configs(self) -> dict[str, str]:
        """Topic configs to create it with."""
        return {
            "cleanup.policy": str(self.cleanup),
            "max.message.bytes": str(self.max_message_bytes),
        }


MAILBOX_CONFIG = TopicSpec(
    "mailbox.config",
    "mailbox id",
    MailboxConfig,
    Cleanup.COMPACT,
    "CLI / admin",
    "connectors, processors",
    "Mailbox configuration; a tombstone removes the mailbox.",
)
SERVER_PROFILES = TopicSpec(
    "server.profiles",
    "profile name",
    ServerProfileConfig,
    Cleanup.COMPACT,
    "CLI (tidings profile, tidings migrate)",
    "connectors, CLI",
    "Email server profiles mailboxes name; replaces a tidings.toml profile of the same "
    "name; a tombstone removes it. Every connector reads all of it.",
    partitions=1,
)
CRM_RECORDS = TopicSpec(
    "crm.records",
    "record id",
    CrmRecord,
    Cleanup.COMPACT,
    "CRM change feed / importer",
    "processors",
    "Contacts, accounts, leads, users, queues with their email addresses; tombstone = deleted.",
)
CONNECTOR_CURSORS = TopicSpec(
    "connector.cursors",
    "mailbox id|folder (partitioned by mailbox id)",
    Cursor,
    Cleanup.COMPACT,
    "connectors",
    "connectors",
    "Per-folder watermark, written only after Kafka acknowledged the events it covers.",
)
MAIL_CHANGES = TopicSpec(
    "mail.changes",
    "mailbox id",
    MailItemChanged,
    Cleanup.DELETE,
    "connectors",
    "processors",
    "Created / updated / deleted items of every mailbox.",
)
MAIL_TRACK = TopicSpec(
    "mail.track",
    "mailbox id",
    TrackRequest,
    Cleanup.DELETE,
    "CLI (tidings track, tidings mailbox sync), other services",
    "connectors",
    "Manual tracking requests: promote one message of a mailbox whatever its filter; "
    "sync requests: poll a mailbox now. "
    "Partitioned like mailbox.config, so the connector that owns the mailbox reads them.",
)
MAIL_PARSED = TopicSpec(
    "mail.parsed",
    "thread key",
    ParsedEmail,
    Cleanup.DELETE,
    "processors",
    "processors",
    "Parsed email re-keyed by conversation, so a thread and its duplicates meet on one partition.",
    internal=True,
)
PROMOTION_DECISIONS = TopicSpec(
    "promotion.decisions",
    "item key",
    PromotionDecision,
    Cleanup.DELETE,
    "processors",
    "sinks, downstream services",
    "Promoted, skipped or errored, with reason code, correlation method and parties.",
)
CRM_ACTIVITIES = TopicSpec(
    "crm.activities",
    "activity id",
    Activity,
    Cleanup.COMPACT,
    "processors, CRM importer",
    "sinks, processors, data teams",
    "Email activities; the latest version wins.",
)
SYNC_ERRORS = TopicSpec(
    "sync.errors",
    "mailbox id",
    SyncError,
    Cleanup.DELETE,
    "every part",
    "sinks, ops",
    "Every error, with scope, severity, code and a human message.",
)
MAILBOX_STATUS = TopicSpec(
    "mailbox.status",
    "mailbox id",
    MailboxStatus,
    Cleanup.COMPACT,
    "connectors",
    "CLI, sinks, dashboards",
    "State, last sync, counters and next poll of each mailbox.",
)
OUTGOING_MAIL = TopicSpec(
    "outgoing.mail",
    "activity id",
    OutgoingEmail,
    Cleanup.DELETE,
    "CRM",
    "outgoing sender",
    "Email activities waiting to be sent.",
)
OUTGOING_STATUS = TopicSpec(
    "outgoing.status",
    "activity id (partition of its outgoing.mail record)",
    OutgoingStatus,
    Cleanup.COMPACT,
    "outgoing sender (connectors)",
    "outgoing sender, sinks, CRM",
    "Send status of each outgoing email: pending, sending, sent or failed, with its "
    "Message-ID, tracking token, attempt and last error. Same partition count as "
    "outgoing.mail; the sender rebuilds its view from it at start.",
)
CRM_ACT = TopicSpec(
    "crm.act",
    "record id",
    ActRecord,
    Cleanup.COMPACT,
    "processors (Exchange → CRM)",
    "sinks, CRM → Exchange writer, data teams",
    "Appointments, contacts and tasks tracked in mailboxes (docs/act.md): one record per "
    "meeting (id from its iCalendar UID), per contact and per task; the latest change "
    "wins; a tombstone deletes the record.",
)
DLQ: TopicSpec[Any] = TopicSpec(
    "dlq",
    "original key",
    None,
    Cleanup.DELETE,
    "any consumer",
    "operators (tidings dlq)",
    "Original bytes of undecodable messages, with headers naming topic, partition, offset, error.",
)

CRM_ACT_CHANGES = TopicSpec(
    "crm.act.changes",
    "record id",
    CrmActChange,
    Cleanup.COMPACT,
    "CRM (change feed)",
    "CRM → Exchange writer (connectors)",
    "The CRM's versions of appointments, contacts and tasks to write into mailboxes "
    "(docs/act.md); the latest wins; `deleted` marks a deleted record.",
)
ACT_LINKS = TopicSpec(
    "act.links",
    "record id|mailbox id (partition of its crm.act.changes record)",
    ActLink,
    Cleanup.COMPACT,
    "CRM → Exchange writer (connectors)",
    "CRM → Exchange writer, Exchange → CRM path",
    "Links between CRM records and mailbox items, written after the server confirmed: "
    "item id, ChangeKey, both change times, per-field hashes as last synced; a tombstone "
    "drops a link. Same partition count as crm.act.changes.",
)
ACT_RETRY = TopicSpec(
    "act.retry",
    "record id|mailbox id (partition of its crm.act.changes record)",
    ActParked,
    Cleanup.COMPACT,
    "CRM → Exchange writer (connectors)",
    "CRM → Exchange writer",
    "CRM changes the writer parked after transient failures, retried later with a growing "
    "delay; a tombstone ends the entry (written, superseded, failed or given up). Same "
    "partition count as crm.act.changes.",
)

TOPICS: tuple[TopicSpec[Any], ...] = (
    MAILBOX_CONFIG,
    SERVER_PROFILES,
    CRM_RECORDS,
    CONNECTOR_CURSORS,
    MAIL_CHANGES,
    MAIL_TRACK,
    MAIL_PARSED,
    PROMOTION_DECISIONS,
    CRM_ACTIVITIES,
    SYNC_ERRORS,
    MAILBOX_STATUS,
    OUTGOING_MAIL,
    OUTGOING_STATUS,
    CRM_ACT,
    CRM_ACT_CHANGES,
    ACT_LINKS,
    ACT_RETRY,
    DLQ,
)

_CODECS: dict[str, Codec[Any]] = {
    spec.suffix: Codec(spec.value_type) for spec in TOPICS if spec.value_type is not None
}


def codec(spec: TopicSpec[T]) -> Codec[T]:
    """The codec of a topic's values; raises KeyError for the DLQ (it has none)."""
    return cast(Codec[T], _CODECS[spec.suffix])


def spec_by_name(name: str, prefix: str) -> TopicSpec[Any] | None:
    """The spec of a full topic name under `prefix`, or None when it is not ours."""
    for spec in TOPICS:
        if spec.name(prefix) == name:
            return spec
    return None
