"""Exchange Web Services: CRM appointments, contacts and tasks written into a mailbox,
and read back for the two-way merge (connectors/act_writer.py decides what to write;
this is its EWS target, beside the Graph one in connectors/act_graph_write.py).

Operations, all through exchangelib (blocking: each call runs in a worker thread,
holding a slot of the server profile's gate):

- create: CreateItem of a CalendarItem, Contact or Task in the distinguished
  Calendar / Contacts / Tasks folder. A meeting with attendees is created with
  SendMeetingInvitations=SendToAllAndSaveCopy (Exchange sends the invitations;
  the writer strips attendees from copies that must not invite anyone), anything
  else with SendToNone. The CRM's iCalendar UID is set as the item's UID, so the
  organizer's and the attendees' copies carry the meeting's identity.
- idempotent create: EWS has no Graph `transactionId`. Every created item carries
  the link's transaction id in an extended MAPI property of tidings' own property
  set (`LINK_PROPERTY`); before creating, FindItem looks for an item holding it
  (a Restriction IsEqualTo on the ExtendedFieldURI), so a create whose answer or
  link was lost returns the first item instead of making a second.
- read: GetItem (all properties) mapped by connectors/ews_act.py, the same mapping
  the Exchange → CRM path uses, with a series' modified occurrences.
- update: UpdateItem with SetItemField / DeleteItemField for the CRM-won fields
  only (an empty value is a DeleteItemField), ConflictResolution=AutoResolve,
  SendMeetingInvitationsOrCancellations=SendToAllAndSaveCopy for a meeting with
  attendees (SendToNone otherwise).
- recurring series: the RRULE becomes an EWS Recurrence (Daily, Weekly,
  Absolute/RelativeMonthly, Absolute/RelativeYearly; Numbered, EndDate or NoEnd
  range). A modified occurrence is an UpdateItem of its OccurrenceItemId
  (RecurringMasterId + InstanceIndex: its 1-based position in the pattern), a
  cancelled one a DeleteItem of it.
- time zones: an appointment is written in its own zone (`Appointment.time_zone`,
  UTC when it has none): start and end as local times with StartTimeZone and
  EndTimeZone set to exchangelib's EWSTimeZone of it (the Windows id from the CLDR
  map), so Exchange evaluates the pattern there and a weekly 09:00 stays 09:00 local
  across daylight saving; an all-day item runs from midnight to midnight in it;
  occurrences are found (InstanceIndex) by the same local-time expansion. A zone
  tidings cannot resolve fails the write (permanent, the reason names it).
- delete: DeleteItem (HardDelete); the organizer's meeting with
  SendMeetingCancellations=SendToAllAndSaveCopy (Exchange cancels it for the
  attendees: "Delete appointments and cancel meetings by using EWS",
  learn.microsoft.com), anything else, including an attendee's own copy, with
  SendToNone (only that copy goes). An item already gone is what was asked.

Errors are classified like the EWS connector (connectors/ews_client.py
`classify`): ErrorServerBusy is waited out for its back-off hint (at most
MAX_BUSY_RETRIES times, and the profile's gate shrinks), HTTP 401 is a permanent
AuthenticationFailed, network failures are transient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
from exchangelib import (
    Account,
    CalendarItem,
    EWSDate,
    EWSDateTime,
    EWSTimeZone,
    ExtendedProperty,
)
from exchangelib import Body as EwsBody
from exchangelib import Contact as EwsContact
from exchangelib import Task as EwsTask
from exchangelib.errors import (
    ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange,
    ErrorCalendarOccurrenceIsDeletedFromRecurrence,
    ErrorItemNotFound,
)
from exchangelib.errors import (
    UnknownTimeZone as ExchangelibUnknownTimeZone,
)
from exchangelib.fields import InvalidField
from exchangelib.indexed_properties import EmailAddress, PhoneNumber, PhysicalAddress
from exchangelib.items import (
    ALL_OCCURRENCES,
    AUTO_RESOLVE,
    SEND_TO_ALL_AND_SAVE_COPY,
    SEND_TO_NONE,
)
from exchangelib.properties import Attendee as EwsAttendee
from exchangelib.properties import ItemId, Mailbox, OccurrenceItemId
from exchangelib.recurrence import (
    AbsoluteMonthlyPattern,
    AbsoluteYearlyPattern,
    DailyPattern,
    EndDatePattern,
    NoEndPattern,
    NumberedPattern,
    RelativeMonthlyPattern,
    RelativeYearlyPattern,
    WeeklyPattern,
)
from exchangelib.recurrence import Recurrence as EwsRecurrence

from connectors import errors
from connectors.act_graph_write import UNSUPPORTED, ItemRef, MailboxItem, occurrence_starts
from connectors.act_zones import UnknownTimeZone, iana_name
from connectors.auth import secret_provider
from connectors.errors import ConnectorError
from connectors.ews_act import (
    DAY_CLASSES,
    WEEK_INDEX,
    WEEKDAYS,
    to_payload,
)
from connectors.ews_client import ServerBusy, classify, make_account, occurrence_details
from connectors.gate import ServerGate
from schemas import metrics
from schemas.act import (
    ActPayload,
    ActType,
    Appointment,
    AttendeeRole,
    Contact,
    Importance,
    OccurrenceChange,
    Recurrence,
    Task,
    TaskStatus,
)
from schemas.mailbox import AuthMethod, EwsSettings, MailboxConfig, ServerProfile

log = logging.getLogger(__name__)
T = TypeVar("T")

PROPERTY_SET_ID = "7f1c4a52-2b8e-4f0c-9a61-74696469e67e"
"""tidings' own MAPI property set (a GUID of ours: nothing else writes in it)."""
LINK_PROPERTY = "TidingsLink"
"""The named property holding the transaction id of the link that created the item."""
LINK_FIELD = "tidings_link"
"""The exchangelib attribute the property is registered as on CalendarItem, Contact, Task."""
MAX_BUSY_RETRIES = 5
"""ErrorServerBusy answers in a row one call waits out before it fails (transient)."""
MAX_BACKOFF_S = 60.0
"""A back-off hint longer than this is left to the writer's retry."""
DEFAULT_BACKOFF_S = 2.0
"""The wait when the server is busy without a hint (doubled per answer in a row)."""
UTC_ZONE = EWSTimeZone("UTC")
FOLDERS = {ActType.APPOINTMENT: "calendar", ActType.CONTACT: "contacts", ActType.TASK: "tasks"}
"""The exchangelib Account attribute of each kind's distinguished folder."""


