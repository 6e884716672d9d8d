"""Time zones of appointments (connectors/act_zones.py) and what the readers and writers
of both protocols do with them: names resolved through exchangelib's CLDR map, series
expanded at their local wall-clock time across daylight-saving changes, all-day items
midnight to midnight in their zone, unknown zones a clear error."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from exchangelib.items import CalendarItem
from lxml import etree

from connectors.act_ews_write import appointment_values, instance_index, occurrence_values
from connectors.act_graph_write import appointment_of, event_body, exception_patch
from connectors.act_zones import (
    UnknownTimeZone,
    all_day_span,
    iana_name,
    series_starts,
    windows_name,
    zone,
)
from connectors.errors import ConnectorError
from connectors.ews_act import to_payload
from connectors.graph_act import (
    UnsupportedItem,
    fold_series,
    to_appointment,
    window,
    window_due,
)
from schemas.act import Appointment, OccurrenceChange, Recurrence
from schemas.mailbox import ActSettings
from tests.ews_sim import EwsSimulator, T, add_calendar_item, weekly

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


def series(first: datetime, zone_name: str, count: int = 4, **changes: Any) -> Appointment:
    """A weekly series from `first` (aware), `count` times, in `zone_name`."""
    local = first.astimezone(zone(zone_name))
    return Appointment(
        ical_uid="tz-series",
        subject="Weekly",
        start=first.astimezone(UTC),
        end=first.astimezone(UTC) + timedelta(hours=1),
        time_zone=zone_name,
        recurrence=Recurrence(
            rrule=f"FREQ=WEEKLY;BYDAY={DAYS[local.weekday()]}",
            start_date=local.date(),
            count=count,
            time_zone=zone_name,
        ),
        **changes,
    )


# -- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "iana", "windows"),
    [
        ("Pacific Standard Time", "America/Los_Angeles", "Pacific Standard Time"),
        ("pacific standard time", "America/Los_Angeles", "Pacific Standard Time"),
        ("W. Europe Standard Time", "Europe/Berlin", "W. Europe Standard Time"),
        ("Eastern Standard Time", "America/New_York", "Eastern Standard Time"),
        ("GMT Standard Time", "Europe/London", "GMT Standard Time"),  # not UTC: London
        ("Europe/Berlin", "Europe/Berlin", "W. Europe Standard Time"),
        ("America/New_York", "America/New_York", "Eastern Standard Time"),
        ("UTC", "UTC", "UTC"),
        ("Etc/UTC", "UTC", "UTC"),
        ("tzone://Microsoft/Utc", "UTC", "UTC"),
        ("", "", "UTC"),
    ],
)
def test_names_resolve_through_exchangelibs_map(name: str, iana: str, windows: str) -> None:
    assert iana_name(name) == iana
    assert windows_name(name) == windows


@pytest.mark.parametrize("name", ["tzone://Microsoft/Custom", "Mars/Olympus", "../etc/passwd"])
def test_an_unknown_zone_is_a_clear_error(name: str) -> None:
    with pytest.raises(UnknownTimeZone, match="is not UTC, an IANA name or a Windows") as caught:
        zone(name)
    assert caught.value.name == name and repr(name) in str(caught.value)


def test_an_all_day_span_runs_midnight_to_midnight_in_its_zone() -> None:
    start, end = all_day_span(date(2026, 10, 24), date(2026, 10, 25), BERLIN)
    assert start == datetime(2026, 10, 23, 22, tzinfo=UTC)  # CEST midnight
    assert end == datetime(2026, 10, 25, 23, tzinfo=UTC)  # CET midnight: a 49-hour span


# -- expansion across daylight saving ------------------------------------------------


@pytest.mark.parametrize(
    ("first", "name"),
    [
        (datetime(2026, 10, 19, 9, tzinfo=NEW_YORK), "America/New_York"),  # DST ends 1 Nov
        (datetime(2026, 10, 19, 9, tzinfo=NEW_YORK), "Eastern Standard Time"),
        (datetime(2026, 10, 12, 9, tzinfo=BERLIN), "Europe/Berlin"),  # DST ends 25 Oct
        (datetime(2026, 3, 16, 9, tzinfo=BERLIN), "W. Europe Standard Time"),  # starts 29 Mar
    ],
)
def test_a_weekly_series_keeps_its_local_time_across_daylight_saving(
    first: datetime, name: str
) -> None:
    starts = series_starts(series(first, name, count=5))
    local = [s.astimezone(zone(name)) for s in starts]
    assert [(t.hour, t.minute, t.weekday()) for t in local] == [(9, 0, 0)] * 5
    assert len({s.utcoffset() for s in local}) == 2  # the change is inside the series
    assert [t.date() for t in local] == [first.date() + timedelta(weeks=n) for n in range(5)]


def test_a_series_without_a_zone_is_expanded_in_utc() -> None:
    first = datetime(2026, 10, 19, 13, tzinfo=UTC)
    starts = series_starts(series(first, "", count=3))
    assert starts == [first + timedelta(weeks=n) for n in range(3)]


def test_an_end_date_includes_its_last_day_and_the_window_bounds() -> None:
    first = datetime(2026, 10, 19, 9, tzinfo=NEW_YORK)
    base = series(first, "America/New_York")
    assert base.recurrence is not None
    until = msgspec.structs.replace(
        base,
        recurrence=msgspec.structs.replace(base.recurrence, count=None, end_date=date(2026, 11, 2)),
    )
    assert [s.astimezone(NEW_YORK).day for s in series_starts(until)] == [19, 26, 2]
    low, high = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 2, 14, tzinfo=UTC)
    assert series_starts(until, low, high) == [datetime(2026, 10, 26, 13, tzinfo=UTC)]


# -- the Graph reader -------------------------------------------------------------------


def graph_series(first: datetime, name: str, count: int) -> dict[str, Any]:
    """A Graph series master as Graph answers with Prefer UTC: times in UTC, the zone
    in originalStartTimeZone and recurrenceTimeZone (Windows names by default)."""
    utc = first.astimezone(UTC)
    local = first.astimezone(zone(name))
    day = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    return {
        "id": "AAMkS",
        "iCalUId": "UID-S",
        "type": "seriesMaster",
        "subject": "Weekly",
        "start": {"dateTime": f"{utc:%Y-%m-%dT%H:%M:%S}.0000000", "timeZone": "UTC"},
        "end": {"dateTime": f"{utc + timedelta(hours=1):%Y-%m-%dT%H:%M:%S}", "timeZone": "UTC"},
        "originalStartTimeZone": name,
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [day[local.weekday()]]},
            "range": {
                "type": "numbered",
                "numberOfOccurrences": count,
                "startDate": local.date().isoformat(),
                "recurrenceTimeZone": name,
            },
        },
    }


def graph_instances(master: dict[str, Any], starts: list[datetime]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"AAMkS_{n}",
            "seriesMasterId": "AAMkS",
            "type": "occurrence",
            "originalStart": f"{s:%Y-%m-%dT%H:%M:%SZ}",
            "start": {"dateTime": f"{s:%Y-%m-%dT%H:%M:%S}", "timeZone": "UTC"},
            "end": {"dateTime": f"{s + timedelta(hours=1):%Y-%m-%dT%H:%M:%S}", "timeZone": "UTC"},
        }
        for n, s in enumerate(starts)
    ]


def test_a_graph_series_in_a_windows_zone_folds_without_false_cancellations() -> None:
    first = datetime(2026, 10, 19, 9, tzinfo=NEW_YORK)
    master = graph_series(first, "Eastern Standard Time", 4)
    # what Graph lists: every occurrence at 09:00 New York, the last two after DST ended
    starts = [(first + timedelta(weeks=n)).astimezone(UTC) for n in range(4)]
    assert [s.hour for s in starts] == [13, 13, 14, 14]
    low, high = datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    got = fold_series(master, graph_instances(master, starts), low, high)
    assert got.time_zone == "America/New_York"
    assert got.recurrence is not None and got.recurrence.time_zone == "America/New_York"
    assert got.start == starts[0] and got.exceptions == []
    # one occurrence the organizer deleted after the change is found by its local time
    fewer = fold_series(master, graph_instances(master, starts[:3]), low, high)
    assert fewer.exceptions == [OccurrenceChange(original_start=starts[3], cancelled=True)]


def test_graph_zones_that_matter_must_resolve() -> None:
    first = datetime(2026, 10, 19, 9, tzinfo=NEW_YORK)
    custom = graph_series(first, "Eastern Standard Time", 2)
    custom["recurrence"]["range"]["recurrenceTimeZone"] = "tzone://Microsoft/Custom"
    with pytest.raises(UnsupportedItem, match="tzone://Microsoft/Custom"):
        to_appointment(custom)
    single = {k: v for k, v in custom.items() if k != "recurrence"}
    single["originalStartTimeZone"] = "tzone://Microsoft/Custom"
    got = to_appointment(single)  # a single timed event: exact UTC times, no zone name
    assert got.time_zone == "" and got.start == first.astimezone(UTC)
    with pytest.raises(UnsupportedItem, match="Custom"):
        to_appointment(single | {"isAllDay": True})


def test_a_graph_all_day_event_is_midnight_to_midnight_in_its_zone() -> None:
    event = {
        "id": "AAMkD",
        "iCalUId": "UID-D",
        "subject": "Offsite",
        "isAllDay": True,
        "start": {"dateTime": "2026-10-24T00:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2026-10-26T00:00:00.0000000", "timeZone": "UTC"},
        "originalStartTimeZone": "W. Europe Standard Time",
    }
    got = to_appointment(event)
    assert (got.start, got.end, got.time_zone) == (
        *all_day_span(date(2026, 10, 24), date(2026, 10, 25), BERLIN),
        "Europe/Berlin",
    )


# -- the EWS reader ---------------------------------------------------------------------


def parsed(item: Any) -> Any:
    elem = etree.fromstring(f'<root xmlns:t="{T}">{item.xml()}</root>')[0]
    return CalendarItem.from_xml(elem=elem, account=None)


def test_the_ews_reader_carries_the_iana_name_and_all_day_midnights() -> None:
    box = EwsSimulator().add_mailbox("alice@nw.example", password="pw")
    first = datetime(2026, 10, 19, 9, tzinfo=NEW_YORK).astimezone(UTC)
    item = add_calendar_item(
        box, uid="UID-E", subject="Weekly", start=first, end=first + timedelta(hours=1),
        recurrence=weekly("Monday", "2026-10-19", count=4), start_tz="Eastern Standard Time",
    )  # fmt: skip
    got = to_payload(parsed(item))
    assert isinstance(got, Appointment) and got.recurrence is not None
    assert (got.time_zone, got.recurrence.time_zone) == ("America/New_York", "America/New_York")
    assert got.start == first
    midnight = datetime(2026, 10, 23, 22, tzinfo=UTC)  # 24 October, Berlin
    day = add_calendar_item(
        box, uid="UID-F", subject="Offsite", start=midnight, end=midnight + timedelta(hours=49),
        all_day=True, start_tz="W. Europe Standard Time",
    )  # fmt: skip
    off = to_payload(parsed(day))
    assert isinstance(off, Appointment) and off.all_day
    assert (off.start, off.end) == all_day_span(date(2026, 10, 24), date(2026, 10, 25), BERLIN)


# -- the writers ------------------------------------------------------------------------


def test_the_graph_writer_writes_local_times_and_the_zone() -> None:
    first = datetime(2026, 10, 19, 9, tzinfo=NEW_YORK)
    moved = OccurrenceChange(
        original_start=(first + timedelta(weeks=2)).astimezone(UTC),
        start=(first + timedelta(weeks=2, hours=1)).astimezone(UTC),
    )
    body = event_body(series(first, "America/New_York", exceptions=[moved]))
    assert body["start"] == {
        "dateTime": "2026-10-19T09:00:00.0000000",
        "timeZone": "Eastern Standard Time",
    }
    assert body["recurrence"]["range"]["recurrenceTimeZone"] == "Eastern Standard Time"
    assert exception_patch(moved, "America/New_York")["start"] == {
        "dateTime": "2026-11-02T10:00:00.0000000",  # after the change, still local
        "timeZone": "Eastern Standard Time",
    }
    plain = event_body(series(datetime(2026, 10, 19, 13, tzinfo=UTC), ""))
    assert plain["start"]["timeZone"] == plain["recurrence"]["range"]["recurrenceTimeZone"] == "UTC"
    day = Appointment(
        ical_uid="d", start=datetime(2026, 10, 23, 22, tzinfo=UTC),
        end=datetime(2026, 10, 25, 23, tzinfo=UTC), all_day=True, time_zone="Europe/Berlin",
    )  # fmt: skip
    assert (event_body(day)["start"]["dateTime"], event_body(day)["end"]["dateTime"]) == (
        "2026-10-24T00:00:00.0000000",
        "2026-10-26T00:00:00.0000000",
    )
    back = appointment_of(
        {**event_body(day), "originalStartTimeZone": "W. Europe Standard Time"}, None
    )
    assert (back.start, back.end, back.time_zone) == (day.start, day.end, "Europe/Berlin")
    with pytest.raises(ConnectorError) as caught:
        event_body(msgspec.structs.replace(day, time_zone="Mars/Olympus"))
    assert caught.value.permanent and "Mars/Olympus" in caught.value.message


def test_the_ews_writer_writes_local_times_and_finds_occurrences_by_local_time() -> None:
    first = datetime(2026, 10, 19, 9, tzinfo=NEW_YORK)
    item = series(first, "America/New_York", count=5)
    values = appointment_values(item)
    assert values["_start_timezone"].ms_id == "Eastern Standard Time"
    assert values["start"].ewsformat() == "2026-10-19T09:00:00-04:00"
    after = (first + timedelta(weeks=3)).astimezone(UTC)  # 9 November, 14:00 UTC
    assert instance_index(item, after) == 4
    assert instance_index(item, after - timedelta(hours=1)) is None  # the UTC-expanded time
    moved = occurrence_values(
        OccurrenceChange(original_start=after, start=after + timedelta(hours=1)),
        values["_start_timezone"],
    )
    assert moved["start"].ewsformat() == "2026-11-09T10:00:00-05:00"
    day = Appointment(
        ical_uid="d", start=datetime(2026, 10, 23, 22, tzinfo=UTC),
        end=datetime(2026, 10, 25, 23, tzinfo=UTC), all_day=True, time_zone="Europe/Berlin",
    )  # fmt: skip
    days = appointment_values(day)
    assert (days["start"], days["end"]) == (date(2026, 10, 24), date(2026, 10, 25))
    assert days["_start_timezone"].ms_id == "W. Europe Standard Time"
    with pytest.raises(ConnectorError) as caught:
        appointment_values(msgspec.structs.replace(day, time_zone="tzone://Microsoft/Custom"))
    assert caught.value.permanent and "Custom" in caught.value.message


# -- the Graph calendar window ------------------------------------------------------------


def test_the_calendar_window_is_configurable_and_validated() -> None:
    settings = ActSettings(calendar_past_days=30, calendar_future_days=730)
    today = date(2026, 11, 22)
    low, high = window(today, settings.calendar_past_days, settings.calendar_future_days)
    assert (low.date(), high.date()) == (date(2026, 10, 23), date(2028, 11, 21))
    assert window(today) == (
        datetime(2026, 8, 24, tzinfo=UTC),
        datetime(2027, 11, 22, tzinfo=UTC),
    )  # 90 / 365 by default
    current = window(today)
    assert not window_due(current, today + timedelta(days=6))
    assert window_due(current, today + timedelta(days=7))
    assert window_due(current, today, 30, 730)  # the settings changed: a fresh window
    assert window_due(current, today, 120, 335)  # same span, starts earlier
    for bad in ({"calendar_past_days": -1}, {"calendar_future_days": 0},
                {"calendar_future_days": 5000}):  # fmt: skip
        with pytest.raises(ValueError, match="calendar_"):
            ActSettings(**bad)
        with pytest.raises(msgspec.ValidationError, match="calendar_"):
            msgspec.convert(bad, ActSettings)
