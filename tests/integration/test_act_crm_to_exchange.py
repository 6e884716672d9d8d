"""CRM → Exchange for real: the act writer (connectors/act_writer.py) reading
crm.act.changes from the embedded broker (tansu) and writing into a Microsoft 365
mailbox of the Graph simulator through httpx and msal, with its links on act.links.

One broker for the whole story of one mailbox: a CRM meeting appears (invitation
sent), is edited on both sides with conflicts (CRM newer, a tie, mailbox newer),
a recurring series gets one modified and one cancelled occurrence, the meeting is
deleted in the CRM (cancelled for its attendee, the organizer rule), and a second
writer replaying the whole topic from the start changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.act_writer import ActWriter
from schemas.act import ActType
from schemas.act_changes import ActLink, CrmActChange, link_key
from schemas.mailbox import ActSettings, MailboxConfig, ServerProfile
from schemas.topics import ACT_LINKS
from tests.act_harness import (
    DANA,
    act_writer,
    crm_change,
    crm_contact,
    crm_series,
    graph_mailbox,
    graph_simulator,
    processed,
    reached_crm,
    replay_changes_nothing,
    send_act,
    until,
)
from tests.act_harness import crm_meeting as _crm_meeting
from tests.connector_harness import ConnectorHarness
from tests.graph_sim import GraphSimulator, act_edit

pytestmark = pytest.mark.integration

SECRET_ENV = "TEST_ACT_GRAPH_SECRET"
APP, SECRET = "tidings-act-app", "act-secret"
ALICE = "alice@contoso.example"


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[GraphSimulator]:
    env = {SECRET_ENV: SECRET}
    async with graph_simulator(tmp_path / "graph", APP, SECRET, [ALICE], env) as server:
        yield server


def mailbox() -> MailboxConfig:
    return graph_mailbox("mb-alice", ALICE, act=ActSettings())


def meeting(subject: str, at: datetime, **changes: object) -> CrmActChange:
    return _crm_meeting(ALICE, subject, at, **changes)


def events(sim: GraphSimulator) -> dict[str, dict[str, Any]]:
    box = sim.mailboxes[ALICE]
    return {i["subject"]: i for i in box.act_items.values() if i["@kind"] == "event"}


async def test_meeting_conflicts_series_delete_and_replay(
    sim: GraphSimulator, tmp_path: Path
) -> None:
    profile: ServerProfile = sim.profile(APP, SECRET_ENV, timeout_s=10.0)
    async with ConnectorHarness.up(tmp_path / "data", {"graph": profile}) as h:
        await h.add_mailbox(mailbox())
        t0 = datetime.now(UTC) - timedelta(hours=1)
        async with act_writer(h, "act-writer-1") as w:
            # 1. A CRM meeting appears in the organizer's calendar; the attendee is invited.
            await send_act(h, meeting("Review", t0), crm_contact(t0))
            event = await until(lambda: events(sim).get("Review"), "the meeting appears")
            assert event["attendees"][0]["emailAddress"]["address"] == DANA
            assert event["location"]["displayName"] == "Room 1"
            assert (DANA, "Review") in sim.act_invitations
            await until(lambda: w.stats.created >= 2, "contact created")
            box = sim.mailboxes[ALICE]
            contacts = [i for i in box.act_items.values() if i["@kind"] == "contact"]
            assert [c["displayName"] for c in contacts] == ["Dana Ng"]

            late = await conflicts(h, w, sim, event["id"], t0)
            await weekly_series(h, sim, t0)

            # 6. Deleted in the CRM: the organizer's future meeting is cancelled
            #    (the attendee gets the cancellation), the link marked deleted.
            gone = crm_change("appt-1", ActType.APPOINTMENT, late + timedelta(minutes=1))
            await send_act(h, gone)
            await until(lambda: event["id"] not in box.act_items, "the meeting is cancelled")
            assert (DANA, "CRM tie") in sim.act_cancellations
            links = await h.wait_for(
                ACT_LINKS, link_key("appt-1", "mb-alice"), lambda v: bool(v) and v[-1].deleted
            )
            assert isinstance(links[-1], ActLink)
            # the link holds the UID Graph gave the event, which its reader reports
            assert links[-1].ical_uid == event["iCalUId"] != "crm-meeting-1"
            settled = dict(box.act_items)
            writes = sim.requests["act"]

        # 7. A second writer replays the topic from its start: nothing changes and
        #    nothing is written (older versions are stale, the latest ones linked).
        await replay_changes_nothing(h, "act-writer-replay", 7)
        assert {k: v["changeKey"] for k, v in box.act_items.items()} == {
            k: v["changeKey"] for k, v in settled.items()
        }
        assert sim.requests["act"] == writes


async def conflicts(
    h: ConnectorHarness, w: ActWriter, sim: GraphSimulator, event_id: str, t0: datetime
) -> datetime:
    """Steps 2-4: a conflict the CRM wins as last writer, a tie the CRM wins, and a
    conflict the mailbox wins; returns the mailbox's last change time."""
    box = sim.mailboxes[ALICE]
    # 2. Edited on both sides, the CRM later: CRM wins the subject, the
    #    mailbox's location (changed only there) goes to the CRM.
    edited = t0 + timedelta(minutes=10)
    act_edit(
        sim, ALICE, event_id, at=edited, subject="Outlook subject",
        location={"displayName": "Room 9"},
    )  # fmt: skip
    await processed(
        w,
        lambda: send_act(h, meeting("CRM subject", edited + timedelta(minutes=1), body="CRM body")),
    )
    event = box.act_items[event_id]
    assert event["subject"] == "CRM subject"
    assert event["body"]["content"] == "CRM body"
    assert event["location"]["displayName"] == "Room 9"
    await reached_crm(h, "appt-1", location="Room 9")

    # 3. A tie (same change time on both sides): the CRM wins.
    tie = edited + timedelta(minutes=20)
    act_edit(sim, ALICE, event_id, at=tie, subject="Outlook tie")
    await processed(
        w, lambda: send_act(h, meeting("CRM tie", tie, body="CRM body", location="Room 9"))
    )
    assert box.act_items[event_id]["subject"] == "CRM tie"

    # 4. The mailbox later: its body stays and goes to the CRM.
    late = tie + timedelta(minutes=30)
    body = {"contentType": "text", "content": "Outlook body"}
    act_edit(sim, ALICE, event_id, at=late, body=body)
    stale = late - timedelta(minutes=5)
    await processed(
        w, lambda: send_act(h, meeting("CRM tie", stale, body="CRM body 2", location="Room 9"))
    )
    assert box.act_items[event_id]["body"]["content"] == "Outlook body"
    await reached_crm(h, "appt-1", body="Outlook body")
    return late


async def weekly_series(h: ConnectorHarness, sim: GraphSimulator, t0: datetime) -> None:
    """Step 5: a recurring series with one modified and one cancelled occurrence."""
    box = sim.mailboxes[ALICE]
    await send_act(h, crm_series(t0))
    master = await until(lambda: events(sim).get("Weekly sync"), "the series appears")
    await until(lambda: box.act_items[master["id"]].get("_occurrences"), "exceptions")
    await until(lambda: len(box.act_items[master["id"]]["_occurrences"]) >= 2, "both")
    answer = await _instances(sim, master["id"])
    assert len(answer) == 4
    moved = [o for o in answer if o["type"] == "exception"]
    assert [o["subject"] for o in moved] == ["Weekly sync (moved)"]


async def _instances(sim: GraphSimulator, master_id: str) -> list[dict[str, Any]]:
    from tests.graph_sim import _act_occurrences

    master = sim.mailboxes[ALICE].act_items[master_id]
    return _act_occurrences(master)
