"""connectors.pop3 without a server: listing and diffing UIDLs, cursor positions, the
date window, reading multi-line answers, and classifying failures."""

from __future__ import annotations

import io
import poplib
import ssl
import zlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.errors import (
    AUTHENTICATION_FAILED,
    CONFIGURATION,
    CONNECTION_LOST,
    CONNECTION_REFUSED,
    PLAINTEXT_REFUSED,
    PROTOCOL_ERROR,
    SERVER_BUSY,
    TIMEOUT,
    TLS_FAILED,
    ConnectorError,
)
from connectors.gate import ServerGate
from connectors.pop3 import (
    PIPELINE_DEPTH,
    Fetched,
    ListedMessage,
    Pop3Mailbox,
    Pop3Session,
    changes_since,
    classify_os_error,
    classify_response,
    decode_position,
    encode_position,
    header_date,
    in_window,
    is_item_refusal,
    parse_listing,
    plan_batches,
    read_multiline,
    response_code,
    response_of,
    tls_context,
)
from connectors.source import SourceWiring
from schemas.base import RecordRef
from schemas.blobs import DirectoryBlobStore
from schemas.config import ConnectorConfig
from schemas.mailbox import (
    AuthMethod,
    Credentials,
    Cursor,
    MailboxConfig,
    Pop3Position,
    Protocol,
    ServerProfile,
    TransportSecurity,
    cursor_key,
)

SERVER = "pop.example:995"
USER = "dana"


def msg(number: int, uidl: str, size: int = 100) -> ListedMessage:
    return ListedMessage(number, uidl, size)


# --- listing and diffing -------------------------------------------------------------------


def test_parse_listing_joins_uidl_and_list_in_server_order() -> None:
    uidls = [b"2 000000020000000a", b"1 000000010000000a", b"3 000000030000000a"]
    sizes = [b"1 120", b"2 4500", b"3 77"]
    assert parse_listing(uidls, sizes) == [
        msg(1, "000000010000000a", 120),
        msg(2, "000000020000000a", 4500),
        msg(3, "000000030000000a", 77),
    ]


def test_parse_listing_tolerates_broken_servers() -> None:
    uidls = [b"1 same", b"2 same", b"3 other", b"garbage", b"4", b"x y", b""]
    sizes = [b"1 10", b"3 notanumber"]
    # A repeated UIDL keeps its first message; a message missing from LIST has size 0.
    assert parse_listing(uidls, sizes) == [msg(1, "same", 10), msg(3, "other", 0)]


def test_parse_listing_keeps_non_ascii_uidls_round_trip() -> None:
    listed = parse_listing([b"1 caf\xe9"], [b"1 5"])
    assert listed == [msg(1, "caf\xe9", 5)]
    assert decode_position(encode_position({listed[0].uidl})) == {"caf\xe9"}


def test_changes_since_finds_new_messages_in_server_order_and_gone_uidls_sorted() -> None:
    listed = [msg(1, "b"), msg(2, "z"), msg(3, "a")]
    changes = changes_since({"b", "y", "x"}, listed)
    assert changes.created == [msg(2, "z"), msg(3, "a")]
    assert changes.deleted == ["x", "y"]


def test_changes_since_with_nothing_new_is_empty() -> None:
    listed = [msg(1, "a"), msg(2, "b")]
    changes = changes_since({"a", "b"}, listed)
    assert changes.created == [] and changes.deleted == []


@given(
    seen=st.sets(st.text(alphabet="abcdef0123", min_size=1, max_size=4), max_size=20),
    present=st.sets(st.text(alphabet="abcdef0123", min_size=1, max_size=4), max_size=20),
)
def test_applying_the_changes_to_the_cursor_yields_the_listing(
    seen: set[str], present: set[str]
) -> None:
    listed = [msg(i + 1, uidl) for i, uidl in enumerate(sorted(present))]
    changes = changes_since(seen, listed)
    after = (seen - set(changes.deleted)) | {m.uidl for m in changes.created}
    assert after == present
    assert not set(changes.deleted) & present


