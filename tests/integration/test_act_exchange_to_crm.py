"""Exchange → CRM for appointments, contacts and tasks, end to end through the real
client (exchangelib) against the EWS simulator, on the embedded broker (tansu): the
connector's change events on mail.changes, then the processors' pure stage on them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from processors.act import ActMemory, handle_act
from schemas.act import Appointment, Contact, Task, appointment_record_id
from schemas.base import RecordRef
from schemas.config import ConnectorConfig
from schemas.crm import DecisionStatus, PartyRole, ReasonCode
from schemas.mail import ChangeKind, ItemType, MailItemChanged
from schemas.mailbox import ActSettings, MailboxConfig
from schemas.topics import MAIL_CHANGES
from tests.act_harness import ews_mailbox, ews_profile, ews_simulator
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import (
    EwsSimulator,
    add_act_item,
    add_calendar_item,
    update_act_item,
    weekly,
)

pytestmark = pytest.mark.integration

PASSWORD_ENV = "TEST_ACT_EWS_PASSWORD"
PASSWORD = "svc-S3cret!"
SVC = "svc-tidings"
FAST = ConnectorConfig(server_poll_interval_s=0.3, max_batch_items=50)
ALICE, BOB = "alice@northwind.example", "bob@northwind.example"
UID = "040000008200E00074C5B7101A82E00800000000B7"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TRACKED = ["Tracked to CRM"]


@pytest.fixture
def sim() -> Iterator[EwsSimulator]:
    with ews_simulator(SVC, PASSWORD, {PASSWORD_ENV: PASSWORD}) as server:
        yield server


def mailbox(mailbox_id: str, address: str) -> MailboxConfig:
    return ews_mailbox(mailbox_id, address, SVC, PASSWORD_ENV, act=ActSettings())


def meeting(box: object, **extra: object) -> None:
    add_calendar_item(
        box,  # type: ignore[arg-type]
        uid=UID,
        subject="Weekly review",
        start=T0,
        end=T0 + timedelta(hours=1),
        organizer=(ALICE, "Alice"),
        required=[("dana@contoso.example", "Dana", "Accept"), (BOB, "Bob", "Accept")],
        recurrence=weekly("Monday", "2026-03-02", count=8),
        deleted=[T0 + timedelta(days=14)],
        modified=[
            (
                T0 + timedelta(days=7, hours=2),
                T0 + timedelta(days=7, hours=3),
                T0 + timedelta(days=7),
                {"location": "Room 9"},
            )
        ],
        categories=TRACKED,
        **extra,
    )


def of(kind: ItemType, events: list[MailItemChanged]) -> list[MailItemChanged]:
    return [e for e in events if e.item_type == kind]


async def test_calendar_contacts_and_tasks_flow_into_crm_records(
    sim: EwsSimulator, tmp_path: Path
) -> None:
    alice, bob = sim.add_mailbox(ALICE), sim.add_mailbox(BOB)
    meeting(alice)
    meeting(bob)  # the attendee's copy of the same meeting (same UID)
    contact = add_act_item(
        alice, "contacts", TRACKED, display_name="Dana Smith", emails=["dana@contoso.example"]
    )
    task = add_act_item(
        alice, "tasks", TRACKED, subject="Send the quote", due=T0, status="InProgress"
    )
    add_act_item(alice, "tasks", subject="Private errand")  # not tracked
    async with ConnectorHarness.up(tmp_path / "data", {"exchange": ews_profile(sim)}, FAST) as h:
        await h.add_mailbox(mailbox("mb-alice", ALICE))
        await h.add_mailbox(mailbox("mb-bob", BOB))
        async with h.runtime():
            first = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) == 4)
            bob_events = await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(e) == 1)
            update_act_item(alice, task.item_id, status="Completed", percent_complete=100)
            alice.delete(contact.item_id)
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) == 6)
    assert events[:4] == first
    assert {e.item_type for e in first} == {ItemType.APPOINTMENT, ItemType.CONTACT, ItemType.TASK}
    series = of(ItemType.APPOINTMENT, first)[0].act
    assert isinstance(series, Appointment) and series.recurrence is not None
    assert series.recurrence.full_rrule() == "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO;WKST=MO;COUNT=8"
    assert [(c.original_start, c.cancelled, c.location) for c in series.exceptions] == [
        (T0 + timedelta(days=7), False, "Room 9"),
        (T0 + timedelta(days=14), True, None),
    ]
    assert isinstance(of(ItemType.CONTACT, first)[0].act, Contact)
    updated = [e for e in events if e.change == ChangeKind.UPDATED]
    assert len(updated) == 1 and isinstance(updated[0].act, Task)
    assert updated[0].act.percent_complete == 100
    deleted = [e for e in events if e.change == ChangeKind.DELETED]
    assert [(e.item_id, e.item_type) for e in deleted] == [(contact.item_id, ItemType.CONTACT)]
    assert len({e.event_id for e in events}) == 6

    # The processors' stage over what the connector published.
    directory = {"dana@contoso.example": [RecordRef("contact", "c-dana")]}
    boxes = {"mb-alice": mailbox("mb-alice", ALICE), "mb-bob": mailbox("mb-bob", BOB)}
    memory: dict[str, ActMemory | None] = {}
    records, tombstones, decisions = [], [], []
    now = datetime.now(UTC)
    for change in [*events, *bob_events]:
        out = handle_act(
            change, boxes[change.mailbox_id], memory.get(change.item_key),
            lambda a: directory.get(a, []), now,
        )  # fmt: skip
        memory[change.item_key] = out.memory
        decisions.append(out.decision)
        records += [out.record] if out.record else []
        tombstones += [out.tombstone] if out.tombstone else []
    meetings = [r for r in records if r.record_type == "appointment"]
    assert {r.record_id for r in meetings} == {appointment_record_id(UID)}
    assert {r.owner for r in meetings} == {RecordRef("user", "alice"), RecordRef("user", "bob")}
    dana = [p for p in meetings[0].parties if p.address == "dana@contoso.example"]
    assert dana[0].role == PartyRole.REQUIRED and dana[0].records == directory[dana[0].address]
    contact_record = next(r for r in records if r.record_type == "contact")
    assert tombstones == [contact_record.record_id]
    skipped = [d for d in decisions if d.status == DecisionStatus.SKIPPED]
    assert [d.reason for d in skipped] == [ReasonCode.NOT_TRACKED]
    assert len(decisions) == 7  # every event is accounted for
    done = [r for r in records if r.record_type == "task"][-1]
    assert isinstance(done.payload, Task) and done.payload.status == "completed"
