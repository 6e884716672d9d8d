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

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.act_conflict import sync_fields
from connectors.act_ews_write import EwsActTarget
from connectors.act_writer import ActWriter
from connectors.gate import ServerGate
from schemas.act import ActType, Task, TaskStatus
from schemas.act_changes import ActLink, CrmActChange, link_key
from schemas.mailbox import ActSettings, MailboxConfig
from schemas.topics import ACT_LINKS
from tests.act_harness import (
    CANCELLED,
    DANA,
    MOVED,
    START,
    act_writer,
    crm_change,
    crm_contact,
    crm_series,
    ews_mailbox,
    ews_profile,
    ews_simulator,
    processed,
    reached_crm,
    replay_changes_nothing,
    send_act,
    until,
)
from tests.act_harness import crm_meeting as _crm_meeting
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator, SimActItem, SimMailbox, act_edit

pytestmark = pytest.mark.integration

PASSWORD_ENV = "TEST_ACT_EWS_WRITE_PASSWORD"
PASSWORD = "svc-S3cret!"
SVC = "svc-tidings"
ALICE = "alice@northwind.example"
WRITES = ("CreateItem", "UpdateItem", "DeleteItem")


@pytest.fixture
def sim() -> Iterator[EwsSimulator]:
    with ews_simulator(SVC, PASSWORD, {PASSWORD_ENV: PASSWORD}) as server:
        server.add_mailbox(ALICE)
        yield server


def mailbox() -> MailboxConfig:
    return ews_mailbox("mb-alice", ALICE, SVC, PASSWORD_ENV, act=ActSettings())


def meeting(subject: str, at: datetime, **changes: object) -> CrmActChange:
    return _crm_meeting(ALICE, subject, at, **changes)


def items(box: SimMailbox, folder: str) -> dict[str, SimActItem]:
    """The live items of a folder, by subject (display name for contacts)."""
    out: dict[str, SimActItem] = {}
    for item in box.folder(folder).live():
        assert isinstance(item, SimActItem)
        out[item.subject or item.props.get("display_name", "")] = item
    return out


async def reads_back(sim: EwsSimulator, change: CrmActChange, item_id: str) -> None:
    """The item, read back through exchangelib and the Exchange → CRM mapping, holds
    every synchronized field the CRM wrote (organizer and categories flow nowhere)."""
    target = EwsActTarget(mailbox(), ews_profile(sim), ServerGate("exchange", 4))
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
    async with ConnectorHarness.up(tmp_path / "data", {"exchange": ews_profile(sim)}) as h:
        await h.add_mailbox(mailbox())
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        async with act_writer(h, "act-ews-writer-1") as w:
            # 1. A CRM meeting appears in the organizer's calendar; the attendee is invited.
            await send_act(h, meeting("Review", t0), crm_contact(t0))
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
            await reads_back(sim, crm_contact(t0), person.item_id)
            assert w.stats.failed == 0

            late = await conflicts(h, w, box, event, t0)
            await weekly_series(h, box, t0)

            # 6. Deleted in the CRM: the organizer's future meeting is cancelled (the
            #    attendee gets the cancellation), the link marked deleted.
            gone = crm_change("appt-1", ActType.APPOINTMENT, late + timedelta(minutes=1))
            await send_act(h, gone)
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
        await replay_changes_nothing(h, "act-ews-writer-replay", 7)
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
        lambda: send_act(h, meeting("CRM subject", edited + timedelta(minutes=1), body="CRM body")),
    )
    assert event.subject == "CRM subject"
    assert event.props["body"] == "CRM body"
    assert event.props["location"] == "Room 9"
    await reached_crm(h, "appt-1", location="Room 9")

    # 3. A tie (the same change time on both sides): the CRM wins.
    tie = edited + timedelta(minutes=20)
    act_edit(box, event.item_id, at=tie, subject="Outlook tie")
    await processed(
        w, lambda: send_act(h, meeting("CRM tie", tie, body="CRM body", location="Room 9"))
    )
    assert event.subject == "CRM tie"

    # 4. The mailbox later: its body stays and goes to the CRM.
    late = tie + timedelta(minutes=30)
    act_edit(box, event.item_id, at=late, body="Outlook body")
    stale = late - timedelta(minutes=5)
    await processed(
        w,
        lambda: send_act(h, meeting("CRM tie", stale, body="CRM body 2", location="Room 9")),
    )
    assert event.props["body"] == "Outlook body"
    await reached_crm(h, "appt-1", body="Outlook body")
    return late


async def weekly_series(h: ConnectorHarness, box: SimMailbox, t0: datetime) -> None:
    """Step 5: a weekly series with one modified and one cancelled occurrence."""
    # 5. A weekly series with one modified and one cancelled occurrence.
    await send_act(h, crm_series(t0))
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
    await reads_back(box.sim, crm_series(t0), master.item_id)
    series_link = await h.wait_for(ACT_LINKS, link_key("series-1", "mb-alice"), bool)
    assert isinstance(series_link[-1], ActLink)


async def test_retried_create_finds_the_first_item(sim: EwsSimulator) -> None:
    """A create whose link was lost (a crash after CreateItem) is retried with the
    same transaction: FindItem on the link property returns the first item."""
    target = EwsActTarget(mailbox(), ews_profile(sim), ServerGate("exchange", 4))
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
