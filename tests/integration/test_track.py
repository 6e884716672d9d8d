"""Manual tracking for real: the connector runtime on the embedded broker serving
mail.track requests (Maildir and IMAP on dovecot), the IMAP lookup itself against
dovecot, and the whole pipeline from `tidings track` to a ManualTrack decision and its
activity in ClickHouse."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import msgspec
import pytest

from connectors.auth import secret_provider
from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.gate import ServerGate
from connectors.imap import ImapMailbox
from connectors.source import SourceWiring
from connectors.tracking import (
    TRACK_INVALID,
    TRACK_NOT_FOUND,
    TRACK_REFUSED,
    TRACK_UNKNOWN_MAILBOX,
)
from pipeline.idle import group_lag
from pipeline.publish import publish
from schemas.base import RecordRef
from schemas.blobs import DirectoryBlobStore
from schemas.config import ConnectorConfig
from schemas.crm import MANUAL_DECISION_VERSION
from schemas.errors import SyncError
from schemas.ids import change_event_id, track_event_id
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import MailboxConfig, MaildirSettings, Protocol
from schemas.topics import MAIL_CHANGES, MAIL_TRACK, SYNC_ERRORS
from schemas.track import TrackRequest
from tests.connector_harness import PASSWORD_ENV, ConnectorHarness, mailbox
from tests.integration.test_cli import (
    CRM_CSV,
    assert_clean_failure,
    error_lines,
    one_line,
    run_until_idle,
    write_message,
)
from tests.mailserver import Dovecot
from tests.workspace import Workspace

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
FAST = ConnectorConfig(poll_interval_s=0.2, server_poll_interval_s=0.5, max_batch_items=100)


def request(mailbox_id: str, message_id: str, request_id: str) -> TrackRequest:
    return TrackRequest(
        request_id=request_id,
        mailbox_id=mailbox_id,
        message_id=message_id,
        requested_by="ops",
        requested_at=T0,
    )


async def send_requests(h: ConnectorHarness, *requests: TrackRequest) -> None:
    """Publish requests to mail.track the way another service would (keyed by mailbox)."""
    await publish(
        h.config.kafka, h.config.topic_prefix, MAIL_TRACK, [(r.mailbox_id, r) for r in requests]
    )


def tracked(events: list[MailItemChanged]) -> list[MailItemChanged]:
    return [e for e in events if e.manual_track is not None]


def codes(errors: list[SyncError]) -> list[str]:
    return [e.code for e in errors]


def maildir(root: Path, messages: dict[str, str]) -> Path:
    """A Maildir whose INBOX holds one message per (file name, Message-ID)."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, message_id in messages.items():
        write_message(
            root,
            name,
            {
                "From": "Stranger <stranger@unknown.example>",
                "To": "alice@northwind.example",
                "Subject": f"About {name}",
                "Date": "Mon, 02 Mar 2026 10:00:00 +0000",
                "Message-ID": message_id,
            },
        )
    return root


def maildir_mailbox(mailbox_id: str, root: Path, **changes: object) -> MailboxConfig:
    config = MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef("user", "alice"),
        email_address="alice@northwind.example",
        protocol=Protocol.MAILDIR,
        maildir=MaildirSettings(path=str(root)),
    )
    return msgspec.structs.replace(config, **changes)


async def wait_for_lag_zero(h: ConnectorHarness, timeout_s: float = 60.0) -> None:
    """Until the connectors' group committed every mail.track request."""
    topic = MAIL_TRACK.name(h.config.topic_prefix)
    deadline = time.monotonic() + timeout_s
    lag = -1
    while time.monotonic() < deadline:
        lag = await group_lag(h.config, h.config.connectors.group_id, [topic])
        if lag == 0:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"mail.track still lags by {lag} after {timeout_s}s")


# -- the connector runtime, Maildir ----------------------------------------------------


