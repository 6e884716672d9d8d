"""pipeline.reconcile's pure parts (comparing a server listing with what was emitted,
and the sync.errors events for the gaps) and pipeline.mailboxes' IMAP/POP3 mailbox
definitions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.source import ServerListing
from pipeline import reconcile
from pipeline.mailboxes import MailboxDefinitionError, server_mailbox
from pipeline.reconcile import FolderReport, ReconcileReport, compare, gap_errors
from schemas.base import RecordRef
from schemas.errors import ErrorScope, Severity
from schemas.mailbox import (
    Credentials,
    ImapSettings,
    IncomingFilter,
    Pop3Settings,
    Protocol,
)
from schemas.secret import SecretRef
from schemas.topics import MAILBOX_CONFIG, codec

# --- compare -----------------------------------------------------------------------------------


def test_compare_finds_missing_and_stale_per_folder() -> None:
    server = ServerListing({"INBOX": {"7:1", "7:2", "7:3"}, "Sent": {"9:1"}})
    emitted = {"INBOX": {"7:2", "7:3", "7:4"}, "Sent": {"9:1"}}
    report = compare("mb-1", server, emitted)
    assert report.mailbox_id == "mb-1"
    assert report.folders == [
        FolderReport("INBOX", on_server=3, emitted=3, missing=["7:1"], stale=["7:4"]),
        FolderReport("Sent", on_server=1, emitted=1, missing=[], stale=[]),
    ]
    assert not report.clean


def test_compare_covers_folders_present_on_one_side_only() -> None:
    server = ServerListing({"INBOX": {"1:1"}, "Projects": {"3:2", "3:1"}})
    emitted = {"INBOX": {"1:1"}, "Archive": {"5:9"}}
    report = compare("mb-1", server, emitted)
    assert [f.folder for f in report.folders] == ["Archive", "INBOX", "Projects"]
    archive, inbox, projects = report.folders
    assert archive == FolderReport("Archive", on_server=0, emitted=1, missing=[], stale=["5:9"])
    assert inbox == FolderReport("INBOX", on_server=1, emitted=1)
    assert projects == FolderReport(
        "Projects", on_server=2, emitted=0, missing=["3:1", "3:2"], stale=[]
    )
    assert not report.clean


def test_compare_clean_when_both_sides_agree() -> None:
    items = {"INBOX": {"a", "b"}, "Sent": set()}
    report = compare("mb-1", ServerListing(items), {k: set(v) for k, v in items.items()})
    assert report.clean
    assert [(f.folder, f.on_server, f.emitted) for f in report.folders] == [
        ("INBOX", 2, 2),
        ("Sent", 0, 0),
    ]
    empty = compare("mb-1", ServerListing({}), {})
    assert empty.clean and empty.folders == []


def test_compare_lists_gaps_sorted() -> None:
    server = ServerListing({"INBOX": {"c", "a", "b"}})
    report = compare("mb-1", server, {"INBOX": {"z", "y"}})
    assert report.folders[0].missing == ["a", "b", "c"]
    assert report.folders[0].stale == ["y", "z"]


# --- gap_errors --------------------------------------------------------------------------------


def report_with_gaps() -> ReconcileReport:
    return ReconcileReport(
        "mb-1",
        [
            FolderReport("INBOX", on_server=3, emitted=2, missing=["7:1", "7:2"], stale=["7:9"]),
            FolderReport("Sent", on_server=1, emitted=0, missing=["8:1"]),
        ],
    )


def test_one_item_error_per_gap() -> None:
    found = gap_errors(report_with_gaps())
    assert [(e.code, e.folder, e.item_id) for e in found] == [
        ("ReconcileMissing", "INBOX", "7:1"),
        ("ReconcileMissing", "INBOX", "7:2"),
        ("ReconcileStale", "INBOX", "7:9"),
        ("ReconcileMissing", "Sent", "8:1"),
    ]
    for error in found:
        assert error.mailbox_id == "mb-1"
        assert error.scope == ErrorScope.ITEM
        assert error.severity == Severity.PERMANENT
        assert error.component == "reconcile"
        assert error.message.startswith(f"{error.folder}/{error.item_id} ")
        assert "tidings mailbox reconcile" in error.message
    assert "never emitted" in found[0].message
    assert "no longer has it" in found[2].message
    assert len({e.error_id for e in found}) == len(found)


def test_gap_error_ids_are_stable_across_runs() -> None:
    first = [e.error_id for e in gap_errors(report_with_gaps())]
    second = [e.error_id for e in gap_errors(report_with_gaps())]
    assert first == second


def test_the_same_item_id_in_another_folder_or_mailbox_is_another_error() -> None:
    report = ReconcileReport(
        "mb-1",
        [
            FolderReport("INBOX", missing=["1:1"]),
            FolderReport("Sent", missing=["1:1"], stale=[]),
            FolderReport("Trash", stale=["1:1"]),
        ],
    )
    ids = [e.error_id for e in gap_errors(report)]
    other_mailbox = gap_errors(ReconcileReport("mb-2", [FolderReport("INBOX", missing=["1:1"])]))
    assert len(set(ids)) == 3
    assert other_mailbox[0].error_id not in ids


def test_a_clean_report_has_no_errors() -> None:
    assert gap_errors(ReconcileReport("mb-1", [FolderReport("INBOX", 3, 3)])) == []
    assert gap_errors(ReconcileReport("mb-1")) == []


def test_gap_errors_are_bounded_with_one_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "MAX_ITEM_ERRORS", 3)
    report = ReconcileReport(
        "mb-1",
        [
            FolderReport("INBOX", missing=["a", "b"], stale=["c"]),
            FolderReport("Sent", missing=["d", "e"]),
        ],
    )
    found = gap_errors(report)
    assert len(found) == 4
    assert [e.item_id for e in found[:3]] == ["a", "b", "c"]
    assert all(e.scope == ErrorScope.ITEM for e in found[:3])
    summary = found[3]
    assert summary.code == "ReconcileTruncated"
    assert summary.scope == ErrorScope.MAILBOX
    assert summary.mailbox_id == "mb-1"
    assert summary.item_id is None and summary.folder is None
    assert summary.message.startswith("2 more gaps")


def test_exactly_the_bound_needs_no_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "MAX_ITEM_ERRORS", 3)
    report = ReconcileReport("mb-1", [FolderReport("INBOX", missing=["a", "b"], stale=["c"])])
    found = gap_errors(report)
    assert [e.code for e in found] == ["ReconcileMissing", "ReconcileMissing", "ReconcileStale"]


# --- server_mailbox ----------------------------------------------------------------------------

SECRET = SecretRef(env="BOB_IMAP_PASSWORD")


def test_imap_mailbox() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    config = server_mailbox(
        "mb-bob",
        "user:bob",
        "imap",
        "corp",
        "bob",
        SECRET,
        email="Bob@NW.example",
        folders=["Projects"],
        process_email_from=since,
    )
    assert config.protocol == Protocol.IMAP
    assert config.owner == RecordRef("user", "bob")
    assert config.email_address == "bob@nw.example"
    assert config.server_profile == "corp"
    assert config.credentials == Credentials(username="bob", password=SECRET)
    assert config.imap == ImapSettings(folders=["Projects"])
    assert config.pop3 is None and config.maildir is None
    assert config.process_email_from == since
    assert config.incoming_filter == IncomingFilter.RESPONSES
    assert config.updated_at is not None


def test_username_defaults_to_the_address() -> None:
    config = server_mailbox("mb-bob", "user:bob", "imap", "corp", None, SECRET)
    assert config.email_address == "bob@localhost"
    assert config.credentials is not None and config.credentials.username == "bob@localhost"
    assert config.imap == ImapSettings()
    with_email = server_mailbox(
        "mb-q", "queue:support", "pop3", "corp", None, SECRET, email="Support@NW.example"
    )
    assert with_email.credentials is not None
    assert with_email.credentials.username == "support@nw.example"


@pytest.mark.parametrize("leave", [True, False])
def test_pop3_mailbox_leave_on_server(leave: bool) -> None:
    config = server_mailbox(
        "mb-q", "queue:support", "pop3", "corp", "support", SECRET, leave_on_server=leave
    )
    assert config.protocol == Protocol.POP3
    assert config.pop3 == Pop3Settings(leave_on_server=leave)
    assert config.imap is None


def test_pop3_with_folders_is_rejected() -> None:
    with pytest.raises(MailboxDefinitionError, match="POP3"):
        server_mailbox("mb-q", "queue:support", "pop3", "corp", None, SECRET, folders=["Sent"])


@pytest.mark.parametrize(
    ("owner", "protocol", "incoming_filter", "words"),
    [
        ("user:bob", "maildir", "responses", "not a mail-server protocol"),
        ("bob", "imap", "responses", "--owner"),
        ("contact:c-1", "imap", "responses", "user or a queue"),
        ("user:bob", "imap", "everything", "--filter"),
    ],
)
def test_bad_definitions_say_what_to_fix(
    owner: str, protocol: str, incoming_filter: str, words: str
) -> None:
    with pytest.raises(MailboxDefinitionError, match=words):
        server_mailbox(
            "mb-x", owner, protocol, "corp", None, SECRET, incoming_filter=incoming_filter
        )


def test_the_password_is_a_reference_never_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOB_IMAP_PASSWORD", "hunter2-very-secret")
    config = server_mailbox("mb-bob", "user:bob", "imap", "corp", "bob", SECRET)
    assert config.credentials is not None
    assert isinstance(config.credentials.password, SecretRef)
    value_codec = codec(MAILBOX_CONFIG)
    data = value_codec.encode(config)
    assert b"hunter2" not in data
    assert b"BOB_IMAP_PASSWORD" in data
    decoded = value_codec.decode(data)
    assert decoded.credentials is not None
    assert decoded.credentials.password == SECRET
    assert decoded.credentials.password.resolve() == "hunter2-very-secret"


def test_a_mailbox_without_password_reference() -> None:
    config = server_mailbox("mb-bob", "user:bob", "imap", "corp", "bob", None)
    assert config.credentials == Credentials(username="bob", password=None)
