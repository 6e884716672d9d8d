"""Microsoft Graph: CRM appointments, contacts and tasks written into a mailbox, and
read back for the two-way merge (connectors/act_writer.py decides what to write).

- appointments are events: `POST /users/{u}/events` (with `transactionId`, so a
  retried create makes no second event), `PATCH /events/{id}`, and for a series
  its changed and cancelled occurrences through `GET /events/{id}/instances`
  (then `PATCH` / `DELETE` of the occurrence); a meeting the user organizes is
  cancelled with `POST /events/{id}/cancel` (attendees get the cancellation),
  anything else deleted with `DELETE`. Graph sends invitations itself when an
  event with attendees is created or changed.
- contacts: `POST /contacts`, `PATCH` / `DELETE /contacts/{id}`;
- tasks are Microsoft To Do tasks in the default list
  (`GET /todo/lists`, `wellknownListName` "defaultList"):
  `POST /todo/lists/{list}/tasks`, `PATCH` / `DELETE .../tasks/{id}`.

Time zones: an appointment is written in its own zone (`Appointment.time_zone`,
UTC when it has none): start and end as dateTimeTimeZone values with the zone's
Windows name (connectors/act_zones.py), the recurrence with it as
`range.recurrenceTimeZone`, so Graph evaluates the pattern in that zone and a weekly
09:00 stays 09:00 local across daylight saving. An all-day item is written as
midnight to midnight in its zone. A zone tidings cannot resolve fails the write
(permanent, the reason names the zone). Read-backs map zones as the Exchange → CRM
reader does (connectors/graph_act.py).

The payload → resource mapping and back is pure (functions below); the
`GraphActTarget` makes the calls through the mailbox's GraphClient (its four
request slots, throttling waits, token renewal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import msgspec

from connectors import errors
from connectors.act_zones import UnknownTimeZone, local, series_starts, windows_name, zone
from connectors.graph_act import UnsupportedItem, all_day_times, event_zone, iana
from connectors.graph_act import graph_time as read_graph_time
from connectors.graph_client import GraphClient, error_code, failure
from schemas.act import (
    ActPayload,
    ActType,
    Appointment,
    Attendee,
    AttendeeRole,
    Contact,
    Importance,
    OccurrenceChange,
    PhoneNumber,
    Recurrence,
    Task,
    TaskStatus,
)

DAYS = {
    "MO": "monday",
    "TU": "tuesday",
    "WE": "wednesday",
    "TH": "thursday",
    "FR": "friday",
    "SA": "saturday",
    "SU": "sunday",
}
INDEX = {"1": "first", "2": "second", "3": "third", "4": "fourth", "-1": "last"}
TASK_STATUS = {
    TaskStatus.NOT_STARTED: "notStarted",
    TaskStatus.IN_PROGRESS: "inProgress",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.WAITING: "waitingOnOthers",
    TaskStatus.DEFERRED: "deferred",
}


@dataclass(frozen=True)
class ItemRef:
    """A mailbox item as the server confirmed it: id, version, last modified time, and
    for an appointment the iCalendar UID the server gave it (Graph assigns its own;
    the Exchange → CRM path finds the link by it)."""

    item_id: str
    change_key: str
    change_time: datetime | None
    ical_uid: str = ""


@dataclass(frozen=True)
class MailboxItem:
    """A mailbox item read back: where it is and what it holds."""

    ref: ItemRef
    payload: ActPayload


# -- pure mapping: payload → Graph resource ------------------------------------------


UNSUPPORTED = "UnsupportedItem"
"""The error code of a write whose payload Graph or EWS cannot hold (an unknown zone)."""


def write_zone(name: str) -> str:
    """The Windows zone name an item in zone `name` (IANA, UTC, Windows; "" is UTC) is
    written with; a permanent UnsupportedItem ConnectorError for an unknown zone."""
    try:
        return windows_name(name)
    except UnknownTimeZone as exc:
        raise errors.permanent(UNSUPPORTED, f"the appointment cannot be written: {exc}") from None


def graph_time(moment: datetime, time_zone: str = "") -> dict[str, str]:
    """A Graph dateTimeTimeZone: `moment`'s wall-clock time in `time_zone` (IANA, UTC
    or Windows; "" UTC) labelled with the zone's Windows name."""
    label = write_zone(time_zone)
    return {
        "dateTime": local(moment, zone(label)).strftime("%Y-%m-%dT%H:%M:%S.0000000"),
        "timeZone": label,
    }


