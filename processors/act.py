"""Exchange → CRM for appointments, contacts and tasks: a change event becomes a CRM
record on crm.act (or a tombstone, or nothing) and always a decision.

Pure: a `MailItemChanged` whose `item_type` is not email, the mailbox's configuration,
what this stage remembered of the item (`ActMemory`, from a table keyed by item key on
the mailbox's partition of mail.changes) and a party resolver in; an `ActOutput` out.

Tracking rule (Dynamics server-side sync): an item is tracked while it carries the
mailbox's tracked category ("Tracked to CRM" by default, `ActSettings.tracked_category`,
compared case-insensitively), and for good once a manual track (`tidings track`) marked
it. A tracked item's created and updated events write its record; an item that loses
its category is no longer synced, but its CRM record stays (Dynamics keeps it; remove
it in the CRM). Every event gets a `PromotionDecision`: promoted (TrackedCategory or
ManualTrack), skipped (NotTracked, ActDisabled, MailboxUnknown), removed (ItemDeleted,
NotOrganizer) or errored (Unreadable).

Records: an appointment's id comes from its iCalendar UID, so the organizer's copy and
every attendee's copy are one record (schemas/act.py explains); a recurring series is
one record holding its recurrence and exceptions. The organizer resolves like an
email's sender (the first record in Dynamics' order: user, contact, account, lead,
others), attendees like recipients (every match, none when ambiguous and the setting
says so). `version` is the change time in milliseconds, so whichever copy changed last
wins in the sinks.

Owner (`record_owner`), stable whichever copy changed last: the CRM's owner when the
item is linked to a CRM record (an explicit CRM-side owner is kept); else a contact's
or task's mailbox owner; else, for a meeting, the owner of the organizer's mailbox
when this copy is the organizer's, else the owner the record already has (the mailbox
that tracked it first, or the organizer's since it tracked it), else this mailbox's
owner. "Already has" comes from `OwnerLookup`, a view of crm.act (`ActOwnerIndex`).

Deletes: a contact or a task belongs to the mailbox it came from, so its delete is a
tombstone. A meeting is shared: the organizer's delete cancels the record (a new
version with `is_cancelled`), an attendee's delete changes nothing (NotOrganizer).
Only items this stage tracked are affected. A LINKED item's delete (one the CRM →
Exchange writer linked on act.links, tracked or not) follows the two-way delete rules
instead (schemas/act_deletes.py, `on_linked_delete`): the organizer's delete of a
meeting, or a task's delete, deletes the CRM record (a tombstone on crm.act); an
attendee's or a contact's delete leaves the record alone; either way the link is
marked deleted on act.links (at the partition the link names), so the writer stops
writing into the item and the link's CRM record stops taking it back.

Identity with the CRM → Exchange direction: an item the CRM → Exchange writer
created (or merged) is linked on act.links to the CRM record it came from, and
that record's id wins over the one computed from the item (else the meeting the
CRM created would come back as a second record). The lookup (`LinkLookup`, built
by the processors from a view of act.links: `ActLinkIndex`) is an argument, so the
stage stays pure: by the mailbox and item id first, then, for an appointment, by
its iCalendar UID (an attendee's copy of a linked meeting). A link marked deleted
(the record was deleted in the CRM) stops the item's sync: NotTracked, nothing
written. An item tracked before its link was known moves to the linked id, and
the record it had is tombstoned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from schemas.act import (
    ActPayload,
    ActRecord,
    ActSource,
    ActType,
    Appointment,
    AttendeeRole,
    act_type,
    normalize_uid,
    record_id_for,
    version_of,
)
from schemas.act_changes import ActLink
from schemas.act_deletes import DeleteAction, Role, on_exchange_delete
from schemas.base import RecordRef
from schemas.crm import (
    MANUAL_DECISION_VERSION,
    REMOVED_DECISION_VERSION,
    ActivityParty,
    DecisionStatus,
    PartyRole,
    PromotionDecision,
    ReasonCode,
)
from schemas.mail import ChangeKind, ItemType, MailItemChanged
from schemas.mailbox import MailboxConfig

Resolver = Callable[[str], list[RecordRef]]
"""The CRM records an address belongs to, in Dynamics' order (Directory.resolve)."""


