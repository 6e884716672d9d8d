"""A weekly series in a daylight-saving zone keeps its local wall-clock time, both
directions, through both simulators: Exchange Web Services through exchangelib
(connectors/act_ews_write.py writes and reads back with the Exchange → CRM mapping of
connectors/ews_act.py) and Microsoft Graph through httpx (connectors/act_graph_write.py
writes, connectors/graph_act_sync.py reads the calendarView window and folds series).

The series run across the next daylight-saving change of their zone (found from
today, so it lies inside Graph's calendar window). A series Outlook made in one
protocol is read into a payload and written to the other protocol; a CRM series with
a moved and a cancelled occurrence after the change is written to both. Every time,
the servers expand the series at the same local time (the simulators expand as the
servers do, in the series' zone), occurrences are addressed by the local-time
expansion (EWS InstanceIndex, Graph originalStart), and the read-back keeps the zone,
the times and the exceptions, with no occurrence taken for cancelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from connectors.act_ews_write import EwsActTarget
from connectors.act_graph_write import GraphActTarget
from connectors.act_zones import series_starts
from connectors.gate import ServerGate
from connectors.graph_act_sync import GraphActSync
from connectors.graph_auth import GraphTokens
from connectors.graph_client import GraphClient
from connectors.source import PassResult
from schemas.act import ActType, Appointment, OccurrenceChange, Recurrence
from schemas.mail import MailItemChanged
from schemas.mailbox import ActSettings, GraphFolderPosition, GraphSettings, MailboxConfig
from tests.act_harness import ews_mailbox, ews_profile, ews_simulator, graph_simulator
from tests.ews_sim import EwsSimulator, SimActItem, _occurrence_starts, add_calendar_item, weekly
from tests.graph_sim import (
    GraphSimulator,
    _act_occurrences,
    act_add_event,
    act_cancel_occurrence,
    act_weekly,
)

pytestmark = pytest.mark.integration

PASSWORD_ENV, SECRET_ENV = "TEST_ACT_TZ_PASSWORD", "TEST_ACT_TZ_SECRET"
PASSWORD, SECRET = "svc-S3cret!", "tz-secret"
SVC, APP = "svc-tidings", "tidings-act-tz"
ALICE = "alice@northwind.example"
NEW_YORK, BERLIN = ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin")
DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
EWS_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
COUNT = 5


def dst_change(where: ZoneInfo) -> date:
    """The first day from tomorrow whose noon has another UTC offset than the day before."""
    day = datetime.now(UTC).date() + timedelta(days=1)
    for _ in range(400):
        before = datetime.combine(day - timedelta(days=1), time(12), where).utcoffset()
        if datetime.combine(day, time(12), where).utcoffset() != before:
            return day
        day += timedelta(days=1)
    raise AssertionError(f"no daylight-saving change in {where} within 400 days")


def first_start(where: ZoneInfo, hour: int) -> datetime:
    """`hour`:00 local, two weeks before the zone's next change (UTC)."""
    day = dst_change(where) - timedelta(days=14)
    return datetime.combine(day, time(hour), where).astimezone(UTC)


def local_times(starts: Sequence[datetime], where: ZoneInfo) -> set[tuple[int, int]]:
    return {(s.astimezone(where).hour, s.astimezone(where).minute) for s in starts}


def crm_series(where: str, first: datetime, exceptions: list[OccurrenceChange]) -> Appointment:
    local = first.astimezone(ZoneInfo(where))
    return Appointment(
        ical_uid=f"crm-tz-{where}",
        subject="Weekly sync",
        start=first,
        end=first + timedelta(minutes=30),
        time_zone=where,
        recurrence=Recurrence(
            rrule=f"FREQ=WEEKLY;BYDAY={DAYS[local.weekday()]}",
            start_date=local.date(),
            count=COUNT,
            time_zone=where,
        ),
        exceptions=exceptions,
    )


def assert_same_series(got: Appointment, sent: Appointment, where: ZoneInfo) -> None:
    """Zone, times, pattern and exceptions as written; every occurrence at the first
    one's local time, on both sides of the change."""
    assert got.time_zone == sent.time_zone == where.key
    assert got.recurrence is not None and sent.recurrence is not None
    assert got.recurrence.time_zone == where.key
    assert (got.start, got.end) == (sent.start, sent.end)
    assert (got.recurrence.start_date, got.recurrence.count) == (sent.recurrence.start_date, COUNT)
    assert got.exceptions == sent.exceptions
    starts = series_starts(got)
    assert len(starts) == COUNT and len({s.astimezone(where).utcoffset() for s in starts}) == 2
    assert local_times(starts, where) == {local_times([sent.start], where).pop()}


