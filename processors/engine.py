"""The decision engine of one partition of mail.parsed: decide, track, and decide again.

For each email it decides (promote.decide), updates the tracked-message state,
and builds the PromotionDecision and Activity to emit. Items whose decision can
still improve are held per conversation; when a message they wait for becomes
tracked (or its regarding or conversation changes) they are decided again, so
the final decisions do not depend on arrival order (docs/decisions.md).

No I/O: state lives behind `EngineState` (faust tables in the agent, dicts in
tests). Processing the same email twice yields the same output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import msgspec

from processors.conversation_index import parse_thread_index
from processors.correlate import Correlation, reply_chain
from processors.directory import ORG_TYPES, ActivityIndex, Directory, Mailboxes, TrackedRef
from processors.promote import DecisionContext, Verdict, decide
from schemas.base import RecordRef, RecordType
from schemas.config import InternalEmailPolicy, ProcessingConfig
from schemas.crm import (
    MANUAL_DECISION_VERSION,
    Activity,
    ActivityParty,
    CorrelationMethod,
    CrmRecord,
    DecisionStatus,
    Direction,
    PartyRole,
    PromotionDecision,
    ReasonCode,
)
from schemas.ids import created_record_id, email_activity_id
from schemas.mail import EmailAddress, ParsedEmail
from schemas.mailbox import AutoCreate
from schemas.state import (
    HeldEntry,
    HeldItem,
    HeldThread,
    QueueCopy,
    TrackedItem,
    TrackedMessage,
)

# Skips that another copy of the message (or a later reply chain) can still turn into a link.
_IMPROVABLE = frozenset(
    {
        ReasonCode.NO_CORRELATION_MATCH,
        ReasonCode.NO_SENDER_MATCH,
        ReasonCode.NO_RECIPIENT_MATCH,
        ReasonCode.AUTO_REPLY,
        ReasonCode.BOUNCE,
    }
)
_QUALIFIERS = ("", "#incoming", "#outgoing")
_UNREAD = object()  # a tracking key `_Reads` has not read
# Correlations that make the target the parent activity (Dynamics: InReplyTo, ConversationIndex).
_PARENTING = frozenset({CorrelationMethod.IN_REPLY_TO, CorrelationMethod.CONVERSATION_INDEX})
S = TypeVar("S", bound=msgspec.Struct)


class EngineState(Protocol):
    """Where the engine keeps tracked messages (by tracking key) and their copies (by
    tracking key and item key), and held conversations and their items."""

    def get_tracked(self, key: str) -> TrackedMessage | None: ...

    def put_tracked(self, key: str, value: TrackedMessage) -> None: ...

    def get_tracked_item(self, key: str, item_key: str) -> TrackedItem | None: ...

    def put_tracked_item(self, key: str, item_key: str, value: TrackedItem) -> None: ...

    def get_held(self, thread_key: str) -> HeldThread | None: ...

    def put_held(self, thread_key: str, value: HeldThread | None) -> None: ...

    def get_held_item(self, thread_key: str, item_key: str) -> HeldItem | None: ...

    def put_held_item(
        self, thread_key: str, item_key: str, partition: int, value: HeldItem | None
    ) -> None:
        """Store (value None: delete) a held item on `partition`, its thread's."""


@dataclass
class MemoryState:
    """EngineState in dictionaries (tests, benchmarks)."""

    tracked: dict[str, TrackedMessage] = field(default_factory=dict)
    tracked_items: dict[tuple[str, str], TrackedItem] = field(default_factory=dict)
    held: dict[str, HeldThread] = field(default_factory=dict)
    held_items: dict[tuple[str, str], HeldItem] = field(default_factory=dict)

    def get_tracked(self, key: str) -> TrackedMessage | None:
        return self.tracked.get(key)

    def put_tracked(self, key: str, value: TrackedMessage) -> None:
        self.tracked[key] = value

    def get_tracked_item(self, key: str, item_key: str) -> TrackedItem | None:
        return self.tracked_items.get((key, item_key))

    def put_tracked_item(self, key: str, item_key: str, value: TrackedItem) -> None:
        self.tracked_items[(key, item_key)] = value

    def get_held(self, thread_key: str) -> HeldThread | None:
        return self.held.get(thread_key)

    def put_held(self, thread_key: str, value: HeldThread | None) -> None:
        if value is None:
            self.held.pop(thread_key, None)
        else:
            self.held[thread_key] = value

    def get_held_item(self, thread_key: str, item_key: str) -> HeldItem | None:
        return self.held_items.get((thread_key, item_key))

    def put_held_item(
        self, thread_key: str, item_key: str, partition: int, value: HeldItem | None
    ) -> None:
        if value is None:
            self.held_items.pop((thread_key, item_key), None)
        else:
            self.held_items[(thread_key, item_key)] = value


