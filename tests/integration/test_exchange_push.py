"""Push for Exchange and Microsoft 365 through the connector runtime on the real
embedded broker: EWS streaming notifications (exchangelib against the EWS
simulator) and Graph change notifications (httpx against the Graph simulator,
which validates and posts to the connectors' webhook). Mailboxes whose poll is
ten minutes away get new mail through the push; a subscription Graph lets expire
is renewed; a server refusing push leaves its mailbox polling."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from connectors import graph_push
from schemas import metrics
from schemas.base import RecordRef, RecordType
from schemas.config import ConnectorConfig
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    Credentials,
    EwsAccess,
    EwsAuth,
    EwsSettings,
    MailboxConfig,
    PollingSettings,
    Protocol,
)
from schemas.secret import SecretRef
from schemas.topics import MAIL_CHANGES
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator
from tests.ews_sim import sample_message as ews_message
from tests.graph_sim import GraphSimulator
from tests.graph_sim import sample_message as graph_message
from tests.push_harness import (
    RETRY,
    ews_profile,
    ews_push_simulator,
    graph_push_simulator,
    notification_hub,
    polls,
    until,
)

pytestmark = pytest.mark.integration

PASSWORD_ENV = "TEST_PUSH_EWS_PASSWORD"
SECRET_ENV = "TEST_PUSH_GRAPH_SECRET"
APP, SECRET = "tidings-push-app", "push-app-secret"
SLOW = PollingSettings().fixed(600.0)
"""Ten minutes between polls: new mail seen sooner came by push."""
QUICK = PollingSettings().fixed(0.5)
CONNECTORS = ConnectorConfig(max_batch_items=50)


def created(events: list[MailItemChanged]) -> list[MailItemChanged]:
    return [e for e in events if e.change == ChangeKind.CREATED]


def push_failures(protocol: str) -> float:
    return float(metrics.CONNECTOR_PUSH_FAILURES.labels(protocol)._value.get())


# -- EWS ---------------------------------------------------------------------------


@pytest.fixture
def ews() -> Iterator[EwsSimulator]:
    with ews_push_simulator(PASSWORD_ENV, "pw-push") as server:
        yield server


def ews_mailbox(mailbox_id: str, address: str, profile: str) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef(type=RecordType.USER, id=mailbox_id),
        email_address=address,
        protocol=Protocol.EWS,
        server_profile=profile,
        credentials=Credentials(username="svc", password=SecretRef(env=PASSWORD_ENV)),
        ews=EwsSettings(auth=EwsAuth.BASIC, access=EwsAccess.IMPERSONATION),
    )


async def test_ews_streaming_wakes_the_mailbox_resubscribes_and_falls_back(
    ews: EwsSimulator, tmp_path: Path
) -> None:
    alice, bob = "alice@northwind.example", "bob@northwind.example"
    inbox_a = ews.add_mailbox(alice)
    inbox_b = ews.add_mailbox(bob)
    inbox_a.deliver("Inbox", ews_message(1))
    inbox_b.deliver("Inbox", ews_message(2))
    ews.streaming.refuse("ErrorExceededConnectionCount", {bob})  # bob's server says no
    profiles = {"slow": ews_profile(ews, SLOW), "quick": ews_profile(ews, QUICK)}
    failures = push_failures("ews")
    async with ConnectorHarness.up(tmp_path / "data", profiles, CONNECTORS) as h:
        await h.add_mailbox(ews_mailbox("mb-alice", alice, "slow"))
        await h.add_mailbox(ews_mailbox("mb-bob", bob, "quick"))
        async with h.runtime():
            await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 1)
            await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(created(e)) == 1)
            await until(lambda: len(ews.streaming.subscriptions) == 1, "alice subscribed")

            # A new message: the stream wakes alice, whose next poll is 10 minutes away.
            pushed = polls("ews", "push")
            inbox_a.deliver("Inbox", ews_message(3))
            await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 2)
            # the stream's poll may follow a pass that already read it (a catch-up)
            await until(lambda: polls("ews", "push") > pushed, "a poll woken by the stream")

            # The server forgets the subscription: a new one, and push goes on.
            ews.streaming.expire()
            await until(lambda: len(ews.streaming.subscriptions) == 1, "subscribed again")
            inbox_a.deliver("Inbox", ews_message(4))
            await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 3)

            # Bob's streaming was refused: counted, and his mailbox polls instead.
            assert push_failures("ews") > failures
            inbox_b.deliver("Inbox", ews_message(5))
            await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(created(e)) == 2)
            assert all(s.address == alice for s in ews.streaming.subscriptions.values())
    assert ews.streaming.unsubscribed  # stopping the runtime unsubscribed alice


# -- Graph -------------------------------------------------------------------------


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[GraphSimulator]:
    async with graph_push_simulator(tmp_path / "graph", APP, SECRET, SECRET_ENV) as server:
        yield server


@pytest.fixture
async def hub() -> AsyncIterator[graph_push.NotificationHub]:
    """The connectors' webhook on loopback (Graph itself needs https)."""
    async with notification_hub(renew_fraction=0.5, retry_s=600.0) as webhook:
        yield webhook


