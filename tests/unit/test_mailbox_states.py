"""Mailbox states, ownership and the status table: the pure rules behind `tidings mailbox
approve|enable|disable|remap|test`, `tidings profile` and `tidings status`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path

import pytest

from connectors.profiles_view import apply_record, replace_in_place
from pipeline.mailbox_check import probe_message
from pipeline.mailboxes import (
    DISABLED_BY_ADMIN,
    MAILBOX_REMAPPED,
    MailboxStateError,
    approve,
    check_add,
    disable,
    disabled_reason,
    enable,
    mailbox_state,
    maildir_mailbox,
    record_test,
    remap,
)
from pipeline.profiles import ProfileSource, effective_profiles
from pipeline.status import StatusSnapshot, relative, render, status_rows
from schemas.errors import Severity
from schemas.mailbox import (
    MailboxConfig,
    MailboxCounters,
    MailboxDisabled,
    MailboxStatus,
    MailboxTest,
    Protocol,
    RunStatus,
    ServerProfile,
    StepResult,
    SyncState,
    merged_profiles,
)

NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


def box(mailbox_id: str = "mb-ann", owner: str = "user:ann", **changes: object) -> MailboxConfig:
    config = maildir_mailbox(mailbox_id, owner, Path("/tmp/maildir"))
    return _with(config, updated_at=NOW, **changes)


def _with(config: MailboxConfig, **changes: object) -> MailboxConfig:
    import msgspec

    return msgspec.structs.replace(config, **changes)


def passed_test(at: datetime = NOW) -> MailboxTest:
    return MailboxTest(tested_at=at, incoming=StepResult(status=RunStatus.SUCCESS, reason="ok"))


def status(state: SyncState, at: datetime = NOW, **changes: object) -> MailboxStatus:
    values: dict[str, object] = {"mailbox_id": "mb-ann", "state": state, "updated_at": at}
    values.update(changes)
    return MailboxStatus(**values)  # type: ignore[arg-type]


# -- states -------------------------------------------------------------------------


def test_states_follow_dynamics_order() -> None:
    pending = box(approved=False, enabled=False)
    assert mailbox_state(pending) == SyncState.PENDING_APPROVAL
    approved = approve(pending, NOW)
    assert mailbox_state(approved) == SyncState.APPROVED
    tested = record_test(approved, passed_test(), NOW)
    assert mailbox_state(tested) == SyncState.TESTED
    assert mailbox_state(enable(tested, NOW)) == SyncState.ENABLED


def test_a_failed_test_leaves_the_mailbox_approved() -> None:
    failed = MailboxTest(
        tested_at=NOW,
        incoming=StepResult(status=RunStatus.SUCCESS, reason="opened INBOX (2)"),
        outgoing=StepResult(status=RunStatus.FAILURE, reason="535 refused"),
    )
    config = record_test(box(enabled=False), failed, NOW)
    assert not failed.passed and failed.reason == "outgoing: 535 refused"
    assert mailbox_state(config) == SyncState.APPROVED


def test_enable_needs_approval_and_clears_a_disable() -> None:
    with pytest.raises(MailboxStateError, match="approve it first"):
        enable(box(approved=False, enabled=False), NOW)
    off = disable(box(), "  moving   offices ", "admin", NOW)
    assert not off.enabled and off.disabled is not None
    assert off.disabled.code == DISABLED_BY_ADMIN and off.disabled.reason == "moving offices"
    assert disabled_reason(off) == f"{DISABLED_BY_ADMIN}: moving offices (by admin)"
    on = enable(off, NOW)
    assert on.enabled and on.disabled is None and mailbox_state(on) == SyncState.ENABLED
    assert enable(on, NOW) is on and approve(on, NOW) is on  # no-ops change nothing


def test_connector_disable_shows_before_the_configuration_arrives() -> None:
    config = box()
    earlier = status(SyncState.DISABLED, NOW - timedelta(minutes=5), last_error_code="X")
    later = status(
        SyncState.DISABLED, NOW + timedelta(seconds=1), last_error_code="AuthenticationFailed",
        last_error="carol@host: LOGIN refused",
    )  # fmt: skip
    assert mailbox_state(config, earlier) == SyncState.ENABLED  # re-enabled since
    assert mailbox_state(config, later) == SyncState.DISABLED
    assert disabled_reason(config, later) == "AuthenticationFailed: carol@host: LOGIN refused"
    note = MailboxDisabled(code="AuthenticationFailed", reason="refused", by="w1", at=NOW)
    disabled = _with(config, enabled=False, disabled=note)
    assert disabled_reason(disabled) == "AuthenticationFailed: refused (by w1)"


# -- ownership ------------------------------------------------------------------------


def test_one_mailbox_per_owner_on_add() -> None:
    configs = {"mb-ann": box()}
    check_add(configs, box())  # replacing itself is fine
    with pytest.raises(MailboxStateError, match="user:ann already has mailbox mb-ann"):
        check_add(configs, box("mb-ann2"))
    with pytest.raises(MailboxStateError, match="tidings mailbox remap mb-ann --owner user:bob"):
        check_add(configs, box(owner="user:bob"))


def test_remap_breaks_the_old_link_with_an_event() -> None:
    configs = {"mb-ann": box(), "mb-q": box("mb-q", "queue:support")}
    config, event = remap(configs, "mb-ann", "user:bea", "admin", NOW)
    assert str(config.owner) == "user:bea"
    assert event.code == MAILBOX_REMAPPED and event.severity == Severity.NOTICE
    assert "from user:ann to user:bea" in event.message and "by admin" in event.message
    assert event.mailbox_id == "mb-ann"
    # Same input, same event id (a re-published notice is one row).
    assert remap(configs, "mb-ann", "user:bea", "admin", NOW)[1].error_id == event.error_id
    with pytest.raises(MailboxStateError, match="queue:support already has mailbox mb-q"):
        remap(configs, "mb-ann", "queue:support", "", NOW)
    with pytest.raises(MailboxStateError, match="already belongs to user:ann"):
        remap(configs, "mb-ann", "user:ann", "", NOW)
    with pytest.raises(MailboxStateError, match="no mailbox 'mb-x'"):
        remap(configs, "mb-x", "user:zed", "", NOW)


# -- status table ----------------------------------------------------------------------


def test_status_rows_say_why_a_mailbox_is_disabled() -> None:
    note = MailboxDisabled(code="MailboxMissing", reason="no INBOX", by="w1", at=NOW)
    configs = {
        "mb-ann": box(),
        "mb-bob": box("mb-bob", "user:bob", enabled=False, disabled=note),
        "mb-cy": box("mb-cy", "user:cy", approved=False, enabled=False),
    }
    statuses = {
        "mb-ann": status(
            SyncState.ENABLED,
            last_sync_at=NOW,
            next_poll_at=NOW + timedelta(seconds=60),
            last_pass_items=3,
            counters=MailboxCounters(errors=2),
        ),
        "mb-bob": status(SyncState.DISABLED, mailbox_id="mb-bob", next_poll_at=NOW),
        "mb-gone": status(SyncState.ENABLED, mailbox_id="mb-gone"),
    }
    rows = status_rows(configs, statuses)
    assert [r.mailbox_id for r in rows] == ["mb-ann", "mb-bob", "mb-cy"]
    ann, bob, cy = rows
    assert (ann.state, ann.items, ann.errors, ann.last_error) == (SyncState.ENABLED, 3, 2, "")
    assert ann.next_poll == NOW + timedelta(seconds=60)
    assert bob.state == SyncState.DISABLED and bob.next_poll is None
    assert bob.last_error == "MailboxMissing: no INBOX (by w1)"
    assert cy.state == SyncState.PENDING_APPROVAL and cy.last_sync is None and cy.items is None
    snapshot = StatusSnapshot(taken_at=NOW, rows=rows, lag={"tidings-processors": 0})
    assert render(snapshot) is not None  # renders without a terminal


def test_relative_times() -> None:
    assert relative(None, NOW) == "never"
    assert relative(NOW - timedelta(seconds=12), NOW) == "12s ago"
    assert relative(NOW + timedelta(minutes=4, seconds=5), NOW) == "in 4m"
    assert relative(NOW - timedelta(hours=2, minutes=3), NOW) == "2h03m ago"
    assert relative(NOW - timedelta(days=3), NOW) == "3d ago"


# -- profiles ---------------------------------------------------------------------------


def test_published_profiles_replace_the_files_and_tombstones_restore_them() -> None:
    file_imap = ServerProfile(protocol=Protocol.IMAP, host="old.example")
    new_imap = ServerProfile(protocol=Protocol.IMAP, host="new.example")
    smtp = ServerProfile(protocol=Protocol.SMTP, host="smtp.example")
    base = {"corp": file_imap}
    published: dict[str, ServerProfile] = {}
    apply_record(published, "corp", new_imap)
    apply_record(published, "out", smtp)
    target = dict(base)
    assert replace_in_place(target, merged_profiles(base, published)) == {"corp", "out"}
    assert target == {"corp": new_imap, "out": smtp}
    entries = effective_profiles(base, published)
    assert entries["corp"].source == ProfileSource.TOPIC_OVER_FILE
    assert entries["out"].source == ProfileSource.TOPIC
    apply_record(published, "corp", None)
    apply_record(published, "out", None)
    assert replace_in_place(target, merged_profiles(base, published)) == {"corp", "out"}
    assert target == base
    assert replace_in_place(target, merged_profiles(base, published)) == set()
    assert effective_profiles(base, {})["corp"].source == ProfileSource.FILE


def test_outgoing_probe_goes_to_the_mailbox_itself() -> None:
    config = box(email_address="ann@northwind.example")
    message_id, raw = probe_message(config, NOW)
    parsed = message_from_bytes(raw)
    assert parsed["From"] == parsed["To"] == "ann@northwind.example"
    assert parsed["Message-ID"] == f"<{message_id}>"
    assert message_id.endswith("@northwind.example")
    assert parsed["X-Tidings-Test"] == "mb-ann"