class _Reads:
    """The state one email's decision reads, each key looked up once: deciding asks
    for the same tracked messages several times (the duplicate check, the
    correlation, the target's fresh state). Writes go through, so a later read
    sees them. Lives for one `process` call: the state changes between events
    only through this engine, but nothing is kept longer than what one call can
    prove.

    `forms`: the tracking keys a Message-ID may be tracked under here, its plain
    key first. Only two-activity internal email tracks the qualified forms
    (#incoming, #outgoing); in the other modes looking them up would be two
    reads of keys that are never written, for every Message-ID looked up. A
    message tracked as two activities before the mode changed is then found in
    the global activity index, like a CRM activity.
    """

    def __init__(
        self, state: EngineState, activities: ActivityIndex, forms: tuple[str, ...]
    ) -> None:
        self.state = state
        self._activities = activities
        self._forms = forms
        self._tracked: dict[str, TrackedMessage | None] = {}
        self._copies: dict[tuple[str, str], TrackedItem | None] = {}
        self._refs: dict[str, TrackedRef | None] = {}

    def get_tracked(self, key: str) -> TrackedMessage | None:
        if key in self._tracked:
            return self._tracked[key]
        found = self._tracked[key] = self.state.get_tracked(key)
        return found

    def put_tracked(self, key: str, value: TrackedMessage) -> None:
        self.state.put_tracked(key, value)
        self._tracked[key] = value
        message_id = key  # what the key's Message-ID resolves to has changed
        for qualifier in _QUALIFIERS[1:]:
            message_id = message_id.removesuffix(qualifier)
        for stale in (key, message_id):
            self._refs.pop(stale, None)

    def get_copy(self, key: str, item_key: str) -> TrackedItem | None:
        """A tracked message's copy in one mailbox item: in the message's `items`
        when it keeps its copies inline (its only copy), else its own record.
        Deciding a copy asks twice (the duplicate check, then tracking)."""
        if (key, item_key) in self._copies:
            return self._copies[(key, item_key)]
        entry = self.get_tracked(key)
        if entry is not None and entry.items:
            found = next((i for i in entry.items if i.item_key == item_key), None)
        else:
            found = self.state.get_tracked_item(key, item_key)
        self._copies[(key, item_key)] = found
        return found

    def put_copy(self, key: str, item_key: str, value: TrackedItem) -> None:
        self.state.put_tracked_item(key, item_key, value)
        self._copies[(key, item_key)] = value

    def by_message_id(self, message_id: str) -> TrackedRef | None:
        """The tracked message or CRM activity of a Message-ID: tracked here first (in
        any of its `forms`), then the global activity index."""
        if message_id in self._refs:
            return self._refs[message_id]
        found = self.tracked_ref(message_id) or self._activities.by_message_id(message_id)
        self._refs[message_id] = found
        return found

    def crm_only(self, message_id: str) -> bool:
        """True when `message_id` was looked up (`by_message_id`) and found as a CRM
        activity in the global index: found, and read as none of its tracked forms."""
        if self._refs.get(message_id) is None:
            return False
        return all(
            self._tracked.get(message_id + qualifier, _UNREAD) is None for qualifier in self._forms
        )

    def tracked_ref(self, message_id: str) -> TrackedRef | None:
        """The message of a Message-ID as tracked here (in the first of its `forms`
        tracked), or None."""
        for qualifier in self._forms:
            entry = self.get_tracked(message_id + qualifier)
            if entry is not None:
                return TrackedRef(
                    activity_id=entry.activity_id,
                    message_id=entry.message_id,
                    conversation_id=entry.conversation_id,
                    regarding=entry.regarding,
                    tracking_token=entry.tracking_token,
                )
        return None


