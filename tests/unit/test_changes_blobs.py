"""processors.changes with claim-checked events: parsed from the blob, from headers
and preview when the blob is unavailable, flags-only updates, folder roles."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest

from connectors.claimcheck import header_block, text_preview
from processors.changes import (
    PREVIEW_DEFECT,
    BlobUnavailable,
    StageOutput,
    handle_change,
    needs_blob,
    read_blob,
)
from schemas.blobs import BlobStoreError, DirectoryBlobStore, blob_ref
from schemas.config import ProcessingConfig
from schemas.crm import DecisionStatus, ReasonCode
from schemas.errors import ErrorScope, Severity
from schemas.mail import AutoReplyKind, ChangeKind, EmailAddress, ItemType, MailItemChanged
from schemas.mailbox import FolderRole
from tests.unit.helpers import MAILBOXES, T0

SETTINGS = ProcessingConfig()
ALICE = MAILBOXES[0]  # mb-alice: INBOX is inbox, "Sent" is sent


def large_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Dana <dana@contoso.example>"
    msg["To"] = "Alice <alice@nw.example>"
    msg["Cc"] = "info@contoso.example"
    msg["Subject"] = "RE: Quote CRM:0001001"
    msg["Message-ID"] = "<big-1@Contoso.Example>"
    msg["In-Reply-To"] = "<crm-1@nw.example>"
    msg["References"] = "<crm-1@nw.example>"
    msg["Date"] = "Mon, 02 Mar 2026 09:00:00 +0000"
    msg.set_content("Hello Alice,\n\nthe signed quote is attached.\n\nDana\n")
    msg.add_attachment(b"%PDF" * 200_000, maintype="application", subtype="pdf", filename="q.pdf")
    return msg.as_bytes()


RAW = large_message()


def claimed(**fields: object) -> MailItemChanged:
    """A created event whose message went to the claim-check store."""
    values: dict[str, object] = {
        "event_id": "ev-big-1",
        "mailbox_id": "mb-alice",
        "folder": "INBOX",
        "item_id": "1700000001.M1P1.host",
        "change": ChangeKind.CREATED,
        "observed_at": T0,
        "size": len(RAW),
        "blob_ref": blob_ref(RAW),
        "headers": header_block(RAW),
        "preview": text_preview(RAW, 20),
    }
    values.update(fields)
    return MailItemChanged(**values)  # type: ignore[arg-type]


def flags_update(**fields: object) -> MailItemChanged:
    values: dict[str, object] = {
        "event_id": "ev-flags-1",
        "mailbox_id": "mb-alice",
        "folder": "INBOX",
        "item_id": "42",
        "change": ChangeKind.UPDATED,
        "observed_at": T0,
        "flags": ["\\Seen", "\\Flagged"],
    }
    values.update(fields)
    return MailItemChanged(**values)  # type: ignore[arg-type]


# -- parsed from the blob -------------------------------------------------------------


def test_blob_backed_event_is_parsed_from_the_blob(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path / "blobs")
    store.put(RAW)
    event = claimed()
    assert needs_blob(event)
    content = read_blob(event.blob_ref or "", store.get)
    assert content == RAW

    out = handle_change(event, ALICE, SETTINGS, T0, content)

    assert out.decision is None and out.error is None
    parsed = out.parsed
    assert parsed is not None
    assert parsed.message_id == "big-1@contoso.example"
    assert parsed.in_reply_to == "crm-1@nw.example"
    assert parsed.sender == EmailAddress("dana@contoso.example", "Dana")
    assert parsed.body_text == "Hello Alice,\n\nthe signed quote is attached.\n\nDana"
    assert not parsed.body_truncated
    assert [a.filename for a in parsed.attachments] == ["q.pdf"]
    assert parsed.size == len(RAW)
    assert PREVIEW_DEFECT not in parsed.defects
    # pure: the same input twice gives the same output
    assert handle_change(event, ALICE, SETTINGS, T0, content) == out


# -- blob unavailable -----------------------------------------------------------------


def test_missing_blob_falls_back_to_headers_and_preview_with_a_transient_error(
    tmp_path: Path,
) -> None:
    store = DirectoryBlobStore(tmp_path / "blobs")  # empty: the blob is gone
    event = claimed()
    missing = read_blob(event.blob_ref or "", store.get)
    assert isinstance(missing, BlobUnavailable)
    assert "missing" in missing.reason

    out = handle_change(event, ALICE, SETTINGS, T0, missing)

    assert out.decision is None  # never dropped: the email goes on to be decided
    parsed = out.parsed
    assert parsed is not None
    assert parsed.message_id == "big-1@contoso.example"
    assert parsed.in_reply_to == "crm-1@nw.example"
    assert parsed.references == ["crm-1@nw.example"]
    assert parsed.thread_key == "crm-1@nw.example"
    assert parsed.subject == "RE: Quote CRM:0001001"
    assert parsed.sender == EmailAddress("dana@contoso.example", "Dana")
    assert parsed.to == [EmailAddress("alice@nw.example", "Alice")]
    assert parsed.cc == [EmailAddress("info@contoso.example")]
    assert parsed.sent_at is not None and parsed.sent_at.isoformat() == "2026-03-02T09:00:00+00:00"
    assert parsed.body_text == "Hello Alice,\n\nthe si"
    assert parsed.body_truncated
    assert parsed.size == len(RAW)
    assert parsed.folder_role == FolderRole.INBOX
    assert PREVIEW_DEFECT in parsed.defects
    assert not any("Boundary" in d for d in parsed.defects)  # no body here by design

    error = out.error
    assert error is not None
    assert error.code == "BlobUnavailable"
    assert error.severity == Severity.TRANSIENT
    assert error.scope == ErrorScope.ITEM
    assert (error.mailbox_id, error.folder, error.item_id, error.event_id) == (
        "mb-alice",
        "INBOX",
        "1700000001.M1P1.host",
        "ev-big-1",
    )
    assert "missing" in error.message
    assert handle_change(event, ALICE, SETTINGS, T0, missing) == out  # stable error id


def test_store_failure_is_unavailable_too_and_no_loader_means_unavailable() -> None:
    def failing(ref: str) -> bytes:
        raise BlobStoreError("s3://claims/x: get failed: ConnectTimeoutError")

    failed = read_blob(blob_ref(RAW), failing)
    assert failed == BlobUnavailable("s3://claims/x: get failed: ConnectTimeoutError")
    out = handle_change(claimed(), ALICE, SETTINGS, T0, failed)
    assert out.parsed is not None and out.error is not None
    assert "ConnectTimeoutError" in out.error.message

    no_store = handle_change(claimed(), ALICE, SETTINGS, T0)
    assert no_store.parsed is not None
    assert no_store.error is not None and no_store.error.code == "BlobUnavailable"


def test_auto_reply_is_still_recognized_from_the_headers_alone() -> None:
    headers = b"From: bot@contoso.example\r\nAuto-Submitted: auto-replied\r\nSubject: away\r\n\r\n"
    out = handle_change(
        claimed(headers=headers, preview="I am away"),
        ALICE,
        SETTINGS,
        T0,
        BlobUnavailable("gone"),
    )
    assert out.parsed is not None
    assert out.parsed.auto_reply == AutoReplyKind.AUTO_REPLY
    assert out.parsed.message_id.startswith("synthetic-")
    assert out.parsed.body_text == "I am away"


def test_unavailable_blob_without_headers_is_an_errored_decision() -> None:
    out = handle_change(claimed(headers=None), ALICE, SETTINGS, T0, BlobUnavailable("gone"))
    assert out.parsed is None
    assert out.decision is not None
    assert out.decision.status == DecisionStatus.ERRORED
    assert out.decision.reason == ReasonCode.UNREADABLE
    assert out.error is not None
    assert out.error.code == "BlobUnavailable"
    assert out.error.severity == Severity.TRANSIENT
    assert "gone" in out.error.message


def test_unreadable_code_wins_over_the_blob() -> None:
    event = claimed(blob_ref=None, headers=None, preview=None, unreadable_code="TooLarge")
    assert not needs_blob(event)
    out = handle_change(event, ALICE, SETTINGS, T0)
    assert out.decision is not None and out.decision.status == DecisionStatus.ERRORED
    assert out.error is not None
    assert (out.error.code, out.error.severity) == ("TooLarge", Severity.PERMANENT)


# -- flags-only updates -----------------------------------------------------------------


def test_flags_only_update_emits_nothing() -> None:
    event = flags_update()
    assert not needs_blob(event)
    out = handle_change(event, ALICE, SETTINGS, T0)
    assert out == StageOutput()
    assert out.empty
    assert handle_change(event, None, SETTINGS, T0).empty


def test_update_with_content_is_still_parsed() -> None:
    raw = b"From: dana@contoso.example\r\nTo: alice@nw.example\r\nSubject: edited\r\n\r\nx\r\n"
    out = handle_change(flags_update(raw=raw), ALICE, SETTINGS, T0)
    assert not out.empty
    assert out.parsed is not None and out.parsed.subject == "edited"


def test_deleted_and_non_email_events_still_end_with_a_decision() -> None:
    deleted = handle_change(flags_update(change=ChangeKind.DELETED), ALICE, SETTINGS, T0)
    assert deleted.decision is not None and deleted.decision.status == DecisionStatus.REMOVED
    task = handle_change(flags_update(item_type=ItemType.TASK), ALICE, SETTINGS, T0)
    assert task.decision is not None and task.decision.reason == ReasonCode.UNSUPPORTED_ITEM


# -- folder roles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "event_role", "expected"),
    [
        ("Sent", None, FolderRole.SENT),  # the mailbox decides
        ("INBOX", None, FolderRole.INBOX),
        ("Gesendete Objekte", None, FolderRole.OTHER),
        ("Gesendete Objekte", FolderRole.SENT, FolderRole.SENT),  # the server knows better
        ("INBOX", FolderRole.OTHER, FolderRole.OTHER),
    ],
)
def test_event_folder_role_wins_over_the_mailbox(
    folder: str, event_role: FolderRole | None, expected: FolderRole
) -> None:
    raw = b"From: alice@nw.example\r\nTo: dana@contoso.example\r\nSubject: s\r\n\r\nbody\r\n"
    event = claimed(folder=folder, folder_role=event_role, raw=raw, blob_ref=None)
    out = handle_change(event, ALICE, SETTINGS, T0)
    assert out.parsed is not None
    assert out.parsed.folder_role == expected


def test_event_folder_role_also_applies_to_the_preview_fallback() -> None:
    out = handle_change(
        claimed(folder="Archive", folder_role=FolderRole.SENT),
        ALICE,
        SETTINGS,
        T0,
        BlobUnavailable("gone"),
    )
    assert out.parsed is not None
    assert out.parsed.folder_role == FolderRole.SENT
