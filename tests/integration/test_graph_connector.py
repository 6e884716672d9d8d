"""The Microsoft Graph connector through the connector runtime, against the Graph
simulator (tests/graph_sim.py, spoken to over HTTPS by httpx and msal) and the real
embedded broker: initial and incremental sync, updates, deletes, an expired delta
link, throttling, wrong credentials, the four-requests-per-mailbox rule, app-only
and delegated tokens (cached, refreshed, renewed after a 401), and sending."""

from __future__ import annotations

import email
import email.policy
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from connectors import errors
from connectors.graph import send_mime
from connectors.graph_auth import GraphTokens, forget_apps
from connectors.graph_client import GraphClient
from schemas import metrics
from schemas.base import RecordRef, RecordType
from schemas.config import ConnectorConfig
from schemas.errors import Severity
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    GraphAuthFlow,
    GraphSettings,
    MailboxConfig,
    Protocol,
    RetryPolicy,
    ServerProfile,
    SyncState,
)
from schemas.secret import SecretRef
from schemas.topics import MAIL_CHANGES, MAILBOX_STATUS, SYNC_ERRORS
from tests.connector_harness import ConnectorHarness
from tests.graph_sim import GraphSimulator, sample_message

pytestmark = pytest.mark.integration

SECRET_ENV = "TEST_GRAPH_SECRET"
REFRESH_ENV = "TEST_GRAPH_REFRESH"
APP, SECRET = "tidings-app", "app-secret-value"
FAST = ConnectorConfig(server_poll_interval_s=0.3, max_batch_items=50)
FAST_RETRY = RetryPolicy(max_retries=2, retry_interval_s=1.0, reconnect_base_s=0.2)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[GraphSimulator]:
    forget_apps()
    async with GraphSimulator.running(tmp_path / "graph") as server:
        server.add_app(APP, SECRET)
        yield server
    forget_apps()


@pytest.fixture
def secret() -> Iterator[str]:
    os.environ[SECRET_ENV] = SECRET
    yield SECRET
    os.environ.pop(SECRET_ENV, None)


def profile(sim: GraphSimulator, **changes: object) -> ServerProfile:
    settings: dict[str, object] = {"retry": FAST_RETRY, "timeout_s": 10.0, "page_size": 10}
    settings.update(changes)
    return sim.profile(APP, SECRET_ENV, **settings)


def graph_mailbox(mailbox_id: str, upn: str, **changes: object) -> MailboxConfig:
    settings: dict[str, object] = {
        "mailbox_id": mailbox_id,
        "owner": RecordRef(type=RecordType.USER, id=mailbox_id),
        "email_address": upn,
        "protocol": Protocol.GRAPH,
        "server_profile": "graph",
    }
    settings.update(changes)
    return MailboxConfig(**settings)  # type: ignore[arg-type]


def of(events: list[MailItemChanged], change: ChangeKind) -> list[MailItemChanged]:
    return [e for e in events if e.change == change]


def created_ids(events: list[MailItemChanged]) -> Counter[str]:
    return Counter(e.item_id for e in of(events, ChangeKind.CREATED))


