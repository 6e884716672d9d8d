"""Push for appointments, contacts and tasks, and Graph lifecycle notifications,
through the connector runtime on the real embedded broker.

Mailboxes poll once an hour here, so whatever arrives after the first pass came by
push: an appointment tagged "Tracked to CRM" in an Exchange mailbox (EWS streaming on
the Calendar folder, exchangelib against the EWS simulator) and in a Microsoft 365
mailbox (a Graph subscription on users/{id}/events, httpx against the Graph
simulator posting to the connectors' webhook) reaches crm.act through the real
processors (`tidings run processors`). Graph's lifecycle notifications, posted by the
simulator to the lifecycleNotificationUrl, do what the Graph documentation asks:
reauthorizationRequired reauthorizes, missed runs a delta pass, subscriptionRemoved
makes the subscription again and runs a delta pass; a forged one does nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors import graph_push
from pipeline.embedded import free_port
from schemas import metrics
from schemas.act import appointment_record_id
from schemas.base import RecordRef
from schemas.config import ConnectorConfig
from schemas.mail import ChangeKind, ItemType, MailItemChanged
from schemas.mailbox import (
    ActSettings,
    EwsAccess,
    EwsAuth,
    EwsSettings,
    MailboxConfig,
    PollingSettings,
)
from schemas.topics import MAIL_CHANGES
from tests.act_harness import ews_mailbox as act_ews_mailbox
from tests.act_harness import graph_mailbox as act_graph_mailbox
from tests.act_harness import reached_crm
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator, add_calendar_item
from tests.graph_sim import GraphSimulator, act_add_event
from tests.graph_sim import sample_message as graph_message
from tests.integration.test_processor_workers import stop
from tests.push_harness import (
    RETRY,
    ews_profile,
    ews_push_simulator,
    graph_push_simulator,
    notification_hub,
    polls,
    until,
)
from tests.workspace import Workspace

pytestmark = pytest.mark.integration

PASSWORD_ENV = "TEST_ACT_PUSH_EWS_PASSWORD"
SECRET_ENV = "TEST_ACT_PUSH_GRAPH_SECRET"
APP, SECRET = "tidings-act-push", "act-push-secret"
EWS_USER, GRAPH_USER = "alice@northwind.example", "carol@contoso.example"
TRACKED = ["Tracked to CRM"]
HOURLY = PollingSettings().fixed(3600.0)
"""An hour between polls: what arrives after the first pass came by push."""
CONNECTORS = ConnectorConfig(max_batch_items=50)
START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=3)


def notifications(label: str) -> float:
    return float(metrics.CONNECTOR_PUSH_NOTIFICATIONS.labels(label)._value.get())


def appointments(events: list[MailItemChanged]) -> list[MailItemChanged]:
    return [e for e in events if e.item_type == ItemType.APPOINTMENT]


@pytest.fixture
def ews() -> Iterator[EwsSimulator]:
    with ews_push_simulator(PASSWORD_ENV, "pw-act-push") as server:
        yield server


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[GraphSimulator]:
    async with graph_push_simulator(tmp_path / "graph", APP, SECRET, SECRET_ENV) as server:
        yield server


@pytest.fixture
async def hub() -> AsyncIterator[graph_push.NotificationHub]:
    """The connectors' webhook on loopback, lifecycle path included."""
    async with notification_hub() as webhook:
        yield webhook


def ews_mailbox() -> MailboxConfig:
    """Alice's EWS mailbox, tracked appointments on, streaming notifications on."""
    streaming = EwsSettings(auth=EwsAuth.BASIC, access=EwsAccess.IMPERSONATION, include_sent=False)
    return act_ews_mailbox(
        "mb-ews", EWS_USER, "svc", PASSWORD_ENV, ews=streaming, act=ActSettings()
    )


def graph_mailbox() -> MailboxConfig:
    """Carol's Microsoft 365 mailbox, tracked appointments on."""
    return act_graph_mailbox("mb-graph", GRAPH_USER, act=ActSettings())


def subscribed(graph: GraphSimulator, kind: str) -> str | None:
    """The live subscription on GRAPH_USER's collection of `kind`, if any."""
    return next((s.id for s in graph.subscriptions.live() if s.kind == kind), None)