def parse_graph_time(value: dict[str, Any] | None) -> datetime | None:
    """A Graph dateTimeTimeZone (any zone Graph names) as an aware UTC datetime."""
    return read_graph_time(value)


def parse_stamp(value: Any) -> datetime | None:
    """A Graph DateTimeOffset ("...Z") as an aware datetime."""
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


def pattern(recurrence: Recurrence, time_zone: str = "") -> dict[str, Any]:
    """A Graph patternedRecurrence for an RRULE (DAILY, WEEKLY, MONTHLY by day of
    month or by BYDAY+BYSETPOS, YEARLY by date), evaluated in the recurrence's zone,
    else `time_zone` (the appointment's), else UTC; ValueError for other rules."""
    parts = dict(p.split("=", 1) for p in recurrence.rrule.upper().split(";") if "=" in p)
    freq = parts.get("FREQ", "")
    interval = int(parts.get("INTERVAL", "1"))
    days = [DAYS[d[-2:]] for d in parts.get("BYDAY", "").split(",") if d]
    shape: dict[str, Any] = {"interval": interval}
    if freq == "DAILY":
        shape["type"] = "daily"
    elif freq == "WEEKLY":
        shape |= {"type": "weekly", "daysOfWeek": days or [DAYS["MO"]], "firstDayOfWeek": "sunday"}
    elif freq == "MONTHLY" and "BYMONTHDAY" in parts:
        shape |= {"type": "absoluteMonthly", "dayOfMonth": int(parts["BYMONTHDAY"])}
    elif freq == "MONTHLY" and days:
        shape |= {
            "type": "relativeMonthly",
            "daysOfWeek": days,
            "index": INDEX.get(parts.get("BYSETPOS", "1"), "first"),
        }
    elif freq == "YEARLY":
        shape |= {
            "type": "absoluteYearly",
            "dayOfMonth": int(parts.get("BYMONTHDAY", recurrence.start_date.day)),
            "month": int(parts.get("BYMONTH", recurrence.start_date.month)),
        }
    else:
        raise ValueError(f"recurrence {recurrence.rrule!r} has no Graph pattern")
    if recurrence.count is not None:
        span: dict[str, Any] = {"type": "numbered", "numberOfOccurrences": recurrence.count}
    elif recurrence.end_date is not None:
        span = {"type": "endDate", "endDate": recurrence.end_date.isoformat()}
    else:
        span = {"type": "noEnd"}
    span |= {
        "startDate": recurrence.start_date.isoformat(),
        "recurrenceTimeZone": write_zone(recurrence.time_zone or time_zone),
    }
    return {"pattern": shape, "range": span}


def rrule_of(recurrence: dict[str, Any]) -> Recurrence:
    """The Recurrence of a Graph patternedRecurrence (inverse of `pattern`)."""
    shape, span = recurrence.get("pattern") or {}, recurrence.get("range") or {}
    back = {v: k for k, v in DAYS.items()}
    days = ",".join(back[d] for d in shape.get("daysOfWeek") or [])
    kind = shape.get("type")
    rule = {
        "daily": "FREQ=DAILY",
        "weekly": f"FREQ=WEEKLY;BYDAY={days}",
        "absoluteMonthly": f"FREQ=MONTHLY;BYMONTHDAY={shape.get('dayOfMonth')}",
        "relativeMonthly": f"FREQ=MONTHLY;BYDAY={days};BYSETPOS="
        + {v: k for k, v in INDEX.items()}.get(shape.get("index", "first"), "1"),
        "absoluteYearly": f"FREQ=YEARLY;BYMONTHDAY={shape.get('dayOfMonth')};"
        f"BYMONTH={shape.get('month')}",
    }.get(str(kind), "FREQ=DAILY")
    rule += f";INTERVAL={shape.get('interval', 1)}"
    end = span.get("endDate") if span.get("type") == "endDate" else None
    count = span.get("numberOfOccurrences") if span.get("type") == "numbered" else None
    return Recurrence(
        rrule=rule,
        start_date=date.fromisoformat(span["startDate"]),
        end_date=date.fromisoformat(end) if end else None,
        count=int(count) if count else None,
        time_zone=iana(str(span.get("recurrenceTimeZone") or "")),
    )