def test_plan_batches_cuts_by_items_and_bytes() -> None:
    messages = [msg(i, f"u{i}", 10) for i in range(1, 8)]
    assert [len(b) for b in plan_batches(messages, 3, 1000, 10_000)] == [3, 3, 1]
    assert [len(b) for b in plan_batches(messages, 100, 25, 10_000)] == [2, 2, 2, 1]


def test_plan_batches_puts_a_big_message_alone_and_too_large_ones_weigh_nothing() -> None:
    messages = [msg(1, "a", 10), msg(2, "big", 500), msg(3, "c", 10), msg(4, "huge", 10**9)]
    batches = plan_batches(messages, 100, 100, 1000)
    assert [[m.uidl for m in b] for b in batches] == [["a"], ["big"], ["c", "huge"]]
    assert plan_batches([], 10, 10, 10) == []


# --- cursor positions --------------------------------------------------------------------


def test_position_is_zlib_of_sorted_newline_joined_uidls() -> None:
    position = encode_position({"b", "a", "c"})
    assert position.count == 3
    assert zlib.decompress(position.uidls_z) == b"a\nb\nc"
    assert decode_position(position) == {"a", "b", "c"}


def test_empty_position_decodes_to_empty_set() -> None:
    assert decode_position(encode_position(set())) == set()
    assert decode_position(Pop3Position(uidls_z=b"", count=0)) == set()


@given(st.sets(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=255), min_size=1)))
def test_position_round_trips(uidls: set[str]) -> None:
    assert decode_position(encode_position(uidls)) == uidls


# --- the date window ---------------------------------------------------------------------


def test_header_date_parses_the_date_header() -> None:
    raw = b"From: a@b.example\r\nDate: Tue, 03 Mar 2026 10:15:00 +0100\r\n\r\nbody\r\n"
    assert header_date(raw) == datetime(2026, 3, 3, 9, 15, tzinfo=UTC)


def test_header_date_without_zone_is_utc() -> None:
    raw = b"Date: Tue, 03 Mar 2026 10:15:00 -0000\r\n\r\n"
    parsed = header_date(raw)
    assert parsed == datetime(2026, 3, 3, 10, 15, tzinfo=UTC)
    assert parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@b.example\r\n\r\nno date\r\n",
        b"Date: yesterday-ish\r\n\r\n",
        b"Date: \r\n\r\n",
        b"Date: \xff\xfe garbage \x80\r\n\r\n",
        b"",
        b"\x00\x01\x02 not a message at all",
    ],
)
def test_header_date_is_none_when_missing_or_invalid(raw: bytes) -> None:
    assert header_date(raw) is None


def test_header_date_takes_the_first_date_field_unfolded_in_any_case() -> None:
    raw = (
        b"Subject: x\r\ndate:   Tue, 03 Mar 2026\r\n\t 10:15:00\r\n  +0000\r\n"
        b"Date: Wed, 04 Mar 2026 10:15:00 +0000\r\n\r\n"
    )
    assert header_date(raw) == datetime(2026, 3, 3, 10, 15, tzinfo=UTC)
    assert header_date(b"X-Date: Tue, 03 Mar 2026 10:15:00 +0000\r\n\r\n") is None
    lf_only = b"Subject: x\nDate: Tue, 03 Mar 2026 10:15:00 +0000\n\nbody\n"
    assert header_date(lf_only) == datetime(2026, 3, 3, 10, 15, tzinfo=UTC)


def test_header_date_ignores_a_date_line_in_the_body() -> None:
    raw = b"Subject: x\r\n\r\nDate: Tue, 03 Mar 2026 10:15:00 +0000\r\n"
    assert header_date(raw) is None


