"""Connector parts without a server: the IMAP source's pure helpers, retry arithmetic,
the per-profile connection gate, the IMAP session's checks and its response loop,
counter folding, and the server-profile and cursor schemas."""

from __future__ import annotations

import asyncio
import random
import ssl
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors import errors
from connectors.errors import ConnectorError
from connectors.gate import GateRegistry, ServerGate
from connectors.imap import SizeBounds, fetch_jobs, item_id, pick_folders, unchanged, visible_flags
from connectors.imap_protocol import ListedFolder
from connectors.imap_session import (
    ImapSession,
    _FastProtocol,
    _FetchCommand,
    check_transport,
    classify_refusal,
    tls_context,
)
from connectors.retry import RetryTracker, retry_delay
from connectors.runtime import _as_connector_error
from connectors.source import PassResult, fold_counters
from schemas.errors import DecodeError, Severity
from schemas.mailbox import (
    AuthMethod,
    Cursor,
    FolderRole,
    ImapFolderPosition,
    ImapSettings,
    MailboxCounters,
    MaildirPosition,
    Pop3Position,
    Protocol,
    RetryPolicy,
    ServerProfile,
    TransportSecurity,
)
from schemas.topics import CONNECTOR_CURSORS, codec


def profile(**overrides: Any) -> ServerProfile:
    fields: dict[str, Any] = {"protocol": Protocol.IMAP, "host": "imap.nw.example"}
    fields.update(overrides)
    return ServerProfile(**fields)


def folder(name: str, *attributes: str, delimiter: str | None = "/") -> ListedFolder:
    return ListedFolder(name, frozenset(a.lower() for a in attributes), delimiter)


# --- imap.py: identities and flags -------------------------------------------------------------


def test_item_id_is_uidvalidity_and_uid() -> None:
    assert item_id(1795269594, 42) == "1795269594:42"
    assert item_id(1, 2) != item_id(2, 1)


def test_visible_flags_drop_recent_and_sort() -> None:
    assert visible_flags(["\\Seen", "\\Recent", "\\Answered", "\\RECENT", "$Label1"]) == [
        "$Label1",
        "\\Answered",
        "\\Seen",
    ]
    assert visible_flags([]) == []


# --- imap.py: which folders --------------------------------------------------------------------


def test_special_use_sent_wins_over_names() -> None:
    listed = [folder("INBOX"), folder("Sent"), folder("Gesendet", "\\Sent", "\\HasNoChildren")]
    assert pick_folders(listed, ImapSettings()) == [
        ("INBOX", FolderRole.INBOX),
        ("Gesendet", FolderRole.SENT),
    ]


def test_sent_by_name_is_case_insensitive_and_keeps_the_servers_spelling() -> None:
    listed = [folder("INBOX"), folder("SENT ITEMS"), folder("Drafts")]
    assert pick_folders(listed, ImapSettings()) == [
        ("INBOX", FolderRole.INBOX),
        ("SENT ITEMS", FolderRole.SENT),
    ]


def test_sent_names_are_tried_in_order() -> None:
    listed = [folder("INBOX"), folder("Sent Messages"), folder("Sent")]
    chosen = pick_folders(listed, ImapSettings())
    assert chosen[1] == ("Sent", FolderRole.SENT)
    custom = ImapSettings(sent_names=["Sent Messages", "Sent"])
    assert pick_folders(listed, custom)[1] == ("Sent Messages", FolderRole.SENT)


def test_no_sent_folder_means_inbox_only() -> None:
    assert pick_folders([folder("INBOX"), folder("Trash")], ImapSettings()) == [
        ("INBOX", FolderRole.INBOX)
    ]


def test_include_sent_false_skips_sent() -> None:
    listed = [folder("INBOX"), folder("Sent", "\\Sent"), folder("Projects")]
    settings = ImapSettings(include_sent=False, folders=["Projects"])
    assert pick_folders(listed, settings) == [
        ("INBOX", FolderRole.INBOX),
        ("Projects", FolderRole.OTHER),
    ]