# -- the two mailboxes ------------------------------------------------------------------


def ews_target(sim: EwsSimulator) -> EwsActTarget:
    box: MailboxConfig = ews_mailbox("mb-ews", ALICE, SVC, PASSWORD_ENV, act=ActSettings())
    return EwsActTarget(box, ews_profile(sim), ServerGate("exchange", 4))


def graph_client(sim: GraphSimulator) -> GraphClient:
    profile = sim.profile(APP, SECRET_ENV, timeout_s=10.0)
    return GraphClient(profile, GraphTokens(profile, GraphSettings(), ALICE), ALICE)


async def graph_read(sim: GraphSimulator, item_id: str) -> Appointment:
    """The payload the Graph connector's calendar round emits for `item_id` (the
    calendarView window, the series folded with its instances)."""
    emitted: list[MailItemChanged] = []
    positions: dict[str, GraphFolderPosition] = {}

    async def save(name: str, position: GraphFolderPosition) -> None:
        positions[name] = position

    async def emit(events: Sequence[MailItemChanged]) -> None:
        emitted.extend(events)

    async def notice(*_: str) -> None:
        raise AssertionError("no notice expected")

    client = graph_client(sim)
    settings = ActSettings(contacts=False, tasks=False)
    sync = GraphActSync(
        client, f"/users/{ALICE}", "mb-graph", settings, positions, save, emit, notice, 50
    )
    await sync.run(PassResult())
    await client.close()
    found = [e for e in emitted if e.item_id == item_id]
    assert len(found) == 1 and found[0].unreadable_code is None, found
    assert isinstance(found[0].act, Appointment)
    return found[0].act


# -- the stories ------------------------------------------------------------------------


async def test_outlook_series_cross_to_the_other_protocol_at_their_local_time(
    tmp_path: Path,
) -> None:
    env = {PASSWORD_ENV: PASSWORD, SECRET_ENV: SECRET}
    berlin = first_start(BERLIN, 10)
    york = first_start(NEW_YORK, 9)
    with ews_simulator(SVC, PASSWORD, env) as ews:
        box = ews.add_mailbox(ALICE)
        async with graph_simulator(tmp_path, APP, SECRET, [ALICE], env) as graph:
            # 1. Outlook on Exchange: 10:00 Berlin weekly, W. Europe Standard Time, one
            #    occurrence after the change deleted by its organizer.
            gone = berlin + timedelta(weeks=3) - timedelta(hours=_shift(berlin, 3, BERLIN))
            made = add_calendar_item(
                box, uid="ews-tz-series", subject="Berlin weekly", start=berlin,
                end=berlin + timedelta(minutes=30), start_tz="W. Europe Standard Time",
                recurrence=weekly(EWS_DAYS[berlin.astimezone(BERLIN).weekday()],
                                  berlin.astimezone(BERLIN).date().isoformat(), count=COUNT),
                deleted=[gone], organizer=(ALICE, "Alice"),
            )  # fmt: skip
            ews_side = ews_target(ews)
            read = await ews_side.get(ActType.APPOINTMENT, made.item_id)
            assert read is not None and isinstance(read.payload, Appointment)
            from_ews = read.payload
            assert from_ews.exceptions == [OccurrenceChange(original_start=gone, cancelled=True)]
            # ... written to Microsoft 365 and read back by the Graph connector
            graph_side = GraphActTarget(graph_client(graph), ALICE)
            ref = await graph_side.create(ActType.APPOINTMENT, from_ews, "tx-tz-berlin")
            stored = graph.mailboxes[ALICE].act_items[ref.item_id]
            assert stored["recurrence"]["range"]["recurrenceTimeZone"] == "W. Europe Standard Time"
            assert stored["originalStartTimeZone"] == "W. Europe Standard Time"
            # Graph (the simulator, as Graph does) expands it at 10:00 Berlin
            graph_starts = [
                datetime.fromisoformat(o["originalStart"]) for o in _act_occurrences(stored)
            ]
            assert len(graph_starts) == COUNT - 1  # one was deleted
            assert local_times(graph_starts, BERLIN) == {(10, 0)}
            assert_same_series(await graph_read(graph, ref.item_id), from_ews, BERLIN)

            # 2. Outlook on Microsoft 365: 09:00 New York weekly, Eastern Standard Time,
            #    one occurrence after the change cancelled.
            late = york + timedelta(weeks=3) - timedelta(hours=_shift(york, 3, NEW_YORK))
            event = act_add_event(
                graph, ALICE, subject="New York weekly", start=york,
                end=york + timedelta(minutes=30), time_zone="Eastern Standard Time",
                recurrence=act_weekly(york, COUNT, "Eastern Standard Time"),
            )  # fmt: skip
            act_cancel_occurrence(graph, ALICE, event["id"], late, attendee=False)
            from_graph = await graph_read(graph, event["id"])
            assert from_graph.exceptions == [OccurrenceChange(original_start=late, cancelled=True)]
            # ... written to Exchange: the occurrence is found by its InstanceIndex
            ref = await ews_side.create(ActType.APPOINTMENT, from_graph, "tx-tz-york")
            item = box.folder("calendar").items[ref.item_id]
            assert isinstance(item, SimActItem)
            assert item.props["start_tz"] == "Eastern Standard Time"
            assert item.props["deleted"] == [late]
            # Exchange (the simulator, as Exchange does) expands it at 09:00 New York
            assert local_times(_occurrence_starts(item.props), NEW_YORK) == {(9, 0)}
            back = await ews_side.get(ActType.APPOINTMENT, ref.item_id)
            assert back is not None and isinstance(back.payload, Appointment)
            assert_same_series(back.payload, from_graph, NEW_YORK)
            await ews_side.close()
            await graph_side.close()