async def test_runtime_serves_requests_of_its_mailboxes_and_reports_every_refusal(
    tmp_path: Path,
) -> None:
    root = maildir(
        tmp_path / "alice",
        {"1772445600.M1P1Q1.t": "<m1@unknown.example>", "1772445601.M1P1Q2.t": "<m2@x.example>"},
    )
    async with ConnectorHarness.up(tmp_path / "data", {}, FAST) as h:
        await h.add_mailbox(maildir_mailbox("mb-alice", root))
        await h.add_mailbox(maildir_mailbox("mb-unapproved", root, approved=False))
        async with h.runtime():
            synced = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(e) == 2)
            await send_requests(
                h,
                request("mb-alice", "<m1@Unknown.EXAMPLE>", "t-found"),
                request("mb-alice", "missing@unknown.example", "t-missing"),
                request("mb-alice", "<>", "t-invalid"),
                request("mb-ghost", "m1@unknown.example", "t-ghost"),
                request("mb-unapproved", "m1@unknown.example", "t-unapproved"),
            )
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(tracked(e)) == 1)
            errors = await h.wait_for(SYNC_ERRORS, "mb-alice", lambda e: len(e) == 2)
            ghost = await h.wait_for(SYNC_ERRORS, "mb-ghost", lambda e: len(e) == 1)
            refused = await h.wait_for(SYNC_ERRORS, "mb-unapproved", lambda e: len(e) == 1)
            await wait_for_lag_zero(h)

    original = next(e for e in synced if e.item_id == "1772445600.M1P1Q1.t")
    [marked] = tracked(events)
    assert (marked.item_id, marked.folder, marked.change) == (
        original.item_id,
        "INBOX",
        ChangeKind.CREATED,
    )
    assert marked.raw == original.raw
    assert marked.event_id == track_event_id(original.event_id, "t-found") != original.event_id
    assert original.event_id == change_event_id(
        "mb-alice", "INBOX", original.item_id, "created", ""
    )
    assert marked.manual_track is not None
    assert (marked.manual_track.request_id, marked.manual_track.requested_by) == ("t-found", "ops")
    assert len(events) == 3  # the two synced items and the tracked one, nothing else

    assert sorted(codes(errors)) == [TRACK_INVALID, TRACK_NOT_FOUND]
    missing = next(e for e in errors if e.code == TRACK_NOT_FOUND)
    assert missing.message == (
        "track request t-missing by ops: mailbox mb-alice holds no message with Message-ID "
        "<missing@unknown.example> in the folders tidings reads; check the id and the folder"
    )
    assert codes(ghost) == [TRACK_UNKNOWN_MAILBOX]
    assert "no mailbox mb-ghost is configured" in ghost[0].message
    assert codes(refused) == [TRACK_REFUSED]
    assert "mailbox mb-unapproved is not approved" in refused[0].message


async def test_a_request_waits_for_its_mailbox_configuration_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    root = maildir(tmp_path / "alice", {"1772445600.M1P1Q1.t": "<m1@unknown.example>"})
    async with ConnectorHarness.up(tmp_path / "data", {}, FAST) as h:
        # The request is on mail.track before the mailbox exists and before any worker runs.
        await send_requests(h, request("mb-late", "m1@unknown.example", "t-early"))
        await h.add_mailbox(maildir_mailbox("mb-late", root))
        async with h.runtime("worker-1"):
            await h.wait_for(MAIL_CHANGES, "mb-late", lambda e: len(tracked(e)) == 1)
            await wait_for_lag_zero(h)
        # A new worker does not serve the committed request again.
        async with h.runtime("worker-2"):
            await send_requests(h, request("mb-late", "m1@unknown.example", "t-second"))
            events = await h.wait_for(MAIL_CHANGES, "mb-late", lambda e: len(tracked(e)) == 2)
            await wait_for_lag_zero(h)
        errors = await h.errors("mb-late")
    assert [e.manual_track.request_id for e in tracked(events) if e.manual_track] == [
        "t-early",
        "t-second",
    ]
    assert errors == []


