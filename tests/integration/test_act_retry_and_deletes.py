"""Two-way ACT sync gaps, for real on the embedded broker (tansu) and the EWS
simulator through exchangelib:

- the act writer parks a CRM change the server keeps refusing (ErrorServerBusy on
  every write, past the immediate attempts) on act.retry and retries it later; once
  the server recovers the meeting lands once and the parked entry is tombstoned;
- a linked meeting deleted in the mailbox is noticed at the mailbox sync by the
  processors (`tidings run processors`): the attendee's delete drops only their link,
  the organizer's deletes the CRM record (a tombstone on crm.act), with no CRM change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.embedded import free_port
from schemas.act import ActRecord, ActType, Appointment, Attendee
from schemas.act_changes import ActLink, ActParked, link_key
from schemas.act_sync import ActSyncSettings, ActWriterSettings, SyncFilter
from schemas.config import ConnectorConfig
from schemas.crm import PromotionDecision, ReasonCode
from schemas.errors import SyncError
from schemas.mailbox import ActSettings, MailboxConfig
from schemas.topics import ACT_LINKS, ACT_RETRY, CRM_ACT, CRM_ACT_CHANGES, PROMOTION_DECISIONS
from tests.act_harness import (
    START,
    act_writer,
    crm_change,
    ews_mailbox,
    ews_profile,
    ews_simulator,
    send_act,
    until,
)
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator, SimActItem, SimMailbox
from tests.integration.test_act_graph_to_crm import read_all, wait_all
from tests.integration.test_processor_workers import stop
from tests.workspace import Workspace

pytestmark = pytest.mark.integration

PASSWORD_ENV = "TEST_ACT_RETRY_PASSWORD"
PASSWORD = "svc-S3cret!"
SVC = "svc-tidings"
ALICE, BOB = "alice@northwind.example", "bob@northwind.example"
FAST = ConnectorConfig(server_poll_interval_s=0.3, max_batch_items=50)
QUICK_RETRIES = ActWriterSettings(
    max_attempts=2, retry_pause_s=0.1, retry_delay_s=0.5, retry_max_delay_s=1.0
)


@pytest.fixture
def sim() -> Iterator[EwsSimulator]:
    with ews_simulator(SVC, PASSWORD, {PASSWORD_ENV: PASSWORD}) as server:
        server.add_mailbox(ALICE)
        server.add_mailbox(BOB)
        yield server


def mailbox(mailbox_id: str, address: str) -> MailboxConfig:
    """An EWS mailbox that syncs ACT both ways, attendees' copies included."""
    act = ActSettings(crm_to_exchange=ActSyncSettings(sync_filter=SyncFilter.OWNER_OR_ATTENDEE))
    return ews_mailbox(mailbox_id, address, SVC, PASSWORD_ENV, act=act)


def meeting(at: datetime) -> Any:
    """The CRM's meeting "crm-appt-1": Alice organizes, Bob attends."""
    payload = Appointment(
        ical_uid="crm-retry-1",
        subject="Budget review",
        start=START,
        end=START + timedelta(hours=1),
        location="Room 4",
        organizer=Attendee(address=ALICE, name="Alice"),
        attendees=[Attendee(address=BOB, name="Bob")],
    )
    return crm_change("crm-appt-1", ActType.APPOINTMENT, at, payload)


def calendar(box: SimMailbox) -> list[SimActItem]:
    found = [i for i in box.folder("calendar").live() if isinstance(i, SimActItem)]
    return found


def values(found: list[tuple[str, Any]], key: str) -> list[Any]:
    return [v for k, v in found if k == key]