def test_in_window() -> None:
    since = datetime(2026, 3, 1, tzinfo=UTC)
    assert in_window(None, since)  # no Date: included
    assert in_window(since, None)  # no window
    assert in_window(since, since)
    assert in_window(since + timedelta(seconds=1), since)
    assert not in_window(since - timedelta(seconds=1), since)
    # naive datetimes are UTC; other zones compare by instant
    assert not in_window(datetime(2026, 2, 28, 23, 59), since)
    plus_two = timezone(timedelta(hours=2))
    assert not in_window(datetime(2026, 3, 1, 1, 0, tzinfo=plus_two), since)
    assert in_window(datetime(2026, 3, 1, 1, 0), since.replace(tzinfo=None))


# --- responses and failures ----------------------------------------------------------------


def test_response_of_accepts_str_and_bytes() -> None:
    assert response_of(poplib.error_proto(b"-ERR [AUTH] no")) == b"-ERR [AUTH] no"
    assert response_of(poplib.error_proto("-ERR EOF")) == b"-ERR EOF"
    assert response_of(poplib.error_proto()) == b""


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (b"-ERR [AUTH] Authentication failed.", "AUTH"),
        (b"-ERR [IN-USE] Mailbox is locked", "IN-USE"),
        (b"-ERR [sys/temp] later", "SYS/TEMP"),
        (b"-ERR [SYS/PERM] broken", "SYS/PERM"),
        (b"-ERR Authentication failed", None),
        (b"+OK [AUTH] not an error", None),
        (b"-ERR no code [AUTH] later in the text", None),
    ],
)
def test_response_code(response: bytes, code: str | None) -> None:
    assert response_code(response) == code


def test_is_item_refusal() -> None:
    assert is_item_refusal(b"-ERR Message 3 expunged")
    assert is_item_refusal(b"-ERR [SYS/PERM] cannot read it")
    assert not is_item_refusal(b"-ERR [IN-USE] locked")
    assert not is_item_refusal(b"-ERR [SYS/TEMP] later")
    assert not is_item_refusal(b"-ERR EOF")
    assert not is_item_refusal(b"line too long")


def classify(response: bytes, command: str) -> ConnectorError:
    return classify_response(response, command=command, server=SERVER, account=USER)


@pytest.mark.parametrize("command", ["USER", "PASS"])
def test_login_refusal_is_permanent_authentication_failed(command: str) -> None:
    error = classify(b"-ERR [AUTH] Authentication failed.", command)
    assert error.permanent and error.code == AUTHENTICATION_FAILED
    assert f"{USER}@{SERVER}" in error.message
    assert "[AUTH]" in error.message
    assert classify(b"-ERR Authentication failed.", command).code == AUTHENTICATION_FAILED


def test_server_text_is_never_in_the_message() -> None:
    echo = b"-ERR [AUTH] PASS hunter2 is wrong for dana"
    for command in ("USER", "PASS", "RETR", "STLS", "UIDL"):
        error = classify(echo, command)
        assert "hunter2" not in error.message and "is wrong" not in error.message


@pytest.mark.parametrize("code", ["IN-USE", "SYS/TEMP", "LOGIN-DELAY"])
@pytest.mark.parametrize("command", ["PASS", "UIDL", "RETR"])
def test_busy_codes_are_transient_server_busy(code: str, command: str) -> None:
    error = classify(b"-ERR [" + code.encode() + b"] try later", command)
    assert not error.permanent and error.code == SERVER_BUSY
    assert code in error.message


def test_other_protocol_errors_are_transient() -> None:
    error = classify(b"-ERR Unknown command", "UIDL")
    assert not error.permanent and error.code == PROTOCOL_ERROR
    assert "UIDL" in error.message
    assert classify(b"line too long", "LIST").code == PROTOCOL_ERROR
    assert classify(b"* garbage", "RETR").code == PROTOCOL_ERROR


def test_closed_connection_is_transient_connection_lost() -> None:
    error = classify(b"-ERR EOF", "PASS")
    assert not error.permanent and error.code == CONNECTION_LOST