def occurrence_starts(appointment: Appointment, limit: int = 500) -> list[datetime]:
    """The start (UTC) of every occurrence of a series by its pattern (at most
    `limit`), expanded in the series' zone as Exchange and Graph do
    (connectors/act_zones.py); a permanent error for an unknown zone."""
    assert appointment.recurrence is not None
    try:
        return series_starts(appointment, limit=limit)
    except UnknownTimeZone as exc:
        raise errors.permanent(UNSUPPORTED, f"the series cannot be expanded: {exc}") from None


def event_times(appointment: Appointment) -> tuple[dict[str, str], dict[str, str]]:
    """The start and end dateTimeTimeZone of an appointment in its zone; an all-day
    one as the midnights of its first day and of the day after its last, there."""
    if not appointment.all_day:
        return (
            graph_time(appointment.start, appointment.time_zone),
            graph_time(appointment.end, appointment.time_zone),
        )
    label = write_zone(appointment.time_zone)
    where = zone(label)
    first = local(appointment.start, where).date()
    after = max(local(appointment.end, where).date(), first + timedelta(days=1))
    return (
        {"dateTime": f"{first:%Y-%m-%d}T00:00:00.0000000", "timeZone": label},
        {"dateTime": f"{after:%Y-%m-%d}T00:00:00.0000000", "timeZone": label},
    )


def event_body(appointment: Appointment, fields: set[str] | None = None) -> dict[str, Any]:
    """The Graph event resource of an appointment (only `fields` when given: a PATCH)."""
    start, end = event_times(appointment)
    full: dict[str, Any] = {
        "subject": appointment.subject,
        "body": {"contentType": "text", "content": appointment.body},
        "start": start,
        "end": end,
        "isAllDay": appointment.all_day,
        "location": {"displayName": appointment.location},
        "attendees": [
            {
                "emailAddress": {"address": a.address, "name": a.name},
                "type": "optional"
                if a.role is AttendeeRole.OPTIONAL
                else ("resource" if a.role is AttendeeRole.RESOURCE else "required"),
            }
            for a in appointment.attendees
        ],
        "categories": list(appointment.categories),
        "recurrence": pattern(appointment.recurrence, appointment.time_zone)
        if appointment.recurrence
        else None,
    }
    names = {
        "subject": ["subject"],
        "body": ["body"],
        "start": ["start"],
        "end": ["end"],
        "all_day": ["isAllDay", "start", "end"],
        "location": ["location"],
        "attendees": ["attendees"],
        "categories": ["categories"],
        "recurrence": ["recurrence"],
    }
    if fields is None:
        return {k: v for k, v in full.items() if v is not None}
    keys = {k for f in fields for k in names.get(f, [])}
    return {k: v for k, v in full.items() if k in keys}


def appointment_of(event: dict[str, Any], instances: list[dict[str, Any]] | None) -> Appointment:
    """The Appointment of a Graph event (a series with its `instances`): times in UTC,
    `time_zone` the IANA name of its own zone, as the Exchange → CRM reader maps them.
    UnsupportedItem (a ValueError) for a zone tidings cannot resolve."""
    organizer = (event.get("organizer") or {}).get("emailAddress") or {}
    roles = {"optional": AttendeeRole.OPTIONAL, "resource": AttendeeRole.RESOURCE}
    where = event_zone(event)
    start = parse_graph_time(event.get("start")) or datetime.now(UTC)
    end = parse_graph_time(event.get("end")) or datetime.now(UTC)
    if event.get("isAllDay") and event.get("start") and event.get("end"):
        start, end = all_day_times(event, where)
    appointment = Appointment(
        ical_uid=str(event.get("iCalUId") or ""),
        subject=str(event.get("subject") or ""),
        body=str((event.get("body") or {}).get("content") or ""),
        start=start,
        end=end,
        all_day=bool(event.get("isAllDay")),
        time_zone=where,
        location=str((event.get("location") or {}).get("displayName") or ""),
        organizer=Attendee(
            address=str(organizer.get("address", "")).lower(), name=organizer.get("name", "")
        )
        if organizer.get("address")
        else None,
        attendees=[
            Attendee(
                address=str(a["emailAddress"]["address"]).lower(),
                name=a["emailAddress"].get("name", ""),
                role=roles.get(a.get("type", ""), AttendeeRole.REQUIRED),
            )
            for a in event.get("attendees") or []
        ],
        recurrence=rrule_of(event["recurrence"]) if event.get("recurrence") else None,
        is_cancelled=bool(event.get("isCancelled")),
        is_meeting=bool(event.get("attendees")),
        categories=list(event.get("categories") or []),
        change_time=parse_stamp(event.get("lastModifiedDateTime")),
        change_key=str(event.get("changeKey") or ""),
    )
    if appointment.recurrence is None or instances is None:
        return appointment
    changes: list[OccurrenceChange] = []
    present: set[datetime] = set()
    for instance in instances:
        original = parse_stamp(instance.get("originalStart"))
        if original is None:
            continue
        present.add(original)
        if instance.get("type") == "exception":
            changes.append(
                OccurrenceChange(
                    original_start=original,
                    start=parse_graph_time(instance.get("start")),
                    end=parse_graph_time(instance.get("end")),
                    subject=instance.get("subject"),
                    location=(instance.get("location") or {}).get("displayName"),
                )
            )
    for start in occurrence_starts(appointment):
        if start not in present:
            changes.append(OccurrenceChange(original_start=start, cancelled=True))
    return msgspec.structs.replace(
        appointment, exceptions=sorted(changes, key=lambda c: c.original_start)
    )