def test_configured_folders_follow_without_duplicates() -> None:
    listed = [folder("INBOX"), folder("Sent", "\\Sent"), folder("Projects"), folder("Clients")]
    settings = ImapSettings(folders=["INBOX", "Sent", "Projects", "Clients", "Projects"])
    assert pick_folders(listed, settings) == [
        ("INBOX", FolderRole.INBOX),
        ("Sent", FolderRole.SENT),
        ("Projects", FolderRole.OTHER),
        ("Clients", FolderRole.OTHER),
    ]


def test_inbox_marked_sent_is_not_taken_twice() -> None:
    listed = [folder("INBOX", "\\Sent")]
    assert pick_folders(listed, ImapSettings()) == [("INBOX", FolderRole.INBOX)]


def test_a_configured_folder_the_server_lacks_is_permanent_mailbox_missing() -> None:
    listed = [folder("INBOX"), folder("Sent")]
    with pytest.raises(ConnectorError) as caught:
        pick_folders(listed, ImapSettings(folders=["Archive/2025"]))
    error = caught.value
    assert error.permanent and error.severity == Severity.PERMANENT
    assert error.code == errors.MAILBOX_MISSING
    assert error.folder == "Archive/2025"
    assert "Archive/2025" in error.message


def test_a_configured_inbox_in_any_case_is_inbox() -> None:
    listed = [folder("INBOX"), folder("Sent", "\\Sent")]
    assert pick_folders(listed, ImapSettings(folders=["Inbox"])) == [
        ("INBOX", FolderRole.INBOX),
        ("Sent", FolderRole.SENT),
    ]


# --- imap.py: STATUS shortcut ------------------------------------------------------------------

POSITION = ImapFolderPosition(uidvalidity=9, uidnext=5, highestmodseq=7, uids="1:4", exists=4)
STATUS = {"UIDVALIDITY": 9, "UIDNEXT": 5, "MESSAGES": 4, "HIGHESTMODSEQ": 7}


def test_unchanged_when_status_matches_the_position() -> None:
    assert unchanged(POSITION, STATUS)


@pytest.mark.parametrize(
    ("key", "value"),
    [("UIDVALIDITY", 10), ("UIDNEXT", 6), ("MESSAGES", 3), ("HIGHESTMODSEQ", 8)],
)
def test_any_moved_value_is_a_change(key: str, value: int) -> None:
    assert not unchanged(POSITION, {**STATUS, key: value})


def test_missing_status_items() -> None:
    without_modseq = {k: v for k, v in STATUS.items() if k != "HIGHESTMODSEQ"}
    assert not unchanged(POSITION, without_modseq)  # the position knew a modseq
    plain = ImapFolderPosition(uidvalidity=9, uidnext=5, uids="1:4", exists=4)
    assert unchanged(plain, without_modseq)  # no CONDSTORE on either side
    assert not unchanged(POSITION, {})


def test_a_position_saved_mid_pass_is_never_unchanged() -> None:
    partial = ImapFolderPosition(uidvalidity=9, uidnext=5, highestmodseq=7, exists=-1)
    assert not unchanged(partial, STATUS)
    assert not unchanged(partial, {**STATUS, "MESSAGES": 0})


# --- imap.py: fetch jobs ------------------------------------------------------------------------


MiB = 1024 * 1024


def test_fetch_jobs_bound_ordinary_runs_by_count() -> None:
    small = SizeBounds({}, set())
    assert fetch_jobs([5, 1, 2, 3, 4], small, 2, MiB, max_message_bytes=100) == [
        ([1, 2], False),
        ([3, 4], False),
        ([5], False),
    ]
    assert fetch_jobs([], small, 3, MiB, max_message_bytes=10) == []


