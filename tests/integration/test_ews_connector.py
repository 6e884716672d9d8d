"""The EWS connector through the connector runtime and the real exchangelib client,
against the EWS SOAP simulator (tests/ews_sim.py) and the real embedded broker:
initial and incremental sync, updates, deletes, an expired sync state (full resync
without duplicates), throttling with back-off, wrong credentials and refused
impersonation (permanent), OAuth bearer tokens, and sending through CreateItem."""

from __future__ import annotations

import base64
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from connectors import errors
from connectors.ews import send_message
from schemas import metrics
from schemas.base import RecordRef, RecordType
from schemas.config import ConnectorConfig
from schemas.errors import Severity
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    AuthMethod,
    Credentials,
    EwsAccess,
    EwsAuth,
    EwsSettings,
    MailboxConfig,
    MailboxStatus,
    Protocol,
    RetryPolicy,
    ServerProfile,
    SyncState,
    TransportSecurity,
)
from schemas.secret import SecretRef
from schemas.topics import MAIL_CHANGES, MAILBOX_STATUS, SYNC_ERRORS
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator, SimMailbox, sample_message

pytestmark = pytest.mark.integration

PASSWORD_ENV = "TEST_EWS_PASSWORD"
SERVICE_PASSWORD = "svc-S3cret!"
OAUTH_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.test-token"
FAST = ConnectorConfig(server_poll_interval_s=0.3, max_batch_items=50)
FAST_RETRY = RetryPolicy(
    max_retries=3, retry_interval_s=1.0, reconnect_attempts=2, reconnect_base_s=0.2
)
ALICE = "alice@northwind.example"


def bearer_token(username: str) -> str:
    """The token provider an OAuth profile names (tests.integration.test_ews_connector:…)."""
    return OAUTH_TOKEN


@pytest.fixture
def sim() -> Iterator[EwsSimulator]:
    """A simulator with a service account allowed to impersonate, stopped after."""
    os.environ[PASSWORD_ENV] = SERVICE_PASSWORD
    with EwsSimulator() as server:
        server.add_user("svc-tidings", SERVICE_PASSWORD, impersonator=True)
        yield server
    os.environ.pop(PASSWORD_ENV, None)


def profile(sim: EwsSimulator, **changes: object) -> ServerProfile:
    """The simulator as an EWS server profile (http on loopback)."""
    settings: dict[str, object] = {
        "protocol": Protocol.EWS,
        "host": "127.0.0.1",
        "port": sim.port,
        "security": TransportSecurity.PLAIN,
        "allow_plaintext": True,
        "retry": FAST_RETRY,
        "timeout_s": 10.0,
        **changes,
    }
    return ServerProfile(**settings)  # type: ignore[arg-type]


def ews_mailbox(
    mailbox_id: str,
    address: str,
    user: str = "svc-tidings",
    password_env: str = PASSWORD_ENV,
    **settings: object,
) -> MailboxConfig:
    """An EWS mailbox read by impersonation as `user` unless settings say otherwise."""
    options: dict[str, object] = {
        "auth": EwsAuth.BASIC,
        "access": EwsAccess.IMPERSONATION,
        **settings,
    }
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef(type=RecordType.USER, id=address.split("@", maxsplit=1)[0]),
        email_address=address,
        protocol=Protocol.EWS,
        server_profile="exchange",
        credentials=Credentials(username=user, password=SecretRef(env=password_env)),
        ews=EwsSettings(**options),  # type: ignore[arg-type]
    )


def created(events: list[MailItemChanged]) -> list[MailItemChanged]:
    return [e for e in events if e.change == ChangeKind.CREATED]


def of(kind: ChangeKind, events: list[MailItemChanged]) -> list[MailItemChanged]:
    return [e for e in events if e.change == kind]


def fill(box: SimMailbox) -> list[str]:
    """5 messages in Inbox (one a reply with a ConversationIndex and a category), 2 in
    Sent Items, 2 in Projects; returns the Inbox item ids."""
    box.add_folder("Projects")
    index = bytes(range(22))
    ids = [
        box.deliver(
            "Inbox",
            sample_message(n, reply_to=0 if n == 1 else None),
            conversation_index=index if n == 1 else b"",
            categories=["Tracked to CRM"] if n == 1 else (),
        ).item_id
        for n in range(5)
    ]
    for n in range(5, 7):
        box.deliver("Sent Items", sample_message(n, "Sent"), is_read=True)
    for n in range(7, 9):
        box.deliver("Projects", sample_message(n, "Project"))
    return ids