@dataclass
class Emission:
    """What one call of the engine asks to publish, in order."""

    decisions: list[PromotionDecision] = field(default_factory=list)
    activities: list[Activity] = field(default_factory=list)
    records: list[CrmRecord] = field(default_factory=list)
    redecided: int = 0


@dataclass
class _Applied:
    decision: PromotionDecision
    activity: Activity | None
    changed: set[str]
    record: CrmRecord | None = None


class DecisionEngine:
    """Decides the emails of the partitions it is handed, against `state`."""

    def __init__(
        self,
        state: EngineState,
        directory: Directory,
        mailboxes: Mailboxes,
        activities: ActivityIndex,
        settings: ProcessingConfig,
    ) -> None:
        self.state = state
        self.directory = directory
        self.mailboxes = mailboxes
        self.activities = activities
        self.settings = settings
        self.window = timedelta(seconds=settings.late_correlation_window_s)
        self._two_activities = settings.internal_email == InternalEmailPolicy.TWO
        self._forms = _QUALIFIERS if self._two_activities else _QUALIFIERS[:1]
        self._reads = _Reads(state, activities, self._forms)

    # -- public ----------------------------------------------------------------

    def process(self, email: ParsedEmail, partition: int, now: datetime) -> Emission:
        """Decide `email`, then re-decide the held items of its conversation it unblocks."""
        emission = Emission()
        self._reads = _Reads(self.state, self.activities, self._forms)
        thread = email.thread_key
        stored = self.state.get_held(thread)
        live = _live(stored, partition, now)
        key = email.item_key
        self._forget_expired(thread, stored, live, keep=key)
        own = next((entry for entry in live.items if entry.item_key == key), None)
        previous = self.state.get_held_item(thread, key) if own is not None else None
        applied = self._decide_and_apply(email, previous.decision if previous else None, now)
        self._emit(emission, applied)
        entries = [entry for entry in live.items if entry.item_key != key]
        entries += self._hold(email, applied.decision, own, previous, stored, partition, now)
        entries = self._settle(thread, partition, entries, applied.changed, now, emission)
        after = HeldThread(partition=partition, items=entries) if entries else None
        if after != stored:  # most emails hold nothing before and after: no write
            self.state.put_held(thread, after)
        return emission

    def expire(self, thread_key: str, now: datetime) -> HeldThread | None:
        """Forget a conversation once all its held items expired; returns it while any
        is alive. Expired items of a live conversation stay stored, listed and with
        their held items (nothing reads them: `process` looks at live items only),
        until the next email of the conversation rewrites it: a write outside of
        processing an event has no partition to go to, a removal does."""
        held = self.state.get_held(thread_key)
        if held is None:
            return None
        if any(h.held_until > now for h in held.items):
            return held
        for entry in held.items:
            self.state.put_held_item(thread_key, entry.item_key, held.partition, None)
        self.state.put_held(thread_key, None)
        return None

    def _hold(
        self,
        email: ParsedEmail,
        decision: PromotionDecision,
        own: HeldEntry | None,
        previous: HeldItem | None,
        stored: HeldThread | None,
        partition: int,
        now: datetime,
    ) -> list[HeldEntry]:
        """The email's entry in its conversation when its decision can still improve
        (its held item written when new or decided differently), else none (its
        held item deleted if it had one). A held email keeps its first deadline."""
        key = email.item_key
        waiting = self._waiting_on(email, decision)
        if waiting:
            item = HeldItem(email=email, decision=decision)
            if item != previous:
                self.state.put_held_item(email.thread_key, key, partition, item)
            until = own.held_until if own is not None else now + self.window
            return [HeldEntry(item_key=key, waiting_on=waiting, held_until=until)]
        if stored is not None and any(entry.item_key == key for entry in stored.items):
            self.state.put_held_item(email.thread_key, key, stored.partition, None)
        return []

    def _forget_expired(
        self,
        thread_key: str,
        stored: HeldThread | None,
        live: HeldThread,
        keep: str,
    ) -> None:
        """Delete the held items of `stored` that expired (they leave the thread now),
        except `keep`, the item being decided, which is rewritten or deleted after."""
        if stored is None or len(live.items) == len(stored.items):
            return
        alive = {entry.item_key for entry in live.items}
        for entry in stored.items:
            if entry.item_key not in alive and entry.item_key != keep:
                self.state.put_held_item(thread_key, entry.item_key, stored.partition, None)

    # -- deciding --------------------------------------------------------------

    def _context(self, email: ParsedEmail) -> DecisionContext:
        return DecisionContext(
            mailbox=self.mailboxes.get(email.mailbox_id),
            directory=self.directory,
            settings=self.settings,
            tracked=self._reads.get_tracked,
            tracked_copy=self._reads.get_copy,
            by_message_id=self._reads.by_message_id,
            by_token=self.activities.by_token,
            by_conversation_index=self.activities.by_conversation_index,
            by_smart_key=self.activities.by_smart_key,
        )

    def _decide_and_apply(
        self, email: ParsedEmail, previous: PromotionDecision | None, now: datetime
    ) -> _Applied:
        verdict = decide(email, email.item_key, self._context(email))
        if verdict.promoted and verdict.linked_activity_id is None:
            return self._track(email, verdict, previous, now)
        decision = self._decision(email, verdict, verdict.linked_activity_id, previous, now)
        return _Applied(decision, None, set())

    def _track(
        self,
        email: ParsedEmail,
        verdict: Verdict,
        previous: PromotionDecision | None,
        now: datetime,
    ) -> _Applied:
        assert verdict.tracking_key is not None
        key = verdict.tracking_key
        old = self._reads.get_tracked(key)
        activity_id = (
            old.activity_id if old else email_activity_id(email.message_id, verdict.qualifier)
        )
        own = self._reads.get_copy(key, email.item_key) if old else None
        if own is not None and (previous is None or own.decision.version >= previous.version):
            previous = own.decision
        decision = self._decision(email, verdict, activity_id, previous, now)
        copy = TrackedItem(item_key=email.item_key, mailbox_id=email.mailbox_id, decision=decision)
        inline = old is None or _only_copy_inline(old, email.item_key)
        if old is not None and old.items and not inline:
            old = self._move_copies(key, old)
        entry = self._merge_entry(old, email, verdict, activity_id, copy)
        if old is None or _activity_fields(entry) != _activity_fields(old):
            entry = _with(entry, version=(old.version if old else 0) + 1)
        else:
            entry = _with(entry, version=old.version)
        if inline:
            entry = _with(entry, items=[copy])
        self._reads.put_tracked(key, entry)
        if not inline and copy != own:
            self._reads.put_copy(key, email.item_key, copy)
        changed = set()
        if old is None or _inherited(old) != _inherited(entry):
            changed.add(email.message_id)
        record = self._create_unknown_sender(email, verdict, now)
        return _Applied(decision, self._activity(email, entry, verdict), changed, record)

    def _create_unknown_sender(
        self, email: ParsedEmail, verdict: Verdict, now: datetime
    ) -> CrmRecord | None:
        """The contact or lead to create for the unknown sender of tracked incoming email,
        when its mailbox says so. It joins the directory at once, so this email's
        activity and the next ones resolve to it before crm.records brings it back."""
        mailbox = self.mailboxes.get(email.mailbox_id)
        sender = email.sender
        if (
            mailbox is None
            or mailbox.auto_create == AutoCreate.NONE
            or sender is None
            or verdict.direction != Direction.INCOMING
            or self.directory.resolve(sender.address)
        ):
            return None
        kind = mailbox.auto_create.value
        record = CrmRecord(
            record_id=created_record_id(kind, sender.address),
            record_type=kind,
            name=sender.name or sender.address.split("@", 1)[0],
            email_addresses=[sender.address],
            created_by_tidings=True,
            updated_at=now,
        )
        self.directory.apply(record.record_id, record)
        return record

    def _merge_entry(
        self,
        old: TrackedMessage | None,
        email: ParsedEmail,
        verdict: Verdict,
        activity_id: str,
        copy: TrackedItem,
    ) -> TrackedMessage:
        entry = old or TrackedMessage(
            message_id=email.message_id,
            activity_id=activity_id,
            version=0,
            created_at=email.observed_at,
            direction=self._activity_direction(email, verdict),
            conversation_id=activity_id,
        )
        entry = _apply_correlation(entry, verdict.correlation, self._fresh_target)
        queue_copies = [q for q in entry.queue_copies if q.item_key != email.item_key]
        queue_copies += self._queue_copy(copy)
        mailboxes = entry.mailboxes
        if email.mailbox_id not in mailboxes:
            mailboxes = sorted([*mailboxes, email.mailbox_id])
        owner = self._owner(email, mailboxes)
        return _with(entry, queue_copies=queue_copies, mailboxes=mailboxes, owner=owner)

    def _move_copies(self, key: str, entry: TrackedMessage) -> TrackedMessage:
        """A message whose copies are inline (its only copy, or every copy as builds
        before the copies' own records kept them), its copies moved to their own
        records (once: the message is written without them)."""
        queue_copies = []
        for copy in entry.items:
            self._reads.put_copy(key, copy.item_key, copy)
            queue_copies += self._queue_copy(copy)
        return _with(entry, items=[], queue_copies=queue_copies)

    def _queue_copy(self, copy: TrackedItem) -> list[QueueCopy]:
        """`copy` as a queue's copy, when its mailbox is a queue's and it is promoted."""
        config = self.mailboxes.get(copy.mailbox_id)
        decision = copy.decision
        if (
            config is None
            or config.owner.type != RecordType.QUEUE.value
            or decision.status != DecisionStatus.PROMOTED
        ):
            return []
        duplicate = decision.reason == ReasonCode.DUPLICATE
        return [
            QueueCopy(
                item_key=copy.item_key,
                mailbox_id=copy.mailbox_id,
                duplicate=duplicate,
                decided_at=decision.decided_at,
            )
        ]

    def _fresh_target(self, target: TrackedRef) -> TrackedRef:
        """The current state of a correlation target: as tracked here, when it is (its
        regarding or conversation may have changed since the global index had it),
        else as found (a CRM activity, from that index a moment ago)."""
        return self._reads.tracked_ref(target.message_id) or target

    def _activity_direction(self, email: ParsedEmail, verdict: Verdict) -> Direction:
        if verdict.qualifier:
            return Direction(verdict.qualifier)
        sender = email.sender.address if email.sender else ""
        org = any(ref.type in ORG_TYPES for ref in self.directory.resolve(sender))
        return Direction.OUTGOING if org else Direction.INCOMING

    def _owner(self, email: ParsedEmail, mailboxes: list[str]) -> RecordRef | None:
        """The sending user when the sender is one, else the owner of the first mailbox."""
        sender = email.sender.address if email.sender else ""
        for ref in self.directory.resolve(sender):
            if ref.type in ORG_TYPES:
                return ref
        for mailbox_id in mailboxes:
            config = self.mailboxes.get(mailbox_id)
            if config is not None:
                return config.owner
        return None

    # -- outputs ---------------------------------------------------------------

    def _decision(
        self,
        email: ParsedEmail,
        verdict: Verdict,
        activity_id: str | None,
        previous: PromotionDecision | None,
        now: datetime,
    ) -> PromotionDecision:
        correlation = verdict.correlation
        draft = PromotionDecision(
            item_key=email.item_key,
            mailbox_id=email.mailbox_id,
            folder=email.folder,
            item_id=email.item_id,
            event_id=email.event_id,
            message_id=email.message_id,
            status=verdict.status,
            reason=verdict.reason,
            explanation=verdict.explanation,
            activity_id=activity_id if verdict.promoted else None,
            correlation_method=correlation.method if correlation else CorrelationMethod.NONE,
            correlated_activity_id=correlation.target.activity_id if correlation else None,
            direction=verdict.direction,
            sender=self._party(PartyRole.FROM, email.sender) if email.sender else None,
            version=_lowest_version(verdict),
            decided_at=now,
        )
        if previous is None:
            return draft
        if _decision_fields(previous) == _decision_fields(draft):
            return _with(draft, version=previous.version, decided_at=previous.decided_at)
        return _with(draft, version=max(previous.version + 1, draft.version))

    def _activity(self, email: ParsedEmail, entry: TrackedMessage, verdict: Verdict) -> Activity:
        parties = [self._party(PartyRole.FROM, email.sender)] if email.sender else []
        for role, addresses in (
            (PartyRole.TO, email.to),
            (PartyRole.CC, email.cc),
            (PartyRole.BCC, email.bcc),
        ):
            parties.extend(self._party(role, address) for address in addresses)
        accepted = self._queue_copies(entry)
        return Activity(
            activity_id=entry.activity_id,
            version=entry.version,
            message_id=email.message_id,
            subject=email.subject,
            description=email.body_text,
            description_truncated=email.body_truncated,
            direction=entry.direction,
            parties=parties,
            sent_at=email.sent_at,
            owner=entry.owner,
            regarding=entry.regarding,
            parent_activity_id=entry.parent_activity_id,
            conversation_id=entry.conversation_id,
            correlation_method=entry.correlation_method,
            correlated_activity_id=entry.correlated_to,
            tracking_token=entry.tracking_token,
            in_reply_to=email.in_reply_to,
            conversation_index=index.key
            if (index := parse_thread_index(email.thread_index))
            else None,
            receiving_mailboxes=entry.mailboxes,
            queues=sorted({queue for _, queue in accepted}, key=str),
            accepting_queue=min(accepted, key=lambda copy: copy[0])[1] if accepted else None,
            created_at=entry.created_at,
            updated_at=email.observed_at,
        )

    def _queue_copies(
        self, entry: TrackedMessage
    ) -> list[tuple[tuple[bool, datetime, str], RecordRef]]:
        """Each promoted copy a queue's mailbox received, as (order, queue): copies that
        passed their own mailbox's rules before those linked as duplicates, then the
        earliest decided, then by mailbox id; the first is the accepting queue. A
        mailbox no longer a queue's is left out."""
        found = []
        for copy in entry.queue_copies:
            config = self.mailboxes.get(copy.mailbox_id)
            if config is not None and config.owner.type == RecordType.QUEUE.value:
                order = (copy.duplicate, copy.decided_at, copy.mailbox_id)
                found.append((order, config.owner))
        return found

    def _party(self, role: PartyRole, address: EmailAddress) -> ActivityParty:
        """A party and its records: the sender resolves to the first record in Dynamics'
        order; a recipient to every match, or to none when ambiguous and so configured."""
        records = self.directory.resolve(address.address)
        if role == PartyRole.FROM:
            records = records[:1]
        elif len(records) > 1 and self.settings.leave_ambiguous_recipients_unresolved:
            records = []
        return ActivityParty(role=role, address=address.address, name=address.name, records=records)

    def _emit(self, emission: Emission, applied: _Applied) -> None:
        if applied.record is not None:
            emission.records.append(applied.record)
        emission.decisions.append(applied.decision)
        if applied.activity is not None:
            emission.activities.append(applied.activity)

    # -- holding ---------------------------------------------------------------

    def _waiting_on(self, email: ParsedEmail, decision: PromotionDecision) -> list[str]:
        """Message-IDs whose tracking could change this item's decision: its reply
        chain's, but for CRM activities tidings does not track (`_settled`), a
        bounce's returned message, and its own when it was skipped for want of a
        copy or a link."""
        waiting = [message_id for message_id in reply_chain(email) if not self._settled(message_id)]
        if email.bounced_message_id and email.bounced_message_id not in waiting:
            waiting.append(email.bounced_message_id)
        if decision.status == DecisionStatus.SKIPPED and decision.reason in _IMPROVABLE:
            waiting.append(email.message_id)
        return waiting

    def _settled(self, message_id: str) -> bool:
        """True when `message_id` is a CRM activity this engine does not track (found in
        the global index only): a copy of it links to that activity and is not
        tracked, so its tracking never changes and nothing waits on it. Not so when
        internal email is tracked as two activities (a copy may then be tracked
        under its direction), nor for a Message-ID not looked up yet (checking would
        cost reads for what is usually held anyway, for another reason)."""
        return not self._two_activities and self._reads.crm_only(message_id)

    def _settle(
        self,
        thread_key: str,
        partition: int,
        entries: list[HeldEntry],
        changed: set[str],
        now: datetime,
        emission: Emission,
    ) -> list[HeldEntry]:
        """Re-decide held items waiting on changed messages until nothing changes; an
        item that waits on nothing any more leaves the thread."""
        pending = set(changed)
        budget = 20 * (len(entries) + 1)
        while pending and budget > 0:
            message_id = pending.pop()
            for index, entry in enumerate(entries):
                if message_id not in entry.waiting_on:
                    continue
                budget -= 1
                held = self.state.get_held_item(thread_key, entry.item_key)
                if held is None:  # not stored (cannot be re-decided): let it go
                    entries[index] = _with(entry, waiting_on=[])
                    continue
                applied = self._decide_and_apply(held.email, held.decision, now)
                emission.redecided += 1
                pending |= applied.changed
                waiting = self._waiting_on(held.email, applied.decision)
                entries[index] = _with(entry, waiting_on=waiting)
                if applied.decision != held.decision:
                    self._emit(emission, applied)
                    if waiting:
                        item = HeldItem(email=held.email, decision=applied.decision)
                        self.state.put_held_item(thread_key, entry.item_key, partition, item)
                if not waiting:
                    self.state.put_held_item(thread_key, entry.item_key, partition, None)
        return [entry for entry in entries if entry.waiting_on]


