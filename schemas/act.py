"""Appointments, contacts and tasks ("ACT"): the protocol-neutral contract both ways.

Connectors (EWS, Graph) map a mailbox item to one of the three payloads and send it on
mail.changes (`MailItemChanged.act`); the processors turn a tracked one into an
`ActRecord` on crm.act (key: `record_id`, compacted, tombstone = deleted); the CRM →
Exchange writer reads the same payloads back. Every timestamp is timezone-aware UTC;
`time_zone` fields hold the item's own zone as an IANA name (a Windows name the server
gave is mapped, connectors/act_zones.py; "" when unknown: times stay exact in UTC), so
a series keeps its local time across daylight-saving changes, a writer can put the
zone back and a reader can show local times.

Identity (why the ids are what they are):

* An appointment's record id derives from its iCalendar UID (`appointment_record_id`).
  Exchange gives a meeting the same UID in the organizer's calendar and in every
  attendee's (EWS `CalendarItem/UID`, Graph `event.iCalUId` of the series master or
  single instance: both are the hex of the meeting's GlobalObjectId), so the copies of
  one meeting in two tracked mailboxes are ONE record, the way one email seen in three
  mailboxes is one activity (its id derives from the Message-ID). A recurring series is
  one record: its occurrences' changes and cancellations travel inside it
  (`Appointment.exceptions`), never as records of their own (Graph gives each
  occurrence a different iCalUId, so connectors fold them into the master and use the
  master's). An appointment without a UID (rare: some items created by old clients)
  falls back to the mailbox and item id, like contacts.
* A contact or a task exists in one mailbox only (it has no UID another mailbox would
  share), so its record id derives from the mailbox id and the server's item id
  (`item_record_id`); a second user's copy of "the same" person is a second contact
  record, as in Dynamics, where duplicate detection is a CRM concern.

Both ids are UUIDs (uuid5 under a tidings namespace), so re-emitting a change yields the
same id and sinks stay idempotent.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

import msgspec

from schemas.base import Record, RecordRef
from schemas.crm import ActivityParty
from schemas.ids import uuid5_text

_ACT_NAMESPACE = uuid.UUID("5b0b7f0e-8d3c-4c1e-9f57-61637400c0de")

BODY_LIMIT = 16_000
"""Characters of an item's body (as text) a payload carries; longer ones are truncated
and say so (`body_truncated`)."""


class ActType(StrEnum):
    """Which of the three kinds a payload or record is (same values as `ItemType`)."""

    APPOINTMENT = "appointment"
    CONTACT = "contact"
    TASK = "task"


class AttendeeRole(StrEnum):
    """An attendee's place on a meeting."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    RESOURCE = "resource"  # a room or equipment


class ResponseStatus(StrEnum):
    """An attendee's answer, as the mailbox the item came from knows it."""

    NONE = "none"  # not known / no response requested
    ORGANIZER = "organizer"
    ACCEPTED = "accepted"
    TENTATIVE = "tentative"
    DECLINED = "declined"
    NOT_RESPONDED = "not-responded"


class Sensitivity(StrEnum):
    """Exchange's sensitivity (Dynamics maps private items to private records)."""

    NORMAL = "normal"
    PERSONAL = "personal"
    PRIVATE = "private"
    CONFIDENTIAL = "confidential"


class Importance(StrEnum):
    """A task's importance (Dynamics' priority)."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class TaskStatus(StrEnum):
    """A task's status (EWS TaskStatus / Graph todoTask status, same five values)."""

    NOT_STARTED = "not-started"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    WAITING = "waiting"  # waiting on others
    DEFERRED = "deferred"