def test_stls_refused_is_permanent_tls_failed() -> None:
    error = classify(b"-ERR STLS not supported by server", "STLS")
    assert error.permanent and error.code == TLS_FAILED


def test_os_errors() -> None:
    refused = classify_os_error(ConnectionRefusedError(111, "Connection refused"), SERVER)
    assert refused.code == CONNECTION_REFUSED and not refused.permanent
    assert classify_os_error(TimeoutError(), SERVER).code == TIMEOUT
    lost = classify_os_error(ConnectionResetError(104, "reset by peer"), SERVER)
    assert lost.code == CONNECTION_LOST and not lost.permanent


def test_certificate_failure_is_permanent() -> None:
    error = classify_os_error(ssl.SSLCertVerificationError(1, "certificate verify failed"), SERVER)
    assert error.permanent and error.code == TLS_FAILED
    assert "ca_file" in error.message


def test_tls_to_a_plaintext_port_is_permanent_and_an_eof_is_transient() -> None:
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    wrong.reason = "WRONG_VERSION_NUMBER"
    assert classify_os_error(wrong, SERVER).permanent
    eof = classify_os_error(ssl.SSLEOFError(8, "EOF occurred"), SERVER)
    assert not eof.permanent and eof.code == CONNECTION_LOST
    other = classify_os_error(ssl.SSLError(1, "something"), SERVER)
    assert not other.permanent and other.code == TLS_FAILED


# --- multi-line answers ----------------------------------------------------------------


def test_read_multiline_unstuffs_and_keeps_bytes_exactly() -> None:
    body = b"Subject: x\r\n\r\n..leading dot\r\nbare lf\n8-bit \xe9\xff\r\n.\r\nNEXT"
    stream = io.BytesIO(body)
    raw, truncated = read_multiline(stream, 10_000)
    assert raw == b"Subject: x\r\n\r\n.leading dot\r\nbare lf\n8-bit \xe9\xff\r\n"
    assert not truncated
    assert stream.read() == b"NEXT"  # the next answer is untouched


def test_read_multiline_caps_but_stays_in_step() -> None:
    long_line = b"x" * 200_000 + b"\r\n"  # longer than one read chunk
    stream = io.BytesIO(b"H: v\r\n\r\n" + long_line + b".\r\n+OK next\r\n")
    raw, truncated = read_multiline(stream, 100)
    assert truncated and len(raw) == 100 and raw.startswith(b"H: v\r\n\r\n")
    assert stream.read() == b"+OK next\r\n"


def test_read_multiline_dot_inside_a_long_line_is_data() -> None:
    line = b"a" * (64 * 1024 - 1) + b".\r\n"  # the '.' starts the second read chunk
    raw, _ = read_multiline(io.BytesIO(line + b".\r\n"), 10**6)
    assert raw == line


def test_read_multiline_empty_body() -> None:
    assert read_multiline(io.BytesIO(b".\r\n"), 10) == (b"", False)
    assert read_multiline(io.BytesIO(b".\n"), 10) == (b"", False)


def test_read_multiline_raises_when_the_connection_closes() -> None:
    with pytest.raises(ConnectionResetError):
        read_multiline(io.BytesIO(b"Subject: x\r\n"), 100)


# --- one session, scripted ----------------------------------------------------------------


class _ScriptedConn:
    """Stands in for poplib.POP3: records what is sent, answers from a script."""

    def __init__(self, answers: bytes) -> None:
        self.sent: list[bytes] = []
        self.file = io.BytesIO(answers)
        self.sock = self

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)


def scripted(answers: bytes, *, pipelining: bool) -> tuple[Pop3Session, _ScriptedConn]:
    conn = _ScriptedConn(answers)
    session = Pop3Session(cast(poplib.POP3, conn))
    session.pipelining = pipelining
    return session, conn


