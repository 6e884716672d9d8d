"""Push for Exchange and Microsoft 365 through the connector runtime on the real
embedded broker: EWS streaming notifications (exchangelib against the EWS
simulator) and Graph change notifications (httpx against the Graph simulator,
which validates and posts to the connectors' webhook). Mailboxes whose poll is
ten minutes away get new mail through the push; a subscription Graph lets expire
is renewed; a server refusing push leaves its mailbox polling."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from connectors import graph_push
from connectors.graph_auth import forget_apps
from schemas import metrics
from schemas.base import RecordRef, RecordType
from schemas.config import ConnectorConfig, GraphNotificationsConfig
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    Credentials,
    EwsAccess,
    EwsAuth,
    EwsSettings,
    MailboxConfig,
    PollingSettings,
    Protocol,
    RetryPolicy,
    ServerProfile,
    TransportSecurity,
)
from schemas.secret import SecretRef
from schemas.topics import MAIL_CHANGES
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator
from tests.ews_sim import sample_message as ews_message
from tests.graph_sim import GraphSimulator
from tests.graph_sim import sample_message as graph_message

pytestmark = pytest.mark.integration

PASSWORD_ENV = "TEST_PUSH_EWS_PASSWORD"
SECRET_ENV = "TEST_PUSH_GRAPH_SECRET"
APP, SECRET = "tidings-push-app", "push-app-secret"
RETRY = RetryPolicy(max_retries=2, retry_interval_s=1.0, reconnect_base_s=0.2)
SLOW = PollingSettings().fixed(600.0)
"""Ten minutes between polls: new mail seen sooner came by push."""
QUICK = PollingSettings().fixed(0.5)
CONNECTORS = ConnectorConfig(max_batch_items=50)


def created(events: list[MailItemChanged]) -> list[MailItemChanged]:
    return [e for e in events if e.change == ChangeKind.CREATED]


def polls(protocol: str, reason: str) -> float:
    return float(metrics.CONNECTOR_POLLS.labels(protocol, reason)._value.get())


def push_failures(protocol: str) -> float:
    return float(metrics.CONNECTOR_PUSH_FAILURES.labels(protocol)._value.get())


async def until(check: object, what: str, timeout_s: float = 30.0) -> None:
    """Wait until `check()` is true (a safety bound, not a timed assertion)."""
    for _ in range(int(timeout_s / 0.1)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


# -- EWS ---------------------------------------------------------------------------


@pytest.fixture
def ews() -> Iterator[EwsSimulator]:
    os.environ[PASSWORD_ENV] = "pw-push"
    with EwsSimulator() as server:
        server.add_user("svc", "pw-push", impersonator=True)
        server.streaming.keepalive_s = 1.0
        yield server
    os.environ.pop(PASSWORD_ENV, None)


def ews_profile(sim: EwsSimulator, polling: PollingSettings) -> ServerProfile:
    return ServerProfile(
        protocol=Protocol.EWS,
        host="127.0.0.1",
        port=sim.port,
        security=TransportSecurity.PLAIN,
        allow_plaintext=True,
        retry=RETRY,
        timeout_s=10.0,
        polling=polling,
    )


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
            assert polls("ews", "push") > pushed

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
    forget_apps()
    os.environ[SECRET_ENV] = SECRET
    async with GraphSimulator.running(tmp_path / "graph") as server:
        server.add_app(APP, SECRET)
        yield server
    os.environ.pop(SECRET_ENV, None)
    forget_apps()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def hub() -> AsyncIterator[graph_push.NotificationHub]:
    """The connectors' webhook on loopback (Graph itself needs https)."""
    port = free_port()
    settings = GraphNotificationsConfig(
        enabled=True,
        public_url=f"http://127.0.0.1:{port}/graph/notifications",
        port=port,
        renew_fraction=0.5,
        retry_s=600.0,
    )
    webhook = graph_push.NotificationHub(settings)
    await webhook.start()
    graph_push.install(webhook)
    yield webhook
    graph_push.install(None)
    await webhook.stop()


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
            assert polls("graph", "push") > pushed
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