class Attendee(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One person or resource on a meeting: address lower-cased, display name as given."""

    address: str
    name: str = ""
    role: AttendeeRole = AttendeeRole.REQUIRED
    response: ResponseStatus = ResponseStatus.NONE


class Recurrence(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A series' pattern.

    `rrule` is the iCalendar RRULE pattern WITHOUT its range, e.g.
    "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO,WE" (FREQ, INTERVAL, BYDAY, BYMONTHDAY, BYMONTH,
    BYSETPOS, WKST only). The range is `start_date` (the series' first day, in the
    series' time zone) and at most one of `end_date` (last day, inclusive) or `count`
    (number of occurrences); neither means no end. `time_zone` is the zone the
    pattern is evaluated in. `full_rrule()` gives the RRULE with its range.
    """

    rrule: str
    start_date: date
    end_date: date | None = None
    count: int | None = None
    time_zone: str = ""
    first_day_of_week: str = ""

    def full_rrule(self) -> str:
        """The RRULE with COUNT or UNTIL (the end date, as a DATE) appended."""
        if self.count is not None:
            return f"{self.rrule};COUNT={self.count}"
        if self.end_date is not None:
            return f"{self.rrule};UNTIL={self.end_date:%Y%m%d}"
        return self.rrule


class OccurrenceChange(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One occurrence of a series that differs from the pattern.

    `original_start` (UTC) names the occurrence (iCalendar RECURRENCE-ID). Either it
    is `cancelled` (Exchange DeletedOccurrences, Graph cancelled occurrence) or it was
    modified: the new fields are set where they differ (None: as the series).
    """

    original_start: datetime
    cancelled: bool = False
    start: datetime | None = None
    end: datetime | None = None
    subject: str | None = None
    location: str | None = None


class Appointment(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="appointment"):
    """A calendar item: a single appointment or meeting, or a whole recurring series.

    `start`/`end` are UTC (for a series: its first occurrence); an all-day item runs
    from midnight to midnight in `time_zone`. `organizer` is None for an appointment
    without attendees that the mailbox owner made. `body` is text (HTML reduced to
    text), at most `BODY_LIMIT` characters. `change_time` is the server's last
    modified time, `change_key` its version token (EWS ChangeKey, Graph changeKey).
    """

    ical_uid: str
    subject: str = ""
    body: str = ""
    body_truncated: bool = False
    start: datetime
    end: datetime
    all_day: bool = False
    time_zone: str = ""
    location: str = ""
    organizer: Attendee | None = None
    attendees: list[Attendee] = msgspec.field(default_factory=list)
    recurrence: Recurrence | None = None
    exceptions: list[OccurrenceChange] = msgspec.field(default_factory=list)
    is_cancelled: bool = False
    is_meeting: bool = False
    show_as: str = ""  # free / tentative / busy / oof / workingElsewhere, "" unknown
    categories: list[str] = msgspec.field(default_factory=list)
    sensitivity: Sensitivity = Sensitivity.NORMAL
    change_time: datetime | None = None
    change_key: str = ""


class PhoneNumber(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A phone number and its kind ("business", "home", "mobile", "businessFax", ...)."""

    kind: str
    number: str


class PostalAddress(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A postal address and its kind ("business", "home", "other")."""

    kind: str
    street: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""


class Contact(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="contact"):
    """A mailbox contact. `emails` are lower-cased addresses, the first is the primary."""

    given_name: str = ""
    middle_name: str = ""
    surname: str = ""
    display_name: str = ""
    emails: list[str] = msgspec.field(default_factory=list)
    phones: list[PhoneNumber] = msgspec.field(default_factory=list)
    company: str = ""
    job_title: str = ""
    department: str = ""
    addresses: list[PostalAddress] = msgspec.field(default_factory=list)
    notes: str = ""
    categories: list[str] = msgspec.field(default_factory=list)
    change_time: datetime | None = None
    change_key: str = ""


class Task(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="task"):
    """A task (Outlook task through EWS, Microsoft To Do task through Graph).

    `start`/`due`/`completed` are UTC (a date-only due date is midnight UTC of that
    day). `body` is text, at most `BODY_LIMIT` characters.
    """

    subject: str = ""
    body: str = ""
    body_truncated: bool = False
    start: datetime | None = None
    due: datetime | None = None
    completed: datetime | None = None
    status: TaskStatus = TaskStatus.NOT_STARTED
    percent_complete: int = 0
    importance: Importance = Importance.NORMAL
    categories: list[str] = msgspec.field(default_factory=list)
    change_time: datetime | None = None
    change_key: str = ""


ActPayload = Appointment | Contact | Task
"""One appointment, contact or task; tagged on the wire by `"type"`."""


def act_type(payload: ActPayload) -> ActType:
    """The kind of `payload`."""
    if isinstance(payload, Appointment):
        return ActType.APPOINTMENT
    if isinstance(payload, Contact):
        return ActType.CONTACT
    return ActType.TASK


def normalize_uid(uid: str) -> str:
    """An iCalendar UID without surrounding or inner whitespace (Exchange's hex UIDs are
    case-insensitive, so those are upper-cased; any other UID keeps its case)."""
    text = "".join(uid.split())
    if text and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.upper()
    return text


def appointment_record_id(ical_uid: str) -> str:
    """The record id of a meeting or appointment: the same for every mailbox's copy."""
    return uuid5_text(_ACT_NAMESPACE, f"appointment:{normalize_uid(ical_uid)}")


def item_record_id(kind: ActType, mailbox_id: str, item_id: str) -> str:
    """The record id of an item only one mailbox holds (a contact, a task, or an
    appointment without a UID)."""
    return uuid5_text(_ACT_NAMESPACE, f"{kind.value}:{mailbox_id}\x1f{item_id}")


def record_id_for(payload: ActPayload, mailbox_id: str, item_id: str) -> str:
    """The record id `payload` (from `item_id` of `mailbox_id`) is stored under."""
    if isinstance(payload, Appointment) and normalize_uid(payload.ical_uid):
        return appointment_record_id(payload.ical_uid)
    return item_record_id(act_type(payload), mailbox_id, item_id)


class ActSource(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where a version of a record came from: a mailbox, its folder and the item id."""

    mailbox_id: str
    folder: str
    item_id: str


class ActRecord(Record, frozen=True, kw_only=True):
    """A CRM appointment, contact or task that tidings keeps in step with a mailbox.

    Keyed by `record_id` on crm.act (compacted; a tombstone deletes the record).
    `payload` is the item as the mailbox holds it; `parties` its organizer and
    attendees resolved to CRM records (roles organizer / required / optional /
    resource; empty for contacts and tasks); `owner` the owner of the mailbox the
    version came from (a user or a queue); `source` that mailbox's item; `mailboxes`
    every mailbox where the record is known to be tracked. `origin` says which side
    wrote this version ("exchange": read from a mailbox; "crm": a CRM change the
    CRM → Exchange writer took over). `version` grows with `change_time` (ms since
    the epoch), so the latest change wins in the sinks whichever copy carried it.
    """

    record_id: str
    record_type: ActType
    version: int
    payload: ActPayload
    owner: RecordRef | None = None
    parties: list[ActivityParty] = msgspec.field(default_factory=list)
    regarding: RecordRef | None = None
    source: ActSource | None = None
    mailboxes: list[str] = msgspec.field(default_factory=list)
    origin: str = "exchange"
    change_time: datetime | None = None
    updated_at: datetime


def version_of(change_time: datetime | None) -> int:
    """A record version from a change time: milliseconds since the epoch (0 unknown)."""
    return int(change_time.timestamp() * 1000) if change_time is not None else 0


__all__ = [
    "BODY_LIMIT",
    "ActPayload",
    "ActRecord",
    "ActSource",
    "ActType",
    "Appointment",
    "Attendee",
    "AttendeeRole",
    "Contact",
    "Importance",
    "OccurrenceChange",
    "PhoneNumber",
    "PostalAddress",
    "Recurrence",
    "ResponseStatus",
    "Sensitivity",
    "Task",
    "TaskStatus",
    "act_type",
    "appointment_record_id",
    "item_record_id",
    "normalize_uid",
    "record_id_for",
    "version_of",
]
