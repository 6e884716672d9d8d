"""The outgoing sender killed -9 in the middle of an EWS or Graph send, for real:
the sender runs in a process of its own (tests/sender_process.py) against the
embedded broker and the EWS / Graph simulator, which holds the send request at
the moment under test until the sender is dead. A second sender then resolves
the email, which was left at `sending` (acknowledged before the request left):

- killed after Exchange took the message (its answer held back): Sent Items holds
  the Message-ID, so the email is `sent` — exactly one message sent, one copy in
  Sent Items, no second CreateItem / sendMail;
- killed after `sending` was acknowledged but before Exchange processed the
  request (the simulator drops it unprocessed): Sent Items does not hold it, so
  the email fails with OutgoingOutcomeUnknown — nothing sent, and not resent.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from schemas.errors import OutgoingErrorCode as Code
from schemas.errors import SyncError
from schemas.mailbox import MailboxConfig, ServerProfile
from schemas.outgoing import OutgoingStatus, SendStatus
from schemas.topics import OUTGOING_STATUS
from tests import ews_sim, graph_sim
from tests.act_harness import (
    ews_mailbox,
    ews_profile,
    ews_simulator,
    graph_mailbox,
    graph_simulator,
)
from tests.connector_harness import ConnectorHarness
from tests.ews_sim import EwsSimulator
from tests.graph_sim import GraphSimulator
from tests.integration.test_outgoing_exchange import (
    ALICE,
    APP,
    DANA,
    EWS_PASSWORD_ENV,
    FAST,
    GRAPH_SECRET_ENV,
    RETRY,
    SECRET,
    outgoing_email,
)
from tests.sender_process import crash_and_restart

pytestmark = pytest.mark.integration

HeldSends = ews_sim.SendHold | graph_sim.SendHold


def kinds(history: list[OutgoingStatus]) -> list[SendStatus]:
    return [s.status for s in history]


def message_id(raw: bytes) -> str:
    return str(email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"] or "")


def check_sent_once(history: list[OutgoingStatus]) -> str:
    """The email was resolved as sent by the restarted sender, from Sent Items, in
    its first attempt; returns its Message-ID in angle brackets."""
    assert kinds(history) == [SendStatus.PENDING, SendStatus.SENDING, SendStatus.SENT]
    final = history[-1]
    assert (final.worker, final.attempt, final.copied_to_sent) == ("sender-2", 1, True)
    assert final.error_code is None
    return f"<{final.message_id}>"


def check_outcome_unknown(history: list[OutgoingStatus]) -> None:
    """The email failed as OutgoingOutcomeUnknown (not resent), decided by the
    restarted sender after looking in Sent Items."""
    assert kinds(history) == [SendStatus.PENDING, SendStatus.SENDING, SendStatus.FAILED]
    final = history[-1]
    assert (final.worker, final.attempt, final.error_code) == ("sender-2", 1, Code.OUTCOME_UNKNOWN)
    assert "not in the mailbox's Sent folder" in (final.error_message or "")
    assert "not sent again automatically" in (final.error_message or "")


async def killed_mid_send(
    profiles: dict[str, ServerProfile],
    mailbox: MailboxConfig,
    hold: HeldSends,
    activity_id: str,
    tmp_path: Path,
) -> tuple[list[OutgoingStatus], list[SyncError], list[OutgoingStatus]]:
    """Send one email from `mailbox` through a sender killed -9 where `hold` holds the
    send, then restarted; the email's status history as the restarted sender left
    it, the mailbox's sync errors and every status on outgoing.status."""
    async with ConnectorHarness.up(tmp_path / "data", profiles) as h:
        await h.add_mailbox(mailbox)
        history = await crash_and_restart(
            h,
            outgoing_email(activity_id, mailbox.mailbox_id, ALICE),
            reached=hold.reached.is_set,
            release=hold.release.set,
            log=tmp_path / "sender.log",
            settings=FAST,
        )
        return (
            history,
            await h.errors(mailbox.mailbox_id),
            await h.read(OUTGOING_STATUS, activity_id),
        )


# -- EWS ---------------------------------------------------------------------------


@pytest.fixture
def ews() -> Iterator[EwsSimulator]:
    with ews_simulator("svc", "pw-send", {EWS_PASSWORD_ENV: "pw-send"}) as server:
        server.add_mailbox(DANA)
        yield server


