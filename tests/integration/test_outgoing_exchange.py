"""The outgoing sender through EWS (exchangelib against the EWS simulator) and
Microsoft Graph (httpx against the Graph simulator) on the real embedded broker:
the same statuses as SMTP (pending → sending → sent, the copy filed in Sent Items
by the server itself), Bcc delivered, an email queued twice sent once, a crash
between the server's acceptance and the `sent` status resolved by looking the
Message-ID up in Sent Items (sent when there, OutgoingOutcomeUnknown and never
resent when not), and a permanent refusal failing with a SyncError. The crashes
are staged here (statuses published, Sent Items filled by hand); the sender
really killed -9 mid-send is test_outgoing_exchange_crash.py."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.outgoing import advance, build_message, first_status
from pipeline.publish import publish
from schemas.config import OutgoingConfig
from schemas.errors import OutgoingErrorCode as Code
from schemas.errors import SyncError
from schemas.mail import EmailAddress
from schemas.mailbox import (
    OutgoingSettings,
    RetryPolicy,
)
from schemas.outgoing import OutgoingEmail, OutgoingStatus, SendStatus
from schemas.topics import OUTGOING_STATUS
from tests.act_harness import (
    ews_mailbox,
    ews_profile,
    ews_simulator,
    graph_mailbox,
    graph_simulator,
    outgoing_sender,
    outgoing_statuses,
    queue_mail,
)
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator
from tests.graph_sim import GraphSimulator

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
FAST = OutgoingConfig(max_retries=1, retry_interval_s=0.5, send_timeout_s=20)
RETRY = RetryPolicy(max_retries=1, retry_interval_s=0.5)
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


async def sending_story(
    h: ConnectorHarness, file_in_sent_items: Callable[[bytes], object]
) -> tuple[list[OutgoingStatus], dict[str, list[OutgoingStatus]], list[SyncError]]:
    """The story both transports tell, mailboxes mb-alice and mb-eve (whose secret is
    wrong) configured: two crashes between the server's acceptance and `sent` (one
    message the server took, filed in Alice's Sent Items by `file_in_sent_items`,
    one it never got), then a sender that sends act-1 (Bcc to audit), gets act-1
    queued again, resolves the crashed two and is refused act-401. Returns act-1's
    statuses, the other three's by activity and the two mailboxes' errors."""
    sent_one = outgoing_email("act-1", "mb-alice", ALICE, bcc=[EmailAddress(AUDIT)])
    taken = outgoing_email("act-taken", "mb-alice", ALICE, subject="Taken")
    lost = outgoing_email("act-lost", "mb-alice", ALICE, subject="Lost")
    refused = outgoing_email("act-401", "mb-eve", "eve@northwind.example")
    taken_status = await crashed(h, taken)
    file_in_sent_items(mime_of(taken, taken_status))
    await crashed(h, lost)
    async with outgoing_sender(h, FAST):
        await queue_mail(h, sent_one, taken, lost, refused)
        history = await outgoing_statuses(h, "act-1")
        await queue_mail(h, sent_one)  # queued again by the CRM: not sent again
        resolved = {a: await outgoing_statuses(h, a) for a in ("act-taken", "act-lost", "act-401")}
        errors = await h.errors("mb-alice") + await h.errors("mb-eve")
    return history, resolved, errors


def check_resolved(
    resolved: dict[str, list[OutgoingStatus]], errors: list[SyncError], wrong_secret: str
) -> None:
    """The crashed email the server took is sent, the one it never got fails as
    OutgoingOutcomeUnknown (not resent), the refused one fails on authentication;
    each failure is a permanent SyncError that never shows the wrong secret."""
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
    assert not any(e.item_id in ("act-1", "act-taken") for e in errors)
    assert all(wrong_secret not in e.message for e in errors)


def kinds(history: list[OutgoingStatus]) -> list[SendStatus]:
    return [s.status for s in history]


def header(raw: bytes, name: str) -> str:
    return str(email.message_from_bytes(raw, policy=email.policy.default)[name] or "")


# -- EWS ---------------------------------------------------------------------------


@pytest.fixture
def ews() -> Iterator[EwsSimulator]:
    env = {EWS_PASSWORD_ENV: "pw-send", WRONG_ENV: "not-the-password"}
    with ews_simulator("svc", "pw-send", env) as server:
        yield server


async def test_sending_through_ews(ews: EwsSimulator, tmp_path: Path) -> None:
    alice = ews.add_mailbox(ALICE)
    ews.add_mailbox(DANA)
    ews.add_mailbox(AUDIT)
    ews.add_mailbox("eve@northwind.example")
    profiles = {"exchange": ews_profile(ews, RETRY)}
    async with ConnectorHarness.up(tmp_path / "data", profiles) as h:
        # Without outgoing settings a mailbox sends through its own profile; eve's
        # password is wrong.
        await h.add_mailbox(ews_mailbox("mb-alice", ALICE, "svc", EWS_PASSWORD_ENV))
        await h.add_mailbox(ews_mailbox("mb-eve", "eve@northwind.example", "svc", WRONG_ENV))
        history, resolved, errors = await sending_story(
            h, lambda mime: alice.deliver("Sent Items", mime, is_read=True)
        )

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

    assert resolved["act-taken"][-1].copied_to_sent
    check_resolved(resolved, errors, "not-the-password")


# -- Graph -------------------------------------------------------------------------


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[GraphSimulator]:
    env = {GRAPH_SECRET_ENV: SECRET, WRONG_ENV: "not-the-secret"}
    async with graph_simulator(tmp_path / "graph", APP, SECRET, env=env) as server:
        yield server


async def test_sending_through_graph(graph: GraphSimulator, tmp_path: Path) -> None:
    for upn in (ALICE, DANA, AUDIT, "eve@northwind.example"):
        graph.add_user(upn)
    profiles = {
        "graph": graph.profile(APP, GRAPH_SECRET_ENV, retry=RETRY, timeout_s=10.0),
        "graph-wrong": graph.profile(APP, WRONG_ENV, retry=RETRY, timeout_s=10.0),
    }
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
        history, resolved, errors = await sending_story(
            h, lambda mime: graph.add_message(ALICE, "sentitems", mime, is_read=True)
        )

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

    check_resolved(resolved, errors, "not-the-secret")
