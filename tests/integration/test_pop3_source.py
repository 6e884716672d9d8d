"""connectors.pop3.Pop3Mailbox against a real dovecot (tests/mailserver.py).

Kafka is replaced by recording fakes (the runtime-level Kafka tests live elsewhere): the
emitter keeps every batch it "acknowledged", the cursor store every position it saved.
"""

from __future__ import annotations

import asyncio
import logging
import poplib
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.errors import (
    AUTHENTICATION_FAILED,
    CONNECTION_LOST,
    CONNECTION_REFUSED,
    PLAINTEXT_REFUSED,
    TLS_FAILED,
    ConnectorError,
)
from connectors.gate import ServerGate
from connectors.pop3 import Pop3Mailbox, decode_position
from connectors.source import PassResult, SourceWiring
from schemas.base import RecordRef
from schemas.blobs import DirectoryBlobStore
from schemas.config import ConnectorConfig
from schemas.ids import change_event_id
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    Credentials,
    Cursor,
    CursorPosition,
    MailboxConfig,
    Pop3Position,
    Pop3Settings,
    Protocol,
    ServerProfile,
    TransportSecurity,
    cursor_key,
)
from tests.mailserver import Dovecot

pytestmark = pytest.mark.integration

USER = "dana"
PASSWORD = "s3cret-Pa55"
MAILBOX = "mb-pop3"


# --- fakes for Kafka -----------------------------------------------------------------------


class RecordingEmitter:
    """Acknowledges every batch at once and keeps it.

    `fail_after` n: after n more acknowledged batches, every emit raises (Kafka does not
    acknowledge); `hold` makes emits wait until the event is set.
    """

    def __init__(self) -> None:
        self.batches: list[list[MailItemChanged]] = []
        self.fail_after: int | None = None
        self.hold: asyncio.Event | None = None
        self.holding = asyncio.Event()

    async def emit_changes(self, events: Sequence[MailItemChanged], protocol: str) -> None:
        assert protocol == "pop3"
        if self.hold is not None:
            self.holding.set()
            await self.hold.wait()
        if self.fail_after is not None:
            if self.fail_after <= 0:
                raise TimeoutError("no acknowledgement from Kafka")
            self.fail_after -= 1
        if events:
            self.batches.append(list(events))

    @property
    def events(self) -> list[MailItemChanged]:
        return [event for batch in self.batches for event in batch]

    def take(self) -> list[MailItemChanged]:
        events = self.events
        self.batches.clear()
        return events


class RecordingStore:
    """Keeps every saved cursor, and how many events had been acknowledged when it was saved."""

    def __init__(self, emitter: RecordingEmitter) -> None:
        self.emitter = emitter
        self.saves: list[tuple[Cursor, int]] = []

    async def save(
        self,
        mailbox_id: str,
        folder: str,
        position: CursorPosition,
        partition: int,
        now: datetime,
    ) -> Cursor:
        assert partition == 3
        cursor = Cursor(mailbox_id=mailbox_id, folder=folder, position=position, updated_at=now)
        self.saves.append((cursor, len(self.emitter.events)))
        return cursor

    def cursors(self) -> dict[str, Cursor]:
        """The latest cursor per key, as CursorStore.load would return it."""
        return {cursor_key(c.mailbox_id, c.folder): c for c, _ in self.saves}

    def uidls(self) -> set[str]:
        position = self.saves[-1][0].position
        assert isinstance(position, Pop3Position)
        return decode_position(position)


# --- helpers -----------------------------------------------------------------------------


def message(
    n: int, *, date: str | None = "Tue, 03 Mar 2026 10:15:00 +0000", body: bytes = b""
) -> bytes:
    headers = [
        b"From: Carol <carol@contoso.example>",
        b"To: Dana <dana@nw.example>",
        f"Subject: message {n}".encode(),
        f"Message-ID: <m{n}@contoso.example>".encode(),
    ]
    if date is not None:
        headers.append(f"Date: {date}".encode())
    return b"\r\n".join(headers) + b"\r\n\r\n" + (body or f"body of {n}\r\n".encode())


