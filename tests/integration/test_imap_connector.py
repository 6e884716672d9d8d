"""The IMAP connector through the connector runtime, against a real dovecot and the
real embedded broker: new mail, flags, expunge, UIDVALIDITY, IDLE push, \\Seen
untouched, credentials and TLS rules, a server restart mid-sync, exact counts."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors import errors
from connectors.imap_protocol import FetchedMessage, expand_uids
from connectors.imap_session import ImapSession
from pipeline.reconcile import reconcile
from schemas import metrics
from schemas.config import ConnectorConfig
from schemas.errors import Severity
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    AuthMethod,
    ImapSettings,
    RetryPolicy,
    ServerProfile,
    SyncState,
    TransportSecurity,
)
from schemas.topics import MAIL_CHANGES, MAILBOX_STATUS, SYNC_ERRORS
from tests.connector_harness import PASSWORD_ENV, ConnectorHarness, mailbox, message
from tests.mailserver import Dovecot

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(
    max_retries=3, retry_interval_s=1.0, reconnect_attempts=3, reconnect_base_s=0.2
)
FAST = ConnectorConfig(server_poll_interval_s=0.5, max_batch_items=100)


def profile(dovecot: Dovecot, **changes: object) -> ServerProfile:
    """IMAPS on the test server, certificate checked, fast retries."""
    settings: dict[str, object] = {"retry": FAST_RETRY, "timeout_s": 10.0, **changes}
    return dovecot.profile(**settings)  # type: ignore[arg-type]


@pytest.fixture
def password() -> Iterator[str]:
    """The test users' password, referenced by env var like a real deployment."""
    os.environ[PASSWORD_ENV] = "s3cret-pw"
    yield "s3cret-pw"
    os.environ.pop(PASSWORD_ENV, None)


def created(events: list[MailItemChanged]) -> list[MailItemChanged]:
    return [e for e in events if e.change == ChangeKind.CREATED]


def fetch_flags(dovecot: Dovecot, user: str, password: str) -> list[bytes]:
    """The FLAGS of every INBOX message, read without changing them."""
    client = dovecot.client(user, password)
    try:
        client.select("INBOX", readonly=True)
        typ, data = client.fetch("1:*", "(FLAGS)")
        assert typ == "OK"
        return [item for item in data if isinstance(item, bytes)]
    finally:
        client.logout()


async def test_new_mail_flags_expunge_push_and_seen_untouched(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("alice", password)
    for n in range(3):
        dovecot.append("alice", "INBOX", message(n))
    dovecot.append("alice", "Sent", message(100, "Sent mail"), flags="\\Seen")
    # Push only: the poll interval is far longer than the test.
    slow_poll = ConnectorConfig(server_poll_interval_s=600, max_batch_items=100)
    async with ConnectorHarness.up(
        tmp_path / "data", {"dovecot": profile(dovecot)}, slow_poll
    ) as h:
        await h.add_mailbox(mailbox("mb-alice", "alice"))
        async with h.runtime():
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 4)
            roles = {e.folder: e.folder_role for e in events}
            assert roles == {"INBOX": "inbox", "Sent": "sent"}
            assert all(e.raw and b"Message-ID: <imap-" in e.raw for e in events)
            flags = fetch_flags(dovecot, "alice", password)
            assert len(flags) == 3 and not any(b"\\Seen" in line for line in flags)

            wakeups = metrics.CONNECTOR_PUSH_WAKEUPS.labels("imap")._value.get()
            appended_at = time.monotonic()
            dovecot.append("alice", "INBOX", message(3))
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 5)
            print(f"IDLE push: new mail to event in {time.monotonic() - appended_at:.2f}s")
            assert metrics.CONNECTOR_PUSH_WAKEUPS.labels("imap")._value.get() > wakeups

            client = dovecot.client("alice", password)
            client.select("INBOX")
            client.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
            client.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
            client.expunge()
            client.logout()
            events = await h.wait_for(
                MAIL_CHANGES,
                "mb-alice",
                lambda e: (
                    any(x.change == ChangeKind.DELETED for x in e)
                    and any(x.change == ChangeKind.UPDATED for x in e)
                ),
            )
    first = created(events)[0]
    updated = [e for e in events if e.change == ChangeKind.UPDATED]
    deleted = [e for e in events if e.change == ChangeKind.DELETED]
    assert [e.item_id for e in updated] == [first.item_id.split(":")[0] + ":1"]
    assert updated[0].flags == ["\\Flagged"]
    assert [e.item_id.split(":")[1] for e in deleted] == ["2"]
    assert len({e.event_id for e in events}) == len(events)