async def test_initial_and_incremental_sync_with_updates_deletes_and_impersonation(
    sim: EwsSimulator, tmp_path: Path
) -> None:
    box = sim.add_mailbox(ALICE)
    inbox = fill(box)
    config = ews_mailbox("mb-alice", ALICE, folders=["Projects"], sync_page=3)
    async with ConnectorHarness.up(tmp_path / "data", {"exchange": profile(sim)}, FAST) as h:
        await h.add_mailbox(config)
        async with h.runtime():
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 9)
            first = {e.item_id: e for e in events}
            box.deliver("Inbox", sample_message(9, "Later"))
            box.update(inbox[2], categories=["Tracked to CRM"])
            box.update(inbox[3], is_read=True)
            box.delete(inbox[4])
            events = await h.wait_for(
                MAIL_CHANGES,
                "mb-alice",
                lambda e: len(created(e)) == 10 and len(e) == 13,
            )
    roles = {e.folder: e.folder_role for e in events}
    assert roles == {"Inbox": "inbox", "Sent Items": "sent", "Projects": "other"}
    assert Counter(e.folder for e in created(events)) == {
        "Inbox": 6,
        "Sent Items": 2,
        "Projects": 2,
    }
    reply = first[inbox[1]]
    assert reply.raw is not None and b"Message-ID: <ews-1@contoso.example>" in reply.raw
    assert b"In-Reply-To: <ews-0@contoso.example>" in reply.raw
    # ConversationIndex travels as the Thread-Index header the processors read.
    thread_index = base64.b64encode(bytes(range(22)))
    assert reply.raw.startswith(b"Thread-Index: " + thread_index)
    assert reply.flags == ["category:Tracked to CRM"]
    assert all(e.flags == ["\\Seen"] for e in created(events) if e.folder == "Sent Items")
    updated = {e.item_id: e for e in of(ChangeKind.UPDATED, events)}
    assert set(updated) == {inbox[2], inbox[3]}
    assert updated[inbox[2]].flags == ["category:Tracked to CRM"]
    assert updated[inbox[3]].flags == ["\\Seen"]
    assert all(e.version and e.raw is None for e in updated.values())
    assert [e.item_id for e in of(ChangeKind.DELETED, events)] == [inbox[4]]
    assert len({e.event_id for e in events}) == len(events) == 13
    # Every request was the service account impersonating alice; pages of 3 changes.
    assert {(r.user, r.impersonated) for r in sim.requests} == {("svc-tidings", ALICE)}
    assert len(sim.operations("SyncFolderItems")) >= 4


async def test_expired_sync_state_resyncs_without_duplicates(
    sim: EwsSimulator, tmp_path: Path
) -> None:
    box = sim.add_mailbox(ALICE)
    inbox = fill(box)
    config = ews_mailbox("mb-alice", ALICE, folders=["Projects"], include_sent=False)
    async with ConnectorHarness.up(tmp_path / "data", {"exchange": profile(sim)}, FAST) as h:
        await h.add_mailbox(config)
        async with h.runtime():
            await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 7)
            sim.expire_sync_states()
            box.deliver("Inbox", sample_message(20, "While expired"))
            box.delete(inbox[0])
            box.update(inbox[1], categories=["Tracked to CRM", "Customer"])
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) == 10)
            notices = await h.wait_for(SYNC_ERRORS, "mb-alice", lambda e: len(e) >= 2)
            # Quiet afterwards: further passes add nothing.
            await h.wait_for(MAILBOX_STATUS, "mb-alice", lambda s: _passes(s) >= 2)
            events = await h.changes("mb-alice")
    assert len(created(events)) == 8
    assert len({e.item_id for e in created(events)}) == 8
    assert [e.item_id for e in of(ChangeKind.DELETED, events)] == [inbox[0]]
    assert [e.item_id for e in of(ChangeKind.UPDATED, events)] == [inbox[1]]
    assert len(events) == 10
    assert {n.code for n in notices} == {"SyncStateExpired"}
    assert {n.folder for n in notices} == {"Inbox", "Projects"}
    assert all(n.severity == Severity.NOTICE for n in notices)


def _passes(statuses: list[MailboxStatus]) -> int:
    """Sync passes completed between the first and the last status seen."""
    generations = [s.sync_generation for s in statuses]
    return max(generations) - min(generations) if generations else 0


