"""In-memory indexes the decisions read: CRM records by email address, mailboxes by id,
and tracked activities by Message-ID and tracking token.

Each is fed by a compacted topic (crm.records, mailbox.config, crm.activities)
and knows nothing about Kafka: `apply` takes a key and a decoded value or None
(a tombstone).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.base import RecordRef, RecordType
from schemas.crm import Activity, CrmRecord
from schemas.mailbox import MailboxConfig

# Sender resolution order (Dynamics): user, contact, account, lead, then others.
# Queues are org addresses like users, so they rank with them.
_TYPE_RANK = {
    RecordType.USER.value: 0,
    RecordType.QUEUE.value: 1,
    RecordType.CONTACT.value: 2,
    RecordType.ACCOUNT.value: 3,
    RecordType.LEAD.value: 4,
}
ORG_TYPES = frozenset({RecordType.USER.value, RecordType.QUEUE.value})
CUSTOMER_TYPES = frozenset(
    {RecordType.CONTACT.value, RecordType.ACCOUNT.value, RecordType.LEAD.value}
)


def _rank(ref: RecordRef) -> tuple[int, str, str]:
    return (_TYPE_RANK.get(ref.type, len(_TYPE_RANK)), ref.type, ref.id)


class Directory:
    """CRM records that own email addresses, looked up by address (case-insensitive)."""

    def __init__(self) -> None:
        self._records: dict[str, CrmRecord] = {}
        self._by_address: dict[str, set[RecordRef]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def apply(self, record_id: str, record: CrmRecord | None) -> None:
        """Insert, replace or (record None) delete one record."""
        old = self._records.pop(record_id, None)
        if old is not None:
            for address in old.email_addresses:
                refs = self._by_address.get(address.strip().lower())
                if refs is not None:
                    refs.discard(old.ref)
                    if not refs:
                        del self._by_address[address.strip().lower()]
        if record is None:
            return
        self._records[record_id] = record
        for address in record.email_addresses:
            self._by_address.setdefault(address.strip().lower(), set()).add(record.ref)

    def resolve(self, address: str) -> list[RecordRef]:
        """Every record with `address`, ordered user, queue, contact, account, lead, others."""
        return sorted(self._by_address.get(address.lower(), ()), key=_rank)

    def record(self, record_id: str) -> CrmRecord | None:
        """The record with `record_id`, if known."""
        return self._records.get(record_id)

    def addresses_of(self, ref: RecordRef) -> list[str]:
        """The email addresses of a record (lower-cased), empty when unknown."""
        record = self._records.get(ref.id)
        if record is None or record.record_type != ref.type:
            return []
        return [a.strip().lower() for a in record.email_addresses]


class Mailboxes:
    """Mailbox configurations by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, MailboxConfig] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def apply(self, mailbox_id: str, config: MailboxConfig | None) -> None:
        """Insert, replace or (config None) remove one mailbox."""
        if config is None:
            self._by_id.pop(mailbox_id, None)
        else:
            self._by_id[mailbox_id] = config

    def get(self, mailbox_id: str) -> MailboxConfig | None:
        """The configuration of `mailbox_id`, if known."""
        return self._by_id.get(mailbox_id)


@dataclass(frozen=True)
class TrackedRef:
    """What correlation needs to know of a tracked email activity."""

    activity_id: str
    message_id: str
    conversation_id: str
    regarding: RecordRef | None = None
    tracking_token: str | None = None


class ActivityIndex:
    """Tracked email activities (from crm.activities) by Message-ID and by tracking token.

    Several activities may share a Message-ID (internal email tracked twice) or a
    token; a lookup answers the one with the smallest activity id, and removing
    one leaves the others findable.
    """

    def __init__(self) -> None:
        self._by_activity: dict[str, TrackedRef] = {}
        self._by_message_id: dict[str, dict[str, TrackedRef]] = {}
        self._by_token: dict[str, dict[str, TrackedRef]] = {}

    def __len__(self) -> int:
        return len(self._by_activity)

    def apply(self, activity_id: str, activity: Activity | None) -> None:
        """Index, re-index or (activity None) forget one activity."""
        old = self._by_activity.pop(activity_id, None)
        if old is not None:
            _unindex(self._by_message_id, old.message_id, activity_id)
            if old.tracking_token:
                _unindex(self._by_token, old.tracking_token, activity_id)
        if activity is None:
            return
        ref = TrackedRef(
            activity_id=activity.activity_id,
            message_id=activity.message_id,
            conversation_id=activity.conversation_id,
            regarding=activity.regarding,
            tracking_token=activity.tracking_token.upper() if activity.tracking_token else None,
        )
        self._by_activity[activity_id] = ref
        self._by_message_id.setdefault(ref.message_id, {})[activity_id] = ref
        if ref.tracking_token:
            self._by_token.setdefault(ref.tracking_token, {})[activity_id] = ref

    def by_message_id(self, message_id: str) -> TrackedRef | None:
        """The activity of a normalized Message-ID, if tracked."""
        return _first(self._by_message_id.get(message_id))

    def by_token(self, token: str) -> TrackedRef | None:
        """The activity sent with tracking token `token` (normalized, upper-case prefix)."""
        return _first(self._by_token.get(token.upper()))


def _unindex(index: dict[str, dict[str, TrackedRef]], key: str, activity_id: str) -> None:
    holders = index.get(key)
    if holders is not None:
        holders.pop(activity_id, None)
        if not holders:
            del index[key]


def _first(holders: dict[str, TrackedRef] | None) -> TrackedRef | None:
    return holders[min(holders)] if holders else None
