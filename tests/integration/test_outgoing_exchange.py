"""The outgoing sender through EWS (exchangelib against the EWS simulator) and
Microsoft Graph (httpx against the Graph simulator) on the real embedded broker:
the same statuses as SMTP (pending → sending → sent, the copy filed in Sent Items
by the server itself), Bcc delivered, an email queued twice sent once, a crash
between the server's acceptance and the `sent` status resolved by looking the
Message-ID up in Sent Items (sent when there, OutgoingOutcomeUnknown and never
resent when not), and a permanent refusal failing with a SyncError."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.graph_auth import forget_apps
from connectors.outgoing import advance, build_message, first_status
from connectors.outgoing_sender import OutgoingSender
from pipeline.publish import publish
from schemas.base import RecordRef, RecordType
from schemas.config import OutgoingConfig
from schemas.errors import OutgoingErrorCode as Code
from schemas.mail import EmailAddress
from schemas.mailbox import (
    Credentials,
    EwsAccess,
    EwsAuth,
    EwsSettings,
    MailboxConfig,
    OutgoingSettings,
    Protocol,
    RetryPolicy,
    ServerProfile,
    TransportSecurity,
)
from schemas.outgoing import OutgoingEmail, OutgoingStatus, SendStatus
from schemas.secret import SecretRef
from schemas.topics import OUTGOING_MAIL, OUTGOING_STATUS
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator
from tests.graph_sim import GraphSimulator

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
FAST = OutgoingConfig(max_retries=1, retry_interval_s=0.5, send_timeout_s=20)
EWS_PASSWORD_ENV = "TEST_OUT_EWS_PASSWORD"
WRONG_ENV = "TEST_OUT_WRONG_SECRET"
GRAPH_SECRET_ENV = "TEST_OUT_GRAPH_SECRET"
APP, SECRET = "tidings-send-app", "send-app-secret"
ALICE = "alice@northwind.example"
DANA = "dana@northwind.example"
AUDIT = "audit@northwind.example"


def outgoing_email(activity_id: str, mailbox_id: str, sender: str, **changes: Any) -> OutgoingEmail:
    settings: dict[str, Any] = {
        "activity_id": activity_id,
        "mailbox_id": mailbox_id,
        "sender": EmailAddress(sender, "Alice"),
        "to": [EmailAddress(DANA, "Dana")],
        "subject": "Your quote",
        "body_text": "Hello Dana\n",
        "requested_at": T0,
    }
    settings.update(changes)
    return OutgoingEmail(**settings)


@contextlib.asynccontextmanager
async def sender(h: ConnectorHarness) -> AsyncIterator[OutgoingSender]:
    running = OutgoingSender(
        h.config.kafka,
        h.config.topic_prefix,
        FAST,
        h.config.processors.correlation,
        h.config.server_profiles,
        ack_timeout_s=30,
        worker="test-sender",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def queue(h: ConnectorHarness, *emails: OutgoingEmail) -> None:
    await publish(
        h.config.kafka, h.config.topic_prefix, OUTGOING_MAIL, [(e.activity_id, e) for e in emails]
    )


async def crashed(h: ConnectorHarness, email_: OutgoingEmail) -> OutgoingStatus:
    """What a sender killed after the server took the message leaves on
    outgoing.status (pending, then sending, acknowledged); the `sending` status."""
    pending = first_status(email_, None, T0)
    sending = advance(pending, SendStatus.SENDING, T0, attempt=1, sent_at=T0)
    await publish(
        h.config.kafka,
        h.config.topic_prefix,
        OUTGOING_STATUS,
        [(email_.activity_id, pending), (email_.activity_id, sending)],
    )
    return sending


def mime_of(email_: OutgoingEmail, status: OutgoingStatus) -> bytes:
    return build_message(email_, status.message_id, email_.subject, T0)


async def final(h: ConnectorHarness, activity_id: str) -> list[OutgoingStatus]:
    def done(values: list[OutgoingStatus]) -> bool:
        return bool(values) and values[-1].status in (SendStatus.SENT, SendStatus.FAILED)

    return await h.wait_for(OUTGOING_STATUS, activity_id, done, timeout_s=90)


def kinds(history: list[OutgoingStatus]) -> list[SendStatus]:
    return [s.status for s in history]


def header(raw: bytes, name: str) -> str:
    return str(email.message_from_bytes(raw, policy=email.policy.default)[name] or "")


# -- EWS ---------------------------------------------------------------------------


@pytest.fixture
def ews() -> Iterator[EwsSimulator]:
    os.environ[EWS_PASSWORD_ENV] = "pw-send"
    os.environ[WRONG_ENV] = "not-the-password"
    with EwsSimulator() as server:
        server.add_user("svc", "pw-send", impersonator=True)
        yield server
    os.environ.pop(EWS_PASSWORD_ENV, None)
    os.environ.pop(WRONG_ENV, None)


def ews_profile(sim: EwsSimulator) -> ServerProfile:
    return ServerProfile(
        protocol=Protocol.EWS,
        host="127.0.0.1",
        port=sim.port,
        security=TransportSecurity.PLAIN,
        allow_plaintext=True,
        retry=RetryPolicy(max_retries=1, retry_interval_s=0.5),
        timeout_s=10.0,
    )


def ews_mailbox(
    mailbox_id: str, address: str, password_env: str = EWS_PASSWORD_ENV
) -> MailboxConfig:
    """An EWS mailbox without outgoing settings: it sends through its own profile."""
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef(type=RecordType.USER, id=mailbox_id),
        email_address=address,
        protocol=Protocol.EWS,
        server_profile="exchange",
        credentials=Credentials(username="svc", password=SecretRef(env=password_env)),
        ews=EwsSettings(auth=EwsAuth.BASIC, access=EwsAccess.IMPERSONATION),
    )


async def test_sending_through_ews(ews: EwsSimulator, tmp_path: Path) -> None:
    alice = ews.add_mailbox(ALICE)
    ews.add_mailbox(DANA)
    ews.add_mailbox(AUDIT)
    ews.add_mailbox("eve@northwind.example")
    profiles = {"exchange": ews_profile(ews)}
    sent_one = outgoing_email("act-1", "mb-alice", ALICE, bcc=[EmailAddress(AUDIT)])
    taken = outgoing_email("act-taken", "mb-alice", ALICE, subject="Taken")
    lost = outgoing_email("act-lost", "mb-alice", ALICE, subject="Lost")
    refused = outgoing_email("act-401", "mb-eve", "eve@northwind.example")
    async with ConnectorHarness.up(tmp_path / "data", profiles) as h:
        await h.add_mailbox(ews_mailbox("mb-alice", ALICE))
        await h.add_mailbox(ews_mailbox("mb-eve", "eve@northwind.example", WRONG_ENV))
        # Two crashes between the server's acceptance and `sent`: one message is in
        # Sent Items (the server took it), the other never reached the server.
        taken_status = await crashed(h, taken)
        alice.deliver("Sent Items", mime_of(taken, taken_status), is_read=True)
        await crashed(h, lost)
        async with sender(h):
            await queue(h, sent_one, taken, lost, refused)
            history = await final(h, "act-1")
            await queue(h, sent_one)  # queued again by the CRM: not sent again
            resolved = {a: await final(h, a) for a in ("act-taken", "act-lost", "act-401")}
            errors = await h.errors("mb-alice") + await h.errors("mb-eve")

    assert kinds(history) == [SendStatus.PENDING, SendStatus.SENDING, SendStatus.SENT]
    assert history[-1].copied_to_sent  # Exchange filed it (SendAndSaveCopy)
    assert history[-1].accepted == [DANA, AUDIT]
    assert len(ews.sent) == 1  # act-1 once; neither crashed email was sent again
    assert header(ews.sent[0], "Message-ID") == f"<{history[-1].message_id}>"
    assert len(ews.operations("CreateItem")) == 1
    sent_items = [i.message_id for i in alice.folder("Sent Items").live()]
    assert f"<{history[-1].message_id}>" in sent_items
    assert [i.message_id for i in ews.mailboxes[AUDIT].folder("Inbox").live()] == [
        f"<{history[-1].message_id}>"
    ]

    assert kinds(resolved["act-taken"])[-1] == SendStatus.SENT
    assert resolved["act-taken"][-1].copied_to_sent
    lost_final = resolved["act-lost"][-1]
    assert (lost_final.status, lost_final.error_code) == (SendStatus.FAILED, Code.OUTCOME_UNKNOWN)
    refused_final = resolved["act-401"][-1]
    assert (refused_final.status, refused_final.error_code) == (
        SendStatus.FAILED,
        Code.AUTHENTICATION_FAILED,
    )
    codes = {(e.item_id, e.code, e.severity) for e in errors}
    assert ("act-lost", Code.OUTCOME_UNKNOWN, "permanent") in codes
    assert ("act-401", Code.AUTHENTICATION_FAILED, "permanent") in codes
    assert not any(e.item_id in ("act-1", "act-taken") for e in errors)
    assert all("not-the-password" not in e.message for e in errors)


# -- Graph -------------------------------------------------------------------------


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[GraphSimulator]:
    forget_apps()
    os.environ[GRAPH_SECRET_ENV] = SECRET
    os.environ[WRONG_ENV] = "not-the-secret"
    async with GraphSimulator.running(tmp_path / "graph") as server:
        server.add_app(APP, SECRET)
        yield server
    os.environ.pop(GRAPH_SECRET_ENV, None)
    os.environ.pop(WRONG_ENV, None)
    forget_apps()


def graph_mailbox(mailbox_id: str, upn: str, **changes: Any) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef(type=RecordType.USER, id=mailbox_id),
        email_address=upn,
        protocol=Protocol.GRAPH,
        server_profile="graph",
        **changes,
    )


async def test_sending_through_graph(graph: GraphSimulator, tmp_path: Path) -> None:
    for upn in (ALICE, DANA, AUDIT, "eve@northwind.example"):
        graph.add_user(upn)
    retry = RetryPolicy(max_retries=1, retry_interval_s=0.5)
    profiles = {
        "graph": graph.profile(APP, GRAPH_SECRET_ENV, retry=retry, timeout_s=10.0),
        "graph-wrong": graph.profile(APP, WRONG_ENV, retry=retry, timeout_s=10.0),
    }
    sent_one = outgoing_email("act-1", "mb-alice", ALICE, bcc=[EmailAddress(AUDIT)])
    taken = outgoing_email("act-taken", "mb-alice", ALICE, subject="Taken")
    lost = outgoing_email("act-lost", "mb-alice", ALICE, subject="Lost")
    refused = outgoing_email("act-401", "mb-eve", "eve@northwind.example")
    async with ConnectorHarness.up(tmp_path / "data", profiles) as h:
        # Alice names her profile as the outgoing one; eve's names one whose app
        # secret is wrong.
        await h.add_mailbox(
            graph_mailbox("mb-alice", ALICE, outgoing=OutgoingSettings(server_profile="graph"))
        )
        await h.add_mailbox(
            graph_mailbox(
                "mb-eve",
                "eve@northwind.example",
                outgoing=OutgoingSettings(server_profile="graph-wrong"),
            )
        )
        taken_status = await crashed(h, taken)
        graph.add_message(ALICE, "sentitems", mime_of(taken, taken_status), is_read=True)
        await crashed(h, lost)
        async with sender(h):
            await queue(h, sent_one, taken, lost, refused)
            history = await final(h, "act-1")
            await queue(h, sent_one)
            resolved = {a: await final(h, a) for a in ("act-taken", "act-lost", "act-401")}
            errors = await h.errors("mb-alice") + await h.errors("mb-eve")

    assert kinds(history) == [SendStatus.PENDING, SendStatus.SENDING, SendStatus.SENT]
    assert history[-1].copied_to_sent
    assert history[-1].accepted == [DANA, AUDIT]
    assert len(graph.sent) == 1
    assert header(graph.sent[0], "Message-ID") == f"<{history[-1].message_id}>"
    assert graph.requests["sendMail"] == 1
    box = graph.mailboxes[AUDIT]
    assert [m.header("Message-ID") for m in box.messages.values()] == [
        f"<{history[-1].message_id}>"
    ]

    assert kinds(resolved["act-taken"])[-1] == SendStatus.SENT
    lost_final = resolved["act-lost"][-1]
    assert (lost_final.status, lost_final.error_code) == (SendStatus.FAILED, Code.OUTCOME_UNKNOWN)
    refused_final = resolved["act-401"][-1]
    assert (refused_final.status, refused_final.error_code) == (
        SendStatus.FAILED,
        Code.AUTHENTICATION_FAILED,
    )
    codes = {(e.item_id, e.code, e.severity) for e in errors}
    assert ("act-lost", Code.OUTCOME_UNKNOWN, "permanent") in codes
    assert ("act-401", Code.AUTHENTICATION_FAILED, "permanent") in codes
    assert all("not-the-secret" not in e.message for e in errors)