async def test_two_workers_each_serve_the_requests_of_their_own_mailboxes(
    tmp_path: Path,
) -> None:
    ids = [f"mb-{n}" for n in range(6)]
    three = {"TIDINGS_KAFKA__PARTITIONS": "3"}  # 2 workers: round robin would split pairs
    async with ConnectorHarness.up(tmp_path / "data", {}, FAST, env=three) as h:
        for n, mailbox_id in enumerate(ids):
            root = maildir(tmp_path / mailbox_id, {f"17724456{n:02}.M1.t": f"<x{n}@x.example>"})
            await h.add_mailbox(maildir_mailbox(mailbox_id, root))
        async with h.runtime("worker-1") as one, h.runtime("worker-2") as two:
            for mailbox_id in ids:
                await h.wait_for(MAIL_CHANGES, mailbox_id, lambda e: len(e) == 1)
            deadline = time.monotonic() + 60
            while sorted(one.owned_mailboxes + two.owned_mailboxes) != ids or not (
                one.owned_mailboxes and two.owned_mailboxes
            ):  # until the second worker joined and took its share
                assert time.monotonic() < deadline, (one.owned_mailboxes, two.owned_mailboxes)
                await asyncio.sleep(0.2)
            owned = [one.owned_mailboxes, two.owned_mailboxes]
            await send_requests(
                h, *(request(m, f"x{n}@x.example", f"t-{n}") for n, m in enumerate(ids))
            )
            served = [
                await h.wait_for(MAIL_CHANGES, m, lambda e: len(tracked(e)) == 1) for m in ids
            ]
            await wait_for_lag_zero(h)
            errors = [await h.errors(m) for m in ids]
            owned_after = [one.owned_mailboxes, two.owned_mailboxes]
            layouts = [
                {(tp.topic.rsplit(".", 1)[-1], tp.partition) for tp in w.assignment()}
                for w in (one._inbox.consumer, two._inbox.consumer)  # type: ignore[union-attr]
            ]
    assert owned_after == owned  # no rebalance meanwhile
    assert [[e.item_id for e in tracked(events)] for events in served] == [
        [f"17724456{n:02}.M1.t"] for n in range(6)
    ]
    assert errors == [[] for _ in ids]
    for layout in layouts:  # partition N of both topics, together
        assert {p for t, p in layout if t == "config"} == {p for t, p in layout if t == "track"}
    assert sorted(p for layout in layouts for t, p in layout if t == "track") == [0, 1, 2]


# -- IMAP on dovecot ---------------------------------------------------------------------


@pytest.fixture
def password() -> Iterator[str]:
    os.environ[PASSWORD_ENV] = "s3cret-pw"
    yield "s3cret-pw"
    os.environ.pop(PASSWORD_ENV, None)


def imap_message(message_id: str, subject: str, body: bytes = b"Body.\r\n") -> bytes:
    return (
        b"From: Dana <dana@contoso.example>\r\nTo: alice@northwind.example\r\n"
        + f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n".encode()
        + b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n\r\n"
        + body
    )


def imap_source(
    dovecot: Dovecot, tmp_path: Path, config: MailboxConfig, **profile: object
) -> ImapMailbox:
    server = dovecot.profile(timeout_s=10.0, **profile)  # type: ignore[arg-type]
    unused = object()
    wiring = SourceWiring(
        config=config,
        profile=server,
        partition=0,
        cursors={},
        emitter=cast(Emitter, unused),
        store=cast(CursorStore, unused),
        gate=ServerGate("dovecot", 2),
        claim_check=ClaimCheck(DirectoryBlobStore(tmp_path / "blobs"), ConnectorConfig()),
        max_batch_items=100,
    )
    return ImapMailbox(wiring, secret=secret_provider(config, server))