def ews_profiles(ews: EwsSimulator) -> dict[str, ServerProfile]:
    return {"exchange": ews_profile(ews, RETRY)}


def alice_on_ews() -> MailboxConfig:
    return ews_mailbox("mb-alice", ALICE, "svc", EWS_PASSWORD_ENV)


async def test_ews_sender_killed_after_exchange_took_the_message_is_sent_once(
    ews: EwsSimulator, tmp_path: Path
) -> None:
    alice = ews.add_mailbox(ALICE)
    hold = ews.hold_sends("answer")
    history, errors, statuses = await killed_mid_send(
        ews_profiles(ews), alice_on_ews(), hold, "act-k", tmp_path
    )

    wanted = check_sent_once(history)
    assert len(statuses) == 3  # nothing after `sent`
    assert [message_id(raw) for raw in ews.sent] == [wanted]  # exactly one message
    assert len(ews.operations("CreateItem")) == 1  # never sent again
    assert [i.message_id for i in alice.folder("Sent Items").live()] == [wanted]
    assert [i.message_id for i in ews.mailboxes[DANA].folder("Inbox").live()] == [wanted]
    assert errors == []


async def test_ews_sender_killed_before_exchange_got_the_request_fails_unknown_never_sent(
    ews: EwsSimulator, tmp_path: Path
) -> None:
    alice = ews.add_mailbox(ALICE)
    hold = ews.hold_sends("arrival")
    history, errors, _ = await killed_mid_send(
        ews_profiles(ews), alice_on_ews(), hold, "act-l", tmp_path
    )

    check_outcome_unknown(history)
    assert hold.dropped == 1  # the one request, dropped unprocessed
    assert ews.sent == []
    assert ews.operations("CreateItem") == []  # the restarted sender did not resend
    assert alice.folder("Sent Items").live() == []
    assert ews.mailboxes[DANA].folder("Inbox").live() == []
    assert [(e.item_id, e.code, e.severity) for e in errors] == [
        ("act-l", Code.OUTCOME_UNKNOWN, "permanent")
    ]


# -- Graph -------------------------------------------------------------------------


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[GraphSimulator]:
    env = {GRAPH_SECRET_ENV: SECRET}
    async with graph_simulator(tmp_path / "graph", APP, SECRET, [ALICE, DANA], env) as server:
        yield server


def graph_profiles(graph: GraphSimulator) -> dict[str, ServerProfile]:
    return {"graph": graph.profile(APP, GRAPH_SECRET_ENV, retry=RETRY, timeout_s=10.0)}


def graph_folder(graph: GraphSimulator, upn: str, folder: str) -> list[str | None]:
    """The Message-IDs of a simulated mailbox folder ("sentitems", "inbox")."""
    box = graph.mailboxes[upn]
    found = box.folder(folder)
    assert found is not None
    return [m.header("Message-ID") for m in box.messages.values() if m.folder_id == found.id]


async def test_graph_sender_killed_after_exchange_took_the_message_is_sent_once(
    graph: GraphSimulator, tmp_path: Path
) -> None:
    hold = graph.hold_sends("answer")
    history, errors, statuses = await killed_mid_send(
        graph_profiles(graph), graph_mailbox("mb-alice", ALICE), hold, "act-k", tmp_path
    )

    wanted = check_sent_once(history)
    assert len(statuses) == 3
    assert [message_id(raw) for raw in graph.sent] == [wanted]  # exactly one message
    assert graph.requests["sendMail"] == 1  # never sent again
    assert graph_folder(graph, ALICE, "sentitems") == [wanted]
    assert graph_folder(graph, DANA, "inbox") == [wanted]
    assert errors == []


async def test_graph_sender_killed_before_exchange_got_the_request_fails_unknown_never_sent(
    graph: GraphSimulator, tmp_path: Path
) -> None:
    hold = graph.hold_sends("arrival")
    history, errors, _ = await killed_mid_send(
        graph_profiles(graph), graph_mailbox("mb-alice", ALICE), hold, "act-l", tmp_path
    )

    check_outcome_unknown(history)
    assert hold.dropped == 1
    assert graph.sent == []
    assert graph.requests["sendMail"] == 0  # the dropped request was never processed
    assert graph_folder(graph, ALICE, "sentitems") == []
    assert graph_folder(graph, DANA, "inbox") == []
    assert [(e.item_id, e.code, e.severity) for e in errors] == [
        ("act-l", Code.OUTCOME_UNKNOWN, "permanent")
    ]