class TidingsLink(ExtendedProperty):  # type: ignore[misc]
    """The extended property tidings sets on every item it creates (see module doc)."""

    property_set_id = PROPERTY_SET_ID
    property_name = LINK_PROPERTY
    property_type = "String"


def register_link_property() -> None:
    """Register `TidingsLink` on CalendarItem, Contact and Task (once per process)."""
    for cls in (CalendarItem, EwsContact, EwsTask):
        try:
            cls.get_field_by_fieldname(LINK_FIELD)
        except InvalidField:
            cls.register(LINK_FIELD, TidingsLink)


# -- pure mapping: payload → exchangelib values ------------------------------------------

TASK_STATUS = {
    TaskStatus.NOT_STARTED: "NotStarted",
    TaskStatus.IN_PROGRESS: "InProgress",
    TaskStatus.COMPLETED: "Completed",
    TaskStatus.WAITING: "WaitingOnOthers",
    TaskStatus.DEFERRED: "Deferred",
}
IMPORTANCE = {Importance.LOW: "Low", Importance.NORMAL: "Normal", Importance.HIGH: "High"}

APPOINTMENT_FIELDS: dict[str, tuple[str, ...]] = {
    "subject": ("subject",),
    "body": ("body",),
    "start": ("start",),
    "end": ("end",),
    "all_day": ("is_all_day", "start", "end"),
    "location": ("location",),
    "attendees": ("required_attendees", "optional_attendees", "resources"),
    "recurrence": ("recurrence",),
    "categories": ("categories",),
}
"""Synced appointment fields → the exchangelib fields an update sets (`organizer` is
read-only in EWS: Exchange makes the mailbox's user the organizer; `exceptions` are
written occurrence by occurrence)."""
CONTACT_FIELDS: dict[str, tuple[str, ...]] = {
    "given_name": ("given_name",),
    "middle_name": ("middle_name",),
    "surname": ("surname",),
    "display_name": ("display_name",),
    "emails": ("email_addresses",),
    "phones": ("phone_numbers",),
    "company": ("company_name",),
    "job_title": ("job_title",),
    "department": ("department",),
    "addresses": ("physical_addresses",),
    "notes": ("body",),
    "categories": ("categories",),
}
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "subject": ("subject",),
    "body": ("body",),
    "start": ("start_date",),
    "due": ("due_date",),
    "status": ("status", "percent_complete"),
    "percent_complete": ("percent_complete",),
    "importance": ("importance",),
    "categories": ("categories",),
}
FIELD_MAPS = {
    ActType.APPOINTMENT: APPOINTMENT_FIELDS,
    ActType.CONTACT: CONTACT_FIELDS,
    ActType.TASK: TASK_FIELDS,
}