def test_fetch_jobs_bound_runs_by_bytes_of_the_size_classes() -> None:
    # 1 MiB holds 64 small (16 KiB) messages, or 8 that may be up to 128 KiB.
    assert [
        len(uids) for uids, _ in fetch_jobs(range(1, 101), SizeBounds({}, set()), 1000, MiB, 0)
    ] == [64, 36]
    unknown = SizeBounds({})  # classes not asked: any message may be up to 128 KiB
    assert [len(uids) for uids, _ in fetch_jobs(range(1, 21), unknown, 1000, MiB, 0)] == [8, 8, 4]
    mixed = SizeBounds({}, {1, 2, 3, 4})  # 4 x 128 KiB + 32 x 16 KiB = 1 MiB
    assert [len(uids) for uids, _ in fetch_jobs(range(1, 41), mixed, 1000, MiB, 0)] == [36, 4]


def test_big_messages_go_alone_and_huge_ones_as_headers() -> None:
    sizes = SizeBounds({2: 500, 5: 600}, set())
    jobs = fetch_jobs([1, 2, 3, 4, 5, 6], sizes, 10, MiB, max_message_bytes=550)
    assert jobs == [([1], False), ([2], False), ([3, 4], False), ([5], True), ([6], False)]


@given(
    st.sets(st.integers(1, 10**6), max_size=120),
    st.dictionaries(st.integers(1, 10**6), st.integers(0, 5000), max_size=20),
    st.one_of(st.none(), st.sets(st.integers(1, 10**6), max_size=60)),
    st.integers(1, 20),
    st.integers(1, 20),
    st.integers(1, 5000),
)
def test_fetch_jobs_properties(
    new: set[int],
    big: dict[int, int],
    medium: set[int] | None,
    fetch_batch: int,
    budget_units: int,
    max_bytes: int,
) -> None:
    sizes = SizeBounds(big, medium)
    fetch_bytes = budget_units * 64 * 1024
    jobs = fetch_jobs(sorted(new), sizes, fetch_batch, fetch_bytes, max_bytes)
    # Every UID exactly once, ascending across and within jobs.
    assert [uid for uids, _ in jobs for uid in uids] == sorted(new)
    for uids, headers_only in jobs:
        assert 1 <= len(uids) <= fetch_batch
        if any(uid in big for uid in uids):
            assert len(uids) == 1
        else:  # within the budget, unless one message alone is over it
            assert len(uids) == 1 or sum(sizes.upper_bound(u) for u in uids) <= fetch_bytes
        assert headers_only == (len(uids) == 1 and big.get(uids[0], 0) > max_bytes)


# --- retry.py ----------------------------------------------------------------------------------

POLICY = RetryPolicy(
    reconnect_attempts=4,
    reconnect_base_s=1.0,
    reconnect_max_s=5.0,
    retry_interval_s=300.0,
    max_retries=2,
)


def low() -> float:
    return 0.0


def high() -> float:
    return 0.999999


def test_no_failure_no_delay() -> None:
    assert retry_delay(0, POLICY) == 0.0


def test_reconnects_grow_exponentially_with_jitter_capped() -> None:
    ceilings = [1.0, 2.0, 4.0, 5.0]  # base * 2^(n-1), capped at reconnect_max_s
    for failures, ceiling in enumerate(ceilings, start=1):
        assert retry_delay(failures, POLICY, low) == pytest.approx(ceiling / 2)
        assert retry_delay(failures, POLICY, high) == pytest.approx(ceiling, rel=1e-5)
        assert retry_delay(failures, POLICY, lambda: 0.5) == pytest.approx(ceiling * 0.75)


def test_then_the_slow_retry_interval_with_ten_percent_jitter() -> None:
    for failures in (5, 6):
        assert retry_delay(failures, POLICY, low) == pytest.approx(270.0)
        assert retry_delay(failures, POLICY, high) == pytest.approx(330.0, rel=1e-5)
        assert retry_delay(failures, POLICY, lambda: 0.5) == pytest.approx(300.0)


def test_then_give_up() -> None:
    assert retry_delay(7, POLICY, low) is None
    assert retry_delay(100, POLICY, high) is None


