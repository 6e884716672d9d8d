"""Rows for ClickHouse from topic payloads. Pure: a Struct in, tuples out.

Column order matches `COLUMNS[table]`; None becomes '' for optional strings so
queries never juggle NULL ids.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.act import ActRecord, Appointment, Contact
from schemas.base import RecordRef
from schemas.crm import Activity, PartyRole, PromotionDecision
from schemas.errors import SyncError
from schemas.mailbox import MailboxCounters, MailboxStatus
from schemas.outgoing import OutgoingStatus

Row = tuple[Any, ...]

COLUMNS: dict[str, tuple[str, ...]] = {
    "activities": (
        "activity_id", "version", "activity_type", "message_id", "subject", "description",
        "description_truncated", "direction", "sender", "to_addresses", "cc_addresses",
        "sent_at", "owner", "regarding", "parent_activity_id", "conversation_id",
        "correlation_method", "correlated_activity_id", "tracking_token", "in_reply_to",
        "conversation_index", "receiving_mailboxes", "queues", "accepting_queue",
        "source", "created_at", "updated_at",
    ),
    "activity_parties": (
        "activity_id", "version", "role", "position", "address", "name", "record_type",
        "record_id",
    ),
    "promotion_decisions": (
        "item_key", "mailbox_id", "folder", "item_id", "event_id", "message_id", "status",
        "reason", "explanation", "activity_id", "correlation_method", "correlated_activity_id",
        "direction", "sender", "sender_records", "version", "decided_at",
    ),
    "sync_errors": (
        "error_id", "mailbox_id", "scope", "severity", "code", "message", "component",
        "folder", "item_id", "event_id", "attempt", "occurred_at",
    ),
    "mailbox_status": (
        "mailbox_id", "state", "incoming_status", "outgoing_status", "act_status",
        "last_sync_started_at", "last_sync_at", "last_success_at", "next_poll_at",
        "sync_generation", "pending_items", "items_listed", "created_events", "updated_events",
        "deleted_events", "errors", "last_error_code", "last_error", "worker", "updated_at",
    ),
    "poll_stats": (
        "mailbox_id", "sync_generation", "started_at", "finished_at", "duration_ms", "state",
        "incoming_status", "pending_items", "items_listed", "created_events", "updated_events",
        "deleted_events", "errors", "error_code", "next_poll_at", "worker", "updated_at",
    ),
    "outgoing_status": (
        "activity_id", "mailbox_id", "status", "message_id", "attempt", "tracking_token",
        "error_code", "error_message", "next_attempt_at", "sent_at", "accepted", "refused",
        "copied_to_sent", "worker", "updated_at",
    ),
    "act_records": (
        "record_id", "record_type", "version", "subject", "start_at", "end_at", "location",
        "organizer", "attendees", "recurrence", "exceptions", "is_cancelled", "categories",
        "owner", "party_records", "mailbox_id", "item_id", "origin", "change_time", "payload",
        "updated_at",
    ),
}  # fmt: skip


def _ref(ref: RecordRef | None) -> str:
    return str(ref) if ref is not None else ""


def activity_rows(activity: Activity) -> tuple[Row, list[Row]]:
    """The activities row and the activity_parties rows of one activity version."""
    sender = next((p.address for p in activity.parties if p.role == PartyRole.FROM), "")
    row: Row = (
        activity.activity_id,
        activity.version,
        activity.activity_type,
        activity.message_id,
        activity.subject,
        activity.description,
        int(activity.description_truncated),
        activity.direction.value,
        sender,
        tuple(p.address for p in activity.party(PartyRole.TO)),
        tuple(p.address for p in activity.party(PartyRole.CC)),
        activity.sent_at,
        _ref(activity.owner),
        _ref(activity.regarding),
        activity.parent_activity_id or "",
        activity.conversation_id,
        activity.correlation_method.value,
        activity.correlated_activity_id or "",
        activity.tracking_token or "",
        activity.in_reply_to or "",
        activity.conversation_index or "",
        tuple(activity.receiving_mailboxes),
        tuple(str(queue) for queue in activity.queues),
        _ref(activity.accepting_queue),
        activity.source,
        activity.created_at,
        activity.updated_at,
    )
    parties: list[Row] = []
    for position, party in enumerate(activity.parties):
        refs: list[RecordRef | None] = [*party.records] or [None]
        for ref in refs:
            parties.append(
                (
                    activity.activity_id,
                    activity.version,
                    party.role.value,
                    position,
                    party.address,
                    party.name,
                    ref.type if ref else "",
                    ref.id if ref else "",
                )
            )
    return row, parties


def decision_row(decision: PromotionDecision) -> Row:
    """The promotion_decisions row of one decision."""
    sender = decision.sender
    return (
        decision.item_key,
        decision.mailbox_id,
        decision.folder,
        decision.item_id,
        decision.event_id,
        decision.message_id or "",
        decision.status.value,
        decision.reason.value,
        decision.explanation,
        decision.activity_id or "",
        decision.correlation_method.value,
        decision.correlated_activity_id or "",
        decision.direction.value if decision.direction else "",
        sender.address if sender else "",
        tuple(str(r) for r in sender.records) if sender else (),
        decision.version,
        decision.decided_at,
    )


def error_row(error: SyncError) -> Row:
    """The sync_errors row of one error."""
    return (
        error.error_id,
        error.mailbox_id,
        error.scope.value,
        error.severity.value,
        error.code,
        error.message,
        error.component,
        error.folder or "",
        error.item_id or "",
        error.event_id or "",
        error.attempt,
        error.occurred_at,
    )


def _counter_values(counters: MailboxCounters) -> Row:
    """A mailbox's running totals, in the column order both status tables use."""
    return (
        counters.items_listed,
        counters.created_events,
        counters.updated_events,
        counters.deleted_events,
        counters.errors,
    )


