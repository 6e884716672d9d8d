"""Microsoft 365 (Graph) → CRM for appointments, contacts and tasks, end to end: the
CRM → Exchange writer puts a CRM meeting into a mailbox (linked on act.links), users
keep a recurring meeting (organizer's and attendee's copies, one occurrence moved,
one cancelled), contacts and To Do tasks; the connector reads them through httpx +
msal from the Graph simulator into tansu, and the real processors process
(`tidings run processors`, faust) turn the events into crm.act records and decisions.

One meeting in two mailboxes is one record; the CRM's meeting keeps the CRM's record
id (act.links); an untracked task is skipped; a deleted contact is a tombstone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.embedded import free_port
from pipeline.idle import drain, topic_partitions
from schemas.act import (
    ActRecord,
    ActType,
    Appointment,
    Attendee,
    OccurrenceChange,
    appointment_record_id,
    item_record_id,
)
from schemas.act_changes import CrmActChange, link_key
from schemas.base import RecordRef
from schemas.codec import decode_key
from schemas.config import ConnectorConfig
from schemas.crm import DecisionStatus, PromotionDecision, ReasonCode
from schemas.mail import ChangeKind, ItemType, MailItemChanged
from schemas.mailbox import ActSettings, MailboxConfig
from schemas.topics import (
    ACT_LINKS,
    CRM_ACT,
    MAIL_CHANGES,
    PROMOTION_DECISIONS,
    TopicSpec,
    codec,
)
from tests.act_harness import (
    DANA,
    act_writer,
    crm_change,
    graph_mailbox,
    graph_simulator,
    send_act,
    until,
)
from tests.connector_harness import ConnectorHarness
from tests.graph_sim import (
    GraphSimulator,
    act_add_event,
    act_add_item,
    act_cancel_occurrence,
    act_change_occurrence,
    act_delete,
    act_weekly,
)
from tests.integration.test_processor_workers import stop
from tests.workspace import Workspace

pytestmark = pytest.mark.integration

SECRET_ENV = "TEST_ACT_GRAPH_READ_SECRET"
APP, SECRET = "tidings-act-read", "act-read-secret"
ALICE, BOB = "alice@contoso.example", "bob@contoso.example"
UID = "040000008200E00074C5B7101A82E00800000000D1"
TRACKED = ["Tracked to CRM"]
FAST = ConnectorConfig(server_poll_interval_s=0.3, max_batch_items=50)
_today = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
T0 = _today + timedelta(days=7 - _today.weekday())  # next Monday 09:00 UTC


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[GraphSimulator]:
    env = {SECRET_ENV: SECRET}
    async with graph_simulator(tmp_path / "graph", APP, SECRET, [ALICE, BOB], env) as server:
        yield server


def mailbox(mailbox_id: str, address: str) -> MailboxConfig:
    return graph_mailbox(mailbox_id, address, act=ActSettings())


def crm_meeting() -> CrmActChange:
    """A meeting created in the CRM (it carries the tracked category, as Dynamics sets it)."""
    start = T0 + timedelta(days=2, hours=5)
    payload = Appointment(
        ical_uid="crm-appt-1-uid",
        subject="Contract review",
        start=start,
        end=start + timedelta(hours=1),
        organizer=Attendee(address=ALICE, name="Alice"),
        attendees=[Attendee(address=DANA, name="Dana")],
        categories=TRACKED,
    )
    at = datetime.now(UTC) - timedelta(minutes=5)
    return crm_change("crm-appt-1", ActType.APPOINTMENT, at, payload)


def recurring_meeting(sim: GraphSimulator) -> None:
    """Alice's weekly meeting (4 times) and Bob's copy: occurrence 1 moved by two
    hours, occurrence 2 cancelled (gone from Alice's, marked cancelled in Bob's)."""
    people = [(DANA, "Dana", "required", "accepted"),
              (BOB, "Bob", "optional", "accepted")]  # fmt: skip
    moved = T0 + timedelta(weeks=1, hours=2)
    for upn, attendee in ((ALICE, False), (BOB, True)):
        master = act_add_event(
            sim, upn, subject="Weekly review", start=T0, end=T0 + timedelta(hours=1),
            categories=TRACKED, organizer=(ALICE, "Alice"), attendees=people, ical_uid=UID,
            recurrence=act_weekly(T0, 4), location="Room 1",
        )  # fmt: skip
        act_change_occurrence(sim, upn, master["id"], T0 + timedelta(weeks=1),
                              start=moved, end=moved + timedelta(hours=1))  # fmt: skip
        act_cancel_occurrence(sim, upn, master["id"], T0 + timedelta(weeks=2), attendee=attendee)


async def read_all(h: ConnectorHarness, spec: TopicSpec[Any]) -> list[tuple[str, Any]]:
    """Every (key, value) of a topic in offset order per partition; None = tombstone."""
    topic = spec.name(h.config.topic_prefix)
    consumer = AIOKafkaConsumer(**h.config.kafka.consumer_options())
    await consumer.start()
    out: list[tuple[str, Any]] = []
    try:
        tps = await topic_partitions(h.config, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async for tp, message in drain(consumer, tps, 60):
            value = (
                None
                if message.value is None
                else codec(spec).decode(message.value, topic, tp.partition, message.offset)
            )
            out.append((decode_key(message.key), value))
    finally:
        await consumer.stop()
    return out


async def wait_all(
    h: ConnectorHarness,
    spec: TopicSpec[Any],
    done: Callable[[list[tuple[str, Any]]], bool],
    log: Path,
    timeout_s: float = 120.0,
) -> list[tuple[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = await read_all(h, spec)
        if done(found):
            return found
        if asyncio.get_running_loop().time() > deadline:
            text = await asyncio.to_thread(log.read_text, errors="replace")
            tail = text[-3000:]
            raise AssertionError(f"{spec.suffix}: {found[-8:]}\n{tail}")
        await asyncio.sleep(0.5)


def of(events: list[MailItemChanged], kind: ItemType) -> list[MailItemChanged]:
    return [e for e in events if e.item_type == kind]


def check_events(
    events: list[MailItemChanged], bob: list[MailItemChanged], written: str, contact: str
) -> None:
    """Alice's six events and Bob's one: the series folded with its exceptions in both
    copies, the writer's meeting under the linked id, the contact's delete."""
    assert len(events) == 6 and len(bob) == 1
    series = [e for e in of(events, ItemType.APPOINTMENT) if e.item_id != written]
    assert len(series) == 1 and isinstance(series[0].act, Appointment)
    rec = series[0].act.recurrence
    assert rec is not None and rec.full_rrule().endswith(";COUNT=4")
    moved = T0 + timedelta(weeks=1, hours=2)
    expected = [
        OccurrenceChange(original_start=T0 + timedelta(weeks=1), start=moved,
                         end=moved + timedelta(hours=1)),
        OccurrenceChange(original_start=T0 + timedelta(weeks=2), cancelled=True),
    ]  # fmt: skip
    assert series[0].act.exceptions == expected
    assert isinstance(bob[0].act, Appointment) and bob[0].act.exceptions == expected
    assert bob[0].act.ical_uid == series[0].act.ical_uid == UID
    deleted = [e for e in events if e.change == ChangeKind.DELETED]
    assert [(e.item_id, e.item_type) for e in deleted] == [(contact, ItemType.CONTACT)]
    assert {e.item_id for e in of(events, ItemType.APPOINTMENT)} >= {written}


async def test_graph_items_become_crm_records_through_the_processors(
    sim: GraphSimulator, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    profile = sim.profile(APP, SECRET_ENV, timeout_s=10.0)
    async with ConnectorHarness.up(data, {"graph": profile}, FAST) as h:
        await h.add_mailbox(mailbox("mb-alice", ALICE))
        await h.add_mailbox(mailbox("mb-bob", BOB))

        # 1. The CRM's meeting is written into Alice's calendar and linked.
        async with act_writer(h, "act-writer-read-test") as w:
            await send_act(h, crm_meeting())
            await until(lambda: w.stats.created >= 1, "the writer created the meeting")
        links = await h.wait_for(ACT_LINKS, link_key("crm-appt-1", "mb-alice"), bool)
        written = links[-1].item_id

        # 2. What users keep in Outlook, read by the connector.
        recurring_meeting(sim)
        contact = act_add_item(sim, ALICE, "contact", displayName="Dana Ng", givenName="Dana",
                               emailAddresses=[{"address": DANA}],
                               categories=TRACKED)  # fmt: skip
        task = act_add_item(sim, ALICE, "task", title="Send the quote", status="inProgress",
                            importance="high", categories=TRACKED)  # fmt: skip
        act_add_item(sim, ALICE, "task", title="Private errand", status="notStarted")
        async with h.runtime():
            first = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) >= 5)
            bob = await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(e) >= 1)
            act_delete(sim, ALICE, contact["id"])
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) >= 6)

        assert events[:5] == first
        check_events(events, bob, written, contact["id"])

        # 3. The processors (faust) turn them into records and decisions.
        space = Workspace(data)
        log = tmp_path / "processors.log"
        env = {"TIDINGS_PROCESSORS__WEB_PORT": str(free_port())}
        process = space.start("run", "processors", log=log, env=env)
        try:
            decisions = await wait_all(h, PROMOTION_DECISIONS, lambda v: len(v) >= 7, log)
            acts = await wait_all(h, CRM_ACT, lambda v: len(v) >= 6, log)
        finally:
            await asyncio.to_thread(stop, process)

    reasons = sorted(str(d.reason) for _, d in decisions if isinstance(d, PromotionDecision))
    assert reasons == sorted(
        [ReasonCode.TRACKED_CATEGORY] * 5 + [ReasonCode.NOT_TRACKED, ReasonCode.ITEM_DELETED]
    )
    assert all(d.status != DecisionStatus.ERRORED for _, d in decisions)
    records = [v for _, v in acts if isinstance(v, ActRecord)]
    keys = {k for k, _ in acts}
    contact_id = item_record_id(ActType.CONTACT, "mb-alice", contact["id"])
    task_id = item_record_id(ActType.TASK, "mb-alice", task["id"])
    # one record for the two copies of the meeting; the CRM's meeting keeps its id
    assert keys == {appointment_record_id(UID), "crm-appt-1", contact_id, task_id}
    meeting = [r for r in records if r.record_id == appointment_record_id(UID)]
    # the organizer's copy gives the owner; Bob's copy keeps the owner the record has
    # (his own only when it was decided before Alice's record came back: docs/act.md)
    alice, bob = RecordRef("user", "alice"), RecordRef("user", "bob")
    assert {r.owner for r in meeting if r.source and r.source.mailbox_id == "mb-alice"} == {alice}
    assert {r.owner for r in meeting} <= {alice, bob}
    ours = [r for r in records if r.record_id == "crm-appt-1"]
    assert len(ours) == 1 and ours[0].source is not None and ours[0].source.item_id == written
    # the deleted contact's last word is a tombstone
    assert [v for k, v in acts if k == contact_id][-1] is None