def ews_zone(time_zone: str) -> EWSTimeZone:
    """The EWSTimeZone an item in zone `time_zone` (IANA, UTC or Windows; "" is UTC)
    is written in; a permanent UnsupportedItem ConnectorError for a zone neither
    connectors/act_zones.py nor exchangelib's Windows map knows."""
    try:
        name = iana_name(time_zone) or "UTC"
        return UTC_ZONE if name == "UTC" else EWSTimeZone(name)
    except (UnknownTimeZone, ExchangelibUnknownTimeZone) as exc:
        raise errors.permanent(UNSUPPORTED, f"the appointment cannot be written: {exc}") from None


def ews_datetime(moment: datetime, tz: EWSTimeZone = UTC_ZONE) -> EWSDateTime:
    """An aware datetime as an EWSDateTime: its wall-clock time in `tz` (whole seconds)."""
    wall = moment.astimezone(tz)
    return EWSDateTime(
        wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second, tzinfo=tz
    )


def ews_date(moment: datetime | date) -> EWSDate:
    """The (UTC) date of a datetime, or a date, as an EWSDate."""
    day = moment.astimezone(UTC).date() if isinstance(moment, datetime) else moment
    return EWSDate(day.year, day.month, day.day)


def _rrule_parts(rrule: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in rrule.upper().split(";") if "=" in p)


def _weekday(code: str) -> int:
    return WEEKDAYS.index(code[-2:]) + 1


def _position(parts: dict[str, str], byday: str) -> tuple[int, int]:
    """(exchangelib weekday 1..10, week number 1..5) of a relative BYDAY/BYSETPOS rule."""
    days = byday.split(",")
    classes = {v: k for k, v in DAY_CLASSES.items()}
    index = {v: k for k, v in WEEK_INDEX.items()}
    if len(days) == 1 and days[0][:-2]:  # BYDAY=2TU / -1FR
        return _weekday(days[0]), index.get(int(days[0][:-2]), 1)
    setpos = int(parts.get("BYSETPOS", "1"))
    weekday = classes.get(byday, _weekday(days[0]))
    return weekday, index.get(setpos, 1)