def tls_profile(server: Dovecot, **overrides: Any) -> ServerProfile:
    fields: dict[str, Any] = {
        "protocol": Protocol.POP3,
        "host": server.host,
        "port": server.pop3s_port,
        "security": TransportSecurity.TLS,
        "ca_file": str(server.ca_file),
        "timeout_s": 10.0,
    }
    fields.update(overrides)
    return ServerProfile(**fields)


def plain_profile(server: Dovecot, **overrides: Any) -> ServerProfile:
    return tls_profile(
        server,
        port=server.pop3_port,
        security=TransportSecurity.PLAIN,
        ca_file=None,
        **overrides,
    )


class Harness:
    """A Pop3Mailbox wired to recording fakes, rebuilt at will from the saved cursors."""

    def __init__(
        self,
        tmp_path: Path,
        profile: ServerProfile,
        *,
        password: str = PASSWORD,
        leave_on_server: bool | None = None,
        process_email_from: datetime | None = None,
        claim_check_bytes: int = 512 * 1024,
        max_batch_items: int = 10,
    ) -> None:
        self.profile = profile
        self.password = password
        self.config = MailboxConfig(
            mailbox_id=MAILBOX,
            owner=RecordRef("user", "dana"),
            email_address="dana@nw.example",
            protocol=Protocol.POP3,
            server_profile="pop",
            credentials=Credentials(username=USER),
            pop3=None if leave_on_server is None else Pop3Settings(leave_on_server=leave_on_server),
            process_email_from=process_email_from,
        )
        self.blobs = DirectoryBlobStore(tmp_path / "blobs")
        self.claim_check = ClaimCheck(
            self.blobs, ConnectorConfig(claim_check_bytes=claim_check_bytes)
        )
        self.max_batch_items = max_batch_items
        self.gate = ServerGate("pop", 2)
        self.emitter = RecordingEmitter()
        self.store = RecordingStore(self.emitter)
        self.progress: list[tuple[int, int, int]] = []
        """(created, deleted, pending) at each on_batch call (the result object is live)."""
        self.source = self.build()

    def build(self) -> Pop3Mailbox:
        wiring = SourceWiring(
            config=self.config,
            profile=self.profile,
            partition=3,
            cursors=self.store.cursors(),
            emitter=cast(Emitter, self.emitter),
            store=cast(CursorStore, self.store),
            gate=self.gate,
            claim_check=self.claim_check,
            max_batch_items=self.max_batch_items,
        )
        return Pop3Mailbox(wiring, password=lambda: self.password)

    async def sync(self) -> PassResult:
        async def on_batch(result: PassResult) -> None:
            self.progress.append((result.created, result.deleted, result.pending))

        result = await self.source.sync_pass(on_batch)
        assert self.gate.in_use == 0
        return result

    async def fails(self) -> ConnectorError:
        with pytest.raises(ConnectorError) as caught:
            await self.source.sync_pass()
        assert self.gate.in_use == 0
        return caught.value


def server_count(server: Dovecot) -> int:
    """How many messages POP3 STAT reports (a read-only session)."""
    pop = poplib.POP3(server.host, server.pop3_port, timeout=10)
    try:
        pop.user(USER)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
    finally:
        pop.quit()
    return count


def expunge_first(server: Dovecot) -> None:
    imap = server.client(USER, PASSWORD)
    try:
        imap.select("INBOX")
        imap.store("1", "+FLAGS", "\\Deleted")
        imap.expunge()
    finally:
        imap.logout()


@pytest.fixture
def server(dovecot: Dovecot) -> Dovecot:
    dovecot.add_user(USER, PASSWORD)
    return dovecot


# --- tests -----------------------------------------------------------------------------


