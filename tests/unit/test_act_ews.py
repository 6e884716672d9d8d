"""connectors/ews_act.py: EWS CalendarItem / Contact / Task XML (as the simulator and
Exchange write it), parsed by exchangelib, mapped to schemas/act.py payloads."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from exchangelib.items import CalendarItem, Contact, Task
from lxml import etree

from connectors.ews_act import UnsupportedItem, act_event, to_payload
from schemas.act import (
    ActType,
    Appointment,
    AttendeeRole,
    Importance,
    OccurrenceChange,
    ResponseStatus,
    TaskStatus,
    appointment_record_id,
    record_id_for,
)
from schemas.mail import ChangeKind, ItemType
from tests.ews_sim import EwsSimulator, SimActItem, T, add_act_item, add_calendar_item, weekly

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
UID = "040000008200e00074c5b7101a82e00800000000aa"
CLASSES: dict[str, Any] = {"CalendarItem": CalendarItem, "Contact": Contact, "Task": Task}


def parsed(item: SimActItem) -> Any:
    """The item's XML as exchangelib parses a GetItem answer."""
    elem = etree.fromstring(f'<root xmlns:t="{T}">{item.xml()}</root>')[0]
    return CLASSES[item.element].from_xml(elem=elem, account=None)


@pytest.fixture
def sim() -> Any:
    sim = EwsSimulator()  # not started: only its mailboxes are used
    return sim.add_mailbox("alice@nw.example", password="pw")


def test_a_recurring_meeting_with_a_moved_and_a_cancelled_occurrence(sim: Any) -> None:
    item = add_calendar_item(
        sim,
        uid=UID,
        subject="Weekly review",
        start=T0,
        end=T0 + timedelta(hours=1),
        location="Room 4",
        body="Agenda",
        organizer=("Alice@NW.example", "Alice"),
        required=[("dana@contoso.example", "Dana", "Accept")],
        optional=[("bob@nw.example", "Bob", "Tentative")],
        resources=[("room4@nw.example", "Room 4", "Accept")],
        recurrence=weekly("Monday Wednesday", "2026-03-02", count=10),
        deleted=[T0 + timedelta(days=7)],
        categories=["Tracked to CRM"],
    )
    payload = to_payload(parsed(item))
    assert isinstance(payload, Appointment)
    assert payload.ical_uid == UID and payload.subject == "Weekly review"
    assert (payload.start, payload.end) == (T0, T0 + timedelta(hours=1))
    assert payload.organizer is not None and payload.organizer.address == "alice@nw.example"
    assert [(a.address, a.role, a.response) for a in payload.attendees] == [
        ("dana@contoso.example", AttendeeRole.REQUIRED, ResponseStatus.ACCEPTED),
        ("bob@nw.example", AttendeeRole.OPTIONAL, ResponseStatus.TENTATIVE),
        ("room4@nw.example", AttendeeRole.RESOURCE, ResponseStatus.ACCEPTED),
    ]
    assert payload.recurrence is not None
    assert payload.recurrence.rrule == "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO,WE;WKST=MO"
    assert payload.recurrence.start_date == date(2026, 3, 2)
    assert type(payload.recurrence.start_date) is date
    assert payload.recurrence.full_rrule().endswith(";COUNT=10")
    assert payload.exceptions == [
        OccurrenceChange(original_start=T0 + timedelta(days=7), cancelled=True)
    ]
    assert payload.categories == ["Tracked to CRM"] and payload.is_meeting
    assert payload.body == "Agenda" and payload.location == "Room 4"