def pattern_of(recurrence: Recurrence) -> EwsRecurrence:
    """The EWS Recurrence (pattern and range) of an RRULE (the inverse of
    connectors/ews_act.py `recurrence`); ValueError for a rule EWS cannot hold."""
    parts = _rrule_parts(recurrence.rrule)
    freq = parts.get("FREQ", "")
    interval = int(parts.get("INTERVAL", "1"))
    byday = parts.get("BYDAY", "")
    pattern: Any
    if freq == "DAILY":
        pattern = DailyPattern(interval=interval)
    elif freq == "WEEKLY":
        days = [_weekday(d) for d in byday.split(",") if d] or [recurrence.start_date.isoweekday()]
        first = _weekday(parts["WKST"]) if "WKST" in parts else 1
        pattern = WeeklyPattern(interval=interval, weekdays=sorted(days), first_day_of_week=first)
    elif freq == "MONTHLY" and "BYMONTHDAY" in parts:
        pattern = AbsoluteMonthlyPattern(interval=interval, day_of_month=int(parts["BYMONTHDAY"]))
    elif freq == "MONTHLY" and byday:
        weekday, week = _position(parts, byday)
        pattern = RelativeMonthlyPattern(interval=interval, weekday=weekday, week_number=week)
    elif freq == "MONTHLY":
        pattern = AbsoluteMonthlyPattern(interval=interval, day_of_month=recurrence.start_date.day)
    elif freq == "YEARLY" and byday:
        weekday, week = _position(parts, byday)
        month = int(parts.get("BYMONTH", recurrence.start_date.month))
        pattern = RelativeYearlyPattern(weekday=weekday, week_number=week, month=month)
    elif freq == "YEARLY":
        pattern = AbsoluteYearlyPattern(
            day_of_month=int(parts.get("BYMONTHDAY", recurrence.start_date.day)),
            month=int(parts.get("BYMONTH", recurrence.start_date.month)),
        )
    else:
        raise ValueError(f"recurrence {recurrence.rrule!r} has no EWS pattern")
    start = ews_date(recurrence.start_date)
    boundary: Any
    if recurrence.count is not None:
        boundary = NumberedPattern(start=start, number=recurrence.count)
    elif recurrence.end_date is not None:
        boundary = EndDatePattern(start=start, end=ews_date(recurrence.end_date))
    else:
        boundary = NoEndPattern(start=start)
    return EwsRecurrence(pattern=pattern, boundary=boundary)


def _text(value: str) -> str | None:
    """An empty text as None: an update deletes the field (DeleteItemField)."""
    return value or None


def _body(text: str) -> EwsBody | None:
    return EwsBody(text) if text else None


def _attendees(appointment: Appointment, role: AttendeeRole) -> list[EwsAttendee] | None:
    found = [
        EwsAttendee(
            mailbox=Mailbox(email_address=a.address, name=a.name or None), response_type="Unknown"
        )
        for a in appointment.attendees
        if a.role is role
    ]
    return found or None


def appointment_values(appointment: Appointment) -> dict[str, Any]:
    """The exchangelib CalendarItem attributes of an appointment, in its zone
    (StartTimeZone / EndTimeZone; UTC without one). All-day items run from the first
    day to the last day inclusive, days in that zone, as exchangelib writes dates
    (midnight to midnight there)."""
    tz = ews_zone(appointment.time_zone)
    if appointment.all_day:
        first = appointment.start.astimezone(tz).date()
        last = (appointment.end.astimezone(tz) - timedelta(days=1)).date()
        start: Any = ews_date(first)
        end: Any = ews_date(max(last, first))
    else:
        start, end = ews_datetime(appointment.start, tz), ews_datetime(appointment.end, tz)
    return {
        "subject": _text(appointment.subject),
        "body": _body(appointment.body),
        "start": start,
        "end": end,
        "is_all_day": appointment.all_day,
        "location": _text(appointment.location),
        "required_attendees": _attendees(appointment, AttendeeRole.REQUIRED),
        "optional_attendees": _attendees(appointment, AttendeeRole.OPTIONAL),
        "resources": _attendees(appointment, AttendeeRole.RESOURCE),
        "recurrence": pattern_of(appointment.recurrence) if appointment.recurrence else None,
        "categories": list(appointment.categories) or None,
        "_start_timezone": tz,
        "_end_timezone": tz,
    }


PHONE_LABELS = frozenset(PhoneNumber.LABEL_CHOICES)


