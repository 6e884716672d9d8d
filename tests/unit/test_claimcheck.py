"""Claim-check: inline versus blob, header block and preview, event size, the
directory store, and the Maildir connector emitting claim-checked events."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import cast

import pytest

from connectors.claimcheck import ClaimCheck, MessagePayload, header_block, text_preview
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.maildir_sync import MaildirMailbox
from connectors.source import SourceWiring
from schemas import metrics
from schemas.base import RecordRef
from schemas.blobs import (
    BlobNotFoundError,
    DirectoryBlobStore,
    blob_ref,
    open_blob_store,
)
from schemas.config import BlobStoreConfig, ConnectorConfig
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    CursorPosition,
    FolderRole,
    MailboxConfig,
    MaildirSettings,
    Protocol,
)
from schemas.topics import MAIL_CHANGES, codec
from tests.unit.helpers import T0

SMALL = b"From: dana@contoso.example\r\nTo: alice@nw.example\r\nSubject: hi\r\n\r\nshort body\r\n"


def claim_check(tmp_path: Path, claim_check_bytes: int = 512 * 1024) -> ClaimCheck:
    settings = ConnectorConfig(claim_check_bytes=claim_check_bytes)
    return ClaimCheck(DirectoryBlobStore(tmp_path / "blobs"), settings)


def big_message(size: int, *, text: str = "Please find the scans attached.\n") -> bytes:
    """A multipart message of about `size` bytes: a text part and a binary attachment."""
    msg = EmailMessage()
    msg["From"] = "Dana <dana@contoso.example>"
    msg["To"] = "alice@nw.example"
    msg["Subject"] = "Scans"
    msg["Message-ID"] = "<scans-1@contoso.example>"
    msg.set_content(text)
    blob = hashlib.sha256(b"seed").digest() * (size * 3 // 4 // 32 + 1)
    msg.add_attachment(blob, maintype="application", subtype="pdf", filename="scans.pdf")
    return msg.as_bytes()


# -- ClaimCheck ------------------------------------------------------------------


async def test_small_message_travels_inline_and_stores_nothing(tmp_path: Path) -> None:
    check = claim_check(tmp_path)
    payload = await check.payload(SMALL, "maildir")
    assert payload == MessagePayload(raw=SMALL)
    assert not (tmp_path / "blobs").exists()


async def test_large_message_is_stored_and_the_event_carries_ref_headers_preview(
    tmp_path: Path,
) -> None:
    check = claim_check(tmp_path, claim_check_bytes=64 * 1024)
    raw = big_message(200 * 1024, text="Hello Alice, the scans are attached.\n")
    before = metrics.CONNECTOR_CLAIM_CHECKS.labels("maildir")._value.get()

    payload = await check.payload(raw, "maildir")

    assert payload.raw is None
    assert payload.blob_ref == blob_ref(raw)
    assert DirectoryBlobStore(tmp_path / "blobs").get(payload.blob_ref) == raw
    assert payload.headers is not None
    assert payload.headers.startswith(b"From: Dana <dana@contoso.example>")
    assert payload.headers.endswith(b"\n\n")
    assert b"scans.pdf" not in payload.headers  # only the top-level header block
    assert payload.preview == "Hello Alice, the scans are attached.\n"
    assert metrics.CONNECTOR_CLAIM_CHECKS.labels("maildir")._value.get() == before + 1


def test_inline_limit_is_the_smaller_of_setting_and_event_budget(tmp_path: Path) -> None:
    assert claim_check(tmp_path).fits_inline(512 * 1024)
    assert not claim_check(tmp_path).fits_inline(512 * 1024 + 1)
    # claim_check_bytes above what fits in max_event_bytes (base64!) is capped.
    generous = claim_check(tmp_path, claim_check_bytes=10_000_000)
    assert generous.fits_inline(700_000)
    assert not generous.fits_inline(800_000)


async def test_encoded_event_of_a_5_mib_message_stays_under_max_event_bytes(
    tmp_path: Path,
) -> None:
    settings = ConnectorConfig()
    check = claim_check(tmp_path)
    raw = big_message(5 * 1024 * 1024)
    assert len(raw) > 5 * 1024 * 1024
    # Also a pathological one: a header block of several MiB.
    received = b"".join(
        b"Received: from relay%d.example by mx.example; Mon, 2 Mar 2026 09:00:00 +0000\r\n" % i
        for i in range(70_000)
    )
    huge_headers = received + SMALL

    for message in (raw, huge_headers):
        payload = await check.payload(message, "maildir")
        event = MailItemChanged(
            event_id="e" * 64,
            mailbox_id="mb-alice",
            folder="INBOX",
            item_id="1700000001.M1P1.host",
            change=ChangeKind.CREATED,
            observed_at=T0,
            server_time=T0,
            size=len(message),
            flags=["S"],
            folder_role=FolderRole.INBOX,
            raw=payload.raw,
            blob_ref=payload.blob_ref,
            headers=payload.headers,
            preview=payload.preview,
        )
        encoded = codec(MAIL_CHANGES).encode(event)
        assert payload.blob_ref is not None
        assert len(encoded) < settings.max_event_bytes
        decoded = codec(MAIL_CHANGES).decode(encoded)
        assert decoded.blob_ref == payload.blob_ref
        assert decoded.headers == payload.headers


# -- header_block and text_preview -----------------------------------------------


def test_header_block_ends_at_the_first_blank_line() -> None:
    assert header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore") == b"A: 1\r\nB: 2\r\n\r\n"
    assert header_block(b"A: 1\nB: 2\n\nbody\n\nmore") == b"A: 1\nB: 2\n\n"
    # mixed endings: whichever blank line comes first
    assert header_block(b"A: 1\n\nbody\r\n\r\n") == b"A: 1\n\n"
    assert header_block(b"A: 1\r\nno body at all") == b"A: 1\r\nno body at all"


def test_preview_of_multipart_is_its_first_text_part_decoded() -> None:
    msg = EmailMessage()
    msg["From"] = "a@example.net"
    msg.set_content("Grüße aus Köln — the plain part\n", charset="utf-8", cte="base64")
    msg.add_alternative("<p>the html part</p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4" * 100, maintype="application", subtype="pdf", filename="a.pdf")
    raw = msg.as_bytes()
    assert "Grüße".encode() not in raw  # the text travels base64-encoded

    assert text_preview(raw, 100) == "Grüße aus Köln — the plain part\n"
    assert text_preview(raw, 5) == "Grüße"


def test_preview_of_garbage_bytes_never_raises_and_is_bounded() -> None:
    garbage = bytes(range(256)) * 50
    preview = text_preview(garbage, 40)
    assert isinstance(preview, str)
    assert len(preview) <= 40
    assert text_preview(b"", 10) == ""
    # a message without a text/plain part: the raw body start
    html_only = b"Content-Type: text/html\r\n\r\n<p>hi</p>"
    assert text_preview(html_only, 100) == "<p>hi</p>"


def test_preview_with_unknown_charset_falls_back_to_utf8() -> None:
    raw = (
        b"From: a@example.net\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
        b"caf\xc3\xa9 ok \xff\r\n"
    )
    assert text_preview(raw, 100) == "café ok \ufffd\r\n"


# -- the directory store -----------------------------------------------------------


def test_directory_store_put_is_idempotent(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path / "blobs")
    ref = store.put(b"message")
    digest = hashlib.sha256(b"message").hexdigest()
    path = tmp_path / "blobs" / digest[:2] / digest
    mtime = path.stat().st_mtime_ns

    assert ref == f"blob:sha256:{digest}"
    assert store.put(b"message") == ref
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == [digest]
    assert store.get(ref) == b"message"


def test_directory_store_missing_blob(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path / "blobs")
    with pytest.raises(BlobNotFoundError, match="missing"):
        store.get(blob_ref(b"never stored"))


@pytest.mark.parametrize(
    "ref",
    [
        "sha256:" + "a" * 64,
        "blob:sha256:" + "a" * 63,
        "blob:sha256:" + "A" * 64,
        "blob:sha256:../../etc/passwd" + "a" * 48,
        "blob:md5:" + "a" * 32,
    ],
)
def test_malformed_refs_are_not_found(tmp_path: Path, ref: str) -> None:
    store = DirectoryBlobStore(tmp_path / "blobs")
    with pytest.raises(BlobNotFoundError):
        store.get(ref)


def test_open_blob_store_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_blob_store((tmp_path / "my blobs").as_uri())
    assert isinstance(store, DirectoryBlobStore)
    assert store.root == tmp_path / "my blobs"
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        open_blob_store("gs://bucket/prefix")
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if boto3 were not installed
    with pytest.raises(ImportError, match=r"tidings\[s3\]"):
        open_blob_store("s3://bucket/prefix", BlobStoreConfig(endpoint="http://127.0.0.1:1"))


# -- the Maildir connector -----------------------------------------------------------


class FakeEmitter:
    def __init__(self) -> None:
        self.events: list[MailItemChanged] = []

    async def emit_changes(self, events: Sequence[MailItemChanged], protocol: str) -> None:
        self.events.extend(events)


class FakeCursorStore:
    def __init__(self) -> None:
        self.saved: list[tuple[str, str]] = []

    async def save(
        self,
        mailbox_id: str,
        folder: str,
        position: CursorPosition,
        partition: int,
        now: datetime,
    ) -> None:
        self.saved.append((mailbox_id, folder))


def maildir_with(root: Path, messages: dict[str, tuple[str, bytes]]) -> None:
    for folder in ("", ".Sent"):
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    for name, (folder, data) in messages.items():
        base = root if folder == "INBOX" else root / f".{folder}"
        (base / "cur" / f"{name}:2,S").write_bytes(data)


async def sync(
    tmp_path: Path, messages: dict[str, tuple[str, bytes]], max_message_bytes: int
) -> dict[str, MailItemChanged]:
    root = tmp_path / "Maildir"
    maildir_with(root, messages)
    config = MailboxConfig(
        mailbox_id="mb-alice",
        owner=RecordRef.parse("user:alice"),
        email_address="alice@nw.example",
        protocol=Protocol.MAILDIR,
        maildir=MaildirSettings(path=str(root)),
    )
    emitter = FakeEmitter()
    wiring = SourceWiring(
        config=config,
        profile=None,
        partition=0,
        cursors={},
        emitter=cast(Emitter, emitter),
        store=cast(CursorStore, FakeCursorStore()),
        gate=None,
        claim_check=claim_check(tmp_path, claim_check_bytes=64 * 1024),
        max_batch_items=ConnectorConfig().max_batch_items,
    )
    mailbox = MaildirMailbox(wiring, max_message_bytes=max_message_bytes)
    result = await mailbox.sync_pass()
    assert result.created == len(messages)
    return {event.item_id: event for event in emitter.events}


async def test_maildir_claim_checks_large_messages_and_refuses_huge_ones(
    tmp_path: Path,
) -> None:
    large = big_message(200 * 1024)
    huge = big_message(600 * 1024)
    events = await sync(
        tmp_path,
        {"1.small": ("INBOX", SMALL), "2.large": ("Sent", large), "3.huge": ("INBOX", huge)},
        max_message_bytes=512 * 1024,
    )

    small = events["1.small"]
    assert (small.raw, small.blob_ref, small.unreadable_code) == (SMALL, None, None)
    assert small.folder_role == FolderRole.INBOX

    claimed = events["2.large"]
    assert claimed.raw is None
    assert claimed.blob_ref == blob_ref(large)
    assert DirectoryBlobStore(tmp_path / "blobs").get(claimed.blob_ref) == large
    assert claimed.headers == header_block(large)
    assert claimed.preview == "Please find the scans attached.\n"
    assert claimed.size == len(large)
    assert claimed.folder_role == FolderRole.SENT
    assert len(codec(MAIL_CHANGES).encode(claimed)) < ConnectorConfig().max_event_bytes

    refused = events["3.huge"]
    assert refused.raw is None and refused.blob_ref is None
    assert refused.unreadable_code == "TooLarge"
    assert refused.unreadable_reason is not None
    assert str(len(huge)) in refused.unreadable_reason
    assert "\n" not in refused.unreadable_reason
    assert refused.size == len(huge)
    # the refused message was never stored
    stored = {p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()}
    assert stored == {hashlib.sha256(large).hexdigest()}
