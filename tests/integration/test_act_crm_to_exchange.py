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

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.act_writer import ActWriter
from connectors.graph_auth import forget_apps
from pipeline.publish import publish
from schemas.act import (
    ActRecord,
    ActType,
    Appointment,
    Attendee,
    Contact,
    OccurrenceChange,
    Recurrence,
)
from schemas.act_changes import ActLink, CrmActChange, link_key
from schemas.base import RecordRef
from schemas.mailbox import ActSettings, MailboxConfig, Protocol, ServerProfile
from schemas.topics import ACT_LINKS, CRM_ACT, CRM_ACT_CHANGES
from tests.connector_harness import ConnectorHarness
from tests.graph_sim import GraphSimulator, act_edit

pytestmark = pytest.mark.integration

SECRET_ENV = "TEST_ACT_GRAPH_SECRET"
APP, SECRET = "tidings-act-app", "act-secret"
ALICE = "alice@contoso.example"
WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
START = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=7)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[GraphSimulator]:
    forget_apps()
    async with GraphSimulator.running(tmp_path / "graph") as server:
        server.add_app(APP, SECRET)
        server.add_user(ALICE)
        yield server
    forget_apps()


@pytest.fixture
def secret() -> Iterator[str]:
    os.environ[SECRET_ENV] = SECRET
    yield SECRET
    os.environ.pop(SECRET_ENV, None)


def mailbox() -> MailboxConfig:
    return MailboxConfig(
        mailbox_id="mb-alice",
        owner=RecordRef("user", "alice"),
        email_address=ALICE,
        protocol=Protocol.GRAPH,
        server_profile="graph",
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
        attendees=[Attendee(address="dana@fabrikam.example", name="Dana")],
        **changes,
    )
    return CrmActChange(
        record_id="appt-1",
        record_type=ActType.APPOINTMENT,
        owner=RecordRef("user", "alice"),
        payload=payload,
        crm_change_time=at,
    )