def phone_label(kind: str, taken: set[str]) -> str | None:
    """The EWS phone label of a phone kind (the inverse of connectors/ews_act.py:
    "business" → BusinessPhone, then BusinessPhone2; "businessFax" → BusinessFax),
    None when no free label fits."""
    base = kind[:1].upper() + kind[1:]
    for label in (f"{base}Phone", base, f"{base}Phone2", f"{base}2"):
        if label in PHONE_LABELS and label not in taken:
            return label
    return None


def contact_values(contact: Contact) -> dict[str, Any]:
    """The exchangelib Contact attributes of a contact (EWS holds three email
    addresses and one phone per label: the rest is left out)."""
    taken: set[str] = set()
    phones = []
    for phone in contact.phones:
        label = phone_label(phone.kind, taken)
        if label is not None and phone.number:
            taken.add(label)
            phones.append(PhoneNumber(label=label, phone_number=phone.number))
    addresses = []
    seen: set[str] = set()
    for address in contact.addresses:
        label = address.kind[:1].upper() + address.kind[1:].lower()
        if label in PhysicalAddress.LABEL_CHOICES and label not in seen:
            seen.add(label)
            addresses.append(
                PhysicalAddress(
                    label=label,
                    street=address.street or None,
                    city=address.city or None,
                    state=address.state or None,
                    country=address.country or None,
                    zipcode=address.postal_code or None,
                )
            )
    names = " ".join(n for n in (contact.given_name, contact.surname) if n)
    display = contact.display_name or names or (contact.emails[0] if contact.emails else "")
    return {
        "given_name": _text(contact.given_name),
        "middle_name": _text(contact.middle_name),
        "surname": _text(contact.surname),
        "display_name": display or "(no name)",
        "email_addresses": [
            EmailAddress(label=f"EmailAddress{n}", email=e)
            for n, e in enumerate(contact.emails[:3], start=1)
        ]
        or None,
        "phone_numbers": phones or None,
        "company_name": _text(contact.company),
        "job_title": _text(contact.job_title),
        "department": _text(contact.department),
        "physical_addresses": addresses or None,
        "body": _body(contact.notes),
        "categories": list(contact.categories) or None,
    }


def task_values(task: Task) -> dict[str, Any]:
    """The exchangelib Task attributes of a task (EWS due and start dates are dates:
    a time of day is not kept)."""
    percent = task.percent_complete
    if task.status is TaskStatus.COMPLETED:
        percent = 100
    elif task.status is TaskStatus.NOT_STARTED:
        percent = 0
    return {
        "subject": _text(task.subject),
        "body": _body(task.body),
        "start_date": ews_date(task.start) if task.start is not None else None,
        "due_date": ews_date(task.due) if task.due is not None else None,
        "status": TASK_STATUS[task.status],
        "percent_complete": Decimal(percent),
        "importance": IMPORTANCE[task.importance],
        "categories": list(task.categories) or None,
    }


def item_values(payload: ActPayload) -> dict[str, Any]:
    """The exchangelib attributes of any payload."""
    if isinstance(payload, Appointment):
        return appointment_values(payload)
    if isinstance(payload, Contact):
        return contact_values(payload)
    return task_values(payload)


def update_fieldnames(kind: ActType, fields: Iterable[str]) -> list[str]:
    """The exchangelib fields an update of the synced `fields` sets (in a stable
    order; fields EWS does not hold, and `exceptions`, give none)."""
    mapping = FIELD_MAPS[kind]
    out: list[str] = []
    for name in sorted(fields):
        for target in mapping.get(name, ()):
            if target not in out:
                out.append(target)
    return out


def instance_index(series: Appointment, original_start: datetime) -> int | None:
    """The EWS InstanceIndex (1-based position in the pattern) of the occurrence that
    starts at `original_start` (UTC), None when the pattern has no such occurrence."""
    wanted = original_start.astimezone(UTC)
    for n, start in enumerate(occurrence_starts(series), start=1):
        if start == wanted:
            return n
    return None