async def test_imap_find_message_searches_every_synced_folder_and_reads_as_a_sync(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("alice", password)
    wanted = "<m1@Contoso.EXAMPLE>"
    inbox_uid = dovecot.append("alice", "INBOX", imap_message(wanted, "Quote"))
    dovecot.append("alice", "INBOX", imap_message("<xm1@contoso.example>", "Substring trap"))
    dovecot.append("alice", "INBOX", imap_message("<other@contoso.example>", "Other"))
    sent_uid = dovecot.append(
        "alice", "Sent", imap_message(wanted, "Quote (sent copy)"), flags="\\Seen"
    )
    big = imap_message("<big@contoso.example>", "Big", b"x" * 40_000 + b"\r\n")
    big_uid = dovecot.append("alice", "INBOX", big)
    # The start date keeps these messages out of a sync; a manual track still finds them.
    config = mailbox("mb-alice", "alice", process_email_from=datetime(2030, 1, 1, tzinfo=UTC))
    source = imap_source(dovecot, tmp_path, config, max_message_bytes=20_000)
    try:
        found = await source.find_message("m1@contoso.example")
        assert [(e.folder, e.item_id.split(":")[1], e.folder_role) for e in found] == [
            ("INBOX", str(inbox_uid), "inbox"),
            ("Sent", str(sent_uid), "sent"),
        ]
        assert all(e.change == ChangeKind.CREATED and e.manual_track is None for e in found)
        assert found[0].raw == imap_message(wanted, "Quote")
        assert found[1].flags == ["\\Seen"]
        uidvalidity = found[0].item_id.split(":")[0]
        assert found[0].event_id == change_event_id(
            "mb-alice", "INBOX", f"{uidvalidity}:{inbox_uid}", "created", ""
        )

        [too_large] = await source.find_message("big@contoso.example")
        assert too_large.item_id.endswith(f":{big_uid}")
        assert too_large.unreadable_code == "TooLarge" and too_large.raw is None
        assert (
            too_large.headers is not None
            and b"Message-ID: <big@contoso.example>" in too_large.headers
        )

        assert await source.find_message("nothing@contoso.example") == []
        assert await source.find_message("m1@contoso") == []  # a prefix is not a match
    finally:
        await source.close()
    # Looking never changes the mailbox: nothing became \Seen.
    client = dovecot.client("alice", password)
    try:
        client.select("INBOX", readonly=True)
        status, data = client.fetch("1:*", "(FLAGS)")
    finally:
        client.logout()
    assert status == "OK"
    assert not any(b"\\Seen" in line for line in data if isinstance(line, bytes))


async def test_imap_runtime_sends_the_found_message_marked(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("bob", password)
    dovecot.append("bob", "INBOX", imap_message("<q1@contoso.example>", "Question"))
    dovecot.append("bob", "INBOX", imap_message("<q2@contoso.example>", "Another"))
    profile = dovecot.profile(timeout_s=10.0)
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": profile}, FAST) as h:
        await h.add_mailbox(mailbox("mb-bob", "bob"))
        async with h.runtime():
            synced = await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(e) == 2)
            await send_requests(
                h,
                request("mb-bob", "<q2@contoso.example>", "t-imap"),
                request("mb-bob", "<q9@contoso.example>", "t-imap-missing"),
            )
            events = await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(tracked(e)) == 1)
            errors = await h.wait_for(SYNC_ERRORS, "mb-bob", lambda e: len(e) == 1)
            await wait_for_lag_zero(h)
    original = next(e for e in synced if e.raw and b"<q2@contoso.example>" in e.raw)
    [marked] = tracked(events)
    assert (marked.item_id, marked.raw) == (original.item_id, original.raw)
    assert marked.event_id == track_event_id(original.event_id, "t-imap")
    assert codes(errors) == [TRACK_NOT_FOUND]
    assert "<q9@contoso.example>" in errors[0].message and "s3cret" not in errors[0].message


# -- the whole pipeline from the command line -------------------------------------------

STRANGER_MAIL = "1772445601.M1P1Q2.test"
STRANGER_REPLY = "1772445602.M1P1Q3.test"