async def test_a_crm_series_with_exceptions_after_the_change_reaches_both(
    tmp_path: Path,
) -> None:
    env = {PASSWORD_ENV: PASSWORD, SECRET_ENV: SECRET}
    first = first_start(NEW_YORK, 9)
    fourth = first + timedelta(weeks=3) - timedelta(hours=_shift(first, 3, NEW_YORK))
    moved = OccurrenceChange(
        original_start=fourth,
        start=fourth + timedelta(hours=2),
        end=fourth + timedelta(hours=2, minutes=30),
    )
    cancelled = OccurrenceChange(
        original_start=first + timedelta(weeks=4) - timedelta(hours=_shift(first, 4, NEW_YORK)),
        cancelled=True,
    )
    sent = crm_series("America/New_York", first, [moved, cancelled])
    with ews_simulator(SVC, PASSWORD, env) as ews:
        box = ews.add_mailbox(ALICE)
        async with graph_simulator(tmp_path, APP, SECRET, [ALICE], env) as graph:
            ews_side = ews_target(ews)
            ref = await ews_side.create(ActType.APPOINTMENT, sent, "tx-crm-ews")
            item = box.folder("calendar").items[ref.item_id]
            assert isinstance(item, SimActItem)
            assert [m[3] for m in item.props["modified"]] == [moved.original_start]
            assert item.props["deleted"] == [cancelled.original_start]
            back = await ews_side.get(ActType.APPOINTMENT, ref.item_id)
            assert back is not None and isinstance(back.payload, Appointment)
            assert_same_series(back.payload, sent, NEW_YORK)
            await ews_side.close()

            graph_side = GraphActTarget(graph_client(graph), ALICE)
            made = await graph_side.create(ActType.APPOINTMENT, sent, "tx-crm-graph")
            read = await graph_side.get(ActType.APPOINTMENT, made.item_id)
            assert read is not None and isinstance(read.payload, Appointment)
            # the writer's own read-back finds the occurrences at their local times
            # (it spells out an exception's unchanged subject and location: not compared)
            assert [
                (c.original_start, c.start, c.end, c.cancelled) for c in read.payload.exceptions
            ] == [(c.original_start, c.start, c.end, c.cancelled) for c in sent.exceptions]
            assert_same_series(await graph_read(graph, made.item_id), sent, NEW_YORK)
            await graph_side.close()


def _shift(first: datetime, weeks: int, where: ZoneInfo) -> int:
    """Hours the UTC time of the occurrence `weeks` after `first` moves by at the same
    local time (+1 when daylight saving ended in between, -1 when it began)."""
    later = first + timedelta(weeks=weeks)
    before, after = first.astimezone(where).utcoffset(), later.astimezone(where).utcoffset()
    assert before is not None and after is not None
    return int((after - before).total_seconds() // 3600)
