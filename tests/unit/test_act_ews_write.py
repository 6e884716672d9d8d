"""The CRM payload → exchangelib item mapping of the EWS target
(connectors/act_ews_write.py): recurrences read back by the Exchange → CRM mapping
(connectors/ews_act.py) to the same synchronized fields, appointment / contact / task
attributes, the fields an update sets, occurrence indexes, read-back normalization,
and the error handling of the asynchronous shell (busy back-off, 401)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from exchangelib import EWSDate, EWSDateTime
from exchangelib import errors as ews_errors

from connectors import errors
from connectors.act_conflict import canonical_rrule, sync_fields
from connectors.act_ews_write import (
    LINK_FIELD,
    EwsActTarget,
    appointment_values,
    as_read,
    contact_values,
    instance_index,
    invitations,
    occurrence_values,
    pattern_of,
    phone_label,
    register_link_property,
    task_values,
    update_fieldnames,
)
from connectors.errors import ConnectorError
from connectors.ews_act import recurrence as read_recurrence
from connectors.gate import ServerGate
from schemas.act import (
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
    Task,
    TaskStatus,
)
from schemas.base import RecordRef
from schemas.mailbox import (
    Credentials,
    EwsSettings,
    MailboxConfig,
    Protocol,
    ServerProfile,
    TransportSecurity,
)
from schemas.secret import SecretRef

START = datetime(2026, 4, 6, 9, 30, tzinfo=UTC)  # a Monday


def meeting(**changes: Any) -> Appointment:
    fields: dict[str, Any] = {
        "ical_uid": "uid-1",
        "subject": "Review",
        "body": "Agenda",
        "start": START,
        "end": START + timedelta(hours=1),
        "location": "Room 1",
        "organizer": Attendee(address="alice@x.example"),
        "attendees": [
            Attendee(address="bob@x.example", name="Bob"),
            Attendee(address="cy@x.example", role=AttendeeRole.OPTIONAL),
            Attendee(address="room@x.example", role=AttendeeRole.RESOURCE),
        ],
    }
    return Appointment(**(fields | changes))


@pytest.mark.parametrize(
    ("rrule", "count", "end"),
    [
        ("FREQ=DAILY;INTERVAL=2", 10, None),
        ("FREQ=WEEKLY;BYDAY=MO,WE", None, date(2026, 6, 1)),
        ("FREQ=WEEKLY;INTERVAL=2;BYDAY=FR;WKST=SU", None, None),
        ("FREQ=MONTHLY;BYMONTHDAY=15", 6, None),
        ("FREQ=MONTHLY;BYDAY=2TU", 6, None),
        ("FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1", 3, None),
        ("FREQ=YEARLY;BYMONTH=4;BYMONTHDAY=6", 3, None),
        ("FREQ=YEARLY;BYDAY=1MO;BYMONTH=9", 3, None),
    ],
)
def test_recurrence_reads_back_to_the_same_rule(
    rrule: str, count: int | None, end: date | None
) -> None:
    rec = Recurrence(rrule=rrule, start_date=START.date(), count=count, end_date=end)
    back = read_recurrence(pattern_of(rec), "UTC")
    assert back is not None
    assert (back.start_date, back.count, back.end_date) == (START.date(), count, end)
    written = canonical_rrule(back.rrule.replace(";WKST=MO", ""))
    assert written == canonical_rrule(rrule)


def test_a_single_weekday_by_position_is_one_pattern_in_either_spelling() -> None:
    """BYDAY=TU;BYSETPOS=2 and BYDAY=2TU are the same rule and the same EWS pattern
    (the reader spells it BYDAY=2TU, so that is what reads back)."""
    both = [
        pattern_of(Recurrence(rrule=rule, start_date=START.date(), count=3)).pattern
        for rule in ("FREQ=MONTHLY;BYDAY=TU;BYSETPOS=2", "FREQ=MONTHLY;BYDAY=2TU")
    ]
    assert [(p.weekday, p.week_number) for p in both] == [(2, 2), (2, 2)]


def test_rules_without_an_ews_pattern_are_refused() -> None:
    with pytest.raises(ValueError, match="no EWS pattern"):
        pattern_of(Recurrence(rrule="FREQ=HOURLY", start_date=START.date()))


def test_appointment_values_in_utc_with_attendees_by_role() -> None:
    values = appointment_values(meeting())
    assert values["start"] == EWSDateTime.from_datetime(START)
    assert values["start"].tzinfo.key == "UTC" and values["_start_timezone"].key == "UTC"
    assert [a.mailbox.email_address for a in values["required_attendees"]] == ["bob@x.example"]
    assert [a.mailbox.email_address for a in values["optional_attendees"]] == ["cy@x.example"]
    assert [a.mailbox.email_address for a in values["resources"]] == ["room@x.example"]
    assert values["location"] == "Room 1" and str(values["body"]) == "Agenda"
    assert values["recurrence"] is None and values["categories"] is None


def test_empty_values_become_deletes() -> None:
    values = appointment_values(meeting(location="", body="", attendees=[]))
    assert values["location"] is None and values["body"] is None
    assert values["required_attendees"] is None


def test_all_day_items_are_written_as_inclusive_dates() -> None:
    day = datetime(2026, 4, 6, tzinfo=UTC)
    values = appointment_values(meeting(start=day, end=day + timedelta(days=2), all_day=True))
    assert values["start"] == EWSDate(2026, 4, 6)
    assert values["end"] == EWSDate(2026, 4, 7)  # exchangelib adds the day back
    assert values["is_all_day"] is True


def test_contact_values_labels_and_limits() -> None:
    contact = Contact(
        given_name="Dana",
        surname="Ng",
        emails=["a@x.example", "b@x.example", "c@x.example", "d@x.example"],
        phones=[
            PhoneNumber(kind="business", number="1"),
            PhoneNumber(kind="business", number="2"),
            PhoneNumber(kind="mobile", number="3"),
            PhoneNumber(kind="businessFax", number="4"),
            PhoneNumber(kind="telepathy", number="5"),
        ],
        addresses=[PostalAddress(kind="home", city="Oslo")],
        company="Fabrikam",
        notes="Met at the fair",
    )
    values = contact_values(contact)
    assert values["display_name"] == "Dana Ng"  # made from the names when empty
    assert [(e.label, e.email) for e in values["email_addresses"]] == [
        ("EmailAddress1", "a@x.example"),
        ("EmailAddress2", "b@x.example"),
        ("EmailAddress3", "c@x.example"),
    ]
    assert [(p.label, p.phone_number) for p in values["phone_numbers"]] == [
        ("BusinessPhone", "1"),
        ("BusinessPhone2", "2"),
        ("MobilePhone", "3"),
        ("BusinessFax", "4"),
    ]
    assert [(a.label, a.city) for a in values["physical_addresses"]] == [("Home", "Oslo")]
    assert str(values["body"]) == "Met at the fair" and values["company_name"] == "Fabrikam"


def test_phone_labels_are_the_inverse_of_the_reader() -> None:
    assert phone_label("home", set()) == "HomePhone"
    assert phone_label("home", {"HomePhone"}) == "HomePhone2"
    assert phone_label("home", {"HomePhone", "HomePhone2"}) is None
    assert phone_label("pager", set()) == "Pager"


def test_task_values_dates_status_and_percent() -> None:
    task = Task(
        subject="Call",
        due=datetime(2026, 4, 10, 17, 0, tzinfo=UTC),
        status=TaskStatus.COMPLETED,
        percent_complete=40,
        importance=Importance.HIGH,
    )
    values = task_values(task)
    assert values["due_date"] == EWSDate(2026, 4, 10)  # EWS keeps the date only
    assert (values["status"], values["importance"]) == ("Completed", "High")
    assert values["percent_complete"] == Decimal(100)
    waiting = task_values(msgspec.structs.replace(task, status=TaskStatus.WAITING))
    assert waiting["status"] == "WaitingOnOthers" and waiting["percent_complete"] == Decimal(40)


def test_update_sets_only_the_won_fields() -> None:
    assert update_fieldnames(ActType.APPOINTMENT, {"subject", "location"}) == [
        "location",
        "subject",
    ]
    assert update_fieldnames(ActType.APPOINTMENT, {"attendees"}) == [
        "required_attendees",
        "optional_attendees",
        "resources",
    ]
    # organizer is read-only in EWS; exceptions go occurrence by occurrence.
    assert update_fieldnames(ActType.APPOINTMENT, {"organizer", "exceptions"}) == []
    assert update_fieldnames(ActType.CONTACT, {"emails", "notes"}) == ["email_addresses", "body"]
    assert update_fieldnames(ActType.TASK, {"due", "status"}) == [
        "due_date",
        "status",
        "percent_complete",
    ]


def test_occurrences_are_addressed_by_their_place_in_the_pattern() -> None:
    series = meeting(
        recurrence=Recurrence(rrule="FREQ=WEEKLY;BYDAY=MO", start_date=START.date(), count=5)
    )
    assert instance_index(series, START) == 1
    assert instance_index(series, START + timedelta(weeks=3)) == 4
    assert instance_index(series, START + timedelta(days=1)) is None
    assert instance_index(series, START + timedelta(weeks=5)) is None
    moved = OccurrenceChange(
        original_start=START, start=START + timedelta(hours=2), subject="Moved"
    )
    assert set(occurrence_values(moved)) == {"start", "subject"}


def test_invitations_only_for_meetings_with_attendees() -> None:
    assert invitations(meeting()) == "SendToAllAndSaveCopy"
    assert invitations(meeting(attendees=[])) == "SendToNone"
    assert invitations(Task(subject="x")) == "SendToNone"


class _Raw:
    def __init__(self, end: Any) -> None:
        self.end = end


def test_read_back_is_normalized_to_what_was_written() -> None:
    weekly = Recurrence(
        rrule="FREQ=WEEKLY;INTERVAL=1;BYDAY=MO;WKST=MO",
        start_date=START.date(),
        first_day_of_week="MO",
    )
    read = as_read(meeting(recurrence=weekly), _Raw(EWSDateTime.from_datetime(START)))
    assert isinstance(read, Appointment) and read.recurrence is not None
    crm = meeting(recurrence=Recurrence(rrule="FREQ=WEEKLY;BYDAY=MO", start_date=START.date()))
    assert (
        sync_fields("appointment", read)["recurrence"]
        == (sync_fields("appointment", crm)["recurrence"])
    )


def test_link_property_is_registered_once() -> None:
    from exchangelib import CalendarItem

    register_link_property()
    register_link_property()
    assert CalendarItem.get_field_by_fieldname(LINK_FIELD).value_cls.property_name == "TidingsLink"


# -- the asynchronous shell ---------------------------------------------------------------


def target(gate: ServerGate) -> EwsActTarget:
    config = MailboxConfig(
        mailbox_id="mb",
        owner=RecordRef("user", "u"),
        email_address="u@x.example",
        protocol=Protocol.EWS,
        server_profile="ex",
        credentials=Credentials(username="svc", password=SecretRef(env="NOPE_UNUSED")),
        ews=EwsSettings(),
    )
    profile = ServerProfile(
        protocol=Protocol.EWS, host="ex.example", security=TransportSecurity.TLS
    )
    return EwsActTarget(config, profile, gate, account_factory=lambda secret: object())


async def test_server_busy_is_waited_out_then_retried() -> None:
    gate = ServerGate("ex", 4)
    shell = target(gate)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ews_errors.ErrorServerBusy("busy", back_off=0.01)
        return "done"

    assert await shell._call(flaky) == "done"
    assert len(calls) == 3


async def test_long_back_off_is_a_transient_error() -> None:
    shell = target(ServerGate("ex", 4))

    def busy() -> None:
        raise ews_errors.ErrorServerBusy("busy", back_off=600)

    with pytest.raises(ConnectorError) as failure:
        await shell._call(busy)
    assert failure.value.code == errors.SERVER_BUSY and not failure.value.permanent


async def test_refused_credentials_are_permanent_and_network_failures_transient() -> None:
    shell = target(ServerGate("ex", 4))

    def refused() -> None:
        raise ews_errors.UnauthorizedError("401")

    def unreachable() -> None:
        raise ConnectionRefusedError("Connection refused")

    with pytest.raises(ConnectorError) as auth:
        await shell._call(refused)
    assert auth.value.code == errors.AUTHENTICATION_FAILED and auth.value.permanent
    with pytest.raises(ConnectorError) as network:
        await shell._call(unreachable)
    assert not network.value.permanent
    assert "svc" in auth.value.message and "NOPE" not in auth.value.message