def _live(stored: HeldThread | None, partition: int, now: datetime) -> HeldThread:
    """The held items of a conversation that have not expired."""
    if stored is None:
        return HeldThread(partition=partition)
    return HeldThread(partition=partition, items=[h for h in stored.items if h.held_until > now])


def _apply_correlation(
    entry: TrackedMessage,
    correlation: Correlation | None,
    fresh: Callable[[TrackedRef], TrackedRef],
) -> TrackedMessage:
    """Keep the best correlation seen for a message, refreshed from its target's state."""
    if correlation is None:
        return entry
    target = fresh(correlation.target)
    other_target = entry.correlated_to is not None and entry.correlated_to != target.activity_id
    if other_target and correlation.rank >= entry.correlation_rank:
        return entry
    parent = target.activity_id if correlation.method in _PARENTING else None
    return _with(
        entry,
        correlation_method=correlation.method,
        correlated_to=target.activity_id,
        correlation_rank=correlation.rank,
        regarding=target.regarding,
        parent_activity_id=parent,
        conversation_id=target.conversation_id,
    )


def _only_copy_inline(entry: TrackedMessage, item_key: str) -> bool:
    """True when `entry` keeps its copies inline and every one is `item_key`'s: the
    copy being decided is the message's only one, and stays inline."""
    return bool(entry.items) and all(copy.item_key == item_key for copy in entry.items)


def _activity_fields(entry: TrackedMessage) -> tuple[object, ...]:
    return (
        entry.owner,
        entry.regarding,
        entry.parent_activity_id,
        entry.conversation_id,
        entry.correlation_method,
        entry.tracking_token,
        tuple(entry.mailboxes),
        entry.direction,
    )


def _inherited(entry: TrackedMessage) -> tuple[object, ...]:
    """What replies inherit from a tracked message."""
    return (entry.activity_id, entry.regarding, entry.conversation_id)


def _lowest_version(verdict: Verdict) -> int:
    """The version a decision starts from: 1, or MANUAL_DECISION_VERSION for an item
    tracked by hand, so that decision supersedes every automatic one of the item in
    the sinks, whether or not this engine still holds them."""
    return MANUAL_DECISION_VERSION if verdict.reason == ReasonCode.MANUAL_TRACK else 1


def _decision_fields(decision: PromotionDecision) -> tuple[object, ...]:
    return (
        decision.status,
        decision.reason,
        decision.explanation,
        decision.activity_id,
        decision.correlation_method,
        decision.correlated_activity_id,
        decision.direction,
    )


def _with(struct: S, **changes: Any) -> S:
    return msgspec.structs.replace(struct, **changes)