MESSAGES = [msg(1, "a", 20), msg(2, "b", 20), msg(3, "c", 5000), msg(4, "d", 20)]
ANSWERS = (
    b"+OK 20 octets\r\nSubject: one\r\n\r\n1\r\n.\r\n"
    b"-ERR Message 2 expunged\r\n"
    b"+OK\r\nSubject: three\r\n\r\n.\r\n"
    b"+OK\r\nSubject: four\r\n\r\n..4\r\n.\r\n"
)


@pytest.mark.parametrize("pipelining", [True, False])
def test_fetch_reads_retr_and_top_answers_in_order(pipelining: bool) -> None:
    session, conn = scripted(ANSWERS, pipelining=pipelining)
    fetched = session.fetch(MESSAGES, max_message_bytes=1000, header_cap=100)
    assert fetched == [
        Fetched(raw=b"Subject: one\r\n\r\n1\r\n"),
        Fetched(refused=True),
        Fetched(headers=b"Subject: three\r\n\r\n"),
        Fetched(raw=b"Subject: four\r\n\r\n.4\r\n"),
    ]
    commands = b"RETR 1\r\nRETR 2\r\nTOP 3 0\r\nRETR 4\r\n"
    assert b"".join(conn.sent) == commands
    assert len(conn.sent) == (1 if pipelining else 4)


def test_pipeline_depth_bounds_the_commands_in_flight() -> None:
    count = PIPELINE_DEPTH * 2 + 1
    session, conn = scripted(b"+OK\r\n" * count, pipelining=True)
    session.delete(list(range(1, count + 1)))
    assert [d.count(b"DELE") for d in conn.sent] == [PIPELINE_DEPTH, PIPELINE_DEPTH, 1]


def test_a_message_longer_than_listed_is_reported_too_large() -> None:
    body = b"Subject: liar\r\n\r\n" + b"z" * 2000 + b"\r\n.\r\n"
    session, _ = scripted(b"+OK\r\n" + body, pipelining=True)
    [fetched] = session.fetch([msg(1, "a", 10)], max_message_bytes=1000, header_cap=100)
    assert fetched == Fetched(headers=b"Subject: liar\r\n\r\n")


def test_a_busy_answer_or_a_refused_dele_stops_the_session() -> None:
    session, _ = scripted(b"-ERR [SYS/TEMP] try later\r\n", pipelining=True)
    with pytest.raises(poplib.error_proto) as busy:
        session.fetch([msg(1, "a")], 1000, 100)
    assert response_code(response_of(busy.value)) == "SYS/TEMP"
    session, _ = scripted(b"-ERR no such message\r\n", pipelining=True)
    with pytest.raises(poplib.error_proto):
        session.delete([7])
    session, _ = scripted(b"+OK\r\nSubject: cut", pipelining=True)
    with pytest.raises(ConnectionResetError):
        session.fetch([msg(1, "a")], 1000, 100)


def test_headers_of_maps_refusals_to_none() -> None:
    answers = b"+OK\r\nDate: Tue, 03 Mar 2026 10:15:00 +0000\r\n\r\n.\r\n-ERR no\r\n"
    session, _ = scripted(answers, pipelining=False)
    assert session.headers_of([1, 2], 100) == [
        b"Date: Tue, 03 Mar 2026 10:15:00 +0000\r\n\r\n",
        None,
    ]


# --- TLS context ---------------------------------------------------------------------------


def profile(**overrides: Any) -> ServerProfile:
    fields: dict[str, Any] = {"protocol": Protocol.POP3, "host": "127.0.0.1", "port": 1}
    fields.update(overrides)
    return ServerProfile(**fields)


def test_tls_context_verifies_by_default() -> None:
    context = tls_context(profile())
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_tls_context_without_verification() -> None:
    context = tls_context(profile(verify_certificates=False))
    assert not context.check_hostname and context.verify_mode == ssl.CERT_NONE


# --- the source refuses bad configuration before connecting ---------------------------------


class _Unused:
    async def emit_changes(self, events: object, protocol: str) -> None:
        raise AssertionError("nothing may be emitted")

    async def save(self, *args: object) -> None:
        raise AssertionError("nothing may be saved")