async def test_uidvalidity_change_rereads_the_folder_and_says_so(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("bob", password)
    for n in range(3):
        dovecot.append("bob", "Projects", message(n))
    config = mailbox("mb-bob", "bob", imap=ImapSettings(folders=["Projects"]))
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": profile(dovecot)}, FAST) as h:
        await h.add_mailbox(config)
        async with h.runtime():
            await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(created(e)) == 3)
            client = dovecot.client("bob", password)
            assert client.delete("Projects")[0] == "OK"
            client.logout()
            for n in range(3):
                dovecot.append("bob", "Projects", message(n))
            events = await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(created(e)) == 6)
            notices = await h.wait_for(SYNC_ERRORS, "mb-bob", bool)
    assert [n.code for n in notices] == ["UidValidityChanged"]
    assert notices[0].severity == Severity.NOTICE and notices[0].folder == "Projects"
    old = {e.item_id for e in created(events)[:3]}
    assert {e.item_id for e in events if e.change == ChangeKind.DELETED} == old
    # The same three messages, so the same three Message-IDs and activity ids.
    ids = Counter(e.raw.split(b"Message-ID: ")[1].split(b"\n")[0] for e in created(events) if e.raw)
    assert set(ids.values()) == {2} and len(ids) == 3


async def test_wrong_password_disables_the_mailbox_without_leaking_it(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("carol", "the-real-password")
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": profile(dovecot)}, FAST) as h:
        await h.add_mailbox(mailbox("mb-carol", "carol"))
        async with h.runtime():
            errors_seen = await h.wait_for(SYNC_ERRORS, "mb-carol", bool)
            statuses = await h.wait_for(
                MAILBOX_STATUS, "mb-carol", lambda s: any(x.state == SyncState.DISABLED for x in s)
            )
    assert [e.code for e in errors_seen] == [errors.AUTHENTICATION_FAILED]
    assert errors_seen[0].severity == Severity.PERMANENT
    assert "carol@localhost" in errors_seen[0].message
    assert password not in errors_seen[0].message
    assert statuses[-1].last_error_code == errors.AUTHENTICATION_FAILED


@pytest.mark.parametrize(
    ("security", "allow", "expected"),
    [
        (TransportSecurity.PLAIN, False, errors.PLAINTEXT_REFUSED),
        (TransportSecurity.PLAIN, True, None),
        (TransportSecurity.STARTTLS, False, None),
    ],
)
async def test_transport_rules(
    dovecot: Dovecot,
    password: str,
    tmp_path: Path,
    security: TransportSecurity,
    allow: bool,
    expected: str | None,
) -> None:
    dovecot.add_user("dave", password)
    dovecot.append("dave", "INBOX", message(1))
    server = profile(dovecot, port=dovecot.imap_port, security=security, allow_plaintext=allow)
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": server}, FAST) as h:
        await h.add_mailbox(mailbox("mb-dave", "dave"))
        async with h.runtime():
            if expected is None:
                events = await h.wait_for(MAIL_CHANGES, "mb-dave", lambda e: len(e) == 1)
                assert events[0].raw is not None
            else:
                found = await h.wait_for(SYNC_ERRORS, "mb-dave", bool)
                assert found[0].code == expected and found[0].severity == Severity.PERMANENT
                assert "allow_plaintext" in found[0].message
                assert await h.changes("mb-dave") == []


async def test_certificate_checked_by_default(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("erin", password)
    untrusted = profile(dovecot, ca_file=None)
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": untrusted}, FAST) as h:
        await h.add_mailbox(mailbox("mb-erin", "erin"))
        async with h.runtime():
            found = await h.wait_for(SYNC_ERRORS, "mb-erin", bool)
    assert found[0].code == errors.TLS_FAILED and found[0].severity == Severity.PERMANENT


async def test_server_restart_mid_sync_loses_nothing(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("frank", password)
    total = 3000
    dovecot.deliver_many("frank", "INBOX", (message(n) for n in range(total)))
    server = profile(dovecot, fetch_batch=50)
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": server}, FAST) as h:
        await h.add_mailbox(mailbox("mb-frank", "frank"))
        async with h.runtime():
            await h.wait_for(MAIL_CHANGES, "mb-frank", lambda e: len(e) >= 200, timeout_s=120)
            dovecot.stop()
            await h.wait_for(SYNC_ERRORS, "mb-frank", lambda e: len(e) >= 2, timeout_s=60)
            dovecot.start()
            events = await h.wait_for(
                MAIL_CHANGES,
                "mb-frank",
                lambda e: len({x.item_id for x in e}) >= total,
                timeout_s=300,
            )
            statuses = await h.wait_for(
                MAILBOX_STATUS,
                "mb-frank",
                lambda s: s[-1].counters.items_listed == total and s[-1].pending_items == 0,
            )
        failures = await h.errors("mb-frank")
    assert failures and all(f.severity == Severity.TRANSIENT for f in failures)
    assert {f.code for f in failures} <= {
        errors.CONNECTION_REFUSED,
        errors.CONNECTION_LOST,
        errors.TIMEOUT,
    }
    assert [f.attempt for f in failures] == list(range(1, len(failures) + 1))
    assert {e.change for e in events} == {ChangeKind.CREATED}
    assert len({e.item_id for e in events}) == total
    # Re-emitted at most the batch in flight, with the same ids.
    assert len(events) - total <= FAST.max_batch_items
    assert statuses[-1].state == SyncState.ENABLED


async def test_messages_a_fetch_leaves_out_are_fetched_again_recorded_or_gone(
    dovecot: Dovecot, password: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FETCH answer that leaves out a listed UID is not taken for an expunge: the
    message is fetched again (UID 3 is left out once), recorded unreadable when the
    server keeps leaving it out (UID 5), and skipped only when the server no longer
    lists it (UID 7, expunged between SEARCH and FETCH)."""
    dovecot.add_user("hank", password)
    dovecot.deliver_many("hank", "INBOX", (message(n) for n in range(10)))
    original = ImapSession.uid_fetch
    left_out: Counter[int] = Counter()
    expunged: list[int] = []

    async def fetch(session: ImapSession, uid_set: str, items: str) -> list[FetchedMessage]:
        if "BODY.PEEK[]" in items and 7 in expand_uids(uid_set) and not expunged:
            expunged.append(7)
            client = dovecot.client("hank", password)
            client.select("INBOX")
            client.uid("STORE", "7", "+FLAGS", "(\\Deleted)")
            client.expunge()
            client.logout()
        fetched = await original(session, uid_set, items)
        kept = []
        for m in fetched:  # dovecot may still return what another session expunged
            if m.uid in (5, 7) or (m.uid == 3 and not left_out[3]):
                left_out[m.uid] += 1
                continue
            kept.append(m)
        return kept

    monkeypatch.setattr(ImapSession, "uid_fetch", fetch)
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": profile(dovecot)}, FAST) as h:
        await h.add_mailbox(mailbox("mb-hank", "hank"))
        async with h.runtime():
            statuses = await h.until_created("mb-hank", 9)
            events = created(await h.changes("mb-hank"))
    by_uid = {int(e.item_id.split(":")[1]): e for e in events}
    assert sorted(by_uid) == [1, 2, 3, 4, 5, 6, 8, 9, 10]
    assert by_uid[3].unreadable_code is None and by_uid[3].raw
    assert by_uid[5].unreadable_code == "NotReturned"
    assert "UID 5" in (by_uid[5].unreadable_reason or "")
    assert (left_out[3], left_out[5]) == (1, 2)
    assert statuses[-1].pending_items == 0
    assert statuses[-1].counters.errors == 1


async def test_thousand_messages_exact_counts_and_reconcile(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("gina", password)
    dovecot.deliver_many("gina", "INBOX", (message(n) for n in range(1000)))
    for n in range(5):
        dovecot.append("gina", "Sent", message(5000 + n, "Reply"))
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": profile(dovecot)}, FAST) as h:
        await h.add_mailbox(mailbox("mb-gina", "gina"))
        async with h.runtime():
            statuses = await h.until_created("mb-gina", 1005, timeout_s=180)
            events = await h.changes("mb-gina")
            report = await reconcile(h.config, "mb-gina")
            client = dovecot.client("gina", password)
            client.select("INBOX")
            client.store("1", "+FLAGS", "(\\Deleted)")
            client.expunge()
            client.logout()
            gap = await reconcile(h.config, "mb-gina")
    counters = statuses[-1].counters
    assert (counters.items_listed, counters.created_events, counters.errors) == (1005, 1005, 0)
    assert len(events) == len({e.item_id for e in events}) == 1005
    assert Counter(e.folder for e in events) == {"INBOX": 1000, "Sent": 5}
    assert report.clean and {f.folder: f.on_server for f in report.folders} == {
        "INBOX": 1000,
        "Sent": 5,
    }
    # An expunge not yet seen by a pass shows as stale until the connector catches up.
    assert gap.clean or [len(f.stale) for f in gap.folders if f.folder == "INBOX"] == [1]


async def test_odd_and_large_messages_are_emitted_not_dropped(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("hank", password)
    odd = [
        b"From: x@y\r\nSubject: 8bit \xe9t\xe9\r\nMessage-ID: <8bit@y>\r\n\r\nCaf\xe9 \xff\r\n",
        b"From: x@y\r\nSubject: =?x-unknown?Q?abc?=\r\nContent-Type: text/plain; charset=x-nope\r\n"
        b"Message-ID: <charset@y>\r\n\r\nbody\r\n",
        b"From: x@y\r\nContent-Type: multipart/mixed; boundary=zz\r\nMessage-ID: <broken@y>\r\n"
        b"\r\n--zz\r\nContent-Type: text/plain\r\n\r\nunterminated part\r\n",
        b"Subject: no headers to speak of\r\n\r\n\r\n",
        b"From: x@y\r\nMessage-ID: <big@y>\r\nSubject: big\r\n\r\n" + b"A" * 700_000 + b"\r\n",
    ]
    for raw in odd:
        dovecot.append("hank", "INBOX", raw)
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": profile(dovecot)}, FAST) as h:
        await h.add_mailbox(mailbox("mb-hank", "hank"))
        async with h.runtime():
            events = await h.wait_for(MAIL_CHANGES, "mb-hank", lambda e: len(e) == len(odd))
    inline = [e for e in events if e.raw is not None]
    claimed = [e for e in events if e.blob_ref is not None]
    assert len(inline) == 4 and len(claimed) == 1
    assert claimed[0].headers is not None and b"<big@y>" in claimed[0].headers
    assert claimed[0].preview and claimed[0].preview.startswith("AAAA")
    assert {e.raw for e in inline} == set(odd[:4])


async def test_polls_when_idle_is_off(dovecot: Dovecot, password: str, tmp_path: Path) -> None:
    dovecot.add_user("iris", password)
    dovecot.append("iris", "INBOX", message(1))
    server = profile(dovecot, use_idle=False)
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": server}, FAST) as h:
        await h.add_mailbox(mailbox("mb-iris", "iris"))
        async with h.runtime():
            await h.wait_for(MAIL_CHANGES, "mb-iris", lambda e: len(e) == 1)
            wakeups = metrics.CONNECTOR_PUSH_WAKEUPS.labels("imap")._value.get()
            dovecot.append("iris", "INBOX", message(2))
            events = await h.wait_for(MAIL_CHANGES, "mb-iris", lambda e: len(e) == 2)
            assert metrics.CONNECTOR_PUSH_WAKEUPS.labels("imap")._value.get() == wakeups
    assert [e.change for e in events] == [ChangeKind.CREATED, ChangeKind.CREATED]


async def test_sasl_plain_and_the_start_date(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("jill", password)
    dovecot.append("jill", "INBOX", message(1, "Old"), date=datetime(2020, 1, 5, tzinfo=UTC))
    dovecot.append("jill", "INBOX", message(2, "New"), date=datetime(2026, 3, 1, tzinfo=UTC))
    server = profile(dovecot, auth=AuthMethod.PLAIN)
    config = mailbox("mb-jill", "jill", process_email_from=datetime(2026, 1, 1, tzinfo=UTC))
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": server}, FAST) as h:
        await h.add_mailbox(config)
        async with h.runtime():
            await h.wait_for(
                MAILBOX_STATUS, "mb-jill", lambda s: bool(s) and s[-1].sync_generation >= 1
            )
            await asyncio.sleep(2)  # later polls (every 0.5 s) must not pick up the old one
            events = await h.changes("mb-jill")
            report = await reconcile(h.config, "mb-jill")
    assert [e.raw is not None and b"Subject: New 2" in e.raw for e in events] == [True]
    assert report.clean and [f.on_server for f in report.folders if f.folder == "INBOX"] == [1]


async def test_profile_connection_limit_is_shared_by_its_mailboxes(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    users = [f"pool{n}" for n in range(5)]
    for user in users:
        dovecot.add_user(user, password)
        dovecot.append(user, "INBOX", message(1))
    server = profile(dovecot, max_connections=2)
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": server}, FAST) as h:
        for user in users:
            await h.add_mailbox(mailbox(f"mb-{user}", user))
        async with h.runtime() as runtime:
            gate = runtime.gates.gate("dovecot", 2)
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, gate.in_use)
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            try:
                for user in users:
                    await h.wait_for(MAIL_CHANGES, f"mb-{user}", lambda e: len(e) == 1)
                for user in users:
                    dovecot.append(user, "INBOX", message(2))
                for user in users:
                    await h.wait_for(MAIL_CHANGES, f"mb-{user}", lambda e: len(e) == 2)
            finally:
                watcher.cancel()
    assert peak == 2


XOAUTH2_TOKENS: dict[str, str] = {}


def xoauth2_token(user: str) -> str:
    """The tests' token provider: what an identity provider would hand out for `user`."""
    return XOAUTH2_TOKENS[user]


async def test_xoauth2_logs_in_with_the_providers_token(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    for user in ("kim", "lee"):
        dovecot.add_user(user, password)  # a mail home; XOAUTH2 never sends the password
    dovecot.add_token("kim", "token-of-kim")
    XOAUTH2_TOKENS.update({"kim": "token-of-kim", "lee": "revoked-token-of-lee"})
    dovecot.append("kim", "INBOX", message(1))
    server = profile(dovecot, auth=AuthMethod.XOAUTH2, token_provider=f"{__name__}:xoauth2_token")
    async with ConnectorHarness.up(tmp_path / "data", {"dovecot": server}, FAST) as h:
        await h.add_mailbox(mailbox("mb-kim", "kim"))
        await h.add_mailbox(mailbox("mb-lee", "lee"))
        async with h.runtime():
            events = await h.wait_for(MAIL_CHANGES, "mb-kim", lambda e: len(e) == 1)
            refused = await h.wait_for(SYNC_ERRORS, "mb-lee", bool)
    assert events[0].change == ChangeKind.CREATED and events[0].raw is not None
    assert [e.code for e in refused] == [errors.AUTHENTICATION_FAILED]
    assert refused[0].severity == Severity.PERMANENT
    assert "revoked-token-of-lee" not in refused[0].message
