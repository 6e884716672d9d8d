"""The indexes the decisions read: CRM records by email address and mailboxes by id
(in memory: they grow with the CRM, not with mail), and tracked activities by
Message-ID, tracking token, conversation index and (when smart matching is on)
subject and address hashes (on disk: they grow with every email tracked).

Each is fed by a compacted topic (crm.records, mailbox.config, crm.activities)
and knows nothing about Kafka: `apply` takes a key and a decoded value or None
(a tombstone).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from processors.index_store import IndexStore, last_part, make_key
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
        # resolve() answers in order; a decision asks about the same few addresses
        # several times, so the ordered answer is kept until the address changes.
        self._ordered: dict[str, tuple[RecordRef, ...]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def apply(self, record_id: str, record: CrmRecord | None) -> None:
        """Insert, replace or (record None) delete one record."""
        old = self._records.pop(record_id, None)
        if old is not None:
            for address in old.email_addresses:
                key = address.strip().lower()
                self._ordered.pop(key, None)
                refs = self._by_address.get(key)
                if refs is not None:
                    refs.discard(old.ref)
                    if not refs:
                        del self._by_address[key]
        if record is None:
            return
        self._records[record_id] = record
        for address in record.email_addresses:
            key = address.strip().lower()
            self._ordered.pop(key, None)
            self._by_address.setdefault(key, set()).add(record.ref)

    def resolve(self, address: str) -> list[RecordRef]:
        """Every record with `address`, ordered user, queue, contact, account, lead, others."""
        key = address.lower()
        ordered = self._ordered.get(key)
        if ordered is None:
            refs = self._by_address.get(key)
            if not refs:
                return []
            ordered = self._ordered[key] = tuple(sorted(refs, key=_rank))
        return list(ordered)

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


class TrackedRef(msgspec.Struct, frozen=True):
    """What correlation needs to know of a tracked email activity."""

    activity_id: str
    message_id: str
    conversation_id: str
    regarding: RecordRef | None = None
    tracking_token: str | None = None
    conversation_index: str | None = None


class _StoredRef(msgspec.Struct, array_like=True, frozen=True):
    activity_id: str
    message_id: str
    conversation_id: str
    regarding: RecordRef | None
    tracking_token: str | None
    conversation_index: str | None

    def ref(self) -> TrackedRef:
        return TrackedRef(
            activity_id=self.activity_id,
            message_id=self.message_id,
            conversation_id=self.conversation_id,
            regarding=self.regarding,
            tracking_token=self.tracking_token,
            conversation_index=self.conversation_index,
        )


_REF = msgspec.msgpack.Decoder(_StoredRef)
_ENCODE = msgspec.msgpack.Encoder().encode
_COUNT = make_key("activity", "count")


class ActivityIndex:
    """Tracked email activities (from crm.activities) by Message-ID, tracking token and
    conversation index, and by smart-matching key when `smart` is given.

    It lives in an `IndexStore` on disk (a temporary one when none is given), so
    memory stays bounded however much history it holds, and a restarted worker
    finds it as it left it. Store keys: ("activity", "a", id) → the reference;
    ("activity", "m" | "t" | "c", Message-ID | token | index, id) → b"".

    Several activities may share a Message-ID (internal email tracked twice), a
    token or an index; a lookup answers the one with the smallest activity id,
    and removing one leaves the others findable.
    """

    def __init__(
        self, smart: SmartMatchingConfig | None = None, store: IndexStore | None = None
    ) -> None:
        self._owns_store = store is None
        self.store = store if store is not None else IndexStore()
        self._smart = SmartIndex(smart, self.store) if smart is not None else None
        self._count = int(self.store.get(_COUNT) or 0)  # this index is the store's only writer

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        """Close the store when it is this index's own."""
        if self._owns_store:
            self.store.close()

    def apply(self, activity_id: str, activity: Activity | None) -> None:
        """Index, re-index or (activity None) forget one activity (idempotent; a new
        version that changes nothing indexed here writes nothing)."""
        if self._smart is not None:
            _index_smart(self._smart, activity_id, activity)
        old = self._stored(activity_id)
        stored = _stored_ref(activity) if activity is not None else None
        if stored == old:
            return
        count = self._count
        deletes = []
        if old is not None:
            count -= 1
            deletes.append(make_key("activity", "a", activity_id))
            deletes.extend(make_key("activity", *lookup, activity_id) for lookup in _lookups(old))
        puts: dict[bytes, bytes] = {}
        if stored is not None:
            count += 1
            puts[make_key("activity", "a", activity_id)] = _ENCODE(stored)
            for lookup in _lookups(stored):
                puts[make_key("activity", *lookup, activity_id)] = b""
        puts[_COUNT] = str(count).encode()
        self.store.write(puts, deletes)
        self._count = count

    def by_message_id(self, message_id: str) -> TrackedRef | None:
        """The activity of a normalized Message-ID, if tracked."""
        return self._first("m", message_id)

    def by_token(self, token: str) -> TrackedRef | None:
        """The activity sent with tracking token `token` (normalized, upper-case prefix)."""
        return self._first("t", token.upper())

    def by_conversation_index(self, key: str) -> TrackedRef | None:
        """The activity whose message has this conversation index (hex key)."""
        return self._first("c", key)

    def by_smart_key(self, key: SmartKey, sent_at: datetime | None) -> TrackedRef | None:
        """The tracked email smart matching links `key` to (None when it is off)."""
        if self._smart is None:
            return None
        found = self._smart.best_match(key, sent_at)
        stored = self._stored(found) if found is not None else None
        return stored.ref() if stored is not None else None

    def _stored(self, activity_id: str) -> _StoredRef | None:
        raw = self.store.get(make_key("activity", "a", activity_id))
        return _REF.decode(raw) if raw is not None else None

    def _first(self, kind: str, value: str) -> TrackedRef | None:
        found = self.store.first(make_key("activity", kind, value))
        if found is None:
            return None
        stored = self._stored(last_part(found[0]))
        return stored.ref() if stored is not None else None


def _stored_ref(activity: Activity) -> _StoredRef:
    """What the index keeps of an activity (its token upper-cased, as looked up)."""
    return _StoredRef(
        activity_id=activity.activity_id,
        message_id=activity.message_id,
        conversation_id=activity.conversation_id,
        regarding=activity.regarding,
        tracking_token=activity.tracking_token.upper() if activity.tracking_token else None,
        conversation_index=activity.conversation_index,
    )


def _index_smart(smart: SmartIndex, activity_id: str, activity: Activity | None) -> None:
    """Re-index an activity for smart matching (`add` replaces), or forget it when it
    is gone or has no date to window it by."""
    if activity is None or activity.sent_at is None:
        smart.remove(activity_id)
        return
    addresses = [party.address for party in activity.parties]
    smart.add(activity_id, smart_key(activity.subject, addresses, smart.config), activity.sent_at)


def _lookups(stored: _StoredRef) -> list[tuple[str, str]]:
    """The (kind, value) pairs an activity is found by."""
    found = [("m", stored.message_id)]
    if stored.tracking_token:
        found.append(("t", stored.tracking_token))
    if stored.conversation_index:
        found.append(("c", stored.conversation_index))
    return found
