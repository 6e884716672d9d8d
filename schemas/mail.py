"""Change events from mailboxes (mail.changes) and their parsed form (mail.parsed)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec

from schemas.act import ActPayload
from schemas.base import Record
from schemas.mailbox import FolderRole


class ChangeKind(StrEnum):
    """What happened to an item in a mailbox."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


class ItemType(StrEnum):
    """The kind of mailbox item."""

    EMAIL = "email"
    APPOINTMENT = "appointment"
    CONTACT = "contact"
    TASK = "task"


class ManualTrack(msgspec.Struct, frozen=True, kw_only=True):
    """The mark of an item a person or a service asked to track (a `TrackRequest` on
    mail.track): its decision promotes it whatever the mailbox's filter."""

    request_id: str
    requested_by: str = ""
    requested_at: datetime | None = None

    def describe(self) -> str:
        """One line for explanations: "tracked by hand (request t-1 by alice)"."""
        who = f" by {self.requested_by}" if self.requested_by else ""
        return f"tracked by hand (request {self.request_id}{who})"


class MailItemChanged(Record, frozen=True, kw_only=True):
    """One change to one item of a mailbox, as a connector saw it.

    `event_id` is a stable hash of (mailbox, folder, item, change, version), so a
    re-emitted change carries the same id. For created email the raw MIME
    travels in `raw`; when it is too large for the topic it goes to the
    claim-check store instead: `blob_ref` names it there, and `headers` (the raw
    header block) and `preview` (the start of the text) still travel here.
    `updated` events carry only what changed (IMAP flags). `folder_role` is set
    by connectors that know it from the server (IMAP SPECIAL-USE). When the
    connector could list the item but not read it, `unreadable_code` and
    `unreadable_reason` say why (the item is still reported, so it is
    accounted for). `manual_track` marks the created event a connector sends
    for a manual tracking request: the item as a sync emits it, under an event
    id of its own (derived from the request), so it is not taken for a replay.
    For appointments, contacts and tasks (`item_type` other than email) `act`
    carries the item (schemas/act.py) on created and updated events; deleted
    events carry only the ids.
    Keyed by `mailbox_id` on mail.changes.
    """

    event_id: str
    mailbox_id: str
    folder: str
    item_id: str
    change: ChangeKind
    item_type: ItemType = ItemType.EMAIL
    version: str = ""
    observed_at: datetime
    server_time: datetime | None = None
    size: int = 0
    flags: list[str] = msgspec.field(default_factory=list)
    folder_role: FolderRole | None = None
    raw: bytes | None = None
    blob_ref: str | None = None
    headers: bytes | None = None
    preview: str | None = None
    unreadable_code: str | None = None
    unreadable_reason: str | None = None
    manual_track: ManualTrack | None = None
    act: ActPayload | None = None  # an appointment, contact or task (schemas/act.py)

    @property
    def item_key(self) -> str:
        """The identity of the item across events: `mailbox|folder|item`."""
        return item_key(self.mailbox_id, self.folder, self.item_id)


def item_key(mailbox_id: str, folder: str, item_id: str) -> str:
    """The identity of one item in one folder of one mailbox."""
    return f"{mailbox_id}|{folder}|{item_id}"


class EmailAddress(msgspec.Struct, frozen=True):
    """A normalized address (lower-cased) and the display name that came with it."""

    address: str
    name: str = ""


class AttachmentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An attachment's metadata; its bytes stay in the message."""

    filename: str
    content_type: str
    size: int


class AutoReplyKind(StrEnum):
    """Why a message looks machine-generated."""

    NONE = "none"
    AUTO_REPLY = "auto-reply"
    BOUNCE = "bounce"


class ParsedEmail(Record, frozen=True, kw_only=True):
    """An email with normalized headers and addresses, ready for promotion decisions.

    `message_id` is normalized (no angle brackets, domain lower-cased) or, when
    the message has none, a synthetic id derived from its content. `thread_key`
    groups a conversation onto one partition of mail.parsed: the first
    References id, else In-Reply-To, else the message's own id. `manual_track`
    comes from the change event: the item was asked for by hand, and its
    decision bypasses the mailbox's filter.
    """

    event_id: str
    mailbox_id: str
    folder: str
    folder_role: FolderRole
    item_id: str
    observed_at: datetime
    message_id: str
    message_id_synthetic: bool = False
    thread_key: str
    subject: str = ""
    sender: EmailAddress | None = None
    to: list[EmailAddress] = msgspec.field(default_factory=list)
    cc: list[EmailAddress] = msgspec.field(default_factory=list)
    bcc: list[EmailAddress] = msgspec.field(default_factory=list)
    sent_at: datetime | None = None
    in_reply_to: str | None = None
    references: list[str] = msgspec.field(default_factory=list)
    thread_index: str | None = None
    bounced_message_id: str | None = None  # a bounce: the Message-ID it reports on
    bounce_detail: str = ""  # a bounce: "5.1.1 bob@x.example (failed: ...)"
    auto_reply: AutoReplyKind = AutoReplyKind.NONE
    body_text: str = ""
    body_truncated: bool = False
    has_html: bool = False
    attachments: list[AttachmentInfo] = msgspec.field(default_factory=list)
    size: int = 0
    defects: list[str] = msgspec.field(default_factory=list)
    manual_track: ManualTrack | None = None

    @property
    def item_key(self) -> str:
        """The identity of the item across events."""
        return item_key(self.mailbox_id, self.folder, self.item_id)

    def recipients(self) -> list[EmailAddress]:
        """To, Cc and Bcc in that order, each address once."""
        seen: set[str] = set()
        out: list[EmailAddress] = []
        for addr in [*self.to, *self.cc, *self.bcc]:
            if addr.address not in seen:
                seen.add(addr.address)
                out.append(addr)
        return out