async def test_sync_updates_deletes_expiry_throttling_and_four_requests(
    sim: GraphSimulator, secret: str, tmp_path: Path
) -> None:
    """Three mailboxes at once: alice (initial and incremental sync, an update, a
    delete), bob (an expired delta link), carol (throttling answers)."""
    alice, bob, carol = (f"{n}@contoso.example" for n in ("alice", "bob", "carol"))
    boxes = {upn: sim.add_user(upn) for upn in (alice, bob, carol)}
    sim.latency_s = 0.003  # requests overlap, so a client breaking the rule would show
    inbox = [sim.add_message(alice, "inbox", sample_message(n, alice)) for n in range(60)]
    sim.add_message(alice, "sentitems", sample_message(100, "dana@contoso.example"), is_read=True)
    bobs = [sim.add_message(bob, "inbox", sample_message(n, bob)) for n in range(15)]
    for n in range(30):
        sim.add_message(carol, "inbox", sample_message(n, carol))
    throttled = metrics.CONNECTOR_THROTTLED.labels("graph")._value.get()
    waited = metrics.CONNECTOR_THROTTLE_WAIT_SECONDS.labels("graph")._value.get()
    sim.throttle(3, retry_after=1)
    async with ConnectorHarness.up(tmp_path / "data", {"graph": profile(sim)}, FAST) as h:
        for mailbox_id, upn in (("mb-alice", alice), ("mb-bob", bob), ("mb-carol", carol)):
            await h.add_mailbox(graph_mailbox(mailbox_id, upn))
        async with h.runtime():
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) >= 61)
            assert {(e.folder, e.folder_role) for e in events} == {
                ("Inbox", "inbox"),
                ("Sent Items", "sent"),
            }
            assert all(e.raw and b"Message-ID: <graph-" in e.raw for e in events)
            assert of(events, ChangeKind.CREATED)[-1].flags == ["\\Seen"]
            await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(e) == 15)
            await h.wait_for(MAIL_CHANGES, "mb-carol", lambda e: len(e) == 30)

            sim.add_message(alice, "inbox", sample_message(200, alice))
            sim.update_message(alice, inbox[0], is_read=True, categories=["Tracked to CRM"])
            sim.delete_message(alice, inbox[1])
            sim.expire_delta_tokens(bob)
            sim.delete_message(bob, bobs[3])
            new = sim.add_message(bob, "inbox", sample_message(15, bob))
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) >= 64)
            bob_events = await h.wait_for(
                MAIL_CHANGES,
                "mb-bob",
                lambda e: new in created_ids(e) and of(e, ChangeKind.DELETED),
            )
            notices = await h.wait_for(SYNC_ERRORS, "mb-bob", lambda n: len(n) == 2)

            sim.throttle(2, retry_after=1, status=503)
            sim.add_message(carol, "inbox", sample_message(30, carol))
            carol_events = await h.wait_for(MAIL_CHANGES, "mb-carol", lambda e: len(e) == 31)
        assert await h.errors("mb-alice") == [] and await h.errors("mb-carol") == []

    assert len(created_ids(events)) == 62 and max(created_ids(events).values()) == 1
    [updated] = of(events, ChangeKind.UPDATED)
    assert updated.item_id == inbox[0]
    assert updated.flags == ["\\Seen", "Tracked to CRM"] and updated.raw is None
    assert [e.item_id for e in of(events, ChangeKind.DELETED)] == [inbox[1]]
    assert len({e.event_id for e in events}) == len(events)
    # Exchange's rule: at most four requests of one mailbox at once, never broken.
    assert 2 <= boxes[alice].max_in_flight <= 4
    assert all(box.max_in_flight <= 4 and box.over_limit == 0 for box in boxes.values())
    assert sim.requests["batch"] >= 3  # MIME came twenty to a batch
    assert sim.token_requests["client_credentials"] == 1  # one app token, cached by msal

    # bob: the expired delta link re-read both folders; nothing was emitted twice.
    assert created_ids(bob_events) == Counter({item: 1 for item in [*bobs, new]})
    assert [e.item_id for e in of(bob_events, ChangeKind.DELETED)] == [bobs[3]]
    assert sorted((n.code, n.severity, n.folder) for n in notices) == [
        ("DeltaLinkExpired", Severity.NOTICE, "Inbox"),
        ("DeltaLinkExpired", Severity.NOTICE, "Sent Items"),
    ]

    # carol: five throttling answers (429 then 503), each waited out for Retry-After.
    assert sim.requests["throttled"] == 5
    assert metrics.CONNECTOR_THROTTLED.labels("graph")._value.get() - throttled == 5
    assert metrics.CONNECTOR_THROTTLE_WAIT_SECONDS.labels("graph")._value.get() - waited == 5.0
    assert created_ids(carol_events).total() == 31 and len(created_ids(carol_events)) == 31