def test_tidings_track_promotes_a_skipped_message_end_to_end(
    workspace: Workspace, tmp_path: Path
) -> None:
    ws = workspace
    (tmp_path / "crm.csv").write_text(CRM_CSV, encoding="utf-8")
    ws.cli("crm", "import", str(tmp_path / "crm.csv"))
    root = tmp_path / "alice"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    alice = "Alice Moreau <alice@northwind.example>"
    write_message(
        root,
        STRANGER_MAIL,
        {
            "From": "Stranger <stranger@unknown.example>",
            "To": alice,
            "Subject": "Partnership",
            "Date": "Mon, 02 Mar 2026 10:00:00 +0000",
            "Message-ID": "<s1@unknown.example>",
        },
    )
    write_message(
        root,
        STRANGER_REPLY,
        {
            "From": "Stranger <stranger@unknown.example>",
            "To": alice,
            "Subject": "Re: Partnership",
            "Date": "Mon, 02 Mar 2026 11:00:00 +0000",
            "Message-ID": "<s2@unknown.example>",
            "In-Reply-To": "<s1@unknown.example>",
        },
    )
    ws.cli(
        "mailbox", "add", "--id", "mb-alice", "--path", str(root), "--owner", "user:alice",
        "--filter", "responses", "--email", "alice@northwind.example",
    )  # fmt: skip
    run_until_idle(ws, tmp_path / "run-1.log")
    skipped = ws.query(
        "SELECT item_id, status, reason FROM tidings.promotion_decisions FINAL ORDER BY item_id"
    )
    assert skipped == [
        (STRANGER_MAIL, "skipped", "NoCorrelationMatch"),
        (STRANGER_REPLY, "skipped", "NoCorrelationMatch"),
    ]

    unknown = ws.cli(
        "track", "--mailbox", "mb-nobody", "--message-id", "<s1@x.example>", check=False
    )
    message = assert_clean_failure(unknown)
    assert len(error_lines(unknown)) == 1
    assert "no mailbox 'mb-nobody'" in message and "tidings mailbox list" in message

    sent = ws.cli(
        "track", "--mailbox", "mb-alice", "--message-id", "<s1@Unknown.Example>",
        "--requested-by", "alice",
    )  # fmt: skip
    line = one_line(sent.stdout)
    assert line.startswith("track request t-") and "mb-alice looks for <s1@unknown.example>" in line
    request_id = line.split()[2]
    ws.cli("track", "--mailbox", "mb-alice", "--message-id", "nope@unknown.example")
    run_until_idle(ws, tmp_path / "run-2.log")

    decisions, activities, errors = ws.query_many(
        "SELECT item_id, status, reason, correlation_method, version, explanation "
        "FROM tidings.promotion_decisions FINAL ORDER BY item_id",
        "SELECT message_id, correlation_method, receiving_mailboxes "
        "FROM tidings.activities FINAL ORDER BY message_id",
        "SELECT code, severity, message FROM tidings.sync_errors FINAL",
    )
    assert decisions[0][:3] == (STRANGER_MAIL, "promoted", "ManualTrack")
    assert int(decisions[0][4]) >= MANUAL_DECISION_VERSION
    assert decisions[0][5] == f"tracked by hand (request {request_id} by alice)"
    # The reply was held; once its message was tracked by hand it correlates.
    assert decisions[1][:4] == (STRANGER_REPLY, "promoted", "CorrelationMatch", "InReplyTo")
    assert [row[:2] for row in activities] == [
        ("s1@unknown.example", "None"),
        ("s2@unknown.example", "InReplyTo"),
    ]
    assert "mb-alice" in str(activities[0][2])
    assert [row[:2] for row in errors] == [("TrackNotFound", "permanent")]
    assert "<nope@unknown.example>" in errors[0][2]


def test_track_help_teaches_what_happens(workspace: Workspace) -> None:
    top = workspace.cli("--help").stdout
    assert "\n  track " in top
    text = one_line(workspace.cli("track", "--help").stdout)
    for phrase in (
        "The connector that owns the mailbox finds the message",
        "promoted with reason ManualTrack however the filter would decide",
        "a TrackNotFound sync error says so",
        "Approval is not bypassed",
        "--requested-by",
    ):
        assert phrase in text, phrase
