"""CRM records (crm.records), promotion decisions (promotion.decisions) and
activities (crm.activities)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec

from schemas.base import Record, RecordRef


class CrmRecord(Record, frozen=True, kw_only=True):
    """A CRM record that can be party to email: user, queue, contact, account, lead, ...

    Keyed by `record_id` on crm.records; a tombstone deletes it. `record_type`
    is one of `RecordType` or any other email-enabled entity name.
    `created_by_tidings` marks records tidings created itself (unknown senders).
    """

    record_id: str
    record_type: str
    name: str
    email_addresses: list[str] = msgspec.field(default_factory=list)
    parent_account_id: str | None = None
    created_by_tidings: bool = False
    updated_at: datetime | None = None

    @property
    def ref(self) -> RecordRef:
        """This record as a reference."""
        return RecordRef(type=self.record_type, id=self.record_id)


class DecisionStatus(StrEnum):
    """What became of an item: an activity, nothing (with a reason), or an error."""

    PROMOTED = "promoted"
    SKIPPED = "skipped"
    ERRORED = "errored"
    REMOVED = "removed"  # the item left the mailbox; its activity, if any, stays


class ReasonCode(StrEnum):
    """Why an item was promoted or skipped.

    The first eight follow Dynamics' CheckIncomingEmail reason codes; the others
    are tidings' own.
    """

    DUPLICATE = "Duplicate"
    NO_CORRELATION_MATCH = "NoCorrelationMatch"
    CORRELATION_MATCH = "CorrelationMatch"
    NO_RECIPIENT_MATCH = "NoRecipientMatch"
    INTERNAL_EMAIL_REJECT = "InternalEmailReject"
    SENDER_MATCH = "SenderMatch"
    ACCEPT_ALL = "AcceptAll"
    INVALID_SENDER = "InvalidSender"
    AUTO_REPLY = "AutoReply"
    BOUNCE = "Bounce"
    MANUAL_TRACK = "ManualTrack"
    NO_SENDER_MATCH = "NoSenderMatch"
    RECIPIENT_MATCH = "RecipientMatch"
    FILTER_NONE = "FilterNone"
    MAILBOX_UNKNOWN = "MailboxUnknown"
    MAILBOX_NOT_APPROVED = "MailboxNotApproved"
    MALFORMED = "Malformed"
    UNREADABLE = "Unreadable"
    ITEM_DELETED = "ItemDeleted"
    UNSUPPORTED_ITEM = "UnsupportedItem"
    FORWARDED = "Forwarded"
    FORWARD_UNATTRIBUTED = "ForwardUnattributed"
    # appointments, contacts and tasks (processors/act.py)
    TRACKED_CATEGORY = "TrackedCategory"  # carries the mailbox's tracked category
    NOT_TRACKED = "NotTracked"  # neither the category nor a manual track
    ACT_DISABLED = "ActDisabled"  # the mailbox does not sync appointments/contacts/tasks
    NOT_ORGANIZER = "NotOrganizer"  # an attendee's delete: the meeting stays in the CRM


class CorrelationMethod(StrEnum):
    """How an activity was linked to an earlier one (Dynamics' correlation methods)."""

    NONE = "None"
    SKIPPED = "Skipped"
    XHEADER = "XHeader"
    IN_REPLY_TO = "InReplyTo"
    TRACKING_TOKEN = "TrackingToken"
    CONVERSATION_INDEX = "ConversationIndex"
    SMART_MATCHING = "SmartMatching"
    CUSTOM = "Custom"


class Direction(StrEnum):
    """Whether the mailbox owner received or sent the email."""

    INCOMING = "incoming"
    OUTGOING = "outgoing"


class PartyRole(StrEnum):
    """A party's place on an email activity."""

    FROM = "from"
    TO = "to"
    CC = "cc"
    BCC = "bcc"
    # appointments (crm.act): the organizer and the attendees by their role
    ORGANIZER = "organizer"
    REQUIRED = "required"
    OPTIONAL = "optional"
    RESOURCE = "resource"


class ActivityParty(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One address on an activity and the CRM records it resolved to (may be several)."""

    role: PartyRole
    address: str
    name: str = ""
    records: list[RecordRef] = msgspec.field(default_factory=list)


REMOVED_DECISION_VERSION = 1 << 30
"""The version of a `removed` decision: above any version a decision for a present item
reaches, so the removal supersedes them all."""


MANUAL_DECISION_VERSION = 1 << 29
"""The lowest version of a decision for an item tracked by hand (reason `ManualTrack`).

Automatic decisions count 1, 2, 3, ... as an item is decided again and never come
near it, so a manual track supersedes every automatic decision of the item in the
sinks (highest version wins) even when the processors no longer hold those earlier
decisions. Later decisions of a manually tracked item count on from here; a
`removed` decision (REMOVED_DECISION_VERSION) still supersedes them all."""


class PromotionDecision(Record, frozen=True, kw_only=True):
    """The outcome for one item of one mailbox, with its reason in words.

    Keyed by `item_key` on promotion.decisions; a later decision for the same
    item (higher `version`) supersedes an earlier one.
    """

    item_key: str
    mailbox_id: str
    folder: str
    item_id: str
    event_id: str
    message_id: str | None = None
    status: DecisionStatus
    reason: ReasonCode
    explanation: str
    activity_id: str | None = None
    correlation_method: CorrelationMethod = CorrelationMethod.NONE
    correlated_activity_id: str | None = None
    direction: Direction | None = None
    sender: ActivityParty | None = None
    version: int = 1
    decided_at: datetime


class Activity(Record, frozen=True, kw_only=True):
    """A CRM email activity. Keyed by `activity_id` on crm.activities (latest version wins).

    The id derives from the normalized Message-ID, so the same message seen in
    several mailboxes is one activity listing every receiving mailbox.
    `queues` are the queues whose mailboxes received it (one queue item each);
    `accepting_queue` is the one whose mailbox accepted it first.
    """

    activity_id: str
    version: int
    activity_type: str = "email"
    message_id: str
    subject: str = ""
    description: str = ""
    description_truncated: bool = False
    direction: Direction
    parties: list[ActivityParty] = msgspec.field(default_factory=list)
    sent_at: datetime | None = None
    owner: RecordRef | None = None
    regarding: RecordRef | None = None
    parent_activity_id: str | None = None
    conversation_id: str
    correlation_method: CorrelationMethod = CorrelationMethod.NONE
    correlated_activity_id: str | None = None
    tracking_token: str | None = None
    in_reply_to: str | None = None
    conversation_index: str | None = None  # the Thread-Index, as hex
    receiving_mailboxes: list[str] = msgspec.field(default_factory=list)
    queues: list[RecordRef] = msgspec.field(default_factory=list)
    accepting_queue: RecordRef | None = None
    source: str = "mailbox"  # "mailbox" when tidings promoted it, "crm" when imported
    created_at: datetime
    updated_at: datetime

    def party(self, role: PartyRole) -> list[ActivityParty]:
        """The parties with `role`, in order."""
        return [p for p in self.parties if p.role == role]