def occurrence_values(change: OccurrenceChange, tz: EWSTimeZone = UTC_ZONE) -> dict[str, Any]:
    """The attributes a modified occurrence sets (start, end in the series' zone `tz`,
    subject, location)."""
    values: dict[str, Any] = {}
    if change.start is not None:
        values["start"] = ews_datetime(change.start, tz)
    if change.end is not None:
        values["end"] = ews_datetime(change.end, tz)
    if change.subject is not None:
        values["subject"] = change.subject
    if change.location is not None:
        values["location"] = change.location
    return values


def invitations(payload: ActPayload) -> str:
    """SendMeetingInvitations(OrCancellations) for a write of `payload`: to every
    attendee (and a copy in Sent Items) when it is a meeting with attendees."""
    if isinstance(payload, Appointment) and payload.attendees:
        return str(SEND_TO_ALL_AND_SAVE_COPY)
    return str(SEND_TO_NONE)


def as_read(payload: ActPayload, item: Any) -> ActPayload:
    """A payload read back, normalized to what tidings wrote: the weekly pattern's
    FirstDayOfWeek Monday (exchangelib's default, and the RRULE default) is not
    spelled out. (An all-day item's exclusive end is the reading mapping's, in
    connectors/ews_act.py.)"""
    if not isinstance(payload, Appointment):
        return payload
    changes: dict[str, Any] = {}
    rec = payload.recurrence
    if rec is not None and ";WKST=MO" in rec.rrule:
        changes["recurrence"] = msgspec.structs.replace(
            rec, rrule=rec.rrule.replace(";WKST=MO", ""), first_day_of_week=""
        )
    return msgspec.structs.replace(payload, **changes) if changes else payload


# -- the blocking calls -------------------------------------------------------------------


def _stamp(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value.timestamp(), UTC)