def test_a_modified_occurrence_takes_its_times_from_the_master_and_text_from_details(
    sim: Any,
) -> None:
    moved = (T0 + timedelta(days=2, hours=2), T0 + timedelta(days=2, hours=3))
    item = add_calendar_item(
        sim,
        uid=UID,
        subject="Weekly review",
        start=T0,
        end=T0 + timedelta(hours=1),
        recurrence=weekly("Monday Wednesday", "2026-03-02", end="2026-06-01"),
        modified=[(*moved, T0 + timedelta(days=2), {"subject": "Moved review"})],
    )
    master = parsed(item)
    occurrence_id = master.modified_occurrences[0].id
    # GetItem of the occurrence itself (the connector's second request) gives its text.
    stored = next(f.items[occurrence_id] for f in sim.folders.values() if occurrence_id in f.items)
    details = {occurrence_id: parsed(stored)}
    payload = to_payload(master, details)
    assert isinstance(payload, Appointment) and payload.recurrence is not None
    assert payload.recurrence.end_date == date(2026, 6, 1) and payload.recurrence.count is None
    assert payload.exceptions == [
        OccurrenceChange(
            original_start=T0 + timedelta(days=2),
            start=moved[0],
            end=moved[1],
            subject="Moved review",
        )
    ]


def test_contact_and_task(sim: Any) -> None:
    contact = add_act_item(
        sim,
        "contacts",
        ["Tracked to CRM"],
        given_name="Dana",
        surname="Smith",
        display_name="Dana Smith",
        emails=["Dana@Contoso.example", "dana.smith@home.example"],
        company="Contoso",
        job_title="Buyer",
        phones={"BusinessPhone": "+1 555 0100", "MobilePhone": "+1 555 0101"},
        addresses={"Business": {"street": "1 Main St", "city": "Seattle", "country": "US"}},
    )
    got = to_payload(parsed(contact))
    assert got.categories == ["Tracked to CRM"]
    assert (got.given_name, got.surname, got.company, got.job_title) == (  # type: ignore[union-attr]
        "Dana",
        "Smith",
        "Contoso",
        "Buyer",
    )
    assert got.emails == ["dana@contoso.example", "dana.smith@home.example"]  # type: ignore[union-attr]
    assert {(p.kind, p.number) for p in got.phones} == {  # type: ignore[union-attr]
        ("business", "+1 555 0100"),
        ("mobile", "+1 555 0101"),
    }
    assert got.addresses[0].city == "Seattle"  # type: ignore[union-attr]
    task = add_act_item(
        sim,
        "tasks",
        subject="Call Dana",
        due=T0,
        status="Completed",
        done=T0,
        percent_complete=100,
        importance="High",
    )
    got_task = to_payload(parsed(task))
    assert got_task.subject == "Call Dana"  # type: ignore[union-attr]
    assert got_task.status == TaskStatus.COMPLETED  # type: ignore[union-attr]
    assert got_task.percent_complete == 100 and got_task.importance == Importance.HIGH  # type: ignore[union-attr]
    assert got_task.completed == T0  # type: ignore[union-attr]


def test_other_items_are_unsupported() -> None:
    with pytest.raises(UnsupportedItem):
        to_payload(object())


def test_act_events_are_typed_and_stable(sim: Any) -> None:
    item = add_calendar_item(sim, uid=UID, start=T0, end=T0 + timedelta(hours=1))
    payload = to_payload(parsed(item))
    args = ("mb", "Calendar", "id1", ActType.APPOINTMENT, ChangeKind.CREATED, T0, payload)
    first = act_event(*args, version="ck1")
    again = act_event(*args, version="ck1")
    assert first.item_type == ItemType.APPOINTMENT and first.act == payload
    assert first.event_id == again.event_id
    # The record id is the UID's, whatever mailbox or item id carried it (hex case-folded).
    assert record_id_for(payload, "mb-a", "x") == record_id_for(payload, "mb-b", "y")
    assert record_id_for(payload, "mb", "x") == appointment_record_id(UID.upper())


def test_an_all_day_item_ends_at_the_midnight_after_its_last_day() -> None:
    from exchangelib import EWSDate

    from connectors.ews_act import to_appointment

    # exchangelib gives an all-day item's last day itself as its end
    item = CalendarItem(
        subject="Off-site", start=EWSDate(2026, 4, 6), end=EWSDate(2026, 4, 7), is_all_day=True
    )
    read = to_appointment(item)
    assert read.all_day
    assert (read.start, read.end) == (
        datetime(2026, 4, 6, tzinfo=UTC),
        datetime(2026, 4, 8, tzinfo=UTC),
    )
