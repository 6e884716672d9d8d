"""In-memory indexes the decisions read: CRM records by email address, mailboxes by id,
and tracked activities by Message-ID, tracking token, conversation index and (when
smart matching is on) subject and address hashes.

Each is fed by a compacted topic (crm.records, mailbox.config, crm.activities)
and knows nothing about Kafka: `apply` takes a key and a decoded value or None
(a tombstone).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from processors.smart_match import SmartIndex, SmartKey, smart_key
from schemas.base import RecordRef, RecordType
from schemas.config import SmartMatchingConfig
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
        self._by_address: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def apply(self, mailbox_id: str, config: MailboxConfig | None) -> None:
        """Insert, replace or (config None) remove one mailbox."""
        old = self._by_id.pop(mailbox_id, None)
        if old is not None:
            holders = self._by_address.get(old.email_address.lower(), set())
            holders.discard(mailbox_id)
            if not holders:
                self._by_address.pop(old.email_address.lower(), None)
        if config is not None:
            self._by_id[mailbox_id] = config
            self._by_address.setdefault(config.email_address.lower(), set()).add(mailbox_id)

    def get(self, mailbox_id: str) -> MailboxConfig | None:
        """The configuration of `mailbox_id`, if known."""
        return self._by_id.get(mailbox_id)

    def by_address(self, address: str) -> MailboxConfig | None:
        """The mailbox (not a forward mailbox) with this address; the smallest id wins."""
        ids = sorted(self._by_address.get(address.strip().lower(), ()))
        found = (self._by_id[i] for i in ids if not self._by_id[i].forward_mailbox)
        return next(found, None)


@dataclass(frozen=True)
class TrackedRef:
    """What correlation needs to know of a tracked email activity."""

    activity_id: str
    message_id: str
    conversation_id: str
    regarding: RecordRef | None = None
    tracking_token: str | None = None
    conversation_index: str | None = None


class ActivityIndex:
    """Tracked email activities (from crm.activities) by Message-ID, tracking token and
    conversation index, and by smart-matching key when `smart` is given.

    Several activities may share a Message-ID (internal email tracked twice), a
    token or an index; a lookup answers the one with the smallest activity id,
    and removing one leaves the others findable.
    """

    def __init__(self, smart: SmartMatchingConfig | None = None) -> None:
        self._by_activity: dict[str, TrackedRef] = {}
        self._by_message_id: dict[str, dict[str, TrackedRef]] = {}
        self._by_token: dict[str, dict[str, TrackedRef]] = {}
        self._by_conversation_index: dict[str, dict[str, TrackedRef]] = {}
        self._smart = SmartIndex(smart) if smart is not None else None

    def __len__(self) -> int:
        return len(self._by_activity)

    def apply(self, activity_id: str, activity: Activity | None) -> None:
        """Index, re-index or (activity None) forget one activity."""
        old = self._by_activity.pop(activity_id, None)
        if old is not None:
            _unindex(self._by_message_id, old.message_id, activity_id)
            if old.tracking_token:
                _unindex(self._by_token, old.tracking_token, activity_id)
            if old.conversation_index:
                _unindex(self._by_conversation_index, old.conversation_index, activity_id)
        if self._smart is not None:
            self._smart.remove(activity_id)
        if activity is None:
            return
        ref = TrackedRef(
            activity_id=activity.activity_id,
            message_id=activity.message_id,
            conversation_id=activity.conversation_id,
            regarding=activity.regarding,
            tracking_token=activity.tracking_token.upper() if activity.tracking_token else None,
            conversation_index=activity.conversation_index,
        )
        self._by_activity[activity_id] = ref
        self._by_message_id.setdefault(ref.message_id, {})[activity_id] = ref
        if ref.tracking_token:
            self._by_token.setdefault(ref.tracking_token, {})[activity_id] = ref
        if ref.conversation_index:
            self._by_conversation_index.setdefault(ref.conversation_index, {})[activity_id] = ref
        if self._smart is not None and activity.sent_at is not None:
            addresses = [party.address for party in activity.parties]
            key = smart_key(activity.subject, addresses, self._smart.config)
            self._smart.add(activity_id, key, activity.sent_at)

    def by_message_id(self, message_id: str) -> TrackedRef | None:
        """The activity of a normalized Message-ID, if tracked."""
        return _first(self._by_message_id.get(message_id))

    def by_token(self, token: str) -> TrackedRef | None:
        """The activity sent with tracking token `token` (normalized, upper-case prefix)."""
        return _first(self._by_token.get(token.upper()))

    def by_conversation_index(self, key: str) -> TrackedRef | None:
        """The activity whose message has this conversation index (hex key)."""
        return _first(self._by_conversation_index.get(key))

    def by_smart_key(self, key: SmartKey, sent_at: datetime | None) -> TrackedRef | None:
        """The tracked email smart matching links `key` to (None when it is off)."""
        if self._smart is None:
            return None
        found = self._smart.best_match(key, sent_at)
        return self._by_activity.get(found) if found is not None else None


def _unindex(index: dict[str, dict[str, TrackedRef]], key: str, activity_id: str) -> None:
    holders = index.get(key)
    if holders is not None:
        holders.pop(activity_id, None)
        if not holders:
            del index[key]


def _first(holders: dict[str, TrackedRef] | None) -> TrackedRef | None:
    return holders[min(holders)] if holders else None
