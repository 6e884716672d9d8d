"""Microsoft Graph appointments, contacts and To Do tasks → the payloads of schemas/act.py.

Pure: Graph JSON resources in, `Appointment` / `Contact` / `Task` out, plus the
decisions a delta round needs; no request is made here
(connectors/graph_act_sync.py makes them).

Which delta, and why. Graph v1.0 tracks calendar changes only through
`/users/{id}/calendarView/delta?startDateTime=..&endDateTime=..`: a fixed window
whose rows are instances (`singleInstance`, and the `occurrence` and `exception`
rows of a series, each with `seriesMasterId`), never the series master. The
unbounded `/calendars/{id}/events/delta`, which does list masters, is beta only
("not supported in production applications"), so tidings uses the window
(`CALENDAR_PAST_DAYS` back, `CALENDAR_FUTURE_DAYS` ahead, renewed every
`WINDOW_RENEW_DAYS`) and folds the instance rows back into their series: a round
collects the masters its rows name, reads each master (`GET /events/{id}`) and
its instances inside the window (`GET /events/{id}/instances`), and makes ONE
payload per series under the master's id and `iCalUId` (Graph gives every
occurrence an iCalUId of its own; the master's is the one the organizer's and the
attendees' copies share). `exception` instances become modified
`OccurrenceChange`s; an occurrence the pattern has but the instances lack (the
organizer deleted it) or that `isCancelled` (an attendee's copy of a cancelled
occurrence) becomes a cancelled one. Contacts use `/contacts/delta` (the default
contact folder) and tasks `/todo/lists/{list}/tasks/delta` (the default To Do
list: where connectors/act_graph_write.py writes them).

Times: the reader asks for UTC (`Prefer: outlook.timezone="UTC"`); a dateTimeTimeZone
in another zone (IANA, or a Windows name such as "Pacific Standard Time", Graph's
default) is converted (connectors/act_zones.py, exchangelib's CLDR map). The payload's
`time_zone` is the IANA name of the event's `originalStartTimeZone`, the recurrence's
that of its `recurrenceTimeZone`. A series' pattern is expanded in that zone at its
first occurrence's wall-clock time, as Exchange does, so a weekly 09:00 stays 09:00
local across a daylight-saving change (and no occurrence is taken for cancelled). An
all-day event runs from midnight to midnight in its zone (Graph gives all-day times
as dates). A zone tidings cannot resolve makes a series or an all-day event
unreadable (the reason names the zone); a single timed event keeps its exact UTC
times with an empty `time_zone`.

A `@removed` row does not prove a delete: a calendarView also drops an event that
moved out of its window, so a removed single instance or master is confirmed by a
GET (404: deleted). A removed occurrence only means its series changed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from connectors.act_zones import (
    UnknownTimeZone,
    all_day_span,
    at_local,
    iana_name,
    series_starts,
    zone,
)
from connectors.ews_act import UnsupportedItem
from connectors.graph_items import Known, change_hash
from schemas.act import (
    BODY_LIMIT,
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

CALENDAR_PAST_DAYS = 90
"""Days before today the calendar window starts (older meetings are not read)."""
CALENDAR_FUTURE_DAYS = 365
"""Days after today the calendar window ends."""
WINDOW_RENEW_DAYS = 7
"""A window this many days old is replaced by a fresh one (a full round that emits
only what changed; items that left the window are forgotten, not deleted)."""
PREFER_UTC = 'outlook.timezone="UTC"'
"""The Prefer header value that makes Graph answer dateTimeTimeZone values in UTC."""
OCCURRENCE_MARK = ">"
"""Known-map values starting with this name the series an occurrence row belongs to
(">" + master id) instead of a change hash."""

DAY_CODES = {
    "monday": "MO",
    "tuesday": "TU",
    "wednesday": "WE",
    "thursday": "TH",
    "friday": "FR",
    "saturday": "SA",
    "sunday": "SU",
}
DAY_ORDER = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
WEEK_INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
RESPONSES = {
    "none": ResponseStatus.NONE,
    "organizer": ResponseStatus.ORGANIZER,
    "tentativelyAccepted": ResponseStatus.TENTATIVE,
    "accepted": ResponseStatus.ACCEPTED,
    "declined": ResponseStatus.DECLINED,
    "notResponded": ResponseStatus.NOT_RESPONDED,
}
ROLES = {
    "required": AttendeeRole.REQUIRED,
    "optional": AttendeeRole.OPTIONAL,
    "resource": AttendeeRole.RESOURCE,
}
SENSITIVITIES = {
    "normal": Sensitivity.NORMAL,
    "personal": Sensitivity.PERSONAL,
    "private": Sensitivity.PRIVATE,
    "confidential": Sensitivity.CONFIDENTIAL,
}
TASK_STATUSES = {
    "notStarted": TaskStatus.NOT_STARTED,
    "inProgress": TaskStatus.IN_PROGRESS,
    "completed": TaskStatus.COMPLETED,
    "waitingOnOthers": TaskStatus.WAITING,
    "deferred": TaskStatus.DEFERRED,
}
IMPORTANCES = {"low": Importance.LOW, "normal": Importance.NORMAL, "high": Importance.HIGH}
SERIES_TYPES = frozenset({"occurrence", "exception"})
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


class ActPage(msgspec.Struct, frozen=True):
    """A page of an ACT delta round: raw rows, and the next page or the delta link."""

    value: list[dict[str, Any]] = msgspec.field(default_factory=list)
    next_link: str | None = msgspec.field(default=None, name="@odata.nextLink")
    delta_link: str | None = msgspec.field(default=None, name="@odata.deltaLink")


ACT_PAGE = msgspec.json.Decoder(ActPage)


# -- values ---------------------------------------------------------------------------


def iana(name: str) -> str:
    """The IANA name of a Graph zone name (IANA, UTC or Windows; "" stays "");
    UnsupportedItem naming it when connectors/act_zones.py cannot resolve it."""
    try:
        return iana_name(name)
    except UnknownTimeZone as exc:
        raise UnsupportedItem(str(exc)) from None


def _wall(value: Mapping[str, Any]) -> datetime:
    """The naive wall-clock time of a dateTimeTimeZone ("2026-03-02T09:00:00.0000000")."""
    return datetime.fromisoformat(str(value["dateTime"])[:19])


def graph_time(value: Mapping[str, Any] | None) -> datetime | None:
    """A Graph dateTimeTimeZone as an aware UTC datetime (None when absent); its zone
    may be UTC, an IANA or a Windows name. UnsupportedItem for an unknown zone."""
    if not value or not value.get("dateTime"):
        return None
    return at_local(_wall(value), zone(iana(str(value.get("timeZone") or "UTC"))))


def stamp(value: Any) -> datetime | None:
    """A Graph DateTimeOffset ("2026-03-02T09:00:00Z", fractions allowed) in UTC."""
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python parses at most 6 fractional digits
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def attendee_of(entry: Mapping[str, Any], organizer: bool = False) -> Attendee | None:
    """A Graph attendee (or the organizer's recipient) as an Attendee; None without
    an address."""
    email = entry.get("emailAddress") or {}
    address = str(email.get("address") or "").strip().lower()
    if not address:
        return None
    status = (entry.get("status") or {}).get("response")
    return Attendee(
        address=address,
        name=str(email.get("name") or ""),
        role=ROLES.get(str(entry.get("type") or ""), AttendeeRole.REQUIRED),
        response=ResponseStatus.ORGANIZER
        if organizer
        else RESPONSES.get(str(status or ""), ResponseStatus.NONE),
    )


def attendees_of(event: Mapping[str, Any]) -> list[Attendee]:
    """Required, optional and resource attendees, in that order, each address once."""
    found = [a for a in (attendee_of(e) for e in event.get("attendees") or ()) if a is not None]
    order = {AttendeeRole.REQUIRED: 0, AttendeeRole.OPTIONAL: 1, AttendeeRole.RESOURCE: 2}
    out: list[Attendee] = []
    seen: set[str] = set()
    for person in sorted(found, key=lambda a: order[a.role]):
        if person.address not in seen:
            seen.add(person.address)
            out.append(person)
    return out


def _days(names: Iterable[str]) -> list[str]:
    codes = {DAY_CODES[str(n).lower()] for n in names if str(n).lower() in DAY_CODES}
    return [d for d in DAY_ORDER if d in codes]


def rrule_of(pattern: Mapping[str, Any]) -> str:
    """A Graph recurrencePattern as an iCalendar RRULE pattern (no range), in the
    forms the EWS reader writes (connectors/ews_act.py)."""
    kind = str(pattern.get("type") or "")
    interval = int(pattern.get("interval") or 1)
    days = _days(pattern.get("daysOfWeek") or ())
    if kind == "daily":
        return f"FREQ=DAILY;INTERVAL={interval}"
    if kind == "weekly":
        rule = f"FREQ=WEEKLY;INTERVAL={interval};BYDAY={','.join(days or ['MO'])}"
        first = DAY_CODES.get(str(pattern.get("firstDayOfWeek") or "").lower())
        return f"{rule};WKST={first}" if first else rule
    if kind == "absoluteMonthly":
        return f"FREQ=MONTHLY;INTERVAL={interval};BYMONTHDAY={int(pattern['dayOfMonth'])}"
    if kind == "absoluteYearly":
        return (
            f"FREQ=YEARLY;INTERVAL={interval};BYMONTH={int(pattern['month'])};"
            f"BYMONTHDAY={int(pattern['dayOfMonth'])}"
        )
    if kind in ("relativeMonthly", "relativeYearly"):
        freq = "MONTHLY" if kind == "relativeMonthly" else "YEARLY"
        position = WEEK_INDEX.get(str(pattern.get("index") or "first"), 1)
        rule = f"FREQ={freq};INTERVAL={interval}"
        if len(days) == 1:
            rule += f";BYDAY={position}{days[0]}"
        else:
            rule += f";BYDAY={','.join(days)};BYSETPOS={position}"
        if freq == "YEARLY":
            rule += f";BYMONTH={int(pattern['month'])}"
        return rule
    raise UnsupportedItem(f"recurrence pattern {kind!r} is not supported")


def recurrence_of(value: Mapping[str, Any] | None) -> Recurrence | None:
    """A Graph patternedRecurrence as a Recurrence (None when the event has none)."""
    if not value or not value.get("pattern"):
        return None
    pattern, span = value["pattern"], value.get("range") or {}
    kind = str(span.get("type") or "noEnd")
    end = span.get("endDate") if kind == "endDate" else None
    count = span.get("numberOfOccurrences") if kind == "numbered" else None
    if not span.get("startDate"):
        raise UnsupportedItem("the recurrence has no start date")
    return Recurrence(
        rrule=rrule_of(pattern),
        start_date=date.fromisoformat(str(span["startDate"])[:10]),
        end_date=date.fromisoformat(str(end)[:10]) if end else None,
        count=int(count) if count else None,
        time_zone=iana(str(span.get("recurrenceTimeZone") or "")),
        first_day_of_week=DAY_CODES.get(str(pattern.get("firstDayOfWeek") or "").lower(), ""),
    )


def occurrence_starts(series: Appointment, low: datetime, high: datetime) -> list[datetime]:
    """The starts (UTC) the series' pattern gives in [low, high), expanded in the
    series' zone at its local time (connectors/act_zones.py `series_starts`)."""
    try:
        return series_starts(series, low, high)
    except UnknownTimeZone as exc:
        raise UnsupportedItem(str(exc)) from None


# -- resources → payloads -------------------------------------------------------------


def _text(body: Mapping[str, Any] | None) -> tuple[str, bool]:
    """A Graph itemBody as text (HTML reduced to its text), cut to BODY_LIMIT."""
    if not body:
        return "", False
    text = str(body.get("content") or "")
    if str(body.get("contentType") or "").lower() == "html":
        text = _SPACE.sub(" ", _TAGS.sub(" ", text)).strip()
    if len(text) > BODY_LIMIT:
        return text[:BODY_LIMIT], True
    return text, False


def event_zone(event: Mapping[str, Any]) -> str:
    """The IANA name of an event's own zone (`originalStartTimeZone`, else its start's
    zone; "" none). Unknown: UnsupportedItem for a series or an all-day event (their
    times depend on it), "" for a single timed one (its UTC times are exact)."""
    name = str(
        event.get("originalStartTimeZone") or (event.get("start") or {}).get("timeZone") or ""
    )
    try:
        return iana_name(name)
    except UnknownTimeZone as exc:
        if event.get("recurrence") or event.get("isAllDay"):
            raise UnsupportedItem(str(exc)) from None
        return ""


def all_day_times(event: Mapping[str, Any], where: str) -> tuple[datetime, datetime]:
    """An all-day event's (start, exclusive end) in UTC: Graph gives its days as
    midnights (dates, whatever zone the answer is in), which run from midnight to
    midnight in the event's zone (`where`, IANA; "" UTC)."""
    first = _wall(event["start"]).date()
    after = _wall(event["end"]).date()
    return all_day_span(first, max(first, after - timedelta(days=1)), zone(where))


def to_appointment(event: Mapping[str, Any]) -> Appointment:
    """A Graph event (a single instance or a series master) as an Appointment, without
    its exceptions (`fold_series` adds them)."""
    start, end = graph_time(event.get("start")), graph_time(event.get("end"))
    if start is None or end is None:
        raise UnsupportedItem("the event has no start or end")
    text, cut = _text(event.get("body"))
    organizer_entry = event.get("organizer") or {}
    organizer = attendee_of(organizer_entry, organizer=True) if organizer_entry else None
    people = attendees_of(event)
    where = event_zone(event)
    if event.get("isAllDay"):
        start, end = all_day_times(event, where)
    return Appointment(
        ical_uid=str(event.get("iCalUId") or ""),
        subject=str(event.get("subject") or ""),
        body=text,
        body_truncated=cut,
        start=start,
        end=end,
        all_day=bool(event.get("isAllDay")),
        time_zone=where,
        location=str((event.get("location") or {}).get("displayName") or ""),
        organizer=organizer,
        attendees=people,
        recurrence=recurrence_of(event.get("recurrence")),
        is_cancelled=bool(event.get("isCancelled")),
        is_meeting=bool(people),
        show_as=str(event.get("showAs") or "") if event.get("showAs") != "unknown" else "",
        categories=list(event.get("categories") or ()),
        sensitivity=SENSITIVITIES.get(str(event.get("sensitivity") or ""), Sensitivity.NORMAL),
        change_time=stamp(event.get("lastModifiedDateTime")),
        change_key=str(event.get("changeKey") or ""),
    )


def fold_series(
    master: Mapping[str, Any],
    instances: Sequence[Mapping[str, Any]],
    low: datetime,
    high: datetime,
) -> Appointment:
    """A series master and its instances in [low, high) as ONE Appointment: modified
    occurrences (`exception` rows: new start and end, subject and location where
    they differ from the series) and cancelled ones (missing from the instances the
    pattern gives in the window, or `isCancelled`) in `exceptions`, by original start."""
    series = to_appointment(master)
    if series.recurrence is None:
        return series
    changes: dict[datetime, OccurrenceChange] = {}
    present: set[datetime] = set()
    for instance in instances:
        original = stamp(instance.get("originalStart")) or graph_time(instance.get("start"))
        if original is None:
            continue
        present.add(original)
        if instance.get("isCancelled"):
            changes[original] = OccurrenceChange(original_start=original, cancelled=True)
        elif instance.get("type") == "exception":
            subject = instance.get("subject")
            location = (instance.get("location") or {}).get("displayName")
            changes[original] = OccurrenceChange(
                original_start=original,
                start=graph_time(instance.get("start")),
                end=graph_time(instance.get("end")),
                subject=str(subject) if subject is not None and subject != series.subject else None,
                location=str(location)
                if location is not None and location != series.location
                else None,
            )
    for start in occurrence_starts(series, low, high):
        if start not in present:
            changes[start] = OccurrenceChange(original_start=start, cancelled=True)
    exceptions = [changes[k] for k in sorted(changes)]
    return msgspec.structs.replace(series, exceptions=exceptions)


_PHONE_ORDER = {"business": 0, "home": 1, "mobile": 2}
_ADDRESSES = (("business", "businessAddress"), ("home", "homeAddress"), ("other", "otherAddress"))


def to_contact(resource: Mapping[str, Any]) -> Contact:
    """A Graph contact as a Contact (emails lower-cased in the server's order;
    phones business, home, mobile, as the writer's read-back orders them)."""
    phones = [
        PhoneNumber(kind="business", number=str(n)) for n in resource.get("businessPhones") or ()
    ]
    phones += [PhoneNumber(kind="home", number=str(n)) for n in resource.get("homePhones") or ()]
    if resource.get("mobilePhone"):
        phones.append(PhoneNumber(kind="mobile", number=str(resource["mobilePhone"])))
    addresses = []
    for kind, key in _ADDRESSES:
        value = resource.get(key) or {}
        if any(value.get(k) for k in ("street", "city", "state", "postalCode", "countryOrRegion")):
            addresses.append(
                PostalAddress(
                    kind=kind,
                    street=str(value.get("street") or ""),
                    city=str(value.get("city") or ""),
                    state=str(value.get("state") or ""),
                    postal_code=str(value.get("postalCode") or ""),
                    country=str(value.get("countryOrRegion") or ""),
                )
            )
    emails = [
        str(e.get("address")).strip().lower()
        for e in resource.get("emailAddresses") or ()
        if e.get("address")
    ]
    return Contact(
        given_name=str(resource.get("givenName") or ""),
        middle_name=str(resource.get("middleName") or ""),
        surname=str(resource.get("surname") or ""),
        display_name=str(resource.get("displayName") or ""),
        emails=emails,
        phones=sorted(phones, key=lambda p: _PHONE_ORDER.get(p.kind, 3)),
        company=str(resource.get("companyName") or ""),
        job_title=str(resource.get("jobTitle") or ""),
        department=str(resource.get("department") or ""),
        addresses=addresses,
        notes=str(resource.get("personalNotes") or ""),
        categories=list(resource.get("categories") or ()),
        change_time=stamp(resource.get("lastModifiedDateTime")),
        change_key=str(resource.get("changeKey") or ""),
    )


def to_task(resource: Mapping[str, Any]) -> Task:
    """A Microsoft To Do task as a Task (`change_key` is its etag, as the writer's
    read-back has it; percent complete is 100 when completed, else 0)."""
    text, cut = _text(resource.get("body"))
    status = TASK_STATUSES.get(str(resource.get("status") or ""), TaskStatus.NOT_STARTED)
    return Task(
        subject=str(resource.get("title") or ""),
        body=text,
        body_truncated=cut,
        start=graph_time(resource.get("startDateTime")),
        due=graph_time(resource.get("dueDateTime")),
        completed=graph_time(resource.get("completedDateTime")),
        status=status,
        percent_complete=100 if status is TaskStatus.COMPLETED else 0,
        importance=IMPORTANCES.get(str(resource.get("importance") or ""), Importance.NORMAL),
        categories=list(resource.get("categories") or ()),
        change_time=stamp(resource.get("lastModifiedDateTime")),
        change_key=str(resource.get("@odata.etag") or resource.get("changeKey") or ""),
    )


# -- delta rounds ---------------------------------------------------------------------


def window(
    today: date, past_days: int = CALENDAR_PAST_DAYS, future_days: int = CALENDAR_FUTURE_DAYS
) -> tuple[datetime, datetime]:
    """The calendar window around `today`: [today - past, today + future), UTC
    midnights (`ActSettings.calendar_past_days` / `calendar_future_days`)."""
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    return midnight - timedelta(days=past_days), midnight + timedelta(days=future_days)


def window_id(low: datetime, high: datetime) -> str:
    """The window as a cursor's folder id: "calendarView|<low>|<high>" (dates)."""
    return f"calendarView|{low:%Y-%m-%d}|{high:%Y-%m-%d}"


def parse_window_id(text: str) -> tuple[datetime, datetime] | None:
    """The window a cursor's folder id names; None when it names none."""
    kind, _, rest = text.partition("|")
    low, _, high = rest.partition("|")
    if kind != "calendarView" or not low or not high:
        return None
    try:
        return (
            datetime.fromisoformat(low).replace(tzinfo=UTC),
            datetime.fromisoformat(high).replace(tzinfo=UTC),
        )
    except ValueError:
        return None


def window_due(
    current: tuple[datetime, datetime] | None,
    today: date,
    past_days: int = CALENDAR_PAST_DAYS,
    future_days: int = CALENDAR_FUTURE_DAYS,
) -> bool:
    """True when there is no window yet, it is WINDOW_RENEW_DAYS old, or the
    configured one starts earlier or spans a different number of days (the settings
    changed)."""
    if current is None:
        return True
    low, high = window(today, past_days, future_days)
    return (
        low - current[0] >= timedelta(days=WINDOW_RENEW_DAYS)
        or low < current[0]
        or high - low != current[1] - current[0]
    )


@dataclass
class CalendarPlan:
    """What a calendar round's rows ask for: the events to read (single instances and
    series masters, by id, first-seen order), the occurrence rows seen (occurrence id
    → master id), the occurrence ids removed, and the single/master ids a `@removed`
    named (read to confirm: 404 is a delete, anything else left the window)."""

    read: list[str] = field(default_factory=list)
    occurrences: dict[str, str] = field(default_factory=dict)
    removed_occurrences: set[str] = field(default_factory=set)
    maybe_deleted: set[str] = field(default_factory=set)


def plan_calendar(rows: Sequence[Mapping[str, Any]], known: Known) -> CalendarPlan:
    """The reads a calendarView delta round's rows call for (module doc)."""
    plan = CalendarPlan()
    wanted: dict[str, None] = {}
    for row in rows:
        item_id = str(row.get("id") or "")
        if not item_id:
            continue
        if row.get("@removed") is not None:
            before = known.get(item_id) or plan.occurrences.get(item_id)
            if before is None:
                plan.occurrences.pop(item_id, None)
                continue
            if before.startswith(OCCURRENCE_MARK) or item_id in plan.occurrences:
                master = plan.occurrences.pop(item_id, None) or before[len(OCCURRENCE_MARK) :]
                plan.removed_occurrences.add(item_id)
                wanted[master] = None
            else:
                plan.maybe_deleted.add(item_id)
                wanted[item_id] = None
        elif row.get("type") in SERIES_TYPES and row.get("seriesMasterId"):
            master = str(row["seriesMasterId"])
            plan.occurrences[item_id] = master
            plan.removed_occurrences.discard(item_id)
            wanted[master] = None
        else:
            plan.maybe_deleted.discard(item_id)
            wanted[item_id] = None
    plan.read = list(wanted)
    return plan


def payload_version(payload: Appointment | Contact | Task) -> str:
    """The version an event of `payload` carries: its change key, and for a series a
    digest of its exceptions too (an occurrence's change need not move the master's)."""
    if isinstance(payload, Appointment) and payload.exceptions:
        digest = hashlib.blake2s(msgspec.json.encode(payload.exceptions), digest_size=6).hexdigest()
        return f"{payload.change_key}#{digest}"
    return payload.change_key


def version_hash(version: str) -> str:
    """What the known map keeps of a version (connectors/graph_items.change_hash)."""
    return change_hash(version)


def forget_series(known: Known, master_id: str) -> None:
    """Drop a series' occurrence rows from `known` (the series is gone)."""
    mark = OCCURRENCE_MARK + master_id
    for item in [k for k, v in known.items() if v == mark]:
        del known[item]


__all__ = [
    "ACT_PAGE",
    "CALENDAR_FUTURE_DAYS",
    "CALENDAR_PAST_DAYS",
    "OCCURRENCE_MARK",
    "PREFER_UTC",
    "WINDOW_RENEW_DAYS",
    "ActPage",
    "CalendarPlan",
    "UnsupportedItem",
    "attendee_of",
    "fold_series",
    "forget_series",
    "graph_time",
    "occurrence_starts",
    "parse_window_id",
    "payload_version",
    "plan_calendar",
    "recurrence_of",
    "rrule_of",
    "stamp",
    "to_appointment",
    "to_contact",
    "to_task",
    "version_hash",
    "window",
    "window_due",
    "window_id",
]
