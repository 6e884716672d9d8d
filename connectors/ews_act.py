"""EWS appointments, contacts and tasks → the protocol-neutral payloads of schemas/act.py.

Pure: exchangelib item objects (CalendarItem, Contact, Task: what GetItem returns,
parsed by exchangelib) in, `Appointment` / `Contact` / `Task` out; no request is
made here. connectors/ews_client.py fetches the items (and the changed occurrences
of a series), connectors/ews.py turns the payloads into change events.

Recurrence: an EWS pattern (Daily, Weekly, AbsoluteMonthly, RelativeMonthly,
AbsoluteYearly, RelativeYearly) becomes an iCalendar RRULE; its range (NoEnd,
EndDate, Numbered) the series' start date and end date or count. SyncFolderItems
returns the series master only (occurrences and exceptions are not items of the
folder), so a series is one payload: its `ModifiedOccurrences` (new start and end,
plus subject and location read from the occurrence itself) and
`DeletedOccurrences` (cancelled) become `exceptions`. Task regeneration patterns
(regenerating tasks) are not mapped: such a task syncs without its recurrence.

Time zones: times are UTC in the payload; `time_zone` (and the recurrence's) is the
IANA name of the item's StartTimeZone (exchangelib maps the server's Windows id with
the CLDR table; connectors/act_zones.py). An all-day item runs from midnight to
midnight in that zone. EWS expands a series itself (ModifiedOccurrences,
DeletedOccurrences), so this reader expands nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

import msgspec

from connectors.act_zones import UnknownTimeZone, all_day_span, iana_name, zone
from connectors.source import item_event
from schemas.act import (
    BODY_LIMIT,
    ActPayload,
    ActType,
    Appointment,
    Attendee,
    AttendeeRole,
    Contact,
    Importance,
    OccurrenceChange,
    PhoneNumber,
    PostalAddress,
    Recurrence,
    ResponseStatus,
    Sensitivity,
    Task,
    TaskStatus,
)
from schemas.mail import ChangeKind, ItemType, MailItemChanged

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
"""exchangelib's weekday numbers 1..7 (Monday first) as iCalendar day codes."""
DAY_CLASSES = {8: "MO,TU,WE,TH,FR,SA,SU", 9: "MO,TU,WE,TH,FR", 10: "SA,SU"}
"""exchangelib's Day / Weekday / WeekendDay (8, 9, 10) as BYDAY lists (with BYSETPOS)."""
WEEK_INDEX = {1: 1, 2: 2, 3: 3, 4: 4, 5: -1}
"""exchangelib's DayOfWeekIndex First..Fourth, Last as BYSETPOS / BYDAY ordinals."""

RESPONSES = {
    "Unknown": ResponseStatus.NONE,
    "Organizer": ResponseStatus.ORGANIZER,
    "Tentative": ResponseStatus.TENTATIVE,
    "Accept": ResponseStatus.ACCEPTED,
    "Decline": ResponseStatus.DECLINED,
    "NoResponseReceived": ResponseStatus.NOT_RESPONDED,
}
SENSITIVITIES = {
    "Normal": Sensitivity.NORMAL,
    "Personal": Sensitivity.PERSONAL,
    "Private": Sensitivity.PRIVATE,
    "Confidential": Sensitivity.CONFIDENTIAL,
}
TASK_STATUSES = {
    "NotStarted": TaskStatus.NOT_STARTED,
    "InProgress": TaskStatus.IN_PROGRESS,
    "Completed": TaskStatus.COMPLETED,
    "WaitingOnOthers": TaskStatus.WAITING,
    "Deferred": TaskStatus.DEFERRED,
}
IMPORTANCES = {"Low": Importance.LOW, "Normal": Importance.NORMAL, "High": Importance.HIGH}
FREE_BUSY = {
    "Free": "free",
    "Tentative": "tentative",
    "Busy": "busy",
    "OOF": "oof",
    "WorkingElsewhere": "workingElsewhere",
    "NoData": "",
}


class UnsupportedItem(ValueError):
    """An item of an ACT folder that is none of the three kinds (e.g. a distribution
    list in Contacts); the connector reports it unreadable, with this reason."""