def status_row(status: MailboxStatus) -> Row:
    """The mailbox_status row of one status update."""
    return (
        status.mailbox_id,
        status.state.value,
        status.incoming_status.value,
        status.outgoing_status.value,
        status.act_status.value,
        status.last_sync_started_at,
        status.last_sync_at,
        status.last_success_at,
        status.next_poll_at,
        status.sync_generation,
        status.pending_items,
        *_counter_values(status.counters),
        status.last_error_code or "",
        status.last_error or "",
        status.worker or "",
        status.updated_at,
    )


def poll_stats_rows(status: MailboxStatus) -> list[Row]:
    """The poll_stats row of the sync pass a status update reports as ended (or failed):
    none before the first pass ends, and none while the next pass runs (its start
    is after the last end; the ended pass's row was written when it ended).
    A pass is keyed by mailbox, end time and `sync_generation` (which counts
    passes that succeeded), so a replayed update replaces its own row only.
    Connectors publish a pass that changed nothing only as a heartbeat, so idle
    polls are sampled, not all listed. Counters are running totals: one pass's
    work is the difference to the mailbox's previous row."""
    started, finished = status.last_sync_started_at, status.last_sync_at
    if finished is None or (started is not None and started > finished):
        return []
    duration_ms = round((finished - started).total_seconds() * 1000) if started else 0
    return [
        (
            status.mailbox_id,
            status.sync_generation,
            started,
            finished,
            duration_ms,
            status.state.value,
            status.incoming_status.value,
            status.pending_items,
            *_counter_values(status.counters),
            status.last_error_code or "",
            status.next_poll_at,
            status.worker or "",
            status.updated_at,
        )
    ]


def outgoing_status_row(status: OutgoingStatus) -> Row:
    """The outgoing_status row of one send status (the latest `updated_at` wins)."""
    return (
        status.activity_id,
        status.mailbox_id,
        status.status.value,
        status.message_id,
        status.attempt,
        status.tracking_token or "",
        status.error_code or "",
        status.error_message or "",
        status.next_attempt_at,
        status.sent_at,
        tuple(status.accepted),
        tuple(status.refused),
        int(status.copied_to_sent),
        status.worker or "",
        status.updated_at,
    )


def act_record_row(record: ActRecord) -> Row:
    """The act_records row of one appointment, contact or task (the highest `version`
    wins). `subject` is a contact's display name; `payload` the whole item as JSON;
    `party_records` every CRM record its organizer and attendees resolved to."""
    payload = record.payload
    start = end = None
    location = organizer = recurrence = ""
    attendees: tuple[str, ...] = ()
    exceptions = cancelled = 0
    if isinstance(payload, Appointment):
        subject = payload.subject
        start, end, location = payload.start, payload.end, payload.location
        organizer = payload.organizer.address if payload.organizer else ""
        attendees = tuple(a.address for a in payload.attendees)
        recurrence = payload.recurrence.full_rrule() if payload.recurrence else ""
        exceptions, cancelled = len(payload.exceptions), int(payload.is_cancelled)
    elif isinstance(payload, Contact):
        subject = payload.display_name or " ".join(
            p for p in (payload.given_name, payload.surname) if p
        )
    else:
        subject, start, end = payload.subject, payload.start, payload.due
    source = record.source
    return (
        record.record_id,
        record.record_type.value,
        record.version,
        subject,
        start,
        end,
        location,
        organizer,
        attendees,
        recurrence,
        exceptions,
        cancelled,
        tuple(payload.categories),
        _ref(record.owner),
        tuple(sorted({str(r) for p in record.parties for r in p.records})),
        source.mailbox_id if source else "",
        source.item_id if source else "",
        record.origin,
        record.change_time,
        _PAYLOAD_JSON.encode(payload).decode(),
        record.updated_at,
    )


_PAYLOAD_JSON = msgspec.json.Encoder()
