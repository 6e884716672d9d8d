"""CRM → Exchange over EWS for real: the act writer (connectors/act_writer.py) reading
crm.act.changes from the embedded broker (tansu) and writing into a mailbox of the EWS
simulator through exchangelib (connectors/act_ews_write.py), its links on act.links.

The story mirrors the Graph one (test_act_crm_to_exchange.py): a CRM meeting appears
in the organizer's calendar (the attendee is invited), is edited on both sides with
conflicts (CRM newer, a tie, the mailbox newer), a weekly series gets one modified
and one cancelled occurrence, the meeting is deleted in the CRM (cancelled for its
attendee: the organizer rule), and a second writer replaying the whole topic from the
start changes nothing. A second test retries a create whose answer was lost: the
link property finds the first item, so there is no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.act_conflict import sync_fields
from connectors.act_ews_write import EwsActTarget
from connectors.act_writer import ActWriter
from connectors.gate import ServerGate
from pipeline.publish import publish
from schemas.act import (
    ActRecord,
    ActType,
    Appointment,
    Attendee,
    Contact,
    OccurrenceChange,
    Recurrence,
    Task,
    TaskStatus,
)
from schemas.act_changes import ActLink, CrmActChange, link_key
from schemas.base import RecordRef
from schemas.mailbox import (
    ActSettings,
    Credentials,
    EwsAccess,
    EwsAuth,
    EwsSettings,
    MailboxConfig,
    Protocol,
    RetryPolicy,
    ServerProfile,
    TransportSecurity,
)
from schemas.secret import SecretRef
from schemas.topics import ACT_LINKS, CRM_ACT, CRM_ACT_CHANGES
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator, SimActItem, SimMailbox, act_edit

pytestmark = pytest.mark.integration

PASSWORD_ENV = "TEST_ACT_EWS_WRITE_PASSWORD"
PASSWORD = "svc-S3cret!"
ALICE = "alice@northwind.example"
DANA = "dana@fabrikam.example"
WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
START = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=7)
WRITES = ("CreateItem", "UpdateItem", "DeleteItem")


@pytest.fixture
def sim() -> Iterator[EwsSimulator]:
    os.environ[PASSWORD_ENV] = PASSWORD
    with EwsSimulator() as server:
        server.add_user("svc-tidings", PASSWORD, impersonator=True)
        server.add_mailbox(ALICE)
        yield server
    os.environ.pop(PASSWORD_ENV, None)


def profile(sim: EwsSimulator) -> ServerProfile:
    return ServerProfile(
        protocol=Protocol.EWS,
        host="127.0.0.1",
        port=sim.port,
        security=TransportSecurity.PLAIN,
        allow_plaintext=True,
        retry=RetryPolicy(max_retries=3, retry_interval_s=1.0, reconnect_base_s=0.2),
        timeout_s=10.0,
    )


def mailbox() -> MailboxConfig:
    return MailboxConfig(
        mailbox_id="mb-alice",
        owner=RecordRef("user", "alice"),
        email_address=ALICE,
        protocol=Protocol.EWS,
        server_profile="exchange",
        credentials=Credentials(username="svc-tidings", password=SecretRef(env=PASSWORD_ENV)),
        ews=EwsSettings(
            auth=EwsAuth.BASIC, access=EwsAccess.IMPERSONATION, include_sent=False, streaming=False
        ),
        act=ActSettings(),
    )


def meeting(subject: str, at: datetime, **changes: Any) -> CrmActChange:
    payload = Appointment(
        ical_uid="crm-meeting-1",
        subject=subject,
        body=changes.pop("body", "Agenda"),
        start=START,
        end=START + timedelta(hours=1),
        location=changes.pop("location", "Room 1"),
        organizer=Attendee(address=ALICE, name="Alice"),
        attendees=[Attendee(address=DANA, name="Dana")],
        **changes,
    )
    return CrmActChange(
        record_id="appt-1",
        record_type=ActType.APPOINTMENT,
        owner=RecordRef("user", "alice"),
        payload=payload,
        crm_change_time=at,
    )


FIRST = START + timedelta(hours=3)
MOVED = OccurrenceChange(
    original_start=FIRST + timedelta(weeks=1),
    start=FIRST + timedelta(weeks=1, hours=1),
    end=FIRST + timedelta(weeks=1, hours=1, minutes=30),
    subject="Weekly sync (moved)",
)
CANCELLED = OccurrenceChange(original_start=FIRST + timedelta(weeks=3), cancelled=True)


def series(at: datetime) -> CrmActChange:
    payload = Appointment(
        ical_uid="crm-series-1",
        subject="Weekly sync",
        start=FIRST,
        end=FIRST + timedelta(minutes=30),
        recurrence=Recurrence(
            rrule=f"FREQ=WEEKLY;BYDAY={WEEKDAYS[FIRST.weekday()]}",
            start_date=FIRST.date(),
            count=5,
        ),
        exceptions=[MOVED, CANCELLED],
    )
    return CrmActChange(
        record_id="series-1",
        record_type=ActType.APPOINTMENT,
        owner=RecordRef("user", "alice"),
        payload=payload,
        crm_change_time=at,
    )


def contact(at: datetime) -> CrmActChange:
    return CrmActChange(
        record_id="contact-1",
        record_type=ActType.CONTACT,
        owner=RecordRef("user", "alice"),
        payload=Contact(
            given_name="Dana",
            surname="Ng",
            display_name="Dana Ng",
            emails=[DANA],
            company="Fabrikam",
            department="Sales",
        ),
        crm_change_time=at,
    )


async def until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = check()
            if found:
                return found
            await asyncio.sleep(0.1)
    raise AssertionError(what)  # pragma: no cover


@contextlib.asynccontextmanager
async def writer(h: ConnectorHarness, group: str) -> AsyncIterator[ActWriter]:
    running = ActWriter(
        h.config.kafka,
        h.config.topic_prefix,
        h.config.server_profiles,
        group_id=group,
        ack_timeout_s=30,
        worker=group,
        retry_pause_s=0.2,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def items(box: SimMailbox, folder: str) -> dict[str, SimActItem]:
    """The live items of a folder, by subject (display name for contacts)."""
    out: dict[str, SimActItem] = {}
    for item in box.folder(folder).live():
        assert isinstance(item, SimActItem)
        out[item.subject or item.props.get("display_name", "")] = item
    return out


async def send(h: ConnectorHarness, *changes: CrmActChange) -> None:
    await publish(
        h.config.kafka, h.config.topic_prefix, CRM_ACT_CHANGES, [(c.record_id, c) for c in changes]
    )


async def processed(w: ActWriter, step: Callable[[], Awaitable[None]]) -> None:
    """Run `step` and wait until the writer handled one more change."""

    def count() -> int:
        s = w.stats
        return s.created + s.updated + s.deleted + s.unchanged + s.failed

    start = count()
    await step()
    await until(lambda: count() > start, "the writer handled the change")


async def reads_back(sim: EwsSimulator, change: CrmActChange, item_id: str) -> None:
    """The item, read back through exchangelib and the Exchange → CRM mapping, holds
    every synchronized field the CRM wrote (organizer and categories flow nowhere)."""
    target = EwsActTarget(mailbox(), profile(sim), ServerGate("exchange", 4))
    read = await target.get(change.record_type, item_id)
    await target.close()
    assert read is not None and change.payload is not None
    kind = str(change.record_type)
    mine, theirs = sync_fields(kind, read.payload), sync_fields(kind, change.payload)
    for name in ("organizer", "categories"):
        mine.pop(name, None)
        theirs.pop(name, None)
    assert mine == theirs


def writes(sim: EwsSimulator) -> int:
    return sum(len(sim.operations(name)) for name in WRITES)


async def test_meeting_conflicts_series_delete_and_replay(
    sim: EwsSimulator, tmp_path: Path
) -> None:
    box = sim.mailboxes[ALICE]
    async with ConnectorHarness.up(tmp_path / "data", {"exchange": profile(sim)}) as h:
        await h.add_mailbox(mailbox())
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        async with writer(h, "act-ews-writer-1") as w:
            # 1. A CRM meeting appears in the organizer's calendar; the attendee is invited.
            await send(h, meeting("Review", t0), contact(t0))
            event = await until(lambda: items(box, "calendar").get("Review"), "the meeting")
            assert event.props["organizer"][0] == ALICE
            assert [a for a, _, _ in event.props["required"]] == [DANA]
            assert event.props["location"] == "Room 1"
            assert event.props["uid"] == "crm-meeting-1"
            await reads_back(sim, meeting("Review", t0), event.item_id)
            assert (DANA, "Review") in sim.act_invitations
            await until(lambda: w.stats.created >= 2, "the contact is created")
            person = items(box, "contacts")["Dana Ng"]
            assert person.props["emails"] == [DANA]
            assert person.props["department"] == "Sales"
            await reads_back(sim, contact(t0), person.item_id)
            assert w.stats.failed == 0

            late = await conflicts(h, w, box, event, t0)
            await weekly_series(h, box, t0)

            # 6. Deleted in the CRM: the organizer's future meeting is cancelled (the
            #    attendee gets the cancellation), the link marked deleted.
            gone = CrmActChange(
                record_id="appt-1",
                record_type=ActType.APPOINTMENT,
                owner=RecordRef("user", "alice"),
                deleted=True,
                crm_change_time=late + timedelta(minutes=1),
            )
            await send(h, gone)
            await until(lambda: "CRM tie" not in items(box, "calendar"), "the meeting is gone")
            assert (DANA, "CRM tie") in sim.act_cancellations
            links = await h.wait_for(
                ACT_LINKS, link_key("appt-1", "mb-alice"), lambda v: bool(v) and v[-1].deleted
            )
            assert isinstance(links[-1], ActLink)
            assert w.stats.failed == 0
            settled = {i.item_id: i.change_key for f in box.folders.values() for i in f.live()}
            before = writes(sim)

        # 7. A second writer replays the topic from its start: nothing changes and
        #    nothing is written (older versions are stale, the latest ones linked).
        async with writer(h, "act-ews-writer-replay") as replay:
            await until(lambda: replay.stats.unchanged >= 7, "the replay was read", 45)
            assert replay.stats.created == replay.stats.updated == replay.stats.deleted == 0
        assert {i.item_id: i.change_key for f in box.folders.values() for i in f.live()} == settled
        assert writes(sim) == before


async def conflicts(
    h: ConnectorHarness, w: ActWriter, box: SimMailbox, event: SimActItem, t0: datetime
) -> datetime:
    """Steps 2-4: a conflict the CRM wins as last writer, a tie the CRM wins, and a
    conflict the mailbox wins; returns the mailbox's last change time."""
    # 2. Edited on both sides, the CRM later: the CRM wins the subject, the
    #    mailbox's location (changed only there) goes to the CRM.
    edited = t0 + timedelta(minutes=10)
    act_edit(box, event.item_id, at=edited, subject="Outlook subject", location="Room 9")
    await processed(
        w,
        lambda: send(h, meeting("CRM subject", edited + timedelta(minutes=1), body="CRM body")),
    )
    assert event.subject == "CRM subject"
    assert event.props["body"] == "CRM body"
    assert event.props["location"] == "Room 9"
    taken = await h.wait_for(CRM_ACT, "appt-1", lambda v: len(v) >= 1)
    assert isinstance(taken[-1], ActRecord) and taken[-1].origin == "exchange"
    assert isinstance(taken[-1].payload, Appointment)
    assert taken[-1].payload.location == "Room 9"

    # 3. A tie (the same change time on both sides): the CRM wins.
    tie = edited + timedelta(minutes=20)
    act_edit(box, event.item_id, at=tie, subject="Outlook tie")
    await processed(w, lambda: send(h, meeting("CRM tie", tie, body="CRM body", location="Room 9")))
    assert event.subject == "CRM tie"

    # 4. The mailbox later: its body stays and goes to the CRM.
    late = tie + timedelta(minutes=30)
    act_edit(box, event.item_id, at=late, body="Outlook body")
    stale = late - timedelta(minutes=5)
    await processed(
        w,
        lambda: send(h, meeting("CRM tie", stale, body="CRM body 2", location="Room 9")),
    )
    assert event.props["body"] == "Outlook body"
    await h.wait_for(
        CRM_ACT,
        "appt-1",
        lambda v: any(getattr(r.payload, "body", "") == "Outlook body" for r in v),
    )
    return late


