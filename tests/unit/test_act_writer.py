"""The writer's pure parts: Graph request bodies and their reading back, replay and
staleness, the delete decision, what an attendee's copy holds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from connectors.act_conflict import DeleteAction, Role, field_hashes, sync_fields
from connectors.act_graph_write import (
    appointment_of,
    contact_body,
    contact_of,
    event_body,
    occurrence_starts,
    pattern,
    rrule_of,
    task_body,
    task_of,
)
from connectors.act_writer import _for_mailbox, delete_decision, is_replay, is_stale
from schemas.act import (
    ActType,
    Appointment,
    Attendee,
    Contact,
    PhoneNumber,
    Recurrence,
    Task,
    TaskStatus,
)
from schemas.act_changes import ActLink, CrmActChange
from schemas.act_sync import ActSyncSettings
from schemas.base import RecordRef

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
WEEKLY = Recurrence(rrule="FREQ=WEEKLY;BYDAY=MO", start_date=T0.date(), count=4)
MEETING = Appointment(
    ical_uid="u1",
    subject="Review",
    body="Agenda",
    start=T0,
    end=T0 + timedelta(hours=1),
    location="Room 1",
    attendees=[Attendee(address="Dana@Fabrikam.example", name="Dana")],
    recurrence=WEEKLY,
)


def test_event_body_and_back_keep_the_synced_fields() -> None:
    body = event_body(MEETING)
    assert body["start"] == {"dateTime": "2026-06-01T09:00:00.0000000", "timeZone": "UTC"}
    assert body["recurrence"]["pattern"] == {
        "interval": 1,
        "type": "weekly",
        "daysOfWeek": ["monday"],
        "firstDayOfWeek": "sunday",
    }
    assert body["recurrence"]["range"]["numberOfOccurrences"] == 4
    back = appointment_of({**body, "id": "x", "iCalUId": "u1"}, None)
    assert sync_fields("appointment", back) == sync_fields("appointment", MEETING)


def test_a_patch_carries_only_the_changed_fields() -> None:
    assert set(event_body(MEETING, {"subject", "location"})) == {"subject", "location"}


def test_patterns_round_trip() -> None:
    for rule in ("FREQ=DAILY;INTERVAL=2", "FREQ=MONTHLY;BYMONTHDAY=15", "FREQ=WEEKLY;BYDAY=MO,WE"):
        rec = Recurrence(rrule=rule, start_date=date(2026, 6, 1), end_date=date(2026, 9, 1))
        back = rrule_of(pattern(rec))
        assert (
            sync_fields(
                "appointment", MEETING.__class__(ical_uid="", start=T0, end=T0, recurrence=back)
            )["recurrence"]
            == sync_fields(
                "appointment", MEETING.__class__(ical_uid="", start=T0, end=T0, recurrence=rec)
            )["recurrence"]
        )


def test_occurrences_of_a_series() -> None:
    starts = occurrence_starts(MEETING)
    assert starts == [T0 + timedelta(weeks=n) for n in range(4)]


def test_contact_and_task_round_trip() -> None:
    contact = Contact(
        given_name="Dana",
        surname="Ng",
        display_name="Dana Ng",
        emails=["dana@fabrikam.example"],
        phones=[
            PhoneNumber(kind="business", number="+1 555"),
            PhoneNumber(kind="mobile", number="+1 666"),
        ],
        company="Fabrikam",
    )
    assert sync_fields("contact", contact_of(contact_body(contact))) == sync_fields(
        "contact", contact
    )
    task = Task(subject="Call", body="About the renewal", due=T0, status=TaskStatus.IN_PROGRESS)
    body = task_body(task)
    assert body["status"] == "inProgress"
    assert sync_fields("task", task_of(body)) == sync_fields("task", task)


def _change(payload: Appointment, at: datetime) -> CrmActChange:
    return CrmActChange(
        record_id="r",
        record_type=ActType.APPOINTMENT,
        owner=RecordRef("user", "alice"),
        payload=payload,
        crm_change_time=at,
    )


def _link(payload: Appointment, at: datetime, **changes: object) -> ActLink:
    return ActLink(
        record_id="r",
        mailbox_id="mb",
        record_type=ActType.APPOINTMENT,
        item_id="i",
        crm_change_time=at,
        synced=field_hashes(sync_fields("appointment", payload)),
        updated_at=at,
        **changes,  # type: ignore[arg-type]
    )


def test_replay_and_staleness() -> None:
    link = _link(MEETING, T0)
    assert is_replay(_change(MEETING, T0), link)
    assert is_replay(_change(MEETING, T0 + timedelta(hours=1)), link)  # the CRM's echo
    edited = Appointment(
        **{**{f: getattr(MEETING, f) for f in MEETING.__struct_fields__}, "subject": "New"}
    )
    assert not is_replay(_change(edited, T0 + timedelta(hours=1)), link)
    assert is_stale(_change(edited, T0 - timedelta(seconds=1)), link)
    assert not is_stale(_change(edited, T0), link)


def test_delete_decision_follows_the_organizer_rule() -> None:
    settings = ActSyncSettings()
    future = _link(MEETING, T0)
    assert delete_decision(future, MEETING, settings, T0 - timedelta(days=1)) is (
        DeleteAction.CANCEL_IN_EXCHANGE
    )
    assert delete_decision(future, MEETING, settings, T0 + timedelta(days=1)) is DeleteAction.UNLINK
    attendee = _link(MEETING, T0, organizer=False)
    assert delete_decision(attendee, MEETING, settings, T0 - timedelta(days=1)) is (
        DeleteAction.UNLINK
    )
    quiet = ActSyncSettings(send_invitations=False)
    assert delete_decision(future, MEETING, quiet, T0 - timedelta(days=1)) is (
        DeleteAction.DELETE_IN_EXCHANGE
    )


def test_an_attendee_copy_sends_no_invitations() -> None:
    tracked = "Tracked to CRM"
    copy = _for_mailbox(MEETING, Role.ATTENDEE, ActSyncSettings(), tracked)
    assert copy.attendees == []  # type: ignore[union-attr]
    organizer = _for_mailbox(MEETING, Role.ORGANIZER, ActSyncSettings(), tracked)
    assert organizer.attendees == MEETING.attendees  # type: ignore[union-attr]


def test_what_the_writer_creates_carries_the_tracked_category_once() -> None:
    created = _for_mailbox(MEETING, Role.ORGANIZER, ActSyncSettings(), "Tracked to CRM")
    assert created.categories == [*MEETING.categories, "Tracked to CRM"]
    again = _for_mailbox(created, Role.ORGANIZER, ActSyncSettings(), "tracked to crm")
    assert again.categories == created.categories