def graph_mailbox(mailbox_id: str, upn: str, profile: str) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef(type=RecordType.USER, id=mailbox_id),
        email_address=upn,
        protocol=Protocol.GRAPH,
        server_profile=profile,
    )


async def test_graph_notifications_wake_the_mailbox_renew_and_fall_back(
    graph: GraphSimulator, hub: graph_push.NotificationHub, tmp_path: Path
) -> None:
    alice, bob = "alice@contoso.example", "bob@contoso.example"
    for upn in (alice, bob):
        graph.add_user(upn)
    graph.add_message(alice, "inbox", graph_message(1, alice))
    graph.add_message(bob, "inbox", graph_message(2, bob))
    graph.subscriptions.max_lifetime_s = 4.0  # granted 4 s: renewed every 2 s
    graph.subscriptions.refuse(403, "ExtensionError", {bob})
    base = {"retry": RETRY, "timeout_s": 10.0}
    profiles = {
        "slow": graph.profile(APP, SECRET_ENV, polling=SLOW, **base),
        "quick": graph.profile(APP, SECRET_ENV, polling=QUICK, **base),
    }
    failures = push_failures("graph")
    async with ConnectorHarness.up(tmp_path / "data", profiles, CONNECTORS) as h:
        await h.add_mailbox(graph_mailbox("mb-alice", alice, "slow"))
        await h.add_mailbox(graph_mailbox("mb-bob", bob, "quick"))
        async with h.runtime():
            await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 1)
            await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(created(e)) == 1)
            # Inbox and Sent Items subscribed, each after the validation handshake.
            await until(lambda: len(graph.subscriptions.live()) == 2, "alice subscribed")
            assert graph.subscriptions.validations >= 2

            pushed = polls("graph", "push")
            graph.add_message(alice, "inbox", graph_message(3, alice))
            await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 2)
            # the notification's poll may follow a pass that already read it: the
            # catch-up pass a new subscription starts, itself counted as push
            await until(lambda: polls("graph", "push") > pushed, "a poll woken by push")
            assert hub.counts[graph_push.Verdict.ACCEPTED] >= 1

            # Granted 4 s only: renewed before they lapse, so notifications go on
            # long after the first expiry.
            await until(lambda: graph.subscriptions.renewals >= 6, "renewed three times")
            assert {s.upn for s in graph.subscriptions.live()} == {alice}
            graph.add_message(alice, "inbox", graph_message(4, alice))
            await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 3)

            # A notification with a wrong clientState wakes nobody.
            live = graph.subscriptions.live()[0]
            live.client_state = "not-the-secret"
            graph.add_message(alice, "inbox", graph_message(5, alice))
            await until(
                lambda: hub.counts[graph_push.Verdict.BAD_CLIENT_STATE] >= 1, "forgery seen"
            )

            # Bob's subscriptions were refused: counted, his mailbox polls the delta.
            assert push_failures("graph") > failures
            graph.add_message(bob, "inbox", graph_message(6, bob))
            await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(created(e)) == 2)
    assert graph.requests["subscriptions-delete"] >= 2  # stopping deleted alice's