async def weekly_series(h: ConnectorHarness, box: SimMailbox, t0: datetime) -> None:
    """Step 5: a weekly series with one modified and one cancelled occurrence."""
    # 5. A weekly series with one modified and one cancelled occurrence.
    await send(h, series(t0))
    master = await until(lambda: items(box, "calendar").get("Weekly sync"), "the series")
    await until(lambda: master.props.get("modified") and master.props.get("deleted"), "ex")
    assert "WeeklyRecurrence" in master.props["recurrence"]
    assert master.props["deleted"] == [CANCELLED.original_start]
    [(occurrence_id, start, end, original)] = master.props["modified"]
    assert (start, end, original) == (MOVED.start, MOVED.end, MOVED.original_start)
    occurrence = next(
        f.items[occurrence_id] for f in box.folders.values() if occurrence_id in f.items
    )
    assert occurrence.subject == "Weekly sync (moved)"
    await reads_back(box.sim, series(t0), master.item_id)
    series_link = await h.wait_for(ACT_LINKS, link_key("series-1", "mb-alice"), bool)
    assert isinstance(series_link[-1], ActLink)


async def test_retried_create_finds_the_first_item(sim: EwsSimulator) -> None:
    """A create whose link was lost (a crash after CreateItem) is retried with the
    same transaction: FindItem on the link property returns the first item."""
    target = EwsActTarget(mailbox(), profile(sim), ServerGate("exchange", 4))
    task = Task(subject="Call Dana", due=START, status=TaskStatus.IN_PROGRESS)
    first = await target.create(ActType.TASK, task, transaction="tx-task-1")
    again = await target.create(ActType.TASK, task, transaction="tx-task-1")
    other = await target.create(ActType.TASK, task, transaction="tx-task-2")
    box = sim.mailboxes[ALICE]
    assert again.item_id == first.item_id != other.item_id
    assert len(box.folder("tasks").live()) == 2
    assert len(sim.operations("CreateItem")) == 2
    read = await target.get(ActType.TASK, first.item_id)
    assert read is not None and isinstance(read.payload, Task)
    assert (read.payload.subject, read.payload.status) == ("Call Dana", TaskStatus.IN_PROGRESS)
    assert read.payload.due == START.replace(hour=0)
    await target.delete(ActType.TASK, first.item_id, cancel=False)
    await target.delete(ActType.TASK, first.item_id, cancel=False)  # already gone: fine
    assert await target.get(ActType.TASK, first.item_id) is None
    await target.close()