def series(at: datetime) -> CrmActChange:
    first = START + timedelta(hours=3)
    payload = Appointment(
        ical_uid="crm-series-1",
        subject="Weekly sync",
        start=first,
        end=first + timedelta(minutes=30),
        recurrence=Recurrence(
            rrule=f"FREQ=WEEKLY;BYDAY={WEEKDAYS[first.weekday()]}",
            start_date=first.date(),
            count=5,
        ),
        exceptions=[
            OccurrenceChange(
                original_start=first + timedelta(weeks=1),
                start=first + timedelta(weeks=1, hours=1),
                end=first + timedelta(weeks=1, hours=1, minutes=30),
                subject="Weekly sync (moved)",
            ),
            OccurrenceChange(original_start=first + timedelta(weeks=3), cancelled=True),
        ],
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
            emails=["dana@fabrikam.example"],
            company="Fabrikam",
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


def events(sim: GraphSimulator) -> dict[str, dict[str, Any]]:
    box = sim.mailboxes[ALICE]
    return {i["subject"]: i for i in box.act_items.values() if i["@kind"] == "event"}


async def send(h: ConnectorHarness, *changes: CrmActChange) -> None:
    await publish(
        h.config.kafka,
        h.config.topic_prefix,
        CRM_ACT_CHANGES,
        [(c.record_id, c) for c in changes],
    )


async def processed(w: ActWriter, before: int, step: Callable[[], Awaitable[None]]) -> None:
    """Run `step` and wait until the writer handled one more change."""

    def count() -> int:
        s = w.stats
        return s.created + s.updated + s.deleted + s.unchanged + s.failed

    start = count() if before < 0 else before
    await step()
    await until(lambda: count() > start, "the writer handled the change")


async def test_meeting_conflicts_series_delete_and_replay(
    sim: GraphSimulator, secret: str, tmp_path: Path
) -> None:
    profile: ServerProfile = sim.profile(APP, SECRET_ENV, timeout_s=10.0)
    async with ConnectorHarness.up(tmp_path / "data", {"graph": profile}) as h:
        await h.add_mailbox(mailbox())
        t0 = datetime.now(UTC) - timedelta(hours=1)
        async with writer(h, "act-writer-1") as w:
            # 1. A CRM meeting appears in the organizer's calendar; the attendee is invited.
            await send(h, meeting("Review", t0), contact(t0))
            event = await until(lambda: events(sim).get("Review"), "the meeting appears")
            assert event["attendees"][0]["emailAddress"]["address"] == "dana@fabrikam.example"
            assert event["location"]["displayName"] == "Room 1"
            assert ("dana@fabrikam.example", "Review") in sim.act_invitations
            await until(lambda: w.stats.created >= 2, "contact created")
            box = sim.mailboxes[ALICE]
            contacts = [i for i in box.act_items.values() if i["@kind"] == "contact"]
            assert [c["displayName"] for c in contacts] == ["Dana Ng"]

            # 2. Edited on both sides, the CRM later: CRM wins the subject, the
            #    mailbox's location (changed only there) goes to the CRM.
            edited = t0 + timedelta(minutes=10)
            act_edit(
                sim,
                ALICE,
                event["id"],
                at=edited,
                subject="Outlook subject",
                location={"displayName": "Room 9"},
            )
            await processed(
                w,
                -1,
                lambda: send(
                    h, meeting("CRM subject", edited + timedelta(minutes=1), body="CRM body")
                ),
            )
            event = box.act_items[event["id"]]
            assert event["subject"] == "CRM subject"
            assert event["body"]["content"] == "CRM body"
            assert event["location"]["displayName"] == "Room 9"
            taken = await h.wait_for(CRM_ACT, "appt-1", lambda v: len(v) >= 1)
            assert isinstance(taken[-1], ActRecord) and taken[-1].origin == "exchange"
            assert isinstance(taken[-1].payload, Appointment)
            assert taken[-1].payload.location == "Room 9"

            # 3. A tie (same change time on both sides): the CRM wins.
            tie = edited + timedelta(minutes=20)
            act_edit(sim, ALICE, event["id"], at=tie, subject="Outlook tie")
            await processed(
                w, -1, lambda: send(h, meeting("CRM tie", tie, body="CRM body", location="Room 9"))
            )
            assert box.act_items[event["id"]]["subject"] == "CRM tie"

            # 4. The mailbox later: its body stays and goes to the CRM.
            late = tie + timedelta(minutes=30)
            act_edit(
                sim,
                ALICE,
                event["id"],
                at=late,
                body={"contentType": "text", "content": "Outlook body"},
            )
            await processed(
                w,
                -1,
                lambda: send(
                    h,
                    meeting(
                        "CRM tie", late - timedelta(minutes=5), body="CRM body 2", location="Room 9"
                    ),
                ),
            )
            assert box.act_items[event["id"]]["body"]["content"] == "Outlook body"
            taken = await h.wait_for(
                CRM_ACT,
                "appt-1",
                lambda v: any(getattr(r.payload, "body", "") == "Outlook body" for r in v),
            )

            # 5. A recurring series with one modified and one cancelled occurrence.
            await send(h, series(t0))
            master = await until(lambda: events(sim).get("Weekly sync"), "the series appears")
            await until(lambda: box.act_items[master["id"]].get("_occurrences"), "exceptions")
            await until(lambda: len(box.act_items[master["id"]]["_occurrences"]) >= 2, "both")
            answer = await _instances(sim, master["id"])
            assert len(answer) == 4
            moved = [o for o in answer if o["type"] == "exception"]
            assert [o["subject"] for o in moved] == ["Weekly sync (moved)"]

            # 6. Deleted in the CRM: the organizer's future meeting is cancelled
            #    (the attendee gets the cancellation), the link marked deleted.
            gone = CrmActChange(
                record_id="appt-1",
                record_type=ActType.APPOINTMENT,
                owner=RecordRef("user", "alice"),
                deleted=True,
                crm_change_time=late + timedelta(minutes=1),
            )
            await send(h, gone)
            await until(lambda: event["id"] not in box.act_items, "the meeting is cancelled")
            assert ("dana@fabrikam.example", "CRM tie") in sim.act_cancellations
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
        async with writer(h, "act-writer-replay") as replay:
            await until(lambda: replay.stats.unchanged >= 7, "the replay was read", 45)
            assert replay.stats.created == replay.stats.updated == replay.stats.deleted == 0
        assert {k: v["changeKey"] for k, v in box.act_items.items()} == {
            k: v["changeKey"] for k, v in settled.items()
        }
        assert sim.requests["act"] == writes


async def _instances(sim: GraphSimulator, master_id: str) -> list[dict[str, Any]]:
    from tests.graph_sim import _act_occurrences

    master = sim.mailboxes[ALICE].act_items[master_id]
    return _act_occurrences(master)