async def test_wrong_secret_is_permanent_and_delegated_tokens_refresh(
    sim: GraphSimulator, tmp_path: Path
) -> None:
    """dave's profile has a wrong client secret: permanent, no events, nothing leaked.
    erin reads with delegated tokens that msal refreshes, and one revoked token
    (401) is renewed without an error."""
    dave, erin = "dave@contoso.example", "erin@contoso.example"
    sim.add_user(dave)
    sim.add_user(erin)
    sim.add_message(dave, "inbox", sample_message(1, dave))
    sim.add_app("public-app", None)
    sim.token_lifetime_s = 240  # under msal's five minutes: every call refreshes
    os.environ[SECRET_ENV] = "not-the-secret"
    os.environ[REFRESH_ENV] = sim.issue_refresh_token("public-app", erin)
    for n in range(5):
        sim.add_message(erin, "inbox", sample_message(n, erin))
    profiles = {
        "graph": profile(sim),
        "delegated": sim.profile("public-app", None, flow=GraphAuthFlow.DELEGATED, page_size=10),
    }
    erin_config = graph_mailbox(
        "mb-erin",
        erin,
        server_profile="delegated",
        graph=GraphSettings(refresh_token=SecretRef(env=REFRESH_ENV)),
    )
    try:
        async with ConnectorHarness.up(tmp_path / "data", profiles, FAST) as h:
            await h.add_mailbox(graph_mailbox("mb-dave", dave))
            await h.add_mailbox(erin_config)
            async with h.runtime():
                seen = await h.wait_for(SYNC_ERRORS, "mb-dave", bool)
                statuses = await h.wait_for(
                    MAILBOX_STATUS,
                    "mb-dave",
                    lambda s: any(x.state == SyncState.DISABLED for x in s),
                )
                await h.wait_for(MAIL_CHANGES, "mb-erin", lambda e: len(e) == 5)
                sim.revoke_tokens()
                sim.add_message(erin, "inbox", sample_message(5, erin))
                events = await h.wait_for(MAIL_CHANGES, "mb-erin", lambda e: len(e) == 6)
            assert await h.changes("mb-dave") == []
            assert await h.errors("mb-erin") == []
    finally:
        os.environ.pop(SECRET_ENV, None)
        os.environ.pop(REFRESH_ENV, None)
    assert [(e.code, e.severity) for e in seen] == [
        (errors.AUTHENTICATION_FAILED, Severity.PERMANENT)
    ]
    assert "invalid_client" in seen[0].message and "not-the-secret" not in seen[0].message
    assert statuses[-1].last_error_code == errors.AUTHENTICATION_FAILED
    assert sim.token_requests["client_credentials"] == 1  # permanent: not hammered
    assert len(created_ids(events)) == 6
    assert sim.token_requests["refresh_token"] >= 3


async def test_send_mime_keeps_the_message_id_and_files_it_in_sent_items(
    sim: GraphSimulator, secret: str
) -> None:
    sender, recipient = "frank@contoso.example", "gina@contoso.example"
    sim.add_user(sender)
    to_box = sim.add_user(recipient)
    server = profile(sim)
    settings = GraphSettings()
    client = GraphClient(server, GraphTokens(server, settings, sender), sender)
    mime = sample_message(7, recipient, subject="Quote CRM:0001001")
    try:
        await send_mime(client, mime)
        with pytest.raises(errors.ConnectorError) as refused:
            await send_mime(client, b"Subject: no recipients\r\n\r\nbody\r\n")
    finally:
        await client.close()
    assert refused.value.permanent and refused.value.code == "MessageRejected"
    [sent] = sim.sent
    parsed = email.message_from_bytes(sent, policy=email.policy.default)
    assert parsed["Message-ID"] == "<graph-7@contoso.example>"
    boxes = {m.folder_id for m in sim.mailboxes[sender].messages.values()}
    assert boxes == {sim.mailboxes[sender].folder("sentitems").id}  # type: ignore[union-attr]
    assert [m.mime for m in to_box.messages.values()] == [sent]
