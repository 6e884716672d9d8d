"""Mailbox and server-profile management for real: the CLI on tansu (profiles on
server.profiles, states, one owner per mailbox, remap events, status), `mailbox test`
against dovecot and aiosmtpd, and a connector runtime on tansu that reads a published
profile, disables a mailbox on a permanent error and polls on a sync request."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.profiles import publish_profiles_async
from schemas.base import utc_now
from schemas.codec import encode_key
from schemas.config import ConnectorConfig
from schemas.mail import ChangeKind
from schemas.mailbox import MaildirSettings, Protocol, SyncState
from schemas.topics import (
    MAIL_CHANGES,
    MAIL_TRACK,
    MAILBOX_CONFIG,
    MAILBOX_STATUS,
    SYNC_ERRORS,
    codec,
)
from schemas.track import RequestKind, TrackRequest
from tests.connector_harness import PASSWORD_ENV, ConnectorHarness, mailbox, message
from tests.integration.test_outgoing import Handler, smtp_server
from tests.mailserver import Dovecot
from tests.workspace import Workspace

pytestmark = pytest.mark.integration

PASSWORD = "mgmt-pw"


@pytest.fixture
def space(workspace: Workspace, tmp_path: Path) -> Workspace:
    """A workspace whose embedded broker keeps running between commands (each command
    attaches instead of starting its own)."""
    for name in ("COLUMNS", "LINES"):
        workspace.env.pop(name, None)
    workspace.env[PASSWORD_ENV] = PASSWORD
    workspace.cli("broker", "start")
    return workspace


def test_profiles_states_owners_and_status_from_the_cli(space: Workspace, tmp_path: Path) -> None:
    space.cli(
        "profile", "add", "corp", "--protocol", "imap", "--host", "imap.corp.example",
        "--max-connections", "4",
    )  # fmt: skip
    listing = space.cli("profile", "list").stdout
    assert "corp" in listing and "imap.corp.example:993" in listing and "server.profiles" in listing
    shown = space.cli("profile", "show", "corp").stdout
    assert "max_connections" in shown and "4" in shown
    bad = space.cli("profile", "add", "x", "--protocol", "imap", "--host", "h",
                    "--security", "plain", check=False)  # fmt: skip
    assert bad.returncode == 1 and "--allow-plaintext" in bad.stderr

    # A published profile is good enough for `mailbox add`.
    space.cli(
        "mailbox", "add", "--id", "mb-bob", "--owner", "user:bob", "--protocol", "imap",
        "--server-profile", "corp", "--password-env", PASSWORD_ENV,
        "--state", "pending-approval",
    )  # fmt: skip
    maildir = tmp_path / "ann"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    space.cli("mailbox", "add", "--id", "mb-ann", "--owner", "user:ann", "--path", str(maildir))

    # One mailbox per owner, one owner per mailbox.
    second = space.cli("mailbox", "add", "--id", "mb-ann2", "--owner", "user:ann",
                       "--path", str(maildir), check=False)  # fmt: skip
    assert second.returncode == 1 and "user:ann already has mailbox mb-ann" in second.stderr
    moved = space.cli("mailbox", "add", "--id", "mb-ann", "--owner", "user:zoe",
                      "--path", str(maildir), check=False)  # fmt: skip
    assert moved.returncode == 1 and "tidings mailbox remap mb-ann" in moved.stderr
    taken = space.cli("mailbox", "remap", "mb-ann", "--owner", "user:bob", check=False)
    assert taken.returncode == 1 and "user:bob already has mailbox mb-bob" in taken.stderr
    remapped = space.cli("mailbox", "remap", "mb-ann", "--owner", "user:zoe").stdout
    assert "from user:ann to user:zoe" in remapped

    # States: pending approval → approved; enable refuses before approval.
    refused = space.cli("mailbox", "enable", "mb-bob", check=False)
    assert refused.returncode == 1 and "approve it first" in refused.stderr
    assert "now approved" in space.cli("mailbox", "approve", "mb-bob").stdout
    space.cli("mailbox", "disable", "mb-ann", "--reason", "moving offices")
    status = space.cli("status").stdout
    rows = _rows(status)
    assert "disabled" in rows["mb-ann"] and "moving offices" in rows["mb-ann"]
    assert "user:zoe" in rows["mb-ann"]
    assert "pending" not in rows["mb-bob"] and "approved" in rows["mb-bob"]
    assert "pipeline lag" in status
    show = space.cli("mailbox", "show", "mb-ann").stdout
    assert "MailboxRemapped" in show and "from user:ann to user:zoe" in show
    assert "why disabled" in show and "moving offices" in show
    assert "now enabled" in space.cli("mailbox", "enable", "mb-ann").stdout
    assert "moving offices" not in space.cli("mailbox", "list").stdout

    sync = space.cli("mailbox", "sync", "mb-bob", check=False)
    assert sync.returncode == 1 and "is approved, so tidings does not read it" in sync.stderr
    kept = space.cli("mailbox", "remove", "mb-bob", check=False)  # stdin closed: no
    assert kept.returncode == 1 and "--yes" in kept.stderr
    space.cli("mailbox", "remove", "mb-bob", "--yes")
    assert "mb-bob" not in space.cli("mailbox", "list").stdout
    # user:bob is free again.
    space.cli("mailbox", "remap", "mb-ann", "--owner", "user:bob")


def test_mailbox_test_stores_each_part_and_enables(
    space: Workspace, dovecot: Dovecot, tmp_path: Path
) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text(
        f"""