def _mapped(event: dict[str, Any], instances: list[dict[str, Any]] | None) -> Appointment:
    """`appointment_of`, an unmappable event (an unknown zone) a permanent error."""
    try:
        return appointment_of(event, instances)
    except UnsupportedItem as exc:
        raise errors.permanent(UNSUPPORTED, f"graph event {event.get('id')}: {exc}") from None


def exception_patch(change: OccurrenceChange, time_zone: str = "") -> dict[str, Any]:
    """The PATCH of one modified occurrence (its times in the series' zone)."""
    body: dict[str, Any] = {}
    if change.start is not None:
        body["start"] = graph_time(change.start, time_zone)
    if change.end is not None:
        body["end"] = graph_time(change.end, time_zone)
    if change.subject is not None:
        body["subject"] = change.subject
    if change.location is not None:
        body["location"] = {"displayName": change.location}
    return body


def contact_body(contact: Contact) -> dict[str, Any]:
    """The Graph contact resource of a Contact."""
    business = [p.number for p in contact.phones if p.kind == "business"]
    mobile = next((p.number for p in contact.phones if p.kind == "mobile"), None)
    home = [p.number for p in contact.phones if p.kind == "home"]
    return {
        "givenName": contact.given_name,
        "surname": contact.surname,
        "displayName": contact.display_name,
        "emailAddresses": [{"address": e, "name": contact.display_name} for e in contact.emails],
        "businessPhones": business,
        "homePhones": home,
        "mobilePhone": mobile,
        "companyName": contact.company,
        "jobTitle": contact.job_title,
        "department": contact.department,
        "personalNotes": contact.notes,
        "categories": list(contact.categories),
    }


def contact_of(resource: dict[str, Any]) -> Contact:
    """The Contact of a Graph contact resource."""
    phones = [PhoneNumber(kind="business", number=n) for n in resource.get("businessPhones") or []]
    phones += [PhoneNumber(kind="home", number=n) for n in resource.get("homePhones") or []]
    if resource.get("mobilePhone"):
        phones.append(PhoneNumber(kind="mobile", number=resource["mobilePhone"]))
    order = {"business": 0, "home": 1, "mobile": 2}
    return Contact(
        given_name=resource.get("givenName") or "",
        surname=resource.get("surname") or "",
        display_name=resource.get("displayName") or "",
        emails=[str(e["address"]).lower() for e in resource.get("emailAddresses") or []],
        phones=sorted(phones, key=lambda p: order.get(p.kind, 3)),
        company=resource.get("companyName") or "",
        job_title=resource.get("jobTitle") or "",
        department=resource.get("department") or "",
        notes=resource.get("personalNotes") or "",
        categories=list(resource.get("categories") or []),
        change_time=parse_stamp(resource.get("lastModifiedDateTime")),
        change_key=str(resource.get("changeKey") or ""),
    )


def task_body(task: Task) -> dict[str, Any]:
    """The Microsoft To Do task resource of a Task."""
    body: dict[str, Any] = {
        "title": task.subject,
        "body": {"contentType": "text", "content": task.body},
        "status": TASK_STATUS[task.status],
        "importance": str(task.importance),
        "categories": list(task.categories),
    }
    body["dueDateTime"] = graph_time(task.due) if task.due is not None else None
    return body