async def test_sync_over_pop3s_leaves_mail_and_follows_changes(
    server: Dovecot, tmp_path: Path
) -> None:
    originals = [message(n) for n in range(25)]
    server.deliver_many(USER, "INBOX", originals)
    pop = Harness(tmp_path, tls_profile(server))

    first = await pop.sync()
    events = pop.emitter.events
    assert (first.listed, first.created, first.deleted, first.pending) == (25, 25, 0, 0)
    assert [len(b) for b in pop.emitter.batches] == [10, 10, 5]
    assert [e.raw for e in events] == originals  # server order, byte for byte
    for event in events:
        assert event.change == ChangeKind.CREATED and event.folder == "INBOX"
        assert event.event_id == change_event_id(MAILBOX, "INBOX", event.item_id, "created", "")
        assert event.size == len(event.raw or b"") and event.flags == []
        assert event.server_time == datetime(2026, 3, 3, 10, 15, tzinfo=UTC)
        assert event.unreadable_code is None
    assert len({e.item_id for e in events}) == 25
    # The cursor moved after each acknowledged batch, never ahead of it.
    assert [acked for _, acked in pop.store.saves] == [10, 20, 25]
    assert [cast(Pop3Position, c.position).count for c, _ in pop.store.saves] == [10, 20, 25]
    assert pop.store.uidls() == {e.item_id for e in events}
    assert pop.progress == [(10, 0, 15), (20, 0, 5), (25, 0, 0)]
    assert first.counters.items_listed == 25 and first.counters.created_events == 25
    assert server_count(server) == 25  # leave on server is the default

    pop.emitter.take()
    second = await pop.sync()
    assert pop.emitter.events == []
    assert (second.listed, second.created, second.deleted) == (25, 0, 0)
    assert second.counters.created_events == 25

    # A restarted connector (fresh source from the saved cursor) has nothing to emit either.
    pop.source = pop.build()
    await pop.sync()
    assert pop.emitter.events == []

    expunge_first(server)
    third = await pop.sync()
    gone = pop.emitter.take()
    assert [(e.change, e.item_id) for e in gone] == [(ChangeKind.DELETED, events[0].item_id)]
    assert gone[0].event_id == change_event_id(MAILBOX, "INBOX", events[0].item_id, "deleted", "")
    assert (third.listed, third.deleted) == (24, 1)
    assert events[0].item_id not in pop.store.uidls()

    new = message(99, body=b"a new one\r\n")
    server.append(USER, "INBOX", new)
    fourth = await pop.sync()
    [created] = pop.emitter.take()
    assert created.change == ChangeKind.CREATED and created.raw == new
    assert (fourth.listed, fourth.created) == (25, 1)
    # Counters are per source instance: this one was built after the first two passes.
    assert fourth.counters.created_events == 1 and fourth.counters.deleted_events == 1

    listing = await pop.source.list_server_items()
    assert listing.items == {"INBOX": pop.store.uidls()}
    await pop.source.close()
    await pop.source.close()


async def test_event_ids_are_stable_across_replays(server: Dovecot, tmp_path: Path) -> None:
    server.deliver_many(USER, "INBOX", [message(n) for n in range(3)])
    one = Harness(tmp_path / "one", tls_profile(server))
    two = Harness(tmp_path / "two", tls_profile(server))
    await one.sync()
    await two.sync()
    assert [e.event_id for e in one.emitter.events] == [e.event_id for e in two.emitter.events]


async def test_wrong_password_is_permanent_authentication_failed(
    server: Dovecot, tmp_path: Path
) -> None:
    pop = Harness(tmp_path, tls_profile(server), password="not-the-password")
    error = await pop.fails()
    assert error.permanent and error.code == AUTHENTICATION_FAILED
    assert f"{USER}@{server.host}:{server.pop3s_port}" in error.message
    assert "not-the-password" not in error.message and PASSWORD not in error.message


async def test_plaintext_is_refused_unless_the_profile_allows_it(
    server: Dovecot, tmp_path: Path
) -> None:
    server.deliver_many(USER, "INBOX", [message(1)])
    error = await Harness(tmp_path, plain_profile(server)).fails()
    assert error.permanent and error.code == PLAINTEXT_REFUSED
    assert "allow_plaintext = true" in error.message

    allowed = Harness(tmp_path, plain_profile(server, allow_plaintext=True))
    assert (await allowed.sync()).created == 1


async def test_starttls(server: Dovecot, tmp_path: Path) -> None:
    server.deliver_many(USER, "INBOX", [message(1)])
    profile = tls_profile(server, port=server.pop3_port, security=TransportSecurity.STARTTLS)
    assert (await Harness(tmp_path, profile).sync()).created == 1


