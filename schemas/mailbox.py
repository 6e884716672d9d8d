"""Mailbox configuration, status and connector cursors (topics mailbox.config,
mailbox.status, connector.cursors)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec

from schemas.base import Record, RecordRef


class Protocol(StrEnum):
    """How tidings reaches a mailbox."""

    MAILDIR = "maildir"
    IMAP = "imap"
    POP3 = "pop3"
    EWS = "ews"
    GRAPH = "graph"


class IncomingFilter(StrEnum):
    """Which incoming email of a mailbox becomes a CRM activity (Dynamics' options)."""

    ALL = "all"
    RESPONSES = "responses"  # email in response to tracked email (the default)
    CRM_RECORDS = "crm-records"  # from contacts, accounts and leads
    EMAIL_ENABLED = "email-enabled"  # from any email-enabled record
    NONE = "none"


class FolderRole(StrEnum):
    """What a folder holds, which decides the direction of its email."""

    INBOX = "inbox"
    SENT = "sent"
    OTHER = "other"


class MaildirSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where a Maildir mailbox lives and which of its folders to read.

    `folders` names Maildir++ folders: "INBOX" is the Maildir root, any other
    name N is the sub-directory ".N". `sent_folders` lists which of them hold
    sent mail.
    """

    path: str
    folders: list[str] = msgspec.field(default_factory=lambda: ["INBOX", "Sent"])
    sent_folders: list[str] = msgspec.field(
        default_factory=lambda: ["Sent", "Sent Items", "Sent Messages"]
    )


class MailboxConfig(Record, frozen=True, kw_only=True):
    """One mailbox: its owner (a user or a queue), where it lives and how its mail is filtered.

    Keyed by `mailbox_id` on mailbox.config; a tombstone removes the mailbox.
    """

    mailbox_id: str
    owner: RecordRef
    email_address: str
    protocol: Protocol
    incoming_filter: IncomingFilter = IncomingFilter.RESPONSES
    approved: bool = True
    enabled: bool = True
    server_profile: str | None = None
    maildir: MaildirSettings | None = None
    process_email_from: datetime | None = None
    updated_at: datetime | None = None

    def folder_role(self, folder: str) -> FolderRole:
        """The role of `folder` in this mailbox."""
        if folder.upper() == "INBOX":
            return FolderRole.INBOX
        sent = self.maildir.sent_folders if self.maildir else ["Sent", "Sent Items"]
        if folder.casefold() in {name.casefold() for name in sent}:
            return FolderRole.SENT
        return FolderRole.OTHER


class SyncState(StrEnum):
    """Where a mailbox stands (Dynamics: pending approval → approved → tested → enabled)."""

    PENDING_APPROVAL = "pending-approval"
    APPROVED = "approved"
    TESTED = "tested"
    ENABLED = "enabled"
    DISABLED = "disabled"


class RunStatus(StrEnum):
    """Outcome of the last incoming / outgoing / appointments-contacts-tasks run."""

    NOT_RUN = "not-run"
    SUCCESS = "success"
    FAILURE = "failure"


class MailboxCounters(msgspec.Struct, frozen=True, kw_only=True):
    """Running totals a connector keeps for a mailbox since it first synced it."""

    items_listed: int = 0
    created_events: int = 0
    updated_events: int = 0
    deleted_events: int = 0
    errors: int = 0


class MailboxStatus(Record, frozen=True, kw_only=True):
    """The latest known state of a mailbox, as the connector that owns it sees it.

    `sync_generation` counts completed sync passes; `pending_items` is what the
    last pass saw but has not yet emitted. Keyed by `mailbox_id` on mailbox.status.
    """

    mailbox_id: str
    state: SyncState
    incoming_status: RunStatus = RunStatus.NOT_RUN
    outgoing_status: RunStatus = RunStatus.NOT_RUN
    act_status: RunStatus = RunStatus.NOT_RUN
    last_sync_started_at: datetime | None = None
    last_sync_at: datetime | None = None
    last_success_at: datetime | None = None
    next_poll_at: datetime | None = None
    sync_generation: int = 0
    pending_items: int = 0
    counters: MailboxCounters = msgspec.field(default_factory=MailboxCounters)
    last_error_code: str | None = None
    last_error: str | None = None
    worker: str | None = None
    updated_at: datetime


class MaildirPosition(msgspec.Struct, frozen=True, kw_only=True, tag="maildir"):
    """What a Maildir folder held at the last acknowledged sync.

    `names_z` is the zlib-compressed, newline-joined, sorted list of the unique
    names (the part of a Maildir file name before ':'); `count` is its length.
    """

    names_z: bytes
    count: int


CursorPosition = MaildirPosition


class Cursor(Record, frozen=True, kw_only=True):
    """A protocol-specific watermark for one folder of one mailbox.

    Written to connector.cursors (key `mailbox_id|folder`) only after Kafka
    acknowledged every event the position covers.
    """

    mailbox_id: str
    folder: str
    position: CursorPosition
    updated_at: datetime


def cursor_key(mailbox_id: str, folder: str) -> str:
    """The connector.cursors key of one folder of one mailbox."""
    return f"{mailbox_id}|{folder}"
