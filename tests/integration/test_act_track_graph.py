"""Manual tracking of appointments, contacts and tasks in a Microsoft 365 mailbox:
the connector runtime on the embedded broker (tansu) serving mail.track requests
with a Graph item id (an event, a contact, a To Do task) or an iCalendar UID
(GET /events?$filter=iCalUId) against the Graph simulator; what it sends is the
created event a sync emits, marked manual_track, and the ACT stage promotes it.
An unknown id is TrackNotFound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from processors.act import handle_act
from schemas.config import ConnectorConfig
from schemas.crm import DecisionStatus, ReasonCode
from schemas.mail import ChangeKind, ItemType
from schemas.mailbox import ActSettings
from schemas.topics import MAIL_CHANGES, SYNC_ERRORS
from schemas.track import TrackRequest
from tests.act_harness import graph_mailbox, graph_simulator
from tests.connector_harness import ConnectorHarness
from tests.graph_sim import act_add_event, act_add_item, act_weekly
from tests.integration.test_track import send_requests, tracked

pytestmark = pytest.mark.integration

SECRET_ENV = "TEST_ACT_TRACK_GRAPH_SECRET"
APP, SECRET = "tidings-act-track", "act-track-secret"
ALICE = "alice@contoso.example"
UID = "040000008200E00074C5B7101A82E00800000000E7"
FAST = ConnectorConfig(server_poll_interval_s=0.3, max_batch_items=50)
_today = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
T0 = _today + timedelta(days=7 - _today.weekday())  # next Monday 09:00 UTC


def item_request(request_id: str, **target: str) -> TrackRequest:
    return TrackRequest(
        request_id=request_id, mailbox_id="mb-alice", requested_by="ops", requested_at=T0, **target
    )


async def test_graph_items_become_tracked_by_request(tmp_path: Path) -> None:
    env = {SECRET_ENV: SECRET}
    async with graph_simulator(tmp_path / "graph", APP, SECRET, [ALICE], env) as sim:
        series = act_add_event(
            sim, ALICE, subject="Weekly pricing", start=T0, end=T0 + timedelta(hours=1),
            organizer=(ALICE, "Alice"), ical_uid=UID, recurrence=act_weekly(T0, 3),
            attendees=[("dana@contoso.example", "Dana", "required", "accepted")],
        )  # fmt: skip
        single = act_add_event(
            sim, ALICE, subject="Kick-off", start=T0 + timedelta(days=1),
            end=T0 + timedelta(days=1, hours=1),
        )  # fmt: skip
        contact = act_add_item(
            sim, ALICE, "contact", givenName="Dana", surname="Smith", displayName="Dana Smith",
            emailAddresses=[{"address": "dana@contoso.example", "name": "Dana Smith"}],
        )  # fmt: skip
        task = act_add_item(sim, ALICE, "task", title="Send the quote", status="notStarted")
        profile = sim.profile(APP, SECRET_ENV, timeout_s=10.0)
        async with ConnectorHarness.up(tmp_path / "data", {"graph": profile}, FAST) as h:
            await h.add_mailbox(graph_mailbox("mb-alice", ALICE, act=ActSettings()))
            async with h.runtime():
                synced = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) == 4)
                await send_requests(
                    h,
                    item_request("t-uid", ical_uid=UID),
                    item_request("t-event", item_id=single["id"]),
                    item_request("t-contact", item_id=contact["id"]),
                    item_request("t-task", item_id=task["id"]),
                    item_request("t-missing", item_id="AAMkNoSuchItem"),
                )
                events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(tracked(e)) == 4)
                errors = await h.wait_for(SYNC_ERRORS, "mb-alice", bool)

    by_request = {e.manual_track.request_id: e for e in tracked(events) if e.manual_track}
    assert {r: (e.item_id, e.item_type, e.folder) for r, e in by_request.items()} == {
        "t-uid": (series["id"], ItemType.APPOINTMENT, "Calendar"),
        "t-event": (single["id"], ItemType.APPOINTMENT, "Calendar"),
        "t-contact": (contact["id"], ItemType.CONTACT, "Contacts"),
        "t-task": (task["id"], ItemType.TASK, "Tasks"),
    }
    assert {e.change for e in by_request.values()} == {ChangeKind.CREATED}
    assert {e.event_id for e in by_request.values()}.isdisjoint({e.event_id for e in synced})
    # The same payload the sync read: the series folded with its instances.
    as_synced = {e.item_id: e for e in synced}
    for event in by_request.values():
        assert event.act == as_synced[event.item_id].act
        assert event.version == as_synced[event.item_id].version
    assert by_request["t-uid"].act is not None
    assert [(e.code, e.message.split(":", 1)[0]) for e in errors] == [
        ("TrackNotFound", "track request t-missing by ops")
    ]

    # The ACT stage: the synced items are not tracked; the marked ones are promoted.
    config = graph_mailbox("mb-alice", ALICE, act=ActSettings())
    for change in synced:
        out = handle_act(change, config, None, lambda a: [], T0)
        assert (out.decision.status, out.decision.reason) == (
            DecisionStatus.SKIPPED,
            ReasonCode.NOT_TRACKED,
        )
    for change in by_request.values():
        out = handle_act(change, config, None, lambda a: [], T0)
        assert (out.decision.status, out.decision.reason) == (
            DecisionStatus.PROMOTED,
            ReasonCode.MANUAL_TRACK,
        )