def task_of(resource: dict[str, Any]) -> Task:
    """The Task of a To Do task resource."""
    status = {v: k for k, v in TASK_STATUS.items()}.get(resource.get("status", ""))
    return Task(
        subject=resource.get("title") or "",
        body=str((resource.get("body") or {}).get("content") or ""),
        due=parse_graph_time(resource.get("dueDateTime")),
        status=status or TaskStatus.NOT_STARTED,
        importance=Importance(resource.get("importance") or "normal"),
        categories=list(resource.get("categories") or []),
        change_time=parse_stamp(resource.get("lastModifiedDateTime")),
        change_key=str(resource.get("@odata.etag") or resource.get("changeKey") or ""),
    )


def resource_body(payload: ActPayload) -> dict[str, Any]:
    """The Graph resource to create for a payload."""
    if isinstance(payload, Appointment):
        return event_body(payload)
    if isinstance(payload, Contact):
        return contact_body(payload)
    return task_body(payload)


# -- the calls -----------------------------------------------------------------------


class GraphActTarget:
    """One Graph mailbox's calendar, contacts and To Do tasks, for the writer."""

    def __init__(self, client: GraphClient, user: str) -> None:
        self.client = client
        self.user_path = f"/users/{quote(user, safe='@')}"
        self._task_list: str | None = None

    async def close(self) -> None:
        await self.client.close()

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, *, kind: str
    ) -> dict[str, Any] | None:
        """One call; the JSON answer (None: 404 / 204). Failures raise ConnectorError."""
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        response = await self.client.request(
            method, self.user_path + path, kind=kind, headers=headers, content=content
        )
        if response.status_code == 404:
            return None
        if not 200 <= response.status_code < 300:
            raise failure(response.status_code, error_code(response.content), f"graph {kind}")
        if not response.content:
            return {}
        answer = response.json()
        if not isinstance(answer, dict):
            raise errors.transient(errors.PROTOCOL_ERROR, f"graph {kind}: unreadable answer")
        return answer

    async def _tasks_path(self) -> str:
        if self._task_list is None:
            lists = await self._call("GET", "/todo/lists", None, kind="act-lists") or {}
            chosen = next(
                (x for x in lists.get("value", []) if x.get("wellknownListName") == "defaultList"),
                None,
            )
            if chosen is None:
                raise errors.permanent(
                    errors.CONFIGURATION, "the mailbox has no default Microsoft To Do list"
                )
            self._task_list = str(chosen["id"])
        return f"/todo/lists/{quote(self._task_list)}/tasks"

    async def _path(self, kind: ActType) -> str:
        if kind is ActType.APPOINTMENT:
            return "/events"
        if kind is ActType.CONTACT:
            return "/contacts"
        return await self._tasks_path()

    @staticmethod
    def _ref(answer: dict[str, Any]) -> ItemRef:
        return ItemRef(
            str(answer["id"]),
            str(answer.get("changeKey") or answer.get("@odata.etag") or ""),
            parse_stamp(answer.get("lastModifiedDateTime")),
            str(answer.get("iCalUId") or ""),
        )

    async def get(self, kind: ActType, item_id: str) -> MailboxItem | None:
        """The item as the mailbox holds it; None when it is gone."""
        path = f"{await self._path(kind)}/{quote(item_id)}"
        answer = await self._call("GET", path, None, kind="act-get")
        if answer is None:
            return None
        if kind is ActType.APPOINTMENT:
            instances = await self._instances(item_id, answer) if answer.get("recurrence") else None
            return MailboxItem(self._ref(answer), _mapped(answer, instances))
        if kind is ActType.CONTACT:
            return MailboxItem(self._ref(answer), contact_of(answer))
        return MailboxItem(self._ref(answer), task_of(answer))

    async def _instances(self, item_id: str, event: dict[str, Any]) -> list[dict[str, Any]]:
        series = _mapped(event, None)
        starts = occurrence_starts(series)
        if not starts:
            return []
        window_end = max(starts) + (series.end - series.start) + timedelta(days=1)
        window_start = min(starts) - timedelta(days=1)
        params = (
            f"?startDateTime={window_start:%Y-%m-%dT%H:%M:%S}Z"
            f"&endDateTime={window_end:%Y-%m-%dT%H:%M:%S}Z"
        )
        answer = await self._call(
            "GET", f"/events/{quote(item_id)}/instances{params}", None, kind="act-instances"
        )
        return list((answer or {}).get("value", []))

    async def create(self, kind: ActType, payload: ActPayload, transaction: str) -> ItemRef:
        """Create the item (an event with `transactionId`, so a retry creates no
        second one) and apply a series' exceptions."""
        body = resource_body(payload)
        if kind is ActType.APPOINTMENT:
            body["transactionId"] = transaction
        answer = await self._call("POST", await self._path(kind), body, kind="act-create")
        if answer is None:
            raise errors.permanent(errors.MAILBOX_MISSING, "graph: the mailbox was not found")
        ref = self._ref(answer)
        if isinstance(payload, Appointment) and payload.exceptions:
            ref = await self._apply_exceptions(ref, payload, [])
        return ref

    async def update(
        self,
        kind: ActType,
        ref: ItemRef,
        merged: ActPayload,
        fields: set[str],
        current: ActPayload,
    ) -> ItemRef:
        """Write `fields` of `merged` to the item (exceptions occurrence by occurrence)."""
        path = f"{await self._path(kind)}/{quote(ref.item_id)}"
        if isinstance(merged, Appointment):
            body = event_body(merged, fields)
        elif isinstance(merged, Contact):
            full = contact_body(merged)
            body = {k: v for k, v in full.items() if _contact_key(k) in fields}
        else:
            full = task_body(merged)
            body = {k: v for k, v in full.items() if _task_key(k) in fields}
        if body:
            answer = await self._call("PATCH", path, body, kind="act-update")
            if answer is None:
                raise errors.transient(errors.MAILBOX_MISSING, "graph: the item vanished")
            ref = self._ref(answer)
        if (
            isinstance(merged, Appointment)
            and isinstance(current, Appointment)
            and ({"exceptions", "recurrence"} & fields)
        ):
            done = [] if "recurrence" in fields else current.exceptions
            ref = await self._apply_exceptions(ref, merged, done)
        return ref

    async def _apply_exceptions(
        self, ref: ItemRef, series: Appointment, done: list[OccurrenceChange]
    ) -> ItemRef:
        """Make the series' occurrences match `series.exceptions` (those in `done`
        are already so)."""
        todo = [c for c in series.exceptions if c not in done]
        if not todo:
            return ref
        event = await self._call("GET", f"/events/{quote(ref.item_id)}", None, kind="act-get")
        instances = await self._instances(ref.item_id, event or {})
        by_start = {parse_stamp(i.get("originalStart")): i for i in instances}
        for change in todo:
            instance = by_start.get(change.original_start)
            if instance is None:
                continue  # already cancelled, or not an occurrence of the pattern
            path = f"/events/{quote(str(instance['id']))}"
            if change.cancelled:
                await self._call("DELETE", path, None, kind="act-occurrence")
            else:
                patch = exception_patch(change, series.time_zone)
                await self._call("PATCH", path, patch, kind="act-occurrence")
        master = await self._call("GET", f"/events/{quote(ref.item_id)}", None, kind="act-get")
        return self._ref(master) if master else ref

    async def delete(self, kind: ActType, item_id: str, cancel: bool) -> None:
        """Delete the item; `cancel`: the organizer's meeting, cancelled for its attendees."""
        path = f"{await self._path(kind)}/{quote(item_id)}"
        if cancel and kind is ActType.APPOINTMENT:
            answer = await self._call(
                "POST", f"{path}/cancel", {"comment": "Cancelled in the CRM."}, kind="act-cancel"
            )
        else:
            answer = await self._call("DELETE", path, None, kind="act-delete")
        del answer  # None: already gone, which is what was asked


def _contact_key(key: str) -> str:
    return {
        "givenName": "given_name",
        "surname": "surname",
        "displayName": "display_name",
        "emailAddresses": "emails",
        "businessPhones": "phones",
        "homePhones": "phones",
        "mobilePhone": "phones",
        "companyName": "company",
        "jobTitle": "job_title",
        "department": "department",
        "personalNotes": "notes",
        "categories": "categories",
    }[key]


def _task_key(key: str) -> str:
    return {
        "title": "subject",
        "body": "body",
        "status": "status",
        "importance": "importance",
        "categories": "categories",
        "dueDateTime": "due",
    }[key]
