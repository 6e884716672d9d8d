"""processors/act.py: tracked / untracked items, attendee resolution, one record for a
meeting seen in two mailboxes, deletes by kind and organizer, idempotency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from processors.act import ActMemory, handle_act, is_act
from schemas.act import (
    ActType,
    Appointment,
    Attendee,
    AttendeeRole,
    Contact,
    Task,
    appointment_record_id,
)
from schemas.base import RecordRef
from schemas.crm import DecisionStatus, PartyRole, ReasonCode
from schemas.mail import ChangeKind, ItemType, ManualTrack
from schemas.mailbox import ActSettings, MailboxConfig, Protocol
from tests.act_harness import act_change

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)
UID = "040000008200E00074C5B7101A82E00800000000AA"
TRACKED = ["Tracked to CRM"]
DIRECTORY = {
    "alice@nw.example": [RecordRef("user", "alice")],
    "dana@contoso.example": [RecordRef("contact", "c-dana"), RecordRef("lead", "l-dana")],
    "bob@nw.example": [RecordRef("user", "bob")],
}


def resolve(address: str) -> list[RecordRef]:
    return DIRECTORY.get(address, [])


def mailbox(mailbox_id: str, address: str, **act: object) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef("user", address.split("@", maxsplit=1)[0]),
        email_address=address,
        protocol=Protocol.EWS,
        act=ActSettings(**act),  # type: ignore[arg-type]
    )


ALICE = mailbox("mb-alice", "alice@nw.example")
BOB = mailbox("mb-bob", "bob@nw.example")


def meeting(categories: list[str] = TRACKED, subject: str = "Review") -> Appointment:
    return Appointment(
        ical_uid=UID,
        subject=subject,
        start=T0,
        end=T0 + timedelta(hours=1),
        organizer=Attendee(address="alice@nw.example", name="Alice"),
        attendees=[
            Attendee(address="dana@contoso.example", name="Dana"),
            Attendee(address="bob@nw.example", role=AttendeeRole.OPTIONAL),
            Attendee(address="room@nw.example", role=AttendeeRole.RESOURCE),
        ],
        categories=categories,
        change_time=T0,
    )


def test_a_tracked_meeting_becomes_a_record_with_resolved_parties() -> None:
    change = act_change(ALICE, "A1", meeting())
    assert is_act(change)
    out = handle_act(change, ALICE, None, resolve, NOW)
    record = out.record
    assert record is not None and out.tombstone is None
    assert record.record_id == appointment_record_id(UID)
    assert record.record_type == ActType.APPOINTMENT and record.owner == ALICE.owner
    assert record.version == int(T0.timestamp() * 1000)
    parties = {(p.role, p.address): p.records for p in record.parties}
    assert parties == {
        (PartyRole.ORGANIZER, "alice@nw.example"): [RecordRef("user", "alice")],
        # attendees list every match, like email recipients
        (PartyRole.REQUIRED, "dana@contoso.example"): DIRECTORY["dana@contoso.example"],
        (PartyRole.OPTIONAL, "bob@nw.example"): [RecordRef("user", "bob")],
        (PartyRole.RESOURCE, "room@nw.example"): [],
    }
    assert out.decision.status == DecisionStatus.PROMOTED
    assert out.decision.reason == ReasonCode.TRACKED_CATEGORY
    assert out.decision.activity_id == record.record_id
    assert out.memory is not None and out.memory.record == record


def test_ambiguous_attendees_stay_unresolved_when_configured() -> None:
    out = handle_act(
        act_change(ALICE, "A1", meeting()), ALICE, None, resolve, NOW, leave_ambiguous=True
    )
    assert out.record is not None
    dana = next(p for p in out.record.parties if p.address == "dana@contoso.example")
    assert dana.records == []


def test_the_same_meeting_in_two_mailboxes_is_one_record() -> None:
    organizer = handle_act(act_change(ALICE, "A1", meeting()), ALICE, None, resolve, NOW)
    attendee = handle_act(act_change(BOB, "B7", meeting()), BOB, None, resolve, NOW)
    assert organizer.record is not None and attendee.record is not None
    assert organizer.record.record_id == attendee.record.record_id
    assert attendee.record.owner == RecordRef("user", "bob")


def test_same_input_twice_gives_the_same_output() -> None:
    change = act_change(ALICE, "A1", meeting())
    first = handle_act(change, ALICE, None, resolve, NOW)
    second = handle_act(change, ALICE, None, resolve, NOW)
    assert first == second
    encoded = msgspec.json.encode(first.memory)
    assert msgspec.json.decode(encoded, type=ActMemory) == first.memory


def test_untracked_items_are_skipped_and_untracking_keeps_the_record() -> None:
    out = handle_act(act_change(ALICE, "A1", meeting([])), ALICE, None, resolve, NOW)
    assert out.record is None and out.tombstone is None
    assert (out.decision.status, out.decision.reason) == (
        DecisionStatus.SKIPPED,
        ReasonCode.NOT_TRACKED,
    )
    tracked = handle_act(act_change(ALICE, "A1", meeting()), ALICE, None, resolve, NOW)
    removed = handle_act(
        act_change(ALICE, "A1", meeting(["Other"]), ChangeKind.UPDATED, version="v2"),
        ALICE,
        tracked.memory,
        resolve,
        NOW,
    )
    assert removed.record is None and removed.tombstone is None
    assert "stays" in removed.decision.explanation
    # a later delete of the no longer tracked item changes nothing in the CRM
    gone = handle_act(
        act_change(ALICE, "A1", None, ChangeKind.DELETED), ALICE, removed.memory, resolve, NOW
    )
    assert gone.record is None and gone.tombstone is None


def test_the_category_is_configurable_and_case_insensitive() -> None:
    box = mailbox("mb-alice", "alice@nw.example", tracked_category="CRM")
    out = handle_act(act_change(box, "A1", meeting(["crm"])), box, None, resolve, NOW)
    assert out.record is not None
    off = mailbox("mb-alice", "alice@nw.example", enabled=False)
    skipped = handle_act(act_change(off, "A1", meeting()), off, None, resolve, NOW)
    assert skipped.decision.reason == ReasonCode.ACT_DISABLED and skipped.record is None


def test_a_manual_track_keeps_an_item_tracked_without_the_category() -> None:
    change = msgspec.structs.replace(
        act_change(ALICE, "T1", Task(subject="Call", change_time=T0), kind=ItemType.TASK),
        manual_track=ManualTrack(request_id="t-1", requested_by="alice"),
    )
    out = handle_act(change, ALICE, None, resolve, NOW)
    assert out.record is not None and out.decision.reason == ReasonCode.MANUAL_TRACK
    later = handle_act(
        act_change(ALICE, "T1", Task(subject="Call again", change_time=NOW), ChangeKind.UPDATED,
              ItemType.TASK, "v2"),
        ALICE, out.memory, resolve, NOW,
    )  # fmt: skip
    assert later.record is not None and later.record.payload.subject == "Call again"  # type: ignore[union-attr]
    assert later.decision.version > out.decision.version


def test_deletes_follow_ownership_and_the_organizer() -> None:
    contact = Contact(display_name="Dana", emails=["dana@contoso.example"], categories=TRACKED)
    kept = handle_act(
        act_change(ALICE, "C1", contact, kind=ItemType.CONTACT), ALICE, None, resolve, NOW
    )
    deleted = handle_act(
        act_change(ALICE, "C1", None, ChangeKind.DELETED, ItemType.CONTACT), ALICE, kept.memory,
        resolve, NOW,
    )  # fmt: skip
    assert kept.record is not None and deleted.tombstone == kept.record.record_id
    assert deleted.memory is None and deleted.decision.status == DecisionStatus.REMOVED
    # an attendee's delete leaves the meeting alone
    bob = handle_act(act_change(BOB, "B7", meeting()), BOB, None, resolve, NOW)
    gone = handle_act(
        act_change(BOB, "B7", None, ChangeKind.DELETED), BOB, bob.memory, resolve, NOW
    )
    assert gone.record is None and gone.tombstone is None
    assert gone.decision.reason == ReasonCode.NOT_ORGANIZER
    # the organizer's delete cancels it (a new, higher version)
    alice = handle_act(act_change(ALICE, "A1", meeting()), ALICE, None, resolve, NOW)
    cancel = handle_act(
        act_change(ALICE, "A1", None, ChangeKind.DELETED), ALICE, alice.memory, resolve, NOW
    )
    assert cancel.record is not None and alice.record is not None
    assert cancel.record.payload.is_cancelled  # type: ignore[union-attr]
    assert cancel.record.version > alice.record.version


def test_unreadable_items_are_errored_decisions() -> None:
    change = msgspec.structs.replace(
        act_change(ALICE, "X1", None), unreadable_code="UnsupportedItem", unreadable_reason="a DL"
    )
    out = handle_act(change, ALICE, None, resolve, NOW)
    assert (
        out.decision.status == DecisionStatus.ERRORED
        and "UnsupportedItem" in out.decision.explanation
    )
    assert (
        handle_act(change, None, None, resolve, NOW).decision.reason == ReasonCode.MAILBOX_UNKNOWN
    )