@dataclass
class EwsActCalls:
    """One mailbox's Calendar, Contacts and Tasks through exchangelib (blocking)."""

    account: Account

    def folder(self, kind: ActType) -> Any:
        return getattr(self.account, FOLDERS[kind])

    def _ref(self, item: Any) -> ItemRef:
        return ItemRef(
            str(item.id),
            str(item.changekey or ""),
            _stamp(item.last_modified_time),
            str(getattr(item, "uid", None) or ""),
        )

    def read(self, kind: ActType, item_id: str) -> MailboxItem | None:
        """GetItem (all properties) and the mapping; None when the item is gone."""
        (item,) = list(self.account.fetch([ItemId(id=item_id)], chunk_size=1))
        if isinstance(item, ErrorItemNotFound):
            return None
        if isinstance(item, Exception):
            raise item
        details = occurrence_details(self.account, [item])
        return MailboxItem(self._ref(item), as_read(to_payload(item, details), item))

    def find_linked(self, kind: ActType, transaction: str) -> ItemRef | None:
        """The item created for `transaction` (FindItem on the link property), if any."""
        found = list(
            self.folder(kind)
            .filter(**{LINK_FIELD: transaction})
            .only("id", "changekey", "last_modified_time")
        )
        return self._ref(found[0]) if found else None

    def create(self, kind: ActType, payload: ActPayload, transaction: str) -> ItemRef:
        """CreateItem (see the module doc); a series' exceptions applied after."""
        existing = self.find_linked(kind, transaction)
        if existing is not None:
            log.info("EWS create of %s found the item of an earlier attempt", transaction)
            if isinstance(payload, Appointment) and payload.exceptions:
                return self.apply_exceptions(existing, payload, [])
            return existing
        cls = {ActType.APPOINTMENT: CalendarItem, ActType.CONTACT: EwsContact}.get(kind, EwsTask)
        values = item_values(payload)
        values[LINK_FIELD] = transaction
        if isinstance(payload, Appointment) and payload.ical_uid:
            values["uid"] = payload.ical_uid
        item = cls(account=self.account, folder=self.folder(kind), **values)
        if kind is ActType.APPOINTMENT:
            item.save(send_meeting_invitations=invitations(payload))
        else:
            item.save()
        ref = ItemRef(str(item.id), str(item.changekey or ""), None)
        if isinstance(payload, Appointment) and payload.exceptions:
            return self.apply_exceptions(ref, payload, [])
        return self.refreshed(kind, ref)

    def refreshed(self, kind: ActType, ref: ItemRef) -> ItemRef:
        """The item's current ChangeKey and last modified time (GetItem, three fields)."""
        (item,) = list(
            self.account.fetch(
                [ItemId(id=ref.item_id)], only_fields=["changekey", "last_modified_time"]
            )
        )
        if isinstance(item, Exception):
            raise item
        return self._ref(item)

    def update(
        self, kind: ActType, ref: ItemRef, merged: ActPayload, fields: set[str], current: ActPayload
    ) -> ItemRef:
        """UpdateItem of the CRM-won `fields` (exceptions occurrence by occurrence)."""
        names = update_fieldnames(kind, fields)
        if names:
            values = item_values(merged)
            cls = {ActType.APPOINTMENT: CalendarItem, ActType.CONTACT: EwsContact}.get(
                kind, EwsTask
            )
            item = cls(
                account=self.account,
                folder=self.folder(kind),
                id=ref.item_id,
                changekey=ref.change_key,
                **{n: values[n] for n in names},
            )
            if isinstance(merged, Appointment):
                item._start_timezone = item._end_timezone = ews_zone(merged.time_zone)
            item.save(
                update_fields=names,
                conflict_resolution=AUTO_RESOLVE,
                send_meeting_invitations=invitations(merged),
            )
            ref = ItemRef(str(item.id), str(item.changekey or ""), None)
        if (
            isinstance(merged, Appointment)
            and isinstance(current, Appointment)
            and ({"exceptions", "recurrence"} & fields)
            and merged.recurrence is not None
        ):
            done = [] if "recurrence" in fields else current.exceptions
            ref = self.apply_exceptions(ref, merged, done)
        return self.refreshed(kind, ref)

    def apply_exceptions(
        self, ref: ItemRef, series: Appointment, done: list[OccurrenceChange]
    ) -> ItemRef:
        """Make the series' occurrences match `series.exceptions` (those in `done`
        already do): UpdateItem / DeleteItem of each OccurrenceItemId."""
        todo = [c for c in series.exceptions if c not in done]
        send = invitations(series)
        tz = ews_zone(series.time_zone)
        for change in todo:
            index = instance_index(series, change.original_start)
            if index is None:
                log.warning(
                    "occurrence %s is not in the pattern of %s: left out",
                    change.original_start,
                    series.subject,
                )
                continue
            occurrence = CalendarItem(
                account=self.account,
                folder=self.folder(ActType.APPOINTMENT),
                _id=OccurrenceItemId(
                    id=ref.item_id, changekey=ref.change_key, instance_index=index
                ),
            )
            try:
                if change.cancelled:
                    occurrence.delete(
                        send_meeting_cancellations=send,
                        affected_task_occurrences=ALL_OCCURRENCES,
                    )
                else:
                    values = occurrence_values(change, tz)
                    if not values:
                        continue
                    for name, value in values.items():
                        setattr(occurrence, name, value)
                    occurrence._start_timezone = occurrence._end_timezone = tz
                    occurrence.save(
                        update_fields=list(values),
                        conflict_resolution=AUTO_RESOLVE,
                        send_meeting_invitations=send,
                    )
            except (
                ErrorCalendarOccurrenceIsDeletedFromRecurrence,
                ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange,
            ) as exc:
                log.info("occurrence %s of %s: %s", index, ref.item_id, type(exc).__name__)
        return self.refreshed(ActType.APPOINTMENT, ref)

    def delete(self, kind: ActType, item_id: str, cancel: bool) -> None:
        """DeleteItem; `cancel`: the organizer's meeting, cancelled for its attendees."""
        cls = {ActType.APPOINTMENT: CalendarItem, ActType.CONTACT: EwsContact}.get(kind, EwsTask)
        item = cls(account=self.account, folder=self.folder(kind), id=item_id)
        send = SEND_TO_ALL_AND_SAVE_COPY if cancel and kind is ActType.APPOINTMENT else SEND_TO_NONE
        with contextlib.suppress(ErrorItemNotFound):  # already gone: what was asked
            item.delete(send_meeting_cancellations=send, affected_task_occurrences=ALL_OCCURRENCES)


