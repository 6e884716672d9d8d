"""The real pipeline (tansu, chDB, Maildir) on the demo data, checked message by message
against examples/ground-truth.jsonl; run twice to prove nothing is duplicated."""

from __future__ import annotations

from tests.integration.ground_truth import counts, load_ground_truth, mismatches
from tests.workspace import Workspace


def test_demo_matches_ground_truth_and_is_idempotent(workspace: Workspace) -> None:
    expected = load_ground_truth()

    first = workspace.cli("demo")
    assert "Items" in first.stdout and "Decisions by reason" in first.stdout
    assert mismatches(workspace.query, expected) == []
    after_first = counts(workspace.query)
    assert after_first["decided"] == len(expected)
    assert after_first["errored"] == sum(1 for e in expected.values() if e.status == "errored")
    assert after_first["errors"] == after_first["errored"]

    workspace.cli("demo")
    assert counts(workspace.query) == after_first
    assert mismatches(workspace.query, expected) == []


def test_malformed_message_is_an_error_and_the_mailbox_goes_on(workspace: Workspace) -> None:
    workspace.cli("demo")
    errors = workspace.query(
        "SELECT mailbox_id, item_id, code, severity, message FROM tidings.sync_errors FINAL "
        "WHERE code = 'Malformed'"
    )
    malformed = [e for e in load_ground_truth().values() if e.error_code == "Malformed"]
    assert len(errors) == len(malformed)
    assert all(row[3] == "permanent" and "cannot read" in row[4] for row in errors)
    for mailbox in {e.mailbox for e in malformed}:
        decided = workspace.query(
            "SELECT countIf(status != 'errored') FROM tidings.promotion_decisions FINAL "
            f"WHERE mailbox_id = '{mailbox}'"
        )[0][0]
        assert decided == sum(
            1
            for e in load_ground_truth().values()
            if e.mailbox == mailbox and e.status != "errored"
        )