async def test_throttling_wrong_credentials_refused_access_and_oauth(
    sim: EwsSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One runtime, five mailboxes: a throttled one on a second simulator (back-off
    hints waited out, counted, nothing lost), a wrong password, impersonation by an
    account without the role, delegate access by a non-delegate (all permanent), and
    OAuth bearer tokens with delegate access (works)."""
    # oauthlib refuses to send a token over http; the simulators are http on loopback.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("TEST_EWS_WRONG", "not-the-password")
    monkeypatch.setenv("TEST_EWS_HELPDESK", "helpdesk-pw")
    alice = sim.add_mailbox(ALICE)
    sim.add_mailbox("bob@northwind.example", password="bob-pw")
    sim.add_user("helpdesk", "helpdesk-pw")  # no ApplicationImpersonation
    sim.add_token(OAUTH_TOKEN, "svc-tidings")
    alice.delegates.add("svc-tidings")
    for n in range(3):
        alice.deliver("Inbox", sample_message(n))
    oauth = profile(
        sim,
        auth=AuthMethod.XOAUTH2,
        token_provider="tests.integration.test_ews_connector:bearer_token",
    )
    mailboxes = [
        ews_mailbox("mb-wrong", ALICE, password_env="TEST_EWS_WRONG"),
        ews_mailbox("mb-denied", ALICE, user="helpdesk", password_env="TEST_EWS_HELPDESK"),
        ews_mailbox(
            "mb-foreign",
            "bob@northwind.example",
            user="helpdesk",
            password_env="TEST_EWS_HELPDESK",
            access=EwsAccess.DELEGATE,
        ),
        msgspec.structs.replace(
            ews_mailbox("mb-oauth", ALICE, access=EwsAccess.DELEGATE, include_sent=False),
            server_profile="exchange-oauth",
        ),
        msgspec.structs.replace(
            ews_mailbox("mb-busy", ALICE, include_sent=False, get_item_batch=10),
            server_profile="busy",
        ),
    ]
    throttled = metrics.CONNECTOR_THROTTLED.labels("ews")._value.get()
    waited = metrics.CONNECTOR_THROTTLE_WAIT_SECONDS.labels("ews")._value.get()
    with EwsSimulator() as busy:
        busy.add_user("svc-tidings", SERVICE_PASSWORD, impersonator=True)
        crowded = busy.add_mailbox(ALICE)
        for n in range(30):
            crowded.deliver("Inbox", sample_message(n))
        busy.throttle(3, backoff_ms=200, operations={"SyncFolderItems", "GetItem"})
        profiles = {"exchange": profile(sim), "exchange-oauth": oauth, "busy": profile(busy)}
        async with ConnectorHarness.up(tmp_path / "data", profiles, FAST) as h:
            for config in mailboxes:
                await h.add_mailbox(config)
            async with h.runtime():
                seen = {
                    mailbox: await h.wait_for(SYNC_ERRORS, mailbox, bool)
                    for mailbox in ("mb-wrong", "mb-denied", "mb-foreign")
                }
                status = await h.wait_for(
                    MAILBOX_STATUS,
                    "mb-wrong",
                    lambda s: any(x.state == SyncState.DISABLED for x in s),
                )
                oauth_events = await h.wait_for(MAIL_CHANGES, "mb-oauth", lambda e: len(e) == 3)
                busy_events = await h.wait_for(MAIL_CHANGES, "mb-busy", lambda e: len(e) == 30)
                busy_problems = await h.errors("mb-busy")
    assert [e.code for e in seen["mb-wrong"]] == [errors.AUTHENTICATION_FAILED]
    assert [e.code for e in seen["mb-denied"]] == [errors.FORBIDDEN]
    assert [e.code for e in seen["mb-foreign"]] == [errors.FORBIDDEN]
    for found in seen.values():
        assert found[0].severity == Severity.PERMANENT
        assert "not-the-password" not in found[0].message
        assert "helpdesk-pw" not in found[0].message
    assert "svc-tidings" in seen["mb-wrong"][0].message
    assert status[-1].last_error_code == errors.AUTHENTICATION_FAILED
    # OAuth: bearer token, delegate access (no impersonation header).
    assert {e.folder for e in oauth_events} == {"Inbox"}
    assert ("svc-tidings", None) in {(r.user, r.impersonated) for r in sim.requests}
    # Throttling: three busy answers waited out for their 200 ms hints, nothing lost.
    assert busy.busy_answers == 3
    assert metrics.CONNECTOR_THROTTLED.labels("ews")._value.get() - throttled == 3
    assert metrics.CONNECTOR_THROTTLE_WAIT_SECONDS.labels("ews")._value.get() - waited == (
        pytest.approx(0.6)
    )
    assert len({e.item_id for e in busy_events}) == 30
    assert busy_problems == []


async def test_send_and_save_copy(sim: EwsSimulator) -> None:
    sender = sim.add_mailbox(ALICE)
    recipient = sim.add_mailbox("dana@contoso.example")
    config = ews_mailbox("mb-alice", ALICE)
    raw = sample_message(42, "Quote").replace(
        b"From: Dana <dana@contoso.example>\r\nTo: alice@northwind.example",
        b"From: alice@northwind.example\r\nTo: Dana <dana@contoso.example>",
    )

    async def password() -> str:
        return SERVICE_PASSWORD

    await send_message(config, profile(sim), raw, password)
    assert sim.sent == [raw]
    copies = sender.folder("Sent Items").live()
    assert [c.message_id for c in copies] == ["<ews-42@contoso.example>"]
    assert [i.message_id for i in recipient.folder("Inbox").live()] == ["<ews-42@contoso.example>"]
    assert [r.operation for r in sim.operations("CreateItem")] == ["CreateItem"]

    async def wrong() -> str:
        return "nope"

    with pytest.raises(errors.ConnectorError) as refused:
        await send_message(config, profile(sim), raw, wrong)
    assert refused.value.code == errors.AUTHENTICATION_FAILED and refused.value.permanent
    assert len(sim.sent) == 1