@given(st.integers(1, 40), st.floats(0.0, 1.0, exclude_max=True))
def test_retry_delay_bounds(failures: int, jitter: float) -> None:
    policy = RetryPolicy()
    delay = retry_delay(failures, policy, lambda: jitter)
    if failures <= policy.reconnect_attempts:
        ceiling = min(policy.reconnect_max_s, policy.reconnect_base_s * 2 ** (failures - 1))
        assert delay is not None and ceiling / 2 <= delay <= ceiling
    elif failures <= policy.reconnect_attempts + policy.max_retries:
        assert delay is not None
        assert 0.9 * policy.retry_interval_s <= delay <= 1.1 * policy.retry_interval_s
    else:
        assert delay is None


def test_retry_tracker_counts_and_resets() -> None:
    tracker = RetryTracker(POLICY)
    delays = [tracker.failed() for _ in range(7)]
    assert tracker.failures == 7
    assert all(d is not None and 0.5 <= d <= 5.0 for d in delays[:4])
    assert all(d is not None and 270.0 <= d <= 330.0 for d in delays[4:6])
    assert delays[6] is None
    tracker.succeeded()
    assert tracker.failures == 0
    first = tracker.failed()
    assert first is not None and 0.5 <= first <= 1.0


# --- gate.py -----------------------------------------------------------------------------------


async def test_gate_never_exceeds_max_connections() -> None:
    gate = ServerGate("corp", 3)
    held = 0
    peak = 0

    async def worker(i: int) -> None:
        nonlocal held, peak
        async with gate.slot():
            held += 1
            peak = max(peak, held)
            assert gate.in_use <= 3
            await asyncio.sleep(0.001 * (i % 4))
            held -= 1

    await asyncio.gather(*(worker(i) for i in range(20)))
    assert peak == 3
    assert gate.in_use == 0
    assert not gate.contended.is_set()


async def test_contended_while_someone_waits_and_release_wakes_the_waiter() -> None:
    gate = ServerGate("corp", 1)
    await gate.acquire()
    assert gate.in_use == 1 and not gate.contended.is_set()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.contended.is_set()
    assert not waiter.done()
    gate.release()
    await asyncio.wait_for(waiter, 1.0)
    assert gate.in_use == 1
    assert not gate.contended.is_set()
    gate.release()
    assert gate.in_use == 0


async def test_contended_stays_set_until_the_last_waiter_is_served() -> None:
    gate = ServerGate("corp", 1)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()
    await asyncio.wait_for(first, 1.0)
    assert gate.contended.is_set()  # the second still waits
    gate.release()
    await asyncio.wait_for(second, 1.0)
    assert not gate.contended.is_set()
    assert gate.in_use == 1


async def test_a_cancelled_waiter_clears_contended() -> None:
    gate = ServerGate("corp", 1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.contended.is_set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not gate.contended.is_set()
    assert gate.in_use == 1
    gate.release()
    await asyncio.wait_for(gate.acquire(), 1.0)  # the slot is free again
    assert gate.in_use == 1


def test_registry_returns_one_gate_per_profile() -> None:
    registry = GateRegistry()
    corp = registry.gate("corp", 2)
    assert registry.gate("corp", 99) is corp
    assert corp.max_connections == 2  # fixed by the first caller
    other = registry.gate("other", 5)
    assert other is not corp and other.max_connections == 5


# --- imap_session.py: checks before connecting -------------------------------------------------


def test_plaintext_is_refused_unless_allowed() -> None:
    with pytest.raises(ConnectorError) as caught:
        check_transport(profile(security=TransportSecurity.PLAIN))
    error = caught.value
    assert error.permanent and error.code == errors.PLAINTEXT_REFUSED
    assert "allow_plaintext" in error.message
    assert "imap.nw.example:143" in error.message
    check_transport(profile(security=TransportSecurity.PLAIN, allow_plaintext=True))
    check_transport(profile(security=TransportSecurity.TLS))
    check_transport(profile(security=TransportSecurity.STARTTLS))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AUTHENTICATIONFAILED", errors.AUTHENTICATION_FAILED),
        ("AUTHORIZATIONFAILED", errors.AUTHENTICATION_FAILED),
        ("EXPIRED", errors.AUTHENTICATION_FAILED),
        ("NOPERM", errors.FORBIDDEN),
        ("NONEXISTENT", errors.MAILBOX_MISSING),
        ("PRIVACYREQUIRED", errors.PLAINTEXT_REFUSED),
    ],
)
def test_refusals_with_permanent_codes(code: str, expected: str) -> None:
    lines = [b"[%s] the server's own words, password=hunter2" % code.encode()]
    error = classify_refusal("SELECT", lines, "bob@imap.nw.example:993")
    assert error.permanent and error.code == expected
    assert "bob@imap.nw.example:993" in error.message and code in error.message
    assert "hunter2" not in error.message and "own words" not in error.message


