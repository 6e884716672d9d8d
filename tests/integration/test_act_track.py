"""Manual tracking of appointments, contacts and tasks for real: the connector runtime
on the embedded broker (tansu) serving mail.track requests with an item id or an
iCalendar UID for an EWS mailbox (exchangelib against the EWS simulator), then the
processors' ACT stage promoting what it sent; a Maildir mailbox refuses such a request."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from processors.act import handle_act
from schemas.crm import DecisionStatus, ReasonCode
from schemas.mail import ChangeKind, ItemType
from schemas.topics import MAIL_CHANGES, SYNC_ERRORS
from schemas.track import TrackRequest
from tests.act_harness import ews_profile
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator, add_act_item, add_calendar_item
from tests.integration.test_act_exchange_to_crm import (
    ALICE,
    FAST,
    T0,
    mailbox,
    sim,  # noqa: F401 - the simulator fixture
)
from tests.integration.test_track import maildir, maildir_mailbox, send_requests, tracked

UID = "040000008200E00074C5B7101A82E00800000000C9"


def item_request(mailbox_id: str, request_id: str, **target: str) -> TrackRequest:
    return TrackRequest(
        request_id=request_id, mailbox_id=mailbox_id, requested_by="ops", requested_at=T0, **target
    )


async def test_untracked_items_become_tracked_by_request(
    sim: EwsSimulator,  # noqa: F811
    tmp_path: Path,
) -> None:
    alice = sim.add_mailbox(ALICE)
    meeting = add_calendar_item(
        alice, uid=UID, subject="Pricing call", start=T0, end=T0 + timedelta(hours=1),
        organizer=(ALICE, "Alice"), required=[("dana@contoso.example", "Dana", "Accept")],
    )  # fmt: skip
    contact = add_act_item(
        alice, "contacts", display_name="Dana Smith", emails=["dana@contoso.example"]
    )
    root = maildir(tmp_path / "md", {"1772445600.M1P1Q1.t": "<m1@unknown.example>"})
    async with ConnectorHarness.up(tmp_path / "data", {"exchange": ews_profile(sim)}, FAST) as h:
        await h.add_mailbox(mailbox("mb-alice", ALICE))
        await h.add_mailbox(maildir_mailbox("mb-md", root))
        async with h.runtime():
            synced = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) == 2)
            await h.wait_for(MAIL_CHANGES, "mb-md", lambda e: len(e) == 1)
            await send_requests(
                h,
                item_request("mb-alice", "t-meeting", item_id=meeting.item_id),
                item_request("mb-alice", "t-uid", ical_uid=UID),
                item_request("mb-alice", "t-contact", item_id=contact.item_id),
                item_request("mb-alice", "t-missing", item_id="AAMkNoSuchItem"),
                item_request("mb-alice", "t-two", item_id=contact.item_id, ical_uid=UID),
                item_request("mb-md", "t-maildir", item_id="1772445600.M1P1Q1.t"),
            )
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(tracked(e)) == 3)
            errors = await h.wait_for(SYNC_ERRORS, "mb-alice", lambda e: len(e) == 2)
            refused = await h.wait_for(SYNC_ERRORS, "mb-md", lambda e: len(e) == 1)

    marked = tracked(events)
    by_request = {e.manual_track.request_id: e for e in marked if e.manual_track is not None}
    assert set(by_request) == {"t-meeting", "t-uid", "t-contact"}
    assert by_request["t-meeting"].item_id == by_request["t-uid"].item_id == meeting.item_id
    assert by_request["t-meeting"].item_type == ItemType.APPOINTMENT
    assert (by_request["t-contact"].item_id, by_request["t-contact"].item_type) == (
        contact.item_id,
        ItemType.CONTACT,
    )
    assert {e.change for e in marked} == {ChangeKind.CREATED}
    assert {e.event_id for e in marked}.isdisjoint({e.event_id for e in synced})
    assert sorted((e.code, e.message.split(":", 1)[0]) for e in errors) == [
        ("TrackInvalid", "track request t-two by ops"),
        ("TrackNotFound", "track request t-missing by ops"),
    ]
    assert "AAMkNoSuchItem" in next(e.message for e in errors if e.code == "TrackNotFound")
    [maildir_refusal] = refused
    assert maildir_refusal.code == "TrackRefused"
    assert "work for EWS mailboxes" in maildir_refusal.message

    # The ACT stage: the items as synced are not tracked; the marked ones are promoted.
    config = mailbox("mb-alice", ALICE)
    for change in synced:
        out = handle_act(change, config, None, lambda a: [], T0)
        assert (out.decision.status, out.decision.reason) == (
            DecisionStatus.SKIPPED,
            ReasonCode.NOT_TRACKED,
        )
    for change in (by_request["t-meeting"], by_request["t-contact"]):
        out = handle_act(change, config, None, lambda a: [], T0)
        assert (out.decision.status, out.decision.reason) == (
            DecisionStatus.PROMOTED,
            ReasonCode.MANUAL_TRACK,
        )
        assert out.record is not None and "t-" in out.decision.explanation