async def test_tracked_appointments_reach_crm_through_push(
    ews: EwsSimulator,
    graph: GraphSimulator,
    hub: graph_push.NotificationHub,
    tmp_path: Path,
) -> None:
    calendar_box = ews.add_mailbox(EWS_USER)
    graph.add_user(GRAPH_USER)
    profiles = {
        "exchange": ews_profile(ews, HOURLY),
        "graph": graph.profile(APP, SECRET_ENV, polling=HOURLY, retry=RETRY, timeout_s=10.0),
    }
    data = tmp_path / "data"
    log = tmp_path / "processors.log"
    pushed = (polls("ews", "push"), polls("graph", "push"))
    async with ConnectorHarness.up(data, profiles, CONNECTORS) as h:
        await h.add_mailbox(ews_mailbox())
        await h.add_mailbox(graph_mailbox())
        env = {"TIDINGS_PROCESSORS__WEB_PORT": str(free_port())}
        process = Workspace(data).start("run", "processors", log=log, env=env)
        try:
            async with h.runtime():
                # The first passes are done once the mailboxes listen: EWS on a stream
                # covering the Calendar folder, Graph on users/{id}/events.
                calendar = calendar_box.folder("calendar").folder_id
                streams = ews.streaming.subscriptions
                await until(
                    lambda: any(calendar in s.folder_ids for s in streams.values()),
                    "EWS streaming covers the calendar",
                )
                await until(lambda: subscribed(graph, "event"), "Graph subscribed the events")
                assert subscribed(graph, "contact") and subscribed(graph, "task")

                add_calendar_item(
                    calendar_box, uid="ews-push-uid", subject="Pushed from Exchange",
                    start=START, end=START + timedelta(hours=1), organizer=(EWS_USER, "Alice"),
                    categories=TRACKED,
                )  # fmt: skip
                act_add_event(
                    graph, GRAPH_USER, subject="Pushed from Microsoft 365",
                    start=START + timedelta(hours=2), end=START + timedelta(hours=3),
                    categories=TRACKED, ical_uid="graph-push-uid",
                )  # fmt: skip

                # An hour before the next poll, only push explains these records.
                ews_record = await reached_crm(
                    h, appointment_record_id("ews-push-uid"), subject="Pushed from Exchange"
                )
                graph_record = await reached_crm(
                    h, appointment_record_id("graph-push-uid"), subject="Pushed from Microsoft 365"
                )
        finally:
            await asyncio.to_thread(stop, process)
    assert ews_record.owner == RecordRef("user", "alice")
    assert graph_record.owner == RecordRef("user", "carol")
    assert polls("ews", "push") > pushed[0] and polls("graph", "push") > pushed[1]
    assert polls("ews", "first") >= 1  # the first pass, then push only
    assert hub.counts[graph_push.Verdict.ACCEPTED] >= 1


async def test_graph_lifecycle_notifications(
    graph: GraphSimulator, hub: graph_push.NotificationHub, tmp_path: Path
) -> None:
    graph.add_user(GRAPH_USER)
    profile = graph.profile(APP, SECRET_ENV, polling=HOURLY, retry=RETRY, timeout_s=10.0)
    counted = {e: notifications(e) for e in ("reauthorizationRequired", "missed")}
    async with ConnectorHarness.up(tmp_path / "data", {"graph": profile}, CONNECTORS) as h:
        await h.add_mailbox(graph_mailbox())
        async with h.runtime():
            # Inbox, Sent Items, events, contacts, To Do tasks; both URLs validated.
            await until(lambda: len(graph.subscriptions.live()) == 5, "all subscribed")
            assert {s.lifecycle_url for s in graph.subscriptions.live()} == {hub.lifecycle_url}
            assert graph.subscriptions.validations >= 10
            inbox = next(s.id for s in graph.subscriptions.live() if s.kind == "message")

            # reauthorizationRequired: POST /subscriptions/{id}/reauthorize, same subscription
            assert await graph.subscriptions.lifecycle(inbox, "reauthorizationRequired") == 202
            await until(lambda: graph.subscriptions.reauthorizations == 1, "reauthorized")
            assert inbox in {s.id for s in graph.subscriptions.live()}

            # missed: a message whose notification Graph dropped arrives by a delta pass
            graph.subscriptions.paused = True
            graph.add_message(GRAPH_USER, "inbox", graph_message(1, GRAPH_USER))
            graph.subscriptions.paused = False
            assert graph.subscriptions.dropped == 1
            pushed = polls("graph", "push")
            assert await graph.subscriptions.lifecycle(inbox, "missed") == 202
            await h.wait_for(MAIL_CHANGES, "mb-graph", lambda e: len(e) == 1)
            await until(lambda: polls("graph", "push") > pushed, "a poll woken by push")

            # A forged lifecycle notification is counted and does nothing.
            forged = hub.counts[graph_push.Verdict.BAD_CLIENT_STATE]
            await graph.subscriptions.lifecycle(inbox, "subscriptionRemoved", client_state="x")
            assert hub.counts[graph_push.Verdict.BAD_CLIENT_STATE] == forged + 1
            assert inbox in {s.id for s in graph.subscriptions.live()}

            # subscriptionRemoved: made again, then a delta pass finds the dropped event
            events = subscribed(graph, "event")
            assert events is not None
            graph.subscriptions.paused = True
            act_add_event(
                graph, GRAPH_USER, subject="While removed", start=START,
                end=START + timedelta(hours=1), categories=TRACKED,
            )  # fmt: skip
            graph.subscriptions.paused = False
            assert await graph.subscriptions.remove(events) == 202
            await until(
                lambda: subscribed(graph, "event") not in (None, events), "events subscribed again"
            )
            found = await h.wait_for(MAIL_CHANGES, "mb-graph", lambda e: len(appointments(e)) == 1)
            assert appointments(found)[0].change == ChangeKind.CREATED
    assert notifications("reauthorizationRequired") == counted["reauthorizationRequired"] + 1
    assert notifications("missed") == counted["missed"] + 1
    assert hub.lifecycle_counts["subscriptionRemoved"] == 1  # the forged one is not counted