def utc(value: Any) -> datetime | None:
    """An exchangelib EWSDateTime / EWSDate (or None) as a plain UTC datetime; a date is
    midnight UTC of that day."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return datetime.fromtimestamp(value.timestamp(), UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise TypeError(f"not a date or datetime: {value!r}")


def plain_date(value: Any) -> date:
    """The date of an exchangelib EWSDate / EWSDateTime."""
    return date(value.year, value.month, value.day)


_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"[ \t]+")


def body_text(body: Any) -> tuple[str, bool]:
    """An item body as text (an HTMLBody reduced to its text) and whether it was cut to
    BODY_LIMIT characters."""
    if body is None:
        return "", False
    text = str(body)
    if type(body).__name__ == "HTMLBody":
        text = _TAGS.sub(" ", text)
        text = _SPACE.sub(" ", text).strip()
    if len(text) > BODY_LIMIT:
        return text[:BODY_LIMIT], True
    return text, False


def attendee(mailbox: Any, role: AttendeeRole, response: Any = None) -> Attendee | None:
    """An exchangelib Mailbox (and its response) as an Attendee; None without an address."""
    address = (getattr(mailbox, "email_address", None) or "").strip().lower()
    if not address:
        return None
    return Attendee(
        address=address,
        name=getattr(mailbox, "name", None) or "",
        role=role,
        response=RESPONSES.get(str(response or ""), ResponseStatus.NONE),
    )


def attendees(item: Any) -> list[Attendee]:
    """Required, optional and resource attendees, in that order, each address once."""
    out: list[Attendee] = []
    seen: set[str] = set()
    for field, role in (
        ("required_attendees", AttendeeRole.REQUIRED),
        ("optional_attendees", AttendeeRole.OPTIONAL),
        ("resources", AttendeeRole.RESOURCE),
    ):
        for entry in getattr(item, field, None) or ():
            found = attendee(entry.mailbox, role, entry.response_type)
            if found is not None and found.address not in seen:
                seen.add(found.address)
                out.append(found)
    return out


def rrule(pattern: Any) -> str:
    """An exchangelib recurrence pattern as an iCalendar RRULE pattern (no range)."""
    kind = type(pattern).__name__
    interval = getattr(pattern, "interval", None) or 1
    if kind == "DailyPattern":
        return f"FREQ=DAILY;INTERVAL={interval}"
    if kind == "WeeklyPattern":
        days = ",".join(WEEKDAYS[d - 1] for d in sorted(pattern.weekdays or ()))
        rule = f"FREQ=WEEKLY;INTERVAL={interval};BYDAY={days}"
        first = getattr(pattern, "first_day_of_week", None)
        return f"{rule};WKST={WEEKDAYS[first - 1]}" if first else rule
    if kind == "AbsoluteMonthlyPattern":
        return f"FREQ=MONTHLY;INTERVAL={interval};BYMONTHDAY={pattern.day_of_month}"
    if kind == "AbsoluteYearlyPattern":
        return f"FREQ=YEARLY;INTERVAL=1;BYMONTH={pattern.month};BYMONTHDAY={pattern.day_of_month}"
    if kind in ("RelativeMonthlyPattern", "RelativeYearlyPattern"):
        freq = "MONTHLY" if kind == "RelativeMonthlyPattern" else "YEARLY"
        rule = f"FREQ={freq};INTERVAL={interval if freq == 'MONTHLY' else 1}"
        position = WEEK_INDEX[pattern.week_number]
        if pattern.weekday in DAY_CLASSES:
            rule += f";BYDAY={DAY_CLASSES[pattern.weekday]};BYSETPOS={position}"
        else:
            rule += f";BYDAY={position}{WEEKDAYS[pattern.weekday - 1]}"
        if freq == "YEARLY":
            rule += f";BYMONTH={pattern.month}"
        return rule
    raise UnsupportedItem(f"recurrence pattern {kind} is not supported")


def recurrence(value: Any, time_zone: str) -> Recurrence | None:
    """An exchangelib Recurrence (pattern + boundary) as a Recurrence."""
    if value is None or getattr(value, "pattern", None) is None:
        return None
    boundary = value.boundary
    kind = type(boundary).__name__
    end = plain_date(boundary.end) if kind == "EndDatePattern" else None
    count = int(boundary.number) if kind == "NumberedPattern" else None
    first = getattr(value.pattern, "first_day_of_week", None)
    return Recurrence(
        rrule=rrule(value.pattern),
        start_date=plain_date(boundary.start),
        end_date=end,
        count=count,
        time_zone=time_zone,
        first_day_of_week=WEEKDAYS[first - 1] if first else "",
    )


def occurrence_changes(item: Any, details: Mapping[str, Any]) -> list[OccurrenceChange]:
    """A master's ModifiedOccurrences and DeletedOccurrences, by original start.

    `details` maps a modified occurrence's item id to the occurrence item GetItem
    returned (for its subject and location); a missing one keeps only its times.
    """
    out: list[OccurrenceChange] = []
    for occurrence in getattr(item, "modified_occurrences", None) or ():
        original = utc(occurrence.original_start)
        if original is None:
            continue
        read = details.get(getattr(occurrence, "id", None) or "")
        subject = getattr(read, "subject", None) if read is not None else None
        location = getattr(read, "location", None) if read is not None else None
        out.append(
            OccurrenceChange(
                original_start=original,
                start=utc(occurrence.start),
                end=utc(occurrence.end),
                subject=subject if subject != item.subject else None,
                location=location if location != item.location else None,
            )
        )
    for deleted in getattr(item, "deleted_occurrences", None) or ():
        start = utc(deleted.start)
        if start is not None:
            out.append(OccurrenceChange(original_start=start, cancelled=True))
    return sorted(out, key=lambda c: c.original_start)


def zone_name(value: Any) -> str:
    """The IANA name of an exchangelib EWSTimeZone (a ZoneInfo whose key is IANA,
    mapped from the server's Windows id by exchangelib's CLDR map); "" when there is
    none. UnsupportedItem for a zone connectors/act_zones.py cannot resolve."""
    if value is None:
        return ""
    name = str(getattr(value, "key", "") or getattr(value, "ms_id", "") or "")
    try:
        return iana_name(name)
    except UnknownTimeZone as exc:
        raise UnsupportedItem(str(exc)) from None


def item_zone(item: Any) -> str:
    """The IANA name of a calendar item's zone: its StartTimeZone (Exchange 2010 and
    later), else its MeetingTimeZone (2007); "" when the server gave none, or gave a
    Windows id exchangelib's map does not know (exchangelib then warns and keeps
    None: the times stay exact in UTC, only the zone name is unknown)."""
    found = getattr(item, "_start_timezone", None) or getattr(item, "_meeting_timezone", None)
    return zone_name(found)


def all_day_times(item: Any, where: str) -> tuple[datetime, datetime] | None:
    """An all-day item's (start, exclusive end) in UTC: midnight to midnight in its
    zone (`where`, IANA; "" is UTC). exchangelib gives an all-day item's first and
    last day as dates (the last day itself); None when they are not dates."""
    if isinstance(item.start, datetime) or not isinstance(item.start, date):
        return None
    if isinstance(item.end, datetime) or not isinstance(item.end, date):
        return None
    last = max(plain_date(item.end), plain_date(item.start))
    return all_day_span(plain_date(item.start), last, zone(where))


def to_appointment(item: Any, details: Mapping[str, Any] | None = None) -> Appointment:
    """An exchangelib CalendarItem (a single item or a series master) as an Appointment."""
    text, cut = body_text(item.body)
    start, end = utc(item.start), utc(item.end)
    if start is None or end is None:
        raise UnsupportedItem("the calendar item has no start or end")
    where = item_zone(item)
    days = all_day_times(item, where) if item.is_all_day else None
    if days is not None:
        # exchangelib gives an all-day item's last day itself; the payload's end is
        # exclusive (iCalendar's DTEND): midnight after it, in the item's zone
        start, end = days
    organizer = attendee(item.organizer, AttendeeRole.REQUIRED, "Organizer")
    return Appointment(
        ical_uid=item.uid or "",
        subject=item.subject or "",
        body=text,
        body_truncated=cut,
        start=start,
        end=end,
        all_day=bool(item.is_all_day),
        time_zone=where,
        location=item.location or "",
        organizer=organizer,
        attendees=attendees(item),
        recurrence=recurrence(item.recurrence, where),
        exceptions=occurrence_changes(item, details or {}),
        is_cancelled=bool(item.is_cancelled),
        is_meeting=bool(item.is_meeting),
        show_as=FREE_BUSY.get(str(item.legacy_free_busy_status or ""), ""),
        categories=list(item.categories or ()),
        sensitivity=SENSITIVITIES.get(str(item.sensitivity or ""), Sensitivity.NORMAL),
        change_time=utc(item.last_modified_time),
        change_key=item.changekey or "",
    )


def to_contact(item: Any) -> Contact:
    """An exchangelib Contact as a Contact (emails lower-cased, primary first)."""
    emails = sorted(
        (e for e in item.email_addresses or () if getattr(e, "email", None)),
        key=lambda e: str(e.label or ""),
    )
    phones = [
        PhoneNumber(kind=_camel(str(p.label or "other")), number=p.phone_number)
        for p in item.phone_numbers or ()
        if getattr(p, "phone_number", None)
    ]
    addresses = [
        PostalAddress(
            kind=str(a.label or "other").lower(),
            street=a.street or "",
            city=a.city or "",
            state=a.state or "",
            postal_code=a.zipcode or "",
            country=a.country or "",
        )
        for a in item.physical_addresses or ()
    ]
    notes, _ = body_text(item.body)
    return Contact(
        given_name=item.given_name or "",
        middle_name=item.middle_name or "",
        surname=item.surname or "",
        display_name=item.display_name or "",
        emails=[e.email.strip().lower() for e in emails],
        phones=phones,
        company=item.company_name or "",
        job_title=item.job_title or "",
        department=item.department or "",
        addresses=addresses,
        notes=notes,
        categories=list(item.categories or ()),
        change_time=utc(item.last_modified_time),
        change_key=item.changekey or "",
    )


def to_task(item: Any) -> Task:
    """An exchangelib Task as a Task (percent complete rounded to an integer)."""
    text, cut = body_text(item.body)
    return Task(
        subject=item.subject or "",
        body=text,
        body_truncated=cut,
        start=utc(item.start_date),
        due=utc(item.due_date),
        completed=utc(item.complete_date),
        status=TASK_STATUSES.get(str(item.status or ""), TaskStatus.NOT_STARTED),
        percent_complete=round(float(item.percent_complete or 0)),
        importance=IMPORTANCES.get(str(item.importance or ""), Importance.NORMAL),
        categories=list(item.categories or ()),
        change_time=utc(item.last_modified_time),
        change_key=item.changekey or "",
    )


def to_payload(item: Any, details: Mapping[str, Any] | None = None) -> ActPayload:
    """Any of the three exchangelib items as its payload; UnsupportedItem otherwise."""
    kind = type(item).__name__
    if kind == "CalendarItem":
        return to_appointment(item, details)
    if kind == "Contact":
        return to_contact(item)
    if kind == "Task":
        return to_task(item)
    raise UnsupportedItem(f"a {kind} is not an appointment, contact or task")


def modified_occurrence_ids(items: Iterable[Any]) -> list[str]:
    """The item ids of the modified occurrences of every series master in `items`."""
    return [
        occurrence.id
        for item in items
        if type(item).__name__ == "CalendarItem"
        for occurrence in getattr(item, "modified_occurrences", None) or ()
        if getattr(occurrence, "id", None)
    ]


def _camel(label: str) -> str:
    """EWS phone labels ("BusinessPhone", "MobilePhone") as Graph-style kinds
    ("business", "mobile")."""
    text = label.removesuffix("Phone") or label
    return text[:1].lower() + text[1:]


ITEM_TYPES = {
    ActType.APPOINTMENT: ItemType.APPOINTMENT,
    ActType.CONTACT: ItemType.CONTACT,
    ActType.TASK: ItemType.TASK,
}


def act_event(
    mailbox_id: str,
    folder: str,
    item_id: str,
    kind: ActType,
    change: ChangeKind,
    observed_at: datetime,
    payload: ActPayload | None = None,
    *,
    version: str = "",
    unreadable: tuple[str, str] | None = None,
) -> MailItemChanged:
    """The change event of an appointment, contact or task (any protocol): the common
    event (its id from mailbox, folder, item, change and version) with `item_type`
    and the payload. `version` is the item's change key, so a new version of an item
    is a new event and a re-emitted one the same."""
    event = item_event(
        mailbox_id,
        folder,
        item_id,
        change,
        observed_at,
        version=version,
        server_time=payload.change_time if payload is not None else None,
        unreadable=unreadable,
    )
    return msgspec.structs.replace(event, item_type=ITEM_TYPES[kind], act=payload)