CREDENTIALS = Credentials(username=USER)


def mailbox_config(credentials: Credentials | None = CREDENTIALS) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id="mb-1",
        owner=RecordRef("user", "alice"),
        email_address="dana@nw.example",
        protocol=Protocol.POP3,
        credentials=credentials,
    )


def source(
    tmp_path: Path,
    server: ServerProfile,
    config: MailboxConfig | None = None,
    password: Any = lambda: "secret",
    cursors: dict[str, Cursor] | None = None,
) -> tuple[Pop3Mailbox, ServerGate]:
    gate = ServerGate("p", 1)
    fake = _Unused()
    wiring = SourceWiring(
        config=config or mailbox_config(),
        profile=server,
        partition=0,
        cursors=cursors or {},
        emitter=cast(Emitter, fake),
        store=cast(CursorStore, fake),
        gate=gate,
        claim_check=ClaimCheck(DirectoryBlobStore(tmp_path / "blobs"), ConnectorConfig()),
        max_batch_items=10,
    )
    mailbox = Pop3Mailbox(wiring, password=password)
    return mailbox, gate


async def refused(mailbox: Pop3Mailbox) -> ConnectorError:
    with pytest.raises(ConnectorError) as caught:
        await mailbox.sync_pass()
    return caught.value


async def test_plaintext_is_refused_unless_allowed(tmp_path: Path) -> None:
    mailbox, gate = source(tmp_path, profile(security=TransportSecurity.PLAIN))
    error = await refused(mailbox)
    assert error.permanent and error.code == PLAINTEXT_REFUSED
    assert "allow_plaintext = true" in error.message
    assert gate.in_use == 0
    with pytest.raises(ConnectorError) as listing:
        await mailbox.list_server_items()
    assert listing.value.code == PLAINTEXT_REFUSED


async def test_xoauth2_is_a_configuration_error(tmp_path: Path) -> None:
    server = profile(auth=AuthMethod.XOAUTH2, token_provider="tokens:get")
    error = await refused(source(tmp_path, server)[0])
    assert error.permanent and error.code == CONFIGURATION and "XOAUTH2" in error.message


async def test_missing_credentials_is_a_configuration_error(tmp_path: Path) -> None:
    error = await refused(source(tmp_path, profile(), mailbox_config(credentials=None))[0])
    assert error.permanent and error.code == CONFIGURATION


async def test_an_imap_profile_is_a_configuration_error(tmp_path: Path) -> None:
    error = await refused(source(tmp_path, profile(protocol=Protocol.IMAP))[0])
    assert error.permanent and error.code == CONFIGURATION


async def test_unresolvable_password_is_a_configuration_error(tmp_path: Path) -> None:
    def missing() -> str:
        raise LookupError("environment variable POP_PASSWORD is not set")

    error = await refused(source(tmp_path, profile(), password=missing)[0])
    assert error.permanent and error.code == CONFIGURATION
    assert "POP_PASSWORD" in error.message


async def test_unreadable_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    server = profile(ca_file=str(tmp_path / "missing.pem"))
    error = await refused(source(tmp_path, server)[0])
    assert error.permanent and error.code == CONFIGURATION and "ca_file" in error.message


async def test_cursor_is_read_from_the_inbox_key(tmp_path: Path) -> None:
    cursor = Cursor(
        mailbox_id="mb-1",
        folder="INBOX",
        position=encode_position({"u1", "u2"}),
        updated_at=datetime(2026, 3, 1, tzinfo=UTC),
    )
    mailbox, _ = source(tmp_path, profile(), cursors={cursor_key("mb-1", "INBOX"): cursor})
    assert mailbox.seen == {"u1", "u2"}
    assert mailbox.leave_on_server
    await mailbox.close()
    await mailbox.close()  # idempotent


async def test_wait_for_change_just_sleeps(tmp_path: Path) -> None:
    mailbox, _ = source(tmp_path, profile())
    await mailbox.wait_for_change(0.01)