@pytest.mark.parametrize(
    "code", ["UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "CONTACTADMIN", "OVERQUOTA"]
)
def test_refusals_with_busy_codes_are_transient(code: str) -> None:
    error = classify_refusal("STATUS", [b"[%s] try later" % code.encode()], "srv")
    assert not error.permanent and error.code == errors.SERVER_BUSY
    assert code in error.message


@pytest.mark.parametrize(
    "lines", [[b"[CANNOT] no"], [b"Mailbox is locked"], [], [b"[UIDNEXT 4] x", b"failed"]]
)
def test_other_refusals_are_transient_protocol_errors(lines: list[bytes | bytearray]) -> None:
    error = classify_refusal("FETCH", lines, "srv")
    assert error.severity == Severity.TRANSIENT and error.code == errors.PROTOCOL_ERROR
    assert error.message.startswith("srv: FETCH failed")


def test_tls_context_verifies_by_default() -> None:
    context = tls_context(profile())
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_tls_context_without_verification() -> None:
    context = tls_context(profile(verify_certificates=False))
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_NONE


async def test_open_refuses_plaintext_before_connecting() -> None:
    async def secret() -> str:
        raise AssertionError("the secret must not be read")

    with pytest.raises(ConnectorError) as caught:
        await ImapSession.open(profile(security=TransportSecurity.PLAIN), "bob", secret)
    assert caught.value.code == errors.PLAINTEXT_REFUSED


async def test_open_with_an_unreadable_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    async def secret() -> str:
        raise AssertionError("the secret must not be read")

    server = profile(ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConnectorError) as caught:
        await ImapSession.open(server, "bob", secret)
    assert caught.value.permanent and caught.value.code == errors.CONFIGURATION


# --- imap_session.py: the response loop --------------------------------------------------------

TAG = "TDGS12"


def message_body(i: int) -> bytes:
    """Bodies of varied sizes, some of them made to confuse a line-oriented parser."""
    head = b"Subject: message %d\r\n\r\n" % i
    if i % 7 == 0:
        return b""
    if i % 5 == 0:
        return head + b"(((( unbalanced\r\n* %d FETCH (UID %d BODY[] {3}\r\n" % (i + 1, i + 1)
    if i % 3 == 0:
        return head + b"%s OK Fetch completed.\r\n)))\r\n" % TAG.encode()
    return head + b"hello world! " * (i % 11)


def fetch_answer(count: int) -> bytes:
    parts = []
    for i in range(1, count + 1):
        body = message_body(i)
        parts.append(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (i, i, len(body)) + body)
        # Some servers send attributes after the literal, on the closing line.
        parts.append(b" FLAGS (\\Seen))\r\n" if i % 2 else b")\r\n")
    parts.append(b"%s OK Fetch completed (0.002 + 0.000 + 0.001 secs).\r\n" % TAG.encode())
    return b"".join(parts)


def chunked(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    chunks = []
    pos = 0
    while pos < len(data):
        size = rng.randint(1, largest)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


async def run_fetch(chunks: list[bytes]) -> _FetchCommand:
    protocol = _FastProtocol(asyncio.get_running_loop(), None)
    protocol.state = "SELECTED"
    command = _FetchCommand(TAG, "1:*", "(UID BODY.PEEK[])", prefix="UID")
    protocol.pending_async_commands["FETCH"] = command
    for chunk in chunks:
        protocol.data_received(chunk)
    await asyncio.wait_for(command.wait(), 1.0)
    assert protocol.pending_async_commands == {}
    return command


def assert_fetched(command: _FetchCommand, count: int) -> None:
    assert command.response.result == "OK"
    messages = command.messages()
    assert [m.uid for m in messages] == list(range(1, count + 1))
    for m in messages:
        assert m.body == message_body(m.uid)
        assert m.flags == (("\\Seen",) if m.uid % 2 else ())


async def test_fast_protocol_reads_2000_messages_in_one_chunk() -> None:
    # Stock aioimaplib recurses once per line and raises RecursionError here.
    command = await run_fetch([fetch_answer(2000)])
    assert_fetched(command, 2000)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_fast_protocol_reads_2000_messages_in_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    command = await run_fetch(chunked(fetch_answer(2000), rng, largest=4096))
    assert_fetched(command, 2000)


async def test_fast_protocol_reads_an_answer_byte_by_byte() -> None:
    data = fetch_answer(40)
    command = await run_fetch([data[i : i + 1] for i in range(len(data))])
    assert_fetched(command, 40)


async def test_fast_protocol_waits_for_the_tagged_line() -> None:
    protocol = _FastProtocol(asyncio.get_running_loop(), None)
    protocol.state = "SELECTED"
    command = _FetchCommand(TAG, "1:2", "(UID BODY.PEEK[])", prefix="UID")
    protocol.pending_async_commands["FETCH"] = command
    data = fetch_answer(2)
    tagged = data.rindex(TAG.encode())
    protocol.data_received(data[:tagged])
    assert not command._event.is_set()
    protocol.data_received(data[tagged:])
    assert command._event.is_set()
    assert_fetched(command, 2)


# --- source.py ---------------------------------------------------------------------------------


def test_fold_counters_keeps_the_latest_listing_and_accumulates_the_rest() -> None:
    before = MailboxCounters(
        items_listed=50, created_events=10, updated_events=2, deleted_events=1, errors=3
    )
    result = PassResult(listed=48, created=5, updated=4, deleted=3, unreadable=2, pending=9)
    assert fold_counters(before, result) == MailboxCounters(
        items_listed=48, created_events=15, updated_events=6, deleted_events=4, errors=5
    )
    assert fold_counters(MailboxCounters(), PassResult()) == MailboxCounters()


# --- schemas: server profiles ------------------------------------------------------------------


def test_xoauth2_needs_a_token_provider() -> None:
    with pytest.raises(ValueError, match="token_provider"):
        profile(auth=AuthMethod.XOAUTH2)
    ok = profile(auth=AuthMethod.XOAUTH2, token_provider="tokens:get")
    assert ok.token_provider == "tokens:get"


@pytest.mark.parametrize(
    ("protocol", "security", "port"),
    [
        (Protocol.IMAP, TransportSecurity.TLS, 993),
        (Protocol.IMAP, TransportSecurity.STARTTLS, 143),
        (Protocol.IMAP, TransportSecurity.PLAIN, 143),
        (Protocol.POP3, TransportSecurity.TLS, 995),
        (Protocol.POP3, TransportSecurity.STARTTLS, 110),
        (Protocol.POP3, TransportSecurity.PLAIN, 110),
    ],
)
def test_effective_port_defaults(
    protocol: Protocol, security: TransportSecurity, port: int
) -> None:
    assert profile(protocol=protocol, security=security).effective_port() == port
    assert profile(protocol=protocol, security=security, port=1993).effective_port() == 1993


@pytest.mark.parametrize("batch", [0, -1, 1001])
def test_fetch_batch_out_of_bounds_is_rejected(batch: int) -> None:
    with pytest.raises(ValueError, match="fetch_batch"):
        profile(fetch_batch=batch)


@pytest.mark.parametrize("batch", [1, 100, 1000])
def test_fetch_batch_within_bounds(batch: int) -> None:
    assert profile(fetch_batch=batch).fetch_batch == batch


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        profile(max_connections=0)


def test_profile_validation_also_applies_when_decoding() -> None:
    raw = b'{"protocol": "imap", "host": "h", "auth": "xoauth2"}'
    with pytest.raises(msgspec.ValidationError, match="token_provider"):
        msgspec.json.decode(raw, type=ServerProfile)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"protocol": "imap", "host": "h", "hots": 1}', type=ServerProfile)
    decoded = msgspec.json.decode(b'{"protocol": "pop3", "host": "h"}', type=ServerProfile)
    assert decoded.effective_port() == 995 and decoded.retry == RetryPolicy()


# --- schemas: cursor positions on connector.cursors --------------------------------------------

CURSOR_CODEC = codec(CONNECTOR_CURSORS)
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("position", "tag"),
    [
        (
            ImapFolderPosition(
                uidvalidity=1795269594,
                uidnext=5,
                highestmodseq=5,
                uids="1:3,5",
                count=4,
                exists=4,
            ),
            "imap",
        ),
        (ImapFolderPosition(uidvalidity=1, uidnext=1), "imap"),
        (Pop3Position(uidls_z=zlib.compress(b"u1\nu2"), count=2), "pop3"),
        (MaildirPosition(names_z=zlib.compress(b"a\nb\nc"), count=3), "maildir"),
    ],
)
def test_positions_round_trip_inside_a_cursor(
    position: ImapFolderPosition | Pop3Position | MaildirPosition, tag: str
) -> None:
    cursor = Cursor(mailbox_id="mb-1", folder="INBOX", position=position, updated_at=NOW)
    data = CURSOR_CODEC.encode(cursor)
    assert msgspec.json.decode(data)["position"]["type"] == tag
    decoded = CURSOR_CODEC.decode(data)
    assert decoded == cursor
    assert type(decoded.position) is type(position)