async def test_an_untrusted_certificate_is_permanent_tls_failed(
    server: Dovecot, tmp_path: Path
) -> None:
    error = await Harness(tmp_path, tls_profile(server, ca_file=None)).fails()
    assert error.permanent and error.code == TLS_FAILED
    by_name = tls_profile(server, host="localhost")  # the certificate names localhost too
    assert (await Harness(tmp_path, by_name).sync()).listed == 0


async def test_verification_off_works_and_warns_every_connect(
    server: Dovecot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pop = Harness(tmp_path, tls_profile(server, ca_file=None, verify_certificates=False))
    with caplog.at_level(logging.WARNING, logger="connectors.transport"):
        await pop.sync()
        await pop.sync()
    warnings = [r for r in caplog.records if "verification is off" in r.getMessage()]
    assert len(warnings) == 2


async def test_a_stopped_server_is_transient_and_the_next_pass_recovers(
    server: Dovecot, tmp_path: Path
) -> None:
    server.deliver_many(USER, "INBOX", [message(1)])
    pop = Harness(tmp_path, tls_profile(server))
    server.stop()
    error = await pop.fails()
    assert not error.permanent and error.code == CONNECTION_REFUSED
    server.start()
    assert (await pop.sync()).created == 1


async def test_leave_on_server_off_deletes_after_acknowledgement(
    server: Dovecot, tmp_path: Path
) -> None:
    server.deliver_many(USER, "INBOX", [message(n) for n in range(12)])
    pop = Harness(tmp_path, tls_profile(server), leave_on_server=False, max_batch_items=5)

    pop.emitter.fail_after = 0  # Kafka does not acknowledge: nothing may be deleted
    with pytest.raises(TimeoutError):
        await pop.source.sync_pass()
    assert pop.gate.in_use == 0
    assert server_count(server) == 12 and pop.store.saves == []

    pop.emitter.fail_after = None
    result = await pop.sync()
    assert result.created == 12
    assert len(pop.emitter.take()) == 12
    assert server_count(server) == 0
    # Each batch's cursor was saved after its acknowledgement; our own deletions then left
    # the cursor, so they are never reported as deleted-on-server.
    assert [acked for _, acked in pop.store.saves] == [5, 10, 12, 12]
    assert pop.store.uidls() == set()

    await pop.sync()
    assert pop.emitter.events == []

    server.deliver_many(USER, "INBOX", [message(50)])
    assert (await pop.sync()).created == 1
    assert server_count(server) == 0


async def test_leave_on_server_off_after_a_failed_pass_deletes_what_was_acknowledged(
    server: Dovecot, tmp_path: Path
) -> None:
    server.deliver_many(USER, "INBOX", [message(n) for n in range(12)])
    pop = Harness(tmp_path, tls_profile(server), leave_on_server=False, max_batch_items=5)
    pop.emitter.fail_after = 1  # the first batch is acknowledged, the second is not
    with pytest.raises(TimeoutError):
        await pop.source.sync_pass()
    # The pass ended without QUIT: the DELEs of the first batch were not committed.
    assert server_count(server) == 12
    acknowledged = {e.item_id for e in pop.emitter.take()}
    assert len(acknowledged) == 5 and pop.store.uidls() == acknowledged

    pop.emitter.fail_after = None
    pop.source = pop.build()  # as after a restart, from the saved cursor
    result = await pop.sync()
    emitted = pop.emitter.take()
    assert (result.created, result.deleted) == (7, 0)
    assert not {e.item_id for e in emitted} & acknowledged
    assert all(e.change == ChangeKind.CREATED for e in emitted)
    assert server_count(server) == 0 and pop.store.uidls() == set()


async def test_a_cancelled_pass_releases_its_connection(server: Dovecot, tmp_path: Path) -> None:
    server.deliver_many(USER, "INBOX", [message(n) for n in range(8)])
    pop = Harness(tmp_path, tls_profile(server), max_batch_items=4)
    pop.emitter.hold = asyncio.Event()
    task = asyncio.create_task(pop.source.sync_pass())
    await asyncio.wait_for(pop.emitter.holding.wait(), 10)
    assert pop.gate.in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pop.gate.in_use == 0
    await pop.source.close()

    pop.emitter.hold = None
    assert (await pop.sync()).created == 8


async def test_close_during_a_pass_fails_it_transiently(server: Dovecot, tmp_path: Path) -> None:
    server.deliver_many(USER, "INBOX", [message(n) for n in range(8)])
    pop = Harness(tmp_path, tls_profile(server), max_batch_items=4)
    pop.emitter.hold = asyncio.Event()
    task = asyncio.create_task(pop.source.sync_pass())
    await asyncio.wait_for(pop.emitter.holding.wait(), 10)
    await pop.source.close()
    pop.emitter.hold.set()  # the first batch is acknowledged after the connection went
    with pytest.raises(ConnectorError) as caught:
        await task
    assert not caught.value.permanent and caught.value.code == CONNECTION_LOST
    assert pop.gate.in_use == 0
    assert len(pop.store.uidls()) == 4

    pop.emitter.hold = None
    assert (await pop.sync()).created == 4
    assert len(pop.store.uidls()) == 8


async def test_leave_on_server_is_the_default_even_with_pop3_settings(
    server: Dovecot, tmp_path: Path
) -> None:
    server.deliver_many(USER, "INBOX", [message(1), message(2)])
    await Harness(tmp_path, tls_profile(server), leave_on_server=True).sync()
    assert server_count(server) == 2


async def test_eight_bit_and_malformed_messages_are_emitted_raw(
    server: Dovecot, tmp_path: Path
) -> None:
    eight_bit = (
        b"Subject: caf\xc3\xa9 \xe9\xff\r\nFrom: <<<not an address\r\n"
        b"this header line has no colon\r\nDate: not a date\r\n\r\n"
        b"\x00\x01 binary \xfe\xff\r\n.a line starting with a dot\r\n..two dots\r\n.\r\n"
        + b"x" * 5000  # one line longer than poplib's 2048-byte limit
        + b"\r\nend\r\n"
    )
    no_headers = b"just some bytes without any header at all\r\n"
    server.deliver_many(USER, "INBOX", [eight_bit, no_headers])
    pop = Harness(tmp_path, tls_profile(server))
    result = await pop.sync()
    assert result.created == 2 and result.unreadable == 0
    first, second = pop.emitter.events
    assert first.raw == eight_bit and second.raw == no_headers
    assert first.server_time is None and second.server_time is None


async def test_large_messages_go_by_claim_check(server: Dovecot, tmp_path: Path) -> None:
    big = message(1, body=b"large body line\r\n" * 400)  # about 7 KB
    small = message(2)
    server.deliver_many(USER, "INBOX", [big, small])
    pop = Harness(tmp_path, tls_profile(server), claim_check_bytes=2048)
    await pop.sync()
    by_ref, inline = pop.emitter.events
    assert by_ref.raw is None and by_ref.blob_ref is not None
    assert pop.blobs.get(by_ref.blob_ref) == big
    assert by_ref.headers is not None and by_ref.headers.startswith(b"From: Carol")
    assert by_ref.headers.endswith(b"\r\n\r\n")
    assert by_ref.preview is not None and by_ref.preview.startswith("large body line")
    assert by_ref.size == len(big)
    assert inline.raw == small and inline.blob_ref is None


async def test_messages_over_max_message_bytes_are_reported_not_retrieved(
    server: Dovecot, tmp_path: Path
) -> None:
    huge = message(1, body=(b"y" * 70 + b"\r\n") * 100)
    server.deliver_many(USER, "INBOX", [huge, message(2)])
    pop = Harness(tmp_path, tls_profile(server, max_message_bytes=4096))
    result = await pop.sync()
    assert (result.created, result.unreadable) == (2, 1)
    too_large, fine = pop.emitter.events
    assert too_large.unreadable_code == "TooLarge" and too_large.raw is None
    assert too_large.unreadable_reason is not None and "4096" in too_large.unreadable_reason
    assert "\n" not in too_large.unreadable_reason
    assert too_large.headers is not None and b"Subject: message 1" in too_large.headers
    assert too_large.size == len(huge)
    assert too_large.server_time == datetime(2026, 3, 3, 10, 15, tzinfo=UTC)
    assert fine.raw == message(2)
    assert pop.store.uidls() == {too_large.item_id, fine.item_id}  # accounted for
    assert result.counters.errors == 1


async def test_process_email_from_skips_older_messages(server: Dovecot, tmp_path: Path) -> None:
    old = message(1, date="Mon, 02 Feb 2026 08:00:00 +0000")
    new = message(2, date="Tue, 03 Mar 2026 10:15:00 +0000")
    undated = message(3, date=None)
    garbled = message(4, date="the day before yesterday")
    server.deliver_many(USER, "INBOX", [old, new, undated, garbled])
    since = datetime(2026, 3, 1, tzinfo=UTC)
    pop = Harness(tmp_path, tls_profile(server), process_email_from=since)

    result = await pop.sync()
    assert [e.raw for e in pop.emitter.take()] == [new, undated, garbled]
    assert (result.listed, result.created) == (3, 3)
    assert len(pop.store.uidls()) == 3  # the skipped one is not in the cursor
    assert (await pop.sync()).created == 0
    assert pop.emitter.events == []

    listing = await pop.source.list_server_items()
    assert listing.items == {"INBOX": pop.store.uidls()}
    fresh = pop.build()  # a new source reads the skipped message's headers again
    assert (await fresh.list_server_items()).items == listing.items


async def test_process_email_from_with_leave_on_server_off_keeps_skipped_mail(
    server: Dovecot, tmp_path: Path
) -> None:
    server.deliver_many(
        USER, "INBOX", [message(1, date="Mon, 02 Feb 2026 08:00:00 +0000"), message(2)]
    )
    since = datetime(2026, 3, 1, tzinfo=UTC)
    pop = Harness(tmp_path, tls_profile(server), leave_on_server=False, process_email_from=since)
    assert (await pop.sync()).created == 1
    assert server_count(server) == 1  # the one outside the window stays


async def test_find_message_reads_headers_then_retrieves_only_the_match(
    server: Dovecot, tmp_path: Path
) -> None:
    old = message(1, date="Mon, 02 Feb 2026 08:00:00 +0000")  # before the start date
    huge = message(7, body=(b"y" * 70 + b"\r\n") * 100)
    server.deliver_many(USER, "INBOX", [message(n) for n in range(2, 6)] + [old, huge])
    since = datetime(2026, 3, 1, tzinfo=UTC)
    pop = Harness(
        tmp_path,
        tls_profile(server, max_message_bytes=4096),
        leave_on_server=False,
        process_email_from=since,
    )
    [found] = await pop.source.find_message("m3@contoso.example")
    assert found.change == ChangeKind.CREATED and found.raw == message(3)
    assert found.event_id == change_event_id(MAILBOX, "INBOX", found.item_id, "created", "")
    assert found.manual_track is None
    # The start date does not apply to a manual track; the size ceiling does.
    [outside] = await pop.source.find_message("m1@contoso.example")
    assert outside.raw == old
    [too_large] = await pop.source.find_message("m7@contoso.example")
    assert too_large.unreadable_code == "TooLarge" and too_large.raw is None
    assert await pop.source.find_message("m9@contoso.example") == []
    assert await pop.source.find_message("m@contoso.example") == []
    assert pop.gate.in_use == 0
    # Looking neither emits, nor moves the cursor, nor deletes (even with leave_on_server off).
    assert pop.emitter.events == [] and pop.store.saves == []
    assert server_count(server) == 6
    await pop.sync()  # the item a sync emits is the one the lookup found
    synced = {e.item_id: e for e in pop.emitter.events}
    assert synced[found.item_id].raw == found.raw
    assert synced[found.item_id].event_id == found.event_id


def test_dovecot_certificate_is_what_the_tests_trust(server: Dovecot) -> None:
    """Guards the TLS tests: the fixture's CA verifies its own POP3S port."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    pop = poplib.POP3_SSL(server.host, server.pop3s_port, context=context, timeout=10)
    pop.quit()