[server_profiles.dovecot]
protocol = "imap"
host = "localhost"
port = {dovecot.imaps_port}
ca_file = "{dovecot.ca_file}"
""",
        encoding="utf-8",
    )
    space.env["TIDINGS_CONFIG"] = str(config)
    dovecot.add_user("kim", PASSWORD)
    dovecot.append("kim", "INBOX", message(1))
    dovecot.add_user("lou", "another-password")
    handler = Handler()
    with smtp_server(handler) as port:
        space.cli(
            "profile", "add", "relay", "--protocol", "smtp", "--host", "127.0.0.1",
            "--port", str(port), "--security", "plain", "--allow-plaintext",
        )  # fmt: skip
        for box, user in (("mb-kim", "kim"), ("mb-lou", "lou")):
            space.cli(
                "mailbox", "add", "--id", box, "--owner", f"user:{user}", "--protocol", "imap",
                "--server-profile", "dovecot", "--user", user, "--password-env", PASSWORD_ENV,
                "--email", f"{user}@northwind.example", "--outgoing-profile", "relay",
                "--state", "approved",
            )  # fmt: skip
        passed = space.cli("mailbox", "test", "mb-kim", "--enable")
        failed = space.cli("mailbox", "test", "mb-lou", check=False)
    assert "INBOX (1)" in passed.stdout and "now enabled" in passed.stdout
    # Each test sent its message to the mailbox itself (the relay takes mail without
    # AUTH, so lou's outgoing part passes while its incoming part fails).
    assert [r.recipients for r in handler.received] == [
        ["kim@northwind.example"],
        ["lou@northwind.example"],
    ]
    assert handler.received[0].message["X-Tidings-Test"] == "mb-kim"
    assert failed.returncode == 1 and "AuthenticationFailed" in failed.stderr
    assert "another-password" not in failed.stdout + failed.stderr
    shown = space.cli("mailbox", "show", "mb-lou").stdout
    assert "failed at" in shown and "AuthenticationFailed" in shown
    listing = space.cli("mailbox", "list").stdout
    rows = _rows(listing)
    assert " enabled " in rows["mb-kim"] and " approved " in rows["mb-lou"]


def _rows(table: str) -> dict[str, str]:
    """The lines of a printed table by the mailbox id in their first column."""
    rows = {}
    for line in table.splitlines():
        cells = line.replace("│", " ").replace("┃", " ").split()
        if cells and cells[0].startswith("mb-"):
            rows[cells[0]] = " ".join(cells)
    return rows


FAST = ConnectorConfig(poll_interval_s=600.0, server_poll_interval_s=600.0)


async def test_runtime_reads_published_profiles_disables_and_syncs_on_request(
    dovecot: Dovecot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    dovecot.add_user("carol", "the-real-password")
    maildir = tmp_path / "dana"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.M1.test").write_bytes(message(1))
    dana = mailbox(
        "mb-dana",
        "dana",
        protocol=Protocol.MAILDIR,
        server_profile=None,
        credentials=None,
        maildir=MaildirSettings(path=str(maildir), folders=["INBOX"]),
    )
    # Only on the topic: the runtime must read server.profiles to find it.
    carol = mailbox("mb-carol", "carol", server_profile="published")
    async with ConnectorHarness.up(tmp_path / "data", {}, FAST) as h:
        await publish_profiles_async(h.config, {"published": dovecot.profile()})
        await h.add_mailbox(carol)
        await h.add_mailbox(dana)
        async with h.runtime():
            errors = await h.wait_for(SYNC_ERRORS, "mb-carol", bool)
            configs = await h.wait_for(MAILBOX_CONFIG, "mb-carol", lambda c: len(c) == 2)
            await h.wait_for(MAILBOX_STATUS, "mb-dana", lambda s: any(x.last_sync_at for x in s))
            await h.wait_for(MAILBOX_CONFIG, "mb-dana", lambda c: len(c) == 1)
            # A new message, then a sync request: polled now, not in 10 minutes.
            (maildir / "new" / "2.M2.test").write_bytes(message(2))
            await _request_sync(h, "mb-dana")
            await _request_sync(h, "mb-nobody")
            # The next scheduled poll is 10 minutes away: only the request polls now.
            changes = await h.wait_for(MAIL_CHANGES, "mb-dana", lambda e: len(e) == 2)
            notices = await h.wait_for(SYNC_ERRORS, "mb-nobody", bool)
            statuses = await h.statuses("mb-carol")
    assert [e.code for e in errors] == ["AuthenticationFailed"]
    assert errors[0].alert and "tidings mailbox enable mb-carol" in errors[0].message
    assert "the-real-password" not in errors[0].message
    disabled = configs[-1]
    assert not disabled.enabled and disabled.disabled is not None
    assert (
        disabled.disabled.code == "AuthenticationFailed" and disabled.disabled.by == "test-worker"
    )
    assert statuses[-1].state == SyncState.DISABLED
    assert [c.change for c in changes] == [ChangeKind.CREATED, ChangeKind.CREATED]
    assert [n.code for n in notices] == ["SyncUnknownMailbox"]


async def _request_sync(h: ConnectorHarness, mailbox_id: str) -> None:
    """Publish a sync request on mail.track, as `tidings mailbox sync` does."""
    request = TrackRequest(
        request_id=f"s-{mailbox_id}",
        mailbox_id=mailbox_id,
        kind=RequestKind.SYNC,
        requested_at=utc_now(),
    )
    producer = AIOKafkaProducer(**h.config.kafka.producer_options())
    await producer.start()
    try:
        await producer.send_and_wait(
            MAIL_TRACK.name(h.config.topic_prefix),
            key=encode_key(mailbox_id),
            value=codec(MAIL_TRACK).encode(request),
        )
    finally:
        await producer.stop()
