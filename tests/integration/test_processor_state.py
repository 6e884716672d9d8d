"""Processor state survives restarts: the tracked table and the activity index are on
disk (RocksDB) in the worker's state directory, and a restarted worker correlates
new replies against what it decided before. Without its state directory a worker
rebuilds the same state from the changelog and crm.activities.

Runs the real pipeline (`tidings run all --until-idle`) on the embedded broker's
durable storage, three times over one data directory."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from shutil import rmtree

from processors.conversation_index import new_conversation_index, thread_index_header
from processors.directory import ActivityIndex
from processors.index_store import IndexStore
from tests.integration.test_cli import run_until_idle, write_message
from tests.workspace import Workspace

SENT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
PARENT_ID = "parent-1@contoso.example"
PARENT_INDEX = new_conversation_index(SENT)
DATE = "Mon, 02 Mar 2026 10:00:00 +0000"


def maildir(root: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def add_mailboxes(workspace: Workspace, root: Path) -> tuple[Path, Path]:
    """Alice's mailbox takes all mail; Bob's only responses to tracked mail."""
    alice, bob = maildir(root / "alice"), maildir(root / "bob")
    for mailbox_id, path, filter_, owner in (
        ("mb-alice", alice, "all", "alice"),
        ("mb-bob", bob, "responses", "bob"),
    ):
        workspace.cli(
            "mailbox", "add", "--id", mailbox_id, "--path", str(path), "--owner",
            f"user:{owner}", "--filter", filter_, "--email", f"{owner}@northwind.example",
        )  # fmt: skip
    return alice, bob


def decision(
    workspace: Workspace, message_id: str, mailbox_id: str = "mb-bob"
) -> tuple[str, str, str]:
    """(status, reason, correlation method) of the one decision about `message_id` in
    `mailbox_id`."""
    rows = workspace.query(
        "SELECT status, reason, correlation_method FROM tidings.promotion_decisions FINAL "
        f"WHERE message_id = '{message_id}' AND mailbox_id = '{mailbox_id}'"
    )
    assert len(rows) == 1, (message_id, rows, workspace.logs())
    status, reason, method = rows[0]
    return str(status), str(reason), str(method)


def parent_activity(workspace: Workspace, message_id: str) -> str | None:
    rows = workspace.query(
        f"SELECT parent_activity_id FROM tidings.activities FINAL WHERE message_id = '{message_id}'"
    )
    assert len(rows) == 1, (message_id, rows)
    return rows[0][0]


def reply(path: Path, name: str, message_id: str, extra: dict[str, str]) -> None:
    write_message(
        path,
        name,
        {
            "From": "Dana Whit <dana@contoso.example>",
            "To": "Bob <bob@northwind.example>",
            "Subject": "RE: Renewal terms",
            "Date": DATE,
            "Message-ID": f"<{message_id}>",
            **extra,
        },
        sub="new",
    )


def test_restarted_processors_correlate_against_the_state_they_kept(
    workspace: Workspace, tmp_path: Path
) -> None:
    workspace.cli("broker", "start")
    alice, bob = add_mailboxes(workspace, tmp_path)
    write_message(
        alice,
        "1772445600.M1.parent",
        {
            "From": "Dana Whit <dana@contoso.example>",
            "To": "Alice <alice@northwind.example>",
            "Subject": "Renewal terms",
            "Date": DATE,
            "Message-ID": f"<{PARENT_ID}>",
            "Thread-Index": thread_index_header(PARENT_INDEX),
        },
    )
    run_until_idle(workspace, tmp_path / "run-1.log")
    assert decision(workspace, PARENT_ID, "mb-alice") == ("promoted", "AcceptAll", "None")

    # The worker's state is on disk, and the activity index knows where it stopped.
    state = workspace.data_dir / "processors" / "default"
    assert any(state.rglob("tracked-*.db")), sorted(state.rglob("*"))
    assert any(state.rglob("tracked-items-*.db")), sorted(state.rglob("*"))
    store = IndexStore(state / "activity-index")
    try:
        index = ActivityIndex(store=store)
        found = index.by_message_id(PARENT_ID)
        assert found is not None and found.conversation_index == PARENT_INDEX.key
        assert len(index) == 1
        assert store.offsets("tidings.crm.activities"), "no offsets saved"
    finally:
        store.close()

    # After a restart: one reply by In-Reply-To (the tracked table), one by its
    # Thread-Index alone (the activity index), into the `responses` mailbox, and
    # Bob's copy of the parent, a duplicate of the activity Alice's copy made.
    write_message(
        bob,
        "1772445699.M1.parent-copy",
        {
            "From": "Dana Whit <dana@contoso.example>",
            "To": "Alice <alice@northwind.example>, Bob <bob@northwind.example>",
            "Subject": "Renewal terms",
            "Date": DATE,
            "Message-ID": f"<{PARENT_ID}>",
        },
    )
    reply(
        bob, "1772445700.M2.by-header", "reply-1@contoso.example", {"In-Reply-To": f"<{PARENT_ID}>"}
    )
    reply(
        bob,
        "1772445701.M3.by-index",
        "reply-2@contoso.example",
        {"Thread-Index": thread_index_header(PARENT_INDEX.child(1))},
    )
    run_until_idle(workspace, tmp_path / "run-2.log")
    parent = email_activity(workspace, PARENT_ID)
    assert decision(workspace, "reply-1@contoso.example") == (
        "promoted",
        "CorrelationMatch",
        "InReplyTo",
    )
    assert decision(workspace, "reply-2@contoso.example") == (
        "promoted",
        "CorrelationMatch",
        "ConversationIndex",
    )
    assert parent_activity(workspace, "reply-1@contoso.example") == parent
    assert parent_activity(workspace, "reply-2@contoso.example") == parent
    assert decision(workspace, PARENT_ID)[:2] == ("promoted", "Duplicate")
    assert receiving_mailboxes(workspace, PARENT_ID) == ["mb-alice", "mb-bob"]

    # Without its state directory, the worker rebuilds it from the topics.
    rmtree(state)
    reply(bob, "1772445800.M4.rebuilt", "reply-3@contoso.example", {"References": f"<{PARENT_ID}>"})
    run_until_idle(workspace, tmp_path / "run-3.log")
    assert decision(workspace, "reply-3@contoso.example") == (
        "promoted",
        "CorrelationMatch",
        "InReplyTo",
    )
    assert parent_activity(workspace, "reply-3@contoso.example") == parent
    assert decision(workspace, PARENT_ID, "mb-alice") == ("promoted", "AcceptAll", "None")


def receiving_mailboxes(workspace: Workspace, message_id: str) -> list[str]:
    rows = workspace.query(
        "SELECT receiving_mailboxes FROM tidings.activities FINAL "
        f"WHERE message_id = '{message_id}'"
    )
    assert len(rows) == 1, (message_id, rows)
    return sorted(rows[0][0])


def email_activity(workspace: Workspace, message_id: str) -> str:
    rows = workspace.query(
        f"SELECT activity_id FROM tidings.activities FINAL WHERE message_id = '{message_id}'"
    )
    assert len(rows) == 1, (message_id, rows)
    return str(rows[0][0])
