"""connectors/graph_act.py (Graph events, series with a modified and a cancelled
occurrence, contacts, To Do tasks, calendar delta planning) and the link-based
identity of processors/act.py (an item the CRM wrote keeps the CRM's record id)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from connectors.graph_act import (
    OCCURRENCE_MARK,
    UnsupportedItem,
    fold_series,
    graph_time,
    occurrence_starts,
    parse_window_id,
    payload_version,
    plan_calendar,
    recurrence_of,
    rrule_of,
    stamp,
    to_appointment,
    to_contact,
    to_task,
    window,
    window_due,
    window_id,
)
from processors.act import ActLinkIndex, ActMemory, LinkedRecord, handle_act
from schemas.act import (
    ActType,
    Appointment,
    Attendee,
    AttendeeRole,
    Importance,
    OccurrenceChange,
    PhoneNumber,
    ResponseStatus,
    TaskStatus,
    appointment_record_id,
    item_record_id,
)
from schemas.act_changes import ActLink, link_key
from schemas.base import RecordRef
from schemas.crm import DecisionStatus, ReasonCode
from schemas.mail import ChangeKind
from schemas.mailbox import ActSettings, MailboxConfig, Protocol
from tests.act_harness import act_change

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
UID = "040000008200E00074C5B7101A82E00800000000CC"
LOW, HIGH = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)


def gtime(moment: datetime) -> dict[str, str]:
    return {"dateTime": moment.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"}


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "AAMkEv1",
        "iCalUId": UID.lower(),
        "type": "singleInstance",
        "subject": "Weekly review",
        "body": {"contentType": "html", "content": "<p>Agenda:&nbsp;<b>numbers</b></p>"},
        "start": gtime(T0),
        "end": gtime(T0 + timedelta(hours=1)),
        "originalStartTimeZone": "W. Europe Standard Time",
        "location": {"displayName": "Room 1"},
        "organizer": {"emailAddress": {"address": "Alice@NW.example", "name": "Alice"}},
        "attendees": [
            {
                "emailAddress": {"address": "room@nw.example", "name": "Room"},
                "type": "resource",
                "status": {"response": "accepted"},
            },
            {
                "emailAddress": {"address": "Dana@Contoso.example", "name": "Dana"},
                "type": "required",
                "status": {"response": "tentativelyAccepted"},
            },
            {
                "emailAddress": {"address": "bob@nw.example", "name": "Bob"},
                "type": "optional",
                "status": {"response": "notResponded"},
            },
        ],
        "categories": ["Tracked to CRM"],
        "showAs": "busy",
        "sensitivity": "private",
        "isAllDay": False,
        "isCancelled": False,
        "lastModifiedDateTime": "2026-02-20T08:00:00.1234567Z",
        "changeKey": "ck-1",
    }
    return base | changes


WEEKLY = {
    "pattern": {
        "type": "weekly",
        "interval": 1,
        "daysOfWeek": ["monday"],
        "firstDayOfWeek": "sunday",
    },
    "range": {
        "type": "numbered",
        "numberOfOccurrences": 6,
        "startDate": "2026-03-02",
        "recurrenceTimeZone": "UTC",
    },
}


def instance(n: int, **changes: Any) -> dict[str, Any]:
    at = T0 + timedelta(weeks=n)
    return {
        "id": f"AAMkEv1_OID_{n}",
        "seriesMasterId": "AAMkEv1",
        "type": "occurrence",
        "originalStart": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "start": gtime(at),
        "end": gtime(at + timedelta(hours=1)),
        "subject": "Weekly review",
        "location": {"displayName": "Room 1"},
    } | changes


# -- events -------------------------------------------------------------------------


def test_a_single_event_maps_every_field() -> None:
    got = to_appointment(event())
    assert got.ical_uid == UID.lower()  # kept as given; record ids normalize it
    assert (got.start, got.end, got.time_zone) == (
        T0,
        T0 + timedelta(hours=1),
        "Europe/Berlin",  # the IANA name of Graph's Windows zone name
    )
    assert got.body == "Agenda:&nbsp; numbers"
    assert got.organizer == Attendee(
        address="alice@nw.example", name="Alice", response=ResponseStatus.ORGANIZER
    )
    assert [(a.address, a.role, a.response) for a in got.attendees] == [
        ("dana@contoso.example", AttendeeRole.REQUIRED, ResponseStatus.TENTATIVE),
        ("bob@nw.example", AttendeeRole.OPTIONAL, ResponseStatus.NOT_RESPONDED),
        ("room@nw.example", AttendeeRole.RESOURCE, ResponseStatus.ACCEPTED),
    ]
    assert got.is_meeting and got.show_as == "busy" and got.sensitivity == "private"
    assert got.categories == ["Tracked to CRM"]
    assert got.change_time == datetime(2026, 2, 20, 8, 0, 0, 123456, tzinfo=UTC)
    assert got.change_key == "ck-1" and got.recurrence is None and got.exceptions == []


def test_times_in_iana_and_windows_zones_are_converted_and_unknown_zones_refused() -> None:
    berlin = {"dateTime": "2026-03-02T10:00:00.0000000", "timeZone": "Europe/Berlin"}
    assert graph_time(berlin) == T0
    windows = {"dateTime": "2026-03-02T10:00:00", "timeZone": "W. Europe Standard Time"}
    assert graph_time(windows) == T0
    with pytest.raises(UnsupportedItem, match=r"tzone://Microsoft/Custom"):
        graph_time({"dateTime": "2026-03-02T10:00:00", "timeZone": "tzone://Microsoft/Custom"})
    assert graph_time(None) is None and stamp("") is None
    assert stamp("2026-03-02T09:00:00Z") == T0


@pytest.mark.parametrize(
    ("pattern", "rule"),
    [
        ({"type": "daily", "interval": 2}, "FREQ=DAILY;INTERVAL=2"),
        (
            {"type": "weekly", "interval": 1, "daysOfWeek": ["wednesday", "monday"],
             "firstDayOfWeek": "monday"},
            "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO,WE;WKST=MO",
        ),
        ({"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 15},
         "FREQ=MONTHLY;INTERVAL=1;BYMONTHDAY=15"),
        ({"type": "relativeMonthly", "interval": 1, "daysOfWeek": ["tuesday"], "index": "last"},
         "FREQ=MONTHLY;INTERVAL=1;BYDAY=-1TU"),
        (
            {"type": "relativeMonthly", "interval": 3,
             "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
             "index": "first"},
            "FREQ=MONTHLY;INTERVAL=3;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=1",
        ),
        ({"type": "absoluteYearly", "interval": 1, "month": 4, "dayOfMonth": 1},
         "FREQ=YEARLY;INTERVAL=1;BYMONTH=4;BYMONTHDAY=1"),
        ({"type": "relativeYearly", "interval": 1, "daysOfWeek": ["thursday"], "index": "fourth",
          "month": 11}, "FREQ=YEARLY;INTERVAL=1;BYDAY=4TH;BYMONTH=11"),
    ],
)  # fmt: skip
def test_graph_patterns_become_the_rrules_the_ews_reader_writes(
    pattern: dict[str, Any], rule: str
) -> None:
    assert rrule_of(pattern) == rule


def test_ranges_and_unknown_patterns() -> None:
    end = recurrence_of({"pattern": {"type": "daily"}, "range": {"type": "endDate",
                         "startDate": "2026-03-02", "endDate": "2026-03-06"}})  # fmt: skip
    assert end is not None and end.full_rrule() == "FREQ=DAILY;INTERVAL=1;UNTIL=20260306"
    counted = recurrence_of(WEEKLY)
    assert counted is not None and counted.count == 6 and counted.first_day_of_week == "SU"
    assert recurrence_of(None) is None
    with pytest.raises(UnsupportedItem):
        rrule_of({"type": "hourly"})


def test_an_end_date_includes_its_last_day() -> None:
    series = to_appointment(
        event(recurrence={"pattern": {"type": "daily", "interval": 1}, "range": {
            "type": "endDate", "startDate": "2026-03-02", "endDate": "2026-03-04",
            "recurrenceTimeZone": "UTC"}})
    )  # fmt: skip
    assert occurrence_starts(series, LOW, HIGH) == [T0 + timedelta(days=d) for d in range(3)]


def test_a_series_folds_a_modified_and_a_cancelled_occurrence() -> None:
    master = event(type="seriesMaster", recurrence=WEEKLY)
    moved = T0 + timedelta(weeks=1, hours=2)
    instances = [
        instance(0),
        instance(
            1,
            type="exception",
            start=gtime(moved),
            end=gtime(moved + timedelta(hours=1)),
            location={"displayName": "Room 9"},
        ),
        # week 2: the organizer deleted it (not among the instances)
        instance(3),
        instance(4, isCancelled=True, type="exception"),  # an attendee's cancelled copy
        instance(5),
    ]
    series = fold_series(master, instances, LOW, HIGH)
    assert series.recurrence is not None
    assert series.recurrence.full_rrule() == "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO;WKST=SU;COUNT=6"
    assert series.exceptions == [
        OccurrenceChange(
            original_start=T0 + timedelta(weeks=1),
            start=moved,
            end=moved + timedelta(hours=1),
            location="Room 9",
        ),
        OccurrenceChange(original_start=T0 + timedelta(weeks=2), cancelled=True),
        OccurrenceChange(original_start=T0 + timedelta(weeks=4), cancelled=True),
    ]
    # the same read again is the same payload and version (idempotent)
    again = fold_series(master, list(reversed(instances)), LOW, HIGH)
    assert again == series and payload_version(again) == payload_version(series)
    assert payload_version(series).startswith("ck-1#")
    # only occurrences inside the window count: outside it nothing is "cancelled"
    narrow = fold_series(master, instances[:2], LOW, T0 + timedelta(weeks=2))
    assert [c.original_start for c in narrow.exceptions] == [T0 + timedelta(weeks=1)]


def test_an_iana_series_is_expanded_in_its_zone_across_daylight_saving() -> None:
    start = datetime(2026, 3, 23, 9, 0, tzinfo=UTC)  # 10:00 in Berlin (CET)
    rec = {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
           "range": {"type": "numbered", "numberOfOccurrences": 2, "startDate": "2026-03-23",
                     "recurrenceTimeZone": "Europe/Berlin"}}  # fmt: skip
    series = to_appointment(event(start=gtime(start), end=gtime(start + timedelta(hours=1)),
                                  recurrence=rec))  # fmt: skip
    # after the switch to CEST on 29 March, 10:00 Berlin is 08:00 UTC
    assert occurrence_starts(series, LOW, HIGH) == [start, datetime(2026, 3, 30, 8, tzinfo=UTC)]


# -- contacts and tasks -------------------------------------------------------------


def test_a_contact_maps_names_addresses_phones() -> None:
    got = to_contact(
        {
            "id": "AAMkCo1",
            "givenName": "Dana",
            "surname": "Smith",
            "displayName": "Dana Smith",
            "emailAddresses": [{"address": "Dana@Contoso.example"}, {"name": "no address"}],
            "mobilePhone": "+1 555 0100",
            "businessPhones": ["+1 555 0199"],
            "homePhones": [],
            "companyName": "Contoso",
            "jobTitle": "Buyer",
            "businessAddress": {"street": "1 Main St", "city": "Seattle", "countryOrRegion": "US"},
            "homeAddress": {},
            "personalNotes": "met at the fair",
            "categories": ["Tracked to CRM"],
            "lastModifiedDateTime": "2026-02-20T08:00:00Z",
            "changeKey": "ck-c",
        }
    )
    assert got.emails == ["dana@contoso.example"]
    assert got.phones == [
        PhoneNumber(kind="business", number="+1 555 0199"),
        PhoneNumber(kind="mobile", number="+1 555 0100"),
    ]
    assert [(a.kind, a.city, a.country) for a in got.addresses] == [("business", "Seattle", "US")]
    assert (got.company, got.job_title, got.notes) == ("Contoso", "Buyer", "met at the fair")
    assert got.change_key == "ck-c"


def test_a_todo_task_maps_status_dates_and_importance() -> None:
    got = to_task(
        {
            "id": "AAMkTa1",
            "@odata.etag": 'W/"etag-7"',
            "title": "Send the quote",
            "body": {"contentType": "text", "content": "by Friday"},
            "status": "completed",
            "importance": "high",
            "dueDateTime": gtime(T0),
            "completedDateTime": gtime(T0 - timedelta(hours=1)),
            "categories": ["Tracked to CRM"],
            "lastModifiedDateTime": "2026-02-20T08:00:00Z",
        }
    )
    assert (got.subject, got.body, got.status) == (
        "Send the quote",
        "by Friday",
        TaskStatus.COMPLETED,
    )
    assert (got.due, got.completed, got.percent_complete) == (T0, T0 - timedelta(hours=1), 100)
    assert got.importance == Importance.HIGH and got.change_key == 'W/"etag-7"'
    assert to_task({"title": "x", "status": "odd"}).status == TaskStatus.NOT_STARTED


# -- calendar delta rounds ----------------------------------------------------------


def test_plan_reads_each_master_once_and_confirms_removed_items() -> None:
    known = {
        "single-1": "h1",
        "series-1": "h2",
        "occ-old": OCCURRENCE_MARK + "series-1",
        "single-gone": "h3",
    }
    rows = [
        {"id": "occ-a", "type": "occurrence", "seriesMasterId": "series-1"},
        {"id": "occ-b", "type": "exception", "seriesMasterId": "series-1"},
        {"id": "single-1", "type": "singleInstance"},
        {"id": "occ-old", "@removed": {"reason": "deleted"}},
        {"id": "single-gone", "@removed": {"reason": "deleted"}},
        {"id": "never-seen", "@removed": {"reason": "deleted"}},
        {"id": "occ-c", "type": "occurrence", "seriesMasterId": "series-2"},
    ]
    plan = plan_calendar(rows, known)
    assert plan.read == ["series-1", "single-1", "single-gone", "series-2"]
    assert plan.occurrences == {"occ-a": "series-1", "occ-b": "series-1", "occ-c": "series-2"}
    assert plan.removed_occurrences == {"occ-old"}
    assert plan.maybe_deleted == {"single-gone"}


def test_the_window_renews_weekly_and_round_trips_through_the_cursor() -> None:
    low, high = window(date(2026, 3, 2))
    assert (high - low).days == 455 and low < T0 < high
    assert parse_window_id(window_id(low, high)) == (low, high)
    assert parse_window_id("AAMkFolder") is None
    assert not window_due((low, high), date(2026, 3, 8))
    assert window_due((low, high), date(2026, 3, 9))
    assert window_due(None, date(2026, 3, 2))


# -- identity through act.links -----------------------------------------------------

ALICE = MailboxConfig(
    mailbox_id="mb-alice",
    owner=RecordRef("user", "alice"),
    email_address="alice@nw.example",
    protocol=Protocol.GRAPH,
    act=ActSettings(),
)
BOB = MailboxConfig(
    mailbox_id="mb-bob",
    owner=RecordRef("user", "bob"),
    email_address="bob@nw.example",
    protocol=Protocol.GRAPH,
    act=ActSettings(),
)
NOW = T0 + timedelta(days=1)


def link(record_id: str, box: MailboxConfig, item_id: str, **changes: Any) -> ActLink:
    base: dict[str, Any] = {
        "record_id": record_id,
        "mailbox_id": box.mailbox_id,
        "record_type": ActType.APPOINTMENT,
        "item_id": item_id,
        "updated_at": T0,
    }
    return ActLink(**(base | changes))


def meeting() -> Appointment:
    return to_appointment(event())


def test_a_linked_item_keeps_the_crm_record_id_and_an_unlinked_one_its_uid_id() -> None:
    links = ActLinkIndex()
    links.apply(link_key("crm-appt-1", "mb-alice"), link("crm-appt-1", ALICE, "AAMkEv1"))
    out = handle_act(act_change(ALICE, "AAMkEv1", meeting()), ALICE, None, lambda a: [], NOW,
                     links=links.lookup)  # fmt: skip
    assert out.record is not None and out.record.record_id == "crm-appt-1"
    assert out.decision.activity_id == "crm-appt-1" and out.tombstone is None
    assert "linked to CRM record crm-appt-1" in out.decision.explanation
    # the same event again: the same record (idempotent)
    again = handle_act(act_change(ALICE, "AAMkEv1", meeting()), ALICE, None, lambda a: [], NOW,
                       links=links.lookup)  # fmt: skip
    assert again.record == out.record
    # the same meeting in another mailbox, not linked: the UID's id as before
    other = handle_act(act_change(BOB, "AAMkBob", meeting()), BOB, None, lambda a: [], NOW,
                       links=links.lookup)  # fmt: skip
    assert other.record is not None and other.record.record_id == appointment_record_id(UID)


def test_an_attendee_copy_finds_the_link_by_its_uid() -> None:
    links = ActLinkIndex()
    links.apply(link_key("crm-appt-1", "mb-alice"),
                link("crm-appt-1", ALICE, "AAMkEv1", ical_uid=UID))  # fmt: skip
    out = handle_act(act_change(BOB, "AAMkBob", meeting()), BOB, None, lambda a: [], NOW,
                     links=links.lookup)  # fmt: skip
    assert out.record is not None and out.record.record_id == "crm-appt-1"
    assert links.lookup("mb-bob", "AAMkBob", UID.lower()) == LinkedRecord("crm-appt-1")
    # a tombstone on act.links drops both lookups
    links.apply(link_key("crm-appt-1", "mb-alice"), None)
    assert links.lookup("mb-alice", "AAMkEv1", UID) is None and len(links) == 0


def test_a_deleted_link_stops_the_sync_and_a_late_link_moves_the_record() -> None:
    links = ActLinkIndex()
    contact = to_contact({"displayName": "Dana", "categories": ["Tracked to CRM"]})
    first = handle_act(act_change(ALICE, "AAMkCo1", contact), ALICE, None, lambda a: [], NOW,
                       links=links.lookup)  # fmt: skip
    own_id = item_record_id(ActType.CONTACT, "mb-alice", "AAMkCo1")
    assert first.record is not None and first.record.record_id == own_id
    # the link arrives later (the writer merged the item): the record moves
    links.apply(link_key("crm-c-1", "mb-alice"),
                link("crm-c-1", ALICE, "AAMkCo1", record_type=ActType.CONTACT))  # fmt: skip
    again = act_change(ALICE, "AAMkCo1", contact, ChangeKind.UPDATED, version="v2")
    moved = handle_act(again, ALICE, first.memory, lambda a: [], NOW, links=links.lookup)
    assert moved.record is not None and moved.record.record_id == "crm-c-1"
    assert moved.tombstone == own_id
    # deleted in the CRM (the link marked deleted): nothing more is written
    gone = link("crm-c-1", ALICE, "AAMkCo1", record_type=ActType.CONTACT, deleted=True)
    links.apply(link_key("crm-c-1", "mb-alice"), gone)
    again = act_change(ALICE, "AAMkCo1", contact, ChangeKind.UPDATED, version="v3")
    stopped = handle_act(again, ALICE, moved.memory, lambda a: [], NOW, links=links.lookup)
    assert stopped.record is None and stopped.tombstone is None
    assert (stopped.decision.status, stopped.decision.reason) == (
        DecisionStatus.SKIPPED,
        ReasonCode.NOT_TRACKED,
    )
    assert stopped.memory == ActMemory(decisions=3)