@dataclass(frozen=True)
class LinkedRecord:
    """The CRM record a mailbox item is linked to, whether it was deleted, and the
    link found (for a match by iCalendar UID, the link of another mailbox's copy of
    the same record; None when a lookup only knows the record). Equality ignores
    the link."""

    record_id: str
    deleted: bool = False
    link: ActLink | None = field(default=None, compare=False)


LinkLookup = Callable[[str, str, str], LinkedRecord | None]
"""(mailbox id, item id, iCalendar UID or "") → the linked CRM record, if any."""
OwnerLookup = Callable[[str], RecordRef | None]
"""record id → the owner the record has on crm.act, if known."""


class ActLinkIndex:
    """act.links (compacted) as lookups: (mailbox, item) → record and, for
    appointments, normalized iCalendar UID → record. Pure, in memory; the
    processors feed it from a CompactedView and pass `lookup` to `handle_act`."""

    def __init__(self) -> None:
        self._by_key: dict[str, ActLink] = {}
        self._by_item: dict[tuple[str, str], LinkedRecord] = {}
        self._by_uid: dict[str, LinkedRecord] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def apply(self, key: str, link: ActLink | None) -> None:
        """Take one act.links record (None: a tombstone dropping the link)."""
        old = self._by_key.pop(key, None)
        if old is not None:
            self._by_item.pop((old.mailbox_id, old.item_id), None)
            uid = normalize_uid(old.ical_uid)
            if uid and self._by_uid.get(uid, LinkedRecord("")).record_id == old.record_id:
                self._by_uid.pop(uid, None)
        if link is None:
            return
        self._by_key[key] = link
        linked = LinkedRecord(link.record_id, link.deleted, link)
        self._by_item[(link.mailbox_id, link.item_id)] = linked
        uid = normalize_uid(link.ical_uid)
        if uid and link.record_type == ActType.APPOINTMENT:
            self._by_uid[uid] = linked

    def lookup(self, mailbox_id: str, item_id: str, ical_uid: str = "") -> LinkedRecord | None:
        """The linked record of an item: by mailbox and item id, else by UID."""
        found = self._by_item.get((mailbox_id, item_id))
        if found is None and ical_uid:
            found = self._by_uid.get(normalize_uid(ical_uid))
        return found


class ActOwnerIndex:
    """crm.act (compacted) as record id → owner, for appointments only (contacts and
    tasks belong to one mailbox). Pure, in memory; the processors feed it from a
    CompactedView and pass `lookup` to `handle_act` as `owners`."""

    def __init__(self) -> None:
        self._owners: dict[str, RecordRef] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def apply(self, key: str, record: ActRecord | None) -> None:
        """Take one crm.act record (None: a tombstone)."""
        if record is None or record.owner is None or record.record_type != ActType.APPOINTMENT:
            self._owners.pop(key, None)
            return
        self._owners[key] = record.owner

    def lookup(self, record_id: str) -> RecordRef | None:
        """The owner the record has now, if known."""
        return self._owners.get(record_id)


ROLES = {
    AttendeeRole.REQUIRED: PartyRole.REQUIRED,
    AttendeeRole.OPTIONAL: PartyRole.OPTIONAL,
    AttendeeRole.RESOURCE: PartyRole.RESOURCE,
}