async def test_a_refused_change_is_parked_and_lands_once_the_server_recovers(
    sim: EwsSimulator, tmp_path: Path
) -> None:
    box = sim.mailboxes[ALICE]
    key = link_key("crm-appt-1", "mb-alice")
    async with ConnectorHarness.up(tmp_path / "data", {"exchange": ews_profile(sim)}) as h:
        await h.add_mailbox(mailbox("mb-alice", ALICE))
        # The server answers every lookup and create with ErrorServerBusy.
        sim.throttle(100_000, 10, operations=("FindItem", "CreateItem"))
        async with act_writer(h, "act-retry-writer", QUICK_RETRIES) as w:
            await send_act(h, meeting(datetime.now(UTC) - timedelta(minutes=1)))
            await until(lambda: w.stats.parked == 1, "the change is parked", 60)
            parked = await h.wait_for(ACT_RETRY, key, bool)
            assert isinstance(parked[-1], ActParked) and parked[-1].last_code == "ServerBusy"
            await until(lambda: w.stats.retried >= 1, "a later retry failed too", 60)
            assert calendar(box) == [] and w.stats.created == 0

            sim.throttle(0, 0)  # the server recovers
            await until(lambda: w.stats.created == 1, "the retry created the meeting", 60)
            await until(lambda: not w.owned.parked, "the parked entry ends", 30)
        retry = await read_all(h, ACT_RETRY)
        links = await h.wait_for(ACT_LINKS, key, bool)
        errors = await h.errors("mb-alice")

    assert [i.subject for i in calendar(box)] == ["Budget review"]  # once
    assert values(retry, key)[-1] is None  # tombstoned
    assert all(isinstance(v, ActParked) for v in values(retry, key)[:-1])
    assert (
        isinstance(links[-1], ActLink) and not links[-1].deleted and links[-1].partition is not None
    )
    codes = [e.code for e in errors if isinstance(e, SyncError)]
    assert "ActChangeParked" in codes and "ServerBusy" in codes
    parked_event = next(e for e in errors if e.code == "ActChangeParked")
    assert "retry 1 at" in parked_event.message and "given up at" in parked_event.message


async def test_a_linked_meeting_deleted_in_the_mailbox_reaches_the_crm(
    sim: EwsSimulator, tmp_path: Path
) -> None:
    alice, bob = sim.mailboxes[ALICE], sim.mailboxes[BOB]
    data = tmp_path / "data"
    alice_key, bob_key = link_key("crm-appt-1", "mb-alice"), link_key("crm-appt-1", "mb-bob")
    async with ConnectorHarness.up(data, {"exchange": ews_profile(sim)}, FAST) as h:
        await h.add_mailbox(mailbox("mb-alice", ALICE))
        await h.add_mailbox(mailbox("mb-bob", BOB))
        log = tmp_path / "processors.log"
        env = {"TIDINGS_PROCESSORS__WEB_PORT": str(free_port())}
        process = Workspace(data).start("run", "processors", log=log, env=env)
        try:
            # 1. The CRM's meeting: the organizer's item and the attendee's copy, linked.
            async with act_writer(h, "act-delete-writer", QUICK_RETRIES) as w:
                await send_act(h, meeting(datetime.now(UTC) - timedelta(minutes=1)))
                await until(lambda: w.stats.created == 2, "both items are created", 60)
            alice_link = (await h.wait_for(ACT_LINKS, alice_key, bool))[-1]
            bob_link = (await h.wait_for(ACT_LINKS, bob_key, bool))[-1]
            assert alice_link.organizer and not bob_link.organizer

            async with h.runtime():
                # 2. Both mailboxes sync the tracked items; the processors take them.
                await wait_all(h, CRM_ACT, lambda v: len(values(v, "crm-appt-1")) >= 2, log)

                # 3. Bob deletes his copy: only his link goes.
                bob.delete(bob_link.item_id)
                found = await wait_all(
                    h, ACT_LINKS, lambda v: _deleted(values(v, bob_key)), log, 90
                )
                assert not _deleted(values(found, alice_key))
                acts = await read_all(h, CRM_ACT)
                assert all(isinstance(r, ActRecord) for r in values(acts, "crm-appt-1"))

                # 4. Alice, the organizer, deletes hers: the record is deleted.
                alice.delete(alice_link.item_id)
                acts = await wait_all(
                    h, CRM_ACT, lambda v: values(v, "crm-appt-1")[-1:] == [None], log, 90
                )
                found = await wait_all(
                    h, ACT_LINKS, lambda v: _deleted(values(v, alice_key)), log, 90
                )
            decisions = await read_all(h, PROMOTION_DECISIONS)
        finally:
            await asyncio.to_thread(stop, process)
        changes = await read_all(h, CRM_ACT_CHANGES)

    assert len(changes) == 1  # no CRM change after the first: the mailbox side did it
    records = [r for r in values(acts, "crm-appt-1") if isinstance(r, ActRecord)]
    assert records and {r.owner for r in records} == {alice_link.owner}  # the CRM's owner
    removed = [d for _, d in decisions if isinstance(d, PromotionDecision) and d.activity_id]
    reasons = {(d.mailbox_id, d.reason) for d in removed if d.status == "removed"}
    assert reasons == {("mb-bob", ReasonCode.NOT_ORGANIZER), ("mb-alice", ReasonCode.ITEM_DELETED)}


def _deleted(links: list[Any]) -> bool:
    return bool(links) and isinstance(links[-1], ActLink) and links[-1].deleted