def test_imap_position_defaults_when_decoding_an_older_writer() -> None:
    data = (
        b'{"mailbox_id": "mb-1", "folder": "Sent", "updated_at": "2026-03-01T09:00:00Z",'
        b' "position": {"type": "imap", "uidvalidity": 7, "uidnext": 12}}'
    )
    decoded = CURSOR_CODEC.decode(data)
    assert decoded.position == ImapFolderPosition(uidvalidity=7, uidnext=12)
    assert isinstance(decoded.position, ImapFolderPosition)
    assert decoded.position.uids == "" and decoded.position.highestmodseq == 0


def test_a_position_with_an_unknown_tag_is_a_decode_error() -> None:
    data = (
        b'{"mailbox_id": "mb-1", "folder": "INBOX", "updated_at": "2026-03-01T09:00:00Z",'
        b' "position": {"type": "ews", "sync_state": "x"}}'
    )
    with pytest.raises(DecodeError):
        CURSOR_CODEC.decode(data, "tidings.connector.cursors", 0, 12)


def test_an_unexpected_exception_in_a_pass_is_a_transient_internal_error() -> None:
    failure = _as_connector_error(TypeError("EWSDateTime is not JSON serializable"), "mb-1")
    assert (failure.code, failure.permanent) == (errors.INTERNAL_ERROR, False)
    assert "TypeError" in str(failure)
    lost = _as_connector_error(ConnectionResetError(104, "reset by peer"), "mb-1")
    assert (lost.code, lost.permanent) == ("ReadFailed", False)
    known = errors.permanent(errors.AUTHENTICATION_FAILED, "wrong password")
    assert _as_connector_error(known, "mb-1") is known
