"""Manual tracking requests outside the processors: the request contract and its
Message-ID normalization, the CLI's checks, reading Message-IDs from headers, the
Maildir lookup, marked events, committable offsets, and the routing guarantee (the
range assignor gives one worker partition N of mailbox.config and of mail.track)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import msgspec
import pytest
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.errors import MAILBOX_MISSING, ConnectorError
from connectors.maildir import items_with_message_id, read_headers
from connectors.maildir_sync import MaildirMailbox
from connectors.source import SourceWiring, item_event, tracked_event
from connectors.tracking import (
    TRACK_NOT_FOUND,
    TRACK_UNKNOWN_MAILBOX,
    OffsetBook,
    header_message_id,
    not_found_error,
    unknown_mailbox_error,
)
from pipeline.config import load_config
from pipeline.idle import groups_for
from pipeline.track import TrackRefusedError, new_track_request
from schemas.base import RecordRef
from schemas.blobs import DirectoryBlobStore
from schemas.config import ConnectorConfig
from schemas.errors import ErrorScope, Severity
from schemas.ids import change_event_id, track_event_id
from schemas.mail import ChangeKind
from schemas.mailbox import MailboxConfig, MaildirSettings, Protocol
from schemas.topics import MAIL_TRACK, MAILBOX_CONFIG
from schemas.track import TrackRequest, track_message_id

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
REQUEST = TrackRequest(
    request_id="t-1",
    mailbox_id="mb-alice",
    message_id="m1@contoso.example",
    requested_by="alice",
    requested_at=T0,
)


# -- the request ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("<m1@Contoso.EXAMPLE>", "m1@contoso.example"),
        ("  <m1@contoso.example>  ", "m1@contoso.example"),
        ("m1@contoso.example", "m1@contoso.example"),
        ("<AbC.1@X.example>", "AbC.1@x.example"),  # the local part keeps its case
        ("<m1@contoso.example\n >", "m1@contoso.example"),
        ("no-at-sign", "no-at-sign"),
    ],
)
def test_message_ids_are_normalized_like_the_parser_does(raw: str, normalized: str) -> None:
    assert track_message_id(raw) == normalized
    assert track_message_id(normalized) == normalized  # normalizing again changes nothing


@pytest.mark.parametrize(
    ("raw", "why"), [("", "empty"), ("<>", "empty"), ("<ü@x.example>", "ASCII")]
)
def test_what_is_not_a_message_id_says_why(raw: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        track_message_id(raw)


def test_the_request_marks_its_items_with_who_asked() -> None:
    mark = REQUEST.mark
    assert (mark.request_id, mark.requested_by, mark.requested_at) == ("t-1", "alice", T0)
    assert mark.describe() == "tracked by hand (request t-1 by alice)"
    assert MAIL_TRACK.key == MAILBOX_CONFIG.key == "mailbox id"


def mailboxes(**changes: object) -> dict[str, MailboxConfig]:
    config = MailboxConfig(
        mailbox_id="mb-alice",
        owner=RecordRef("user", "alice"),
        email_address="alice@nw.example",
        protocol=Protocol.MAILDIR,
        maildir=MaildirSettings(path="/srv/mail/alice"),
    )
    return {"mb-alice": msgspec.structs.replace(config, **changes)}


def test_the_cli_request_is_normalized_and_named() -> None:
    request = new_track_request(mailboxes(), "mb-alice", "<M1@Contoso.Example>", "bob", T0)
    assert request.message_id == "M1@contoso.example"
    assert (request.mailbox_id, request.requested_by, request.requested_at) == (
        "mb-alice",
        "bob",
        T0,
    )
    assert request.request_id.startswith("t-") and len(request.request_id) == 14
    other = new_track_request(mailboxes(), "mb-alice", "<M1@Contoso.Example>", "bob", T0)
    assert other.request_id != request.request_id


@pytest.mark.parametrize(
    ("mailbox_id", "message_id", "changes", "says"),
    [
        (
            "mb-nobody",
            "<m1@x.example>",
            {},
            "no mailbox 'mb-nobody'; list them with `tidings mailbox list`",
        ),
        ("mb-alice", "<m1@x.example>", {"approved": False}, "mailbox mb-alice is not approved"),
        ("mb-alice", "<m1@x.example>", {"enabled": False}, "mailbox mb-alice is disabled"),
        ("mb-alice", "<>", {}, "--message-id: '<>' is not a Message-ID"),
    ],
)
def test_the_cli_refuses_what_no_connector_would_serve(
    mailbox_id: str, message_id: str, changes: dict[str, object], says: str
) -> None:
    with pytest.raises(TrackRefusedError) as refused:
        new_track_request(mailboxes(**changes), mailbox_id, message_id, None, T0)
    assert says in str(refused.value)


# -- Message-IDs in headers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"From: a@b.example\r\nMessage-ID: <M1@Contoso.Example>\r\n\r\nbody",
            "M1@contoso.example",
        ),
        (b"Message-Id:\r\n <folded@x.example>\r\nSubject: s\r\n\r\n", "folded@x.example"),
        (b"From a@b Mon Mar  2 10:00:00 2026\nMessage-ID: <mbox@x.example>\n\n", "mbox@x.example"),
        (b"message-id: <first@x.example>\nMessage-ID: <second@x.example>\n\n", "first@x.example"),
        (b"Message-ID: =?utf-8?q?=3Cenc=40x=2Eexample=3E?=\n\n", "enc@x.example"),
        (b"From: a@b.example\n\nMessage-ID: <in-the-body@x.example>\n", None),
        (b"From: a@b.example\r\n\r\n", None),
    ],
)
def test_header_message_id_reads_the_first_field_like_the_parser(
    raw: bytes, expected: str | None
) -> None:
    assert header_message_id(raw) == expected


# -- Maildir -------------------------------------------------------------------------


def deliver(root: Path, folder: str, name: str, message_id: str, padding: int = 0) -> Path:
    base = root if folder == "INBOX" else root / f".{folder}"
    for sub in ("cur", "new", "tmp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    headers = "".join(f"X-Trace-{n}: {'x' * 70}\n" for n in range(padding))
    path = base / "cur" / f"{name}:2,S"
    path.write_text(f"From: dana@contoso.example\n{headers}Message-ID: {message_id}\n\nbody\n")
    return path


def test_read_headers_stops_at_the_header_block_and_reads_long_ones_whole(tmp_path: Path) -> None:
    long_one = deliver(tmp_path, "INBOX", "1.M1.h", "<late@x.example>", padding=600)
    headers = read_headers(long_one)
    assert headers.endswith(b"Message-ID: <late@x.example>\n\n")
    assert len(headers) > 16 * 1024
    assert header_message_id(headers) == "late@x.example"
    assert read_headers(long_one, limit=1024).startswith(b"From:")


def test_items_with_message_id_finds_exact_matches_only(tmp_path: Path) -> None:
    deliver(tmp_path, "INBOX", "1.M1.h", "<m1@contoso.example>")
    deliver(tmp_path, "INBOX", "2.M2.h", "<xm1@contoso.example>")
    deliver(tmp_path, "INBOX", "3.M3.h", "<M1@CONTOSO.example>")  # another local part
    deliver(tmp_path, "INBOX", "4.M4.h", "<m1@CONTOSO.EXAMPLE>")  # the same id
    deliver(tmp_path, "Sent", "5.M5.h", "<m1@contoso.example>")
    found = items_with_message_id(tmp_path, "INBOX", "m1@contoso.example")
    assert [item.unique_name for item in found] == ["1.M1.h", "4.M4.h"]
    assert [
        i.unique_name for i in items_with_message_id(tmp_path, "Sent", "m1@contoso.example")
    ] == ["5.M5.h"]
    assert items_with_message_id(tmp_path, "INBOX", "nothing@x.example") == []


def maildir_source(root: Path, tmp_path: Path) -> MaildirMailbox:
    config = MailboxConfig(
        mailbox_id="mb-alice",
        owner=RecordRef("user", "alice"),
        email_address="alice@nw.example",
        protocol=Protocol.MAILDIR,
        maildir=MaildirSettings(path=str(root)),
    )
    unused = object()
    return MaildirMailbox(
        SourceWiring(
            config=config,
            profile=None,
            partition=0,
            cursors={},
            emitter=cast(Emitter, unused),
            store=cast(CursorStore, unused),
            gate=None,
            claim_check=ClaimCheck(DirectoryBlobStore(tmp_path / "blobs"), ConnectorConfig()),
            max_batch_items=ConnectorConfig().max_batch_items,
        )
    )


async def test_maildir_find_message_returns_the_created_events_a_sync_emits(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    inbox = deliver(root, "INBOX", "1.M1.h", "<m1@contoso.example>")
    deliver(root, "INBOX", "2.M2.h", "<m2@contoso.example>")
    deliver(root, "Sent", "3.M3.h", "<m1@contoso.example>")
    source = maildir_source(root, tmp_path)
    found = await source.find_message("m1@contoso.example")
    assert [(e.folder, e.item_id, e.change) for e in found] == [
        ("INBOX", "1.M1.h", ChangeKind.CREATED),
        ("Sent", "3.M3.h", ChangeKind.CREATED),
    ]
    assert found[0].raw == inbox.read_bytes()
    assert found[0].event_id == change_event_id("mb-alice", "INBOX", "1.M1.h", "created", "")
    assert found[0].manual_track is None
    assert await source.find_message("nothing@x.example") == []


async def test_maildir_find_message_in_a_missing_root_is_mailbox_missing(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError) as missing:
        await maildir_source(tmp_path / "gone", tmp_path).find_message("m1@x.example")
    assert missing.value.permanent and missing.value.code == MAILBOX_MISSING


# -- marked events, errors, offsets --------------------------------------------------


def test_tracked_event_is_marked_under_an_id_of_its_own() -> None:
    event = item_event("mb-alice", "INBOX", "1.M1.h", ChangeKind.CREATED, T0)
    marked = tracked_event(event, REQUEST)
    assert marked.manual_track == REQUEST.mark
    assert marked.event_id == track_event_id(event.event_id, "t-1") != event.event_id
    assert tracked_event(event, REQUEST) == marked  # handled again: the same event
    other = msgspec.structs.replace(REQUEST, request_id="t-2")
    assert tracked_event(event, other).event_id != marked.event_id
    assert msgspec.structs.replace(marked, event_id=event.event_id, manual_track=None) == event


def test_errors_name_the_request_the_message_and_the_mailbox_never_a_secret() -> None:
    missing = not_found_error(REQUEST, T0)
    assert (missing.code, missing.scope, missing.severity) == (
        TRACK_NOT_FOUND,
        ErrorScope.ITEM,
        Severity.PERMANENT,
    )
    assert missing.mailbox_id == "mb-alice"
    assert missing.message.startswith(
        "track request t-1 by alice: mailbox mb-alice holds no message"
    )
    assert "<m1@contoso.example>" in missing.message
    assert not_found_error(REQUEST, T0.replace(hour=10)).error_id == missing.error_id
    unknown = unknown_mailbox_error(REQUEST, T0)
    assert (unknown.code, unknown.scope) == (TRACK_UNKNOWN_MAILBOX, ErrorScope.MAILBOX)
    assert "tidings mailbox list" in unknown.message
    assert unknown.error_id != missing.error_id


def test_offsets_are_committed_up_to_the_oldest_request_in_hand() -> None:
    book = OffsetBook()
    first = book.open(REQUEST, 0, 10)
    second = book.open(REQUEST, 0, 11)
    book.passed(0, 12)  # a tombstone
    other = book.open(REQUEST, 3, 4)
    assert book.committable() == {0: 10, 3: 4}
    book.committed({0: 10, 3: 4})
    book.close(second)
    assert book.committable() == {}  # 10 is still in hand
    book.close(first)
    book.close(other)
    assert book.committable() == {0: 13, 3: 5}
    book.committed({0: 13, 3: 5})
    assert book.committable() == {}


def test_requests_of_a_revoked_partition_no_longer_count() -> None:
    book = OffsetBook()
    stale = book.open(REQUEST, 2, 7)
    book.forget({2})
    assert book.committable() == {}
    again = book.open(REQUEST, 2, 7)  # read again after the partition came back
    book.close(stale)  # the old loop finishing late must not release it
    assert book.committable() == {2: 7}
    book.close(again)
    assert book.committable() == {2: 8}


# -- routing -------------------------------------------------------------------------


class Cluster:
    """Just enough cluster metadata for an assignor: every topic has `count` partitions."""

    def __init__(self, count: int) -> None:
        self.count = count

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.count))


@pytest.mark.parametrize(("partitions", "workers"), [(4, 3), (8, 3), (3, 5), (12, 1), (6, 4)])
def test_the_range_assignor_gives_a_worker_the_same_partitions_of_both_topics(
    partitions: int, workers: int
) -> None:
    topics = ["tidings.mailbox.config", "tidings.mail.track"]
    members = {
        f"worker-{n}": ConsumerProtocolMemberMetadata(0, topics, b"") for n in range(workers)
    }
    assignment = RangePartitionAssignor.assign(Cluster(partitions), members)  # type: ignore[arg-type]
    covered: list[int] = []
    for member in members:
        owned = dict(assignment[member].assignment)
        assert owned.get(topics[0], []) == owned.get(topics[1], [])
        covered.extend(owned.get(topics[0], []))
    assert sorted(covered) == list(range(partitions))


def test_connectors_are_idle_only_once_mail_track_is_committed() -> None:
    config = load_config(env={})
    groups = groups_for(config, ["connectors", "processors", "sinks"])
    assert groups[config.connectors.group_id] == [MAIL_TRACK.name(config.topic_prefix)]
    assert config.connectors.group_id not in groups_for(config, ["processors"])