class ActMemory(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the stage keeps per item (table `act_items`, key: item key).

    `record` is the last record written for the item (None: never tracked, or no
    longer); `manual` says a manual track marked it; `decisions` counts the
    decisions made for it (their version).
    """

    record: ActRecord | None = None
    manual: bool = False
    decisions: int = 0


@dataclass(frozen=True)
class ActOutput:
    """What to publish for one event: a record or a tombstone (its record id) on
    crm.act, the decision, and the memory to keep (None: forget the item)."""

    decision: PromotionDecision
    record: ActRecord | None = None
    tombstone: str | None = None
    memory: ActMemory | None = None
    link: ActLink | None = None
    """A link to publish on act.links (key `link_key`, at `link.partition`): a linked
    item deleted in the mailbox marks its link deleted."""


def is_act(change: MailItemChanged) -> bool:
    """True for appointments, contacts and tasks (they take this stage, not email's)."""
    return change.item_type != ItemType.EMAIL


def is_tracked(payload: ActPayload, category: str) -> bool:
    """True when the item carries the tracked category (case-insensitive)."""
    wanted = category.strip().casefold()
    return any(c.strip().casefold() == wanted for c in payload.categories)


def resolve_parties(
    payload: ActPayload, resolve: Resolver, leave_ambiguous: bool
) -> list[ActivityParty]:
    """The organizer (first match, like an email's sender) and the attendees (every
    match, like recipients; none when ambiguous and `leave_ambiguous`)."""
    if not isinstance(payload, Appointment):
        return []
    parties: list[ActivityParty] = []
    if payload.organizer is not None:
        org = payload.organizer
        parties.append(
            ActivityParty(
                role=PartyRole.ORGANIZER,
                address=org.address,
                name=org.name,
                records=resolve(org.address)[:1],
            )
        )
    for person in payload.attendees:
        records = resolve(person.address)
        if len(records) > 1 and leave_ambiguous:
            records = []
        parties.append(
            ActivityParty(
                role=ROLES[person.role], address=person.address, name=person.name, records=records
            )
        )
    return parties


def is_organizer_copy(payload: ActPayload, mailbox: MailboxConfig) -> bool:
    """True when the mailbox is the meeting's organizer's (or it has no organizer)."""
    if not isinstance(payload, Appointment) or payload.organizer is None:
        return True
    return payload.organizer.address == mailbox.email_address.strip().lower()


def record_owner(
    payload: ActPayload,
    mailbox: MailboxConfig,
    *,
    crm_owner: RecordRef | None = None,
    current: RecordRef | None = None,
) -> RecordRef:
    """The owner of the record a tracked item's version writes (module docstring):
    the CRM's (`crm_owner`, from the item's link) when known; a contact's or task's
    mailbox owner; for a meeting, this mailbox's owner when it is the organizer's
    copy, else the record's `current` owner, else this mailbox's owner."""
    if crm_owner is not None:
        return crm_owner
    if not isinstance(payload, Appointment) or is_organizer_copy(payload, mailbox):
        return mailbox.owner
    return current if current is not None else mailbox.owner


@dataclass(frozen=True)
class LinkedDelete:
    """What a linked item's delete in the mailbox does: the CRM record to delete
    (None: it stays), the link marked deleted to publish (None: already deleted, or
    its partition is unknown: the writer drops it at the record's next change), a
    decision reason and why."""

    action: DeleteAction
    reason: ReasonCode
    explanation: str
    tombstone: str | None = None
    link: ActLink | None = None


def on_linked_delete(link: ActLink, now: datetime) -> LinkedDelete:
    """The two-way delete rule (schemas/act_deletes.py `on_exchange_delete`) for a
    linked item deleted in its mailbox: the organizer's meeting (or the owner's
    appointment) and a task delete the CRM record; an attendee's copy and a
    contact only lose their link."""
    if link.deleted:
        why = f"linked to CRM record {link.record_id}, already unlinked; nothing changes"
        return LinkedDelete(DeleteAction.UNLINK, ReasonCode.ITEM_DELETED, why)
    role = Role.ORGANIZER if link.organizer else Role.ATTENDEE
    rule = on_exchange_delete(str(link.record_type), role)
    dropped = msgspec.structs.replace(link, deleted=True, updated_at=now)
    published = dropped if link.partition is not None else None
    unlinked = "the link is dropped" if published else "the writer drops the link"
    if rule.action is DeleteAction.DELETE_IN_CRM:
        why = f"linked {link.record_type} {rule.reason}: CRM record {link.record_id} deleted"
        return LinkedDelete(
            rule.action, ReasonCode.ITEM_DELETED, f"{why}; {unlinked}", link.record_id, published
        )
    reason = (
        ReasonCode.NOT_ORGANIZER
        if link.record_type == ActType.APPOINTMENT
        else ReasonCode.ITEM_DELETED
    )
    why = f"linked {link.record_type}: {rule.reason}; CRM record {link.record_id} stays"
    return LinkedDelete(rule.action, reason, f"{why}; {unlinked}", None, published)


def handle_act(
    change: MailItemChanged,
    mailbox: MailboxConfig | None,
    memory: ActMemory | None,
    resolve: Resolver,
    now: datetime,
    *,
    leave_ambiguous: bool = False,
    links: LinkLookup | None = None,
    owners: OwnerLookup | None = None,
) -> ActOutput:
    """The outcome of one appointment / contact / task event (module doc); `links`
    finds the CRM record an item is linked to (None: no links known); `owners` the
    owner a record has now (None: not known, the copy's mailbox owner is used)."""
    memory = memory or ActMemory()
    count = memory.decisions + 1
    if mailbox is None:
        return _skip(change, ReasonCode.MAILBOX_UNKNOWN, "the mailbox is not configured", now)
    settings = mailbox.act
    if settings is None or not settings.enabled:
        why = "the mailbox does not sync appointments, contacts and tasks"
        return _skip(change, ReasonCode.ACT_DISABLED, why, now, memory, count)
    if change.change == ChangeKind.DELETED:
        known = links(mailbox.mailbox_id, change.item_id, "") if links is not None else None
        mine = known.link if known is not None else None
        if mine is not None and (mine.mailbox_id, mine.item_id) == (
            mailbox.mailbox_id,
            change.item_id,
        ):
            return _linked_deleted(change, mine, now)
        return _deleted(change, mailbox, memory, now)
    if change.act is None:
        code = change.unreadable_code or "NoPayload"
        why = change.unreadable_reason or "the event carries no item"
        decision = _decision(
            change, DecisionStatus.ERRORED, ReasonCode.UNREADABLE, f"{code}: {why}", now, count
        )
        return ActOutput(decision=decision, memory=msgspec.structs.replace(memory, decisions=count))
    manual = memory.manual or change.manual_track is not None
    payload = change.act
    if not (manual or is_tracked(payload, settings.tracked_category)):
        why = f"not marked {settings.tracked_category!r} and not tracked by hand"
        if memory.record is not None:
            why += "; the category was removed, so the CRM record stays as it was"
        return _skip(change, ReasonCode.NOT_TRACKED, why, now, ActMemory(decisions=count), count)
    uid = payload.ical_uid if isinstance(payload, Appointment) else ""
    linked = links(mailbox.mailbox_id, change.item_id, uid) if links is not None else None
    if linked is not None and linked.deleted:
        why = (
            f"linked to CRM record {linked.record_id}, which was deleted in the CRM; "
            "the item is no longer synced"
        )
        return _skip(change, ReasonCode.NOT_TRACKED, why, now, ActMemory(decisions=count), count)
    record = build_record(
        change, mailbox, payload, resolve, now, leave_ambiguous,
        record_id=linked.record_id if linked is not None else None,
    )  # fmt: skip
    owner = record_owner(
        payload,
        mailbox,
        crm_owner=linked.link.owner if linked is not None and linked.link is not None else None,
        current=owners(record.record_id) if owners is not None else None,
    )
    if owner != record.owner:
        record = msgspec.structs.replace(record, owner=owner)
    moved = memory.record.record_id if memory.record is not None else None
    tombstone = moved if moved is not None and moved != record.record_id else None
    if manual:
        reason, count = ReasonCode.MANUAL_TRACK, max(count, MANUAL_DECISION_VERSION + 1)
        explanation = (
            change.manual_track.describe()
            if change.manual_track
            else "tracked by hand earlier; kept in step"
        )
    else:
        reason = ReasonCode.TRACKED_CATEGORY
        explanation = f"carries the category {settings.tracked_category!r}"
    if linked is not None:
        explanation += f"; linked to CRM record {linked.record_id}"
    if tombstone is not None:
        explanation += f" (its earlier record {tombstone} is deleted)"
    decision = _decision(change, DecisionStatus.PROMOTED, reason, explanation, now, count)
    decision = msgspec.structs.replace(decision, activity_id=record.record_id)
    return ActOutput(
        decision=decision,
        record=record,
        tombstone=tombstone,
        memory=ActMemory(record=record, manual=manual, decisions=count),
    )


def build_record(
    change: MailItemChanged,
    mailbox: MailboxConfig,
    payload: ActPayload,
    resolve: Resolver,
    now: datetime,
    leave_ambiguous: bool = False,
    *,
    record_id: str | None = None,
) -> ActRecord:
    """The CRM record a tracked item's event writes; `record_id` (a linked CRM
    record's) replaces the id computed from the item."""
    changed_at = payload.change_time or change.server_time or change.observed_at
    return ActRecord(
        record_id=record_id or record_id_for(payload, mailbox.mailbox_id, change.item_id),
        record_type=act_type(payload),
        version=version_of(changed_at),
        payload=payload,
        owner=mailbox.owner,
        parties=resolve_parties(payload, resolve, leave_ambiguous),
        source=ActSource(
            mailbox_id=mailbox.mailbox_id, folder=change.folder, item_id=change.item_id
        ),
        mailboxes=[mailbox.mailbox_id],
        origin="exchange",
        change_time=changed_at,
        updated_at=now,
    )


def _linked_deleted(change: MailItemChanged, link: ActLink, now: datetime) -> ActOutput:
    rule = on_linked_delete(link, now)
    decision = _decision(change, DecisionStatus.REMOVED, rule.reason, rule.explanation, now)
    return ActOutput(
        decision=msgspec.structs.replace(decision, activity_id=link.record_id),
        tombstone=rule.tombstone,
        link=rule.link,
    )


def _deleted(
    change: MailItemChanged, mailbox: MailboxConfig, memory: ActMemory, now: datetime
) -> ActOutput:
    record = memory.record
    removed = DecisionStatus.REMOVED
    if record is None:
        why = "the item left the mailbox; it was not tracked, so nothing changes in the CRM"
        decision = _decision(change, removed, ReasonCode.ITEM_DELETED, why, now)
        return ActOutput(decision=decision)
    if record.record_type != ActType.APPOINTMENT:
        why = f"the {record.record_type} was deleted in the mailbox it belongs to; record deleted"
        decision = _decision(change, removed, ReasonCode.ITEM_DELETED, why, now)
        return ActOutput(
            decision=msgspec.structs.replace(decision, activity_id=record.record_id),
            tombstone=record.record_id,
        )
    if not is_organizer_copy(record.payload, mailbox):
        why = "an attendee removed the meeting from the calendar; the CRM appointment stays"
        decision = _decision(change, removed, ReasonCode.NOT_ORGANIZER, why, now)
        return ActOutput(decision=msgspec.structs.replace(decision, activity_id=record.record_id))
    assert isinstance(record.payload, Appointment)
    cancelled = ActRecord(
        record_id=record.record_id,
        record_type=record.record_type,
        version=max(record.version + 1, version_of(now)),
        payload=msgspec.structs.replace(record.payload, is_cancelled=True, change_time=now),
        owner=record.owner,
        parties=record.parties,
        regarding=record.regarding,
        source=record.source,
        mailboxes=record.mailboxes,
        origin="exchange",
        change_time=now,
        updated_at=now,
    )
    why = "the organizer deleted the meeting; the CRM appointment is cancelled"
    decision = _decision(change, removed, ReasonCode.ITEM_DELETED, why, now)
    return ActOutput(
        decision=msgspec.structs.replace(decision, activity_id=record.record_id),
        record=cancelled,
    )


def _skip(
    change: MailItemChanged,
    reason: ReasonCode,
    explanation: str,
    now: datetime,
    memory: ActMemory | None = None,
    count: int = 1,
) -> ActOutput:
    decision = _decision(change, DecisionStatus.SKIPPED, reason, explanation, now, count)
    return ActOutput(decision=decision, memory=memory)


def _decision(
    change: MailItemChanged,
    status: DecisionStatus,
    reason: ReasonCode,
    explanation: str,
    now: datetime,
    version: int = 1,
) -> PromotionDecision:
    if status == DecisionStatus.REMOVED:
        version = REMOVED_DECISION_VERSION
    return PromotionDecision(
        item_key=change.item_key,
        mailbox_id=change.mailbox_id,
        folder=change.folder,
        item_id=change.item_id,
        event_id=change.event_id,
        status=status,
        reason=reason,
        explanation=explanation,
        version=version,
        decided_at=now,
    )