# -- the asynchronous shell ---------------------------------------------------------------


class EwsActTarget:
    """One EWS mailbox's calendar, contacts and tasks, for the writer (the ActTarget
    interface of connectors/act_writer.py): each call in a worker thread, holding a
    slot of the profile's gate, ErrorServerBusy waited out."""

    def __init__(
        self,
        config: MailboxConfig,
        profile: ServerProfile,
        gate: ServerGate,
        *,
        account_factory: Callable[[str], Account] | None = None,
    ) -> None:
        if config.credentials is None and profile.auth != AuthMethod.XOAUTH2:
            raise errors.permanent(
                errors.CONFIGURATION, f"mailbox {config.mailbox_id} has no credentials for EWS"
            )
        register_link_property()
        self.config = config
        self.profile = profile
        self.gate = gate
        self.settings = config.ews or EwsSettings()
        self.user = config.credentials.username if config.credentials else config.email_address
        self.where = f"EWS {self.settings.server_url or profile.host}"
        self._account_factory = account_factory
        self._calls: EwsActCalls | None = None

    async def _connect(self) -> EwsActCalls:
        if self._calls is None:
            try:
                secret = await secret_provider(self.config, self.profile)()
            except LookupError as exc:
                raise errors.permanent(
                    errors.CONFIGURATION, f"mailbox {self.config.mailbox_id}: {exc}"
                ) from None
            if self._account_factory is not None:
                account = self._account_factory(secret)
            else:
                oauth = self.profile.auth == AuthMethod.XOAUTH2
                account = await self._call(
                    make_account, self.config, self.profile, self.settings, secret, 2, oauth
                )
            self._calls = EwsActCalls(account)
        return self._calls

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread holding a gate slot; failures classified."""
        busy = 0
        while True:
            async with self.gate.slot():
                try:
                    return await asyncio.to_thread(fn, *args)
                except ConnectorError:
                    raise
                except Exception as exc:
                    failure = classify(exc, self.where, self.user)
            if isinstance(failure, ConnectorError):
                raise failure from None
            if not isinstance(failure, ServerBusy):  # an expired sync state: not ours
                raise errors.transient(errors.PROTOCOL_ERROR, f"{self.where}: {failure}")
            busy += 1
            wait = failure.back_off_s or DEFAULT_BACKOFF_S * 2 ** (busy - 1)
            metrics.CONNECTOR_THROTTLED.labels("ews").inc()
            self.gate.throttled()
            if busy > MAX_BUSY_RETRIES or wait > MAX_BACKOFF_S:
                raise errors.transient(
                    errors.SERVER_BUSY,
                    f"{self.where} is busy (ErrorServerBusy, back off {wait:.0f}s); retrying later",
                )
            log.info("act writer: %s busy, waiting %.1fs", self.where, wait)
            metrics.CONNECTOR_THROTTLE_WAIT_SECONDS.labels("ews").inc(wait)
            await asyncio.sleep(wait)

    async def get(self, kind: ActType, item_id: str) -> MailboxItem | None:
        calls = await self._connect()
        return await self._call(calls.read, kind, item_id)

    async def create(self, kind: ActType, payload: ActPayload, transaction: str) -> ItemRef:
        calls = await self._connect()
        return await self._call(calls.create, kind, payload, transaction)

    async def update(
        self,
        kind: ActType,
        ref: ItemRef,
        merged: ActPayload,
        fields: set[str],
        current: ActPayload,
    ) -> ItemRef:
        calls = await self._connect()
        return await self._call(calls.update, kind, ref, merged, fields, current)

    async def delete(self, kind: ActType, item_id: str, cancel: bool) -> None:
        calls = await self._connect()
        await self._call(calls.delete, kind, item_id, cancel)

    async def close(self) -> None:
        """Forget the account (exchangelib pools sessions per endpoint and credentials)."""
        self._calls = None
