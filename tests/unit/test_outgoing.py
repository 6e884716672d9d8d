"""The outgoing sender's pure parts: state machine, retry decision, identity, tokens,
message building, SMTP reply classification."""

from __future__ import annotations

import email
import email.policy
import itertools
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from connectors.outgoing import (
    ALLOWED,
    Action,
    TokenCounters,
    TransitionError,
    advance,
    build_message,
    check_transition,
    envelope_recipients,
    first_status,
    message_id_for,
    plan,
    retry_delay,
    subject_for,
    user_number,
)
from connectors.smtp import classify_reply, no_recipients
from schemas.base import RecordRef
from schemas.config import CorrelationConfig, OutgoingConfig
from schemas.errors import OutgoingErrorCode as Code
from schemas.errors import Severity
from schemas.mail import EmailAddress
from schemas.mailbox import (
    MailboxConfig,
    OutgoingSettings,
    Protocol,
    ServerProfile,
    TransportSecurity,
)
from schemas.outgoing import OutgoingEmail, OutgoingStatus, SendStatus
from schemas.tracking_token import find_tokens, subject_with_token

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
TOKENS = CorrelationConfig()

EMAIL = OutgoingEmail(
    activity_id="act-1",
    mailbox_id="mb-alice",
    sender=EmailAddress("alice@northwind.example", "Alice Smith"),
    to=[EmailAddress("dana@contoso.example", "Dana")],
    cc=[EmailAddress("erin@contoso.example")],
    bcc=[EmailAddress("audit@northwind.example"), EmailAddress("DANA@contoso.example")],
    subject="Your quote",
    body_text="Hello Dana,\nthe quote is attached.\n",
    in_reply_to="<m1@contoso.example>",
    requested_at=T0,
)


def status(state: SendStatus, **changes: object) -> OutgoingStatus:
    base = first_status(EMAIL, "CRM:0001001", T0)
    return msgspec.structs.replace(base, status=state, **changes)


# -- state machine -----------------------------------------------------------------


def test_the_happy_path_and_retries_are_allowed() -> None:
    path = [None, SendStatus.PENDING, SendStatus.SENDING, SendStatus.PENDING]
    path += [SendStatus.SENDING, SendStatus.SENT, SendStatus.SENT]
    steps = list(itertools.pairwise(path))
    for old, new in steps:
        check_transition(old, new)
    assert all(new in ALLOWED[old] for old, new in steps)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, SendStatus.SENDING),
        (None, SendStatus.SENT),
        (SendStatus.PENDING, SendStatus.SENT),
        (SendStatus.SENT, SendStatus.PENDING),
        (SendStatus.SENT, SendStatus.SENDING),
        (SendStatus.SENT, SendStatus.FAILED),
        (SendStatus.FAILED, SendStatus.PENDING),
        (SendStatus.FAILED, SendStatus.SENDING),
    ],
)
def test_forbidden_transitions_raise(old: SendStatus | None, new: SendStatus) -> None:
    with pytest.raises(TransitionError):
        check_transition(old, new)


def test_nothing_follows_failed_and_sent_only_records_its_copy() -> None:
    assert ALLOWED[SendStatus.FAILED] == frozenset()
    assert ALLOWED[SendStatus.SENT] == frozenset({SendStatus.SENT})


def test_advance_clears_the_last_error_and_stamps_the_time() -> None:
    failed_once = status(SendStatus.PENDING, error_code="OutgoingTransient", error_message="x")
    sending = advance(failed_once, SendStatus.SENDING, T0 + timedelta(1), attempt=2)
    assert sending.status == SendStatus.SENDING
    assert (sending.error_code, sending.error_message) == (None, None)
    assert sending.attempt == 2
    assert sending.updated_at == T0 + timedelta(1)
    assert sending.message_id == failed_once.message_id
    with pytest.raises(TransitionError):
        advance(status(SendStatus.FAILED), SendStatus.SENDING, T0)


def test_plan_sends_a_new_email_as_attempt_one() -> None:
    assert plan(None, T0) == plan(None, T0, wants_copy=True)
    assert plan(None, T0).action == Action.SEND
    assert plan(None, T0).attempt == 1
    assert plan(None, T0).delay_s == 0


def test_plan_never_resends_what_may_have_reached_the_server() -> None:
    step = plan(status(SendStatus.SENDING, attempt=3), T0)
    assert step.action == Action.RESOLVE
    assert step.attempt == 3


def test_plan_leaves_final_statuses_alone_except_an_owed_copy() -> None:
    assert plan(status(SendStatus.FAILED), T0, wants_copy=True).action == Action.DONE
    assert plan(status(SendStatus.SENT), T0).action == Action.DONE
    assert plan(status(SendStatus.SENT), T0, wants_copy=True).action == Action.COPY
    copied = status(SendStatus.SENT, copied_to_sent=True)
    assert plan(copied, T0, wants_copy=True).action == Action.DONE


def test_plan_resumes_a_pending_email_on_its_retry_clock() -> None:
    waiting = status(SendStatus.PENDING, attempt=2, next_attempt_at=T0 + timedelta(seconds=90))
    step = plan(waiting, T0)
    assert (step.action, step.attempt, step.delay_s) == (Action.SEND, 3, 90.0)
    overdue = plan(waiting, T0 + timedelta(hours=1))
    assert overdue.delay_s == 0.0
    assert plan(status(SendStatus.PENDING), T0).attempt == 1  # read, never tried


# -- retry decision ----------------------------------------------------------------


def test_retry_defaults_are_dynamics_ten_times_five_minutes_apart() -> None:
    settings = OutgoingConfig()
    assert (settings.max_retries, settings.retry_interval_s) == (10, 300.0)
    delays = [retry_delay(n, settings, rand=lambda: 0.5) for n in range(1, 12)]
    assert delays[:10] == [300.0] * 10
    assert delays[10] is None


def test_retry_delay_jitters_within_ten_percent() -> None:
    settings = OutgoingConfig(max_retries=2, retry_interval_s=10.0)
    assert retry_delay(1, settings, rand=lambda: 0.0) == pytest.approx(9.0)
    assert retry_delay(2, settings, rand=lambda: 1.0) == pytest.approx(11.0)
    assert retry_delay(3, settings, rand=lambda: 0.5) is None
    assert retry_delay(1, OutgoingConfig(max_retries=0)) is None


def test_outgoing_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        OutgoingConfig(max_retries=-1)
    with pytest.raises(ValueError, match="max_in_flight"):
        OutgoingConfig(max_in_flight=0)


def test_smtp_replies_are_classified_by_their_code() -> None:
    busy = classify_reply(451, "DATA", "alice@smtp:587", "try later")
    assert (busy.code, busy.severity) == (Code.TRANSIENT, Severity.TRANSIENT)
    rejected = classify_reply(554, "DATA", "alice@smtp:587", "spam")
    assert (rejected.code, rejected.severity) == (Code.REJECTED, Severity.PERMANENT)
    assert "554 spam" in rejected.message
    sender = classify_reply(553, "MAIL FROM", "smtp:25")
    assert sender.code == Code.SENDER_REFUSED
    assert no_recipients({"a@x": 550, "b@x": 553}, "smtp:25").code == Code.NO_RECIPIENTS
    assert no_recipients({"a@x": 550, "b@x": 450}, "smtp:25").severity == Severity.TRANSIENT
    assert no_recipients({}, "").severity == Severity.PERMANENT


def test_smtp_profiles_default_to_the_submission_ports() -> None:
    def port(security: TransportSecurity) -> int:
        profile = ServerProfile(protocol=Protocol.SMTP, host="smtp", security=security)
        return profile.effective_port()

    assert port(TransportSecurity.TLS) == 465
    assert port(TransportSecurity.STARTTLS) == 587
    assert port(TransportSecurity.PLAIN) == 25


# -- identity and tokens ---------------------------------------------------------


def test_message_id_is_stable_per_activity_and_in_the_sender_domain() -> None:
    first = message_id_for("act-1", "alice@Northwind.example")
    assert first == message_id_for("act-1", "alice@northwind.example")
    assert first != message_id_for("act-2", "alice@northwind.example")
    assert first.endswith("@northwind.example")
    assert "<" not in first
    assert message_id_for("act-1", "nobody").endswith("@tidings.invalid")


def test_first_status_keeps_a_message_id_the_crm_chose() -> None:
    chosen = msgspec.structs.replace(EMAIL, message_id="<crm-7@northwind.example>")
    assert first_status(chosen, None, T0).message_id == "crm-7@northwind.example"
    fresh = first_status(EMAIL, "CRM:0001001", T0)
    assert fresh.message_id == message_id_for("act-1", "alice@northwind.example")
    assert (fresh.status, fresh.attempt, fresh.tracking_token) == (
        SendStatus.PENDING,
        0,
        "CRM:0001001",
    )


def test_token_goes_at_the_end_of_the_subject_once() -> None:
    assert subject_with_token("Your quote", "CRM:0001001", TOKENS) == "Your quote CRM:0001001"
    assert subject_with_token("  ", "CRM:0001001", TOKENS) == "CRM:0001001"
    replied = "RE: Your quote [crm:0001001]"
    assert subject_with_token(replied, "CRM:0001002", TOKENS) == replied


def test_token_only_when_correlation_by_token_is_on() -> None:
    assert subject_for(EMAIL, "CRM:0001001", TOKENS) == "Your quote CRM:0001001"
    off = CorrelationConfig(tracking_token=False)
    assert subject_for(EMAIL, "CRM:0001001", off) == "Your quote"
    assert subject_for(EMAIL, None, TOKENS) == "Your quote"


def test_token_counters_never_collide_across_partitions_and_resume() -> None:
    counters = TokenCounters(TOKENS, partitions=4)
    on_0 = [counters.issue(0, 7) for _ in range(3)]
    on_1 = [counters.issue(1, 7) for _ in range(3)]
    assert on_0 == ["CRM:0007000", "CRM:0007004", "CRM:0007008"]
    assert on_1 == ["CRM:0007001", "CRM:0007005", "CRM:0007009"]
    assert counters.issue(0, 8) == "CRM:0008000"
    for token in on_0 + on_1:
        assert find_tokens(f"Quote {token}", TOKENS) == [token]
    rebuilt = TokenCounters(TOKENS, partitions=4)
    for token in on_0:
        rebuilt.seen(0, token)
    rebuilt.seen(0, "OLD:0007099")  # another prefix does not count
    assert rebuilt.issue(0, 7) == "CRM:0007012"
    rebuilt.forget(0)
    assert rebuilt.issue(0, 7) == "CRM:0007000"


def test_token_counter_wraps_like_dynamics() -> None:
    counters = TokenCounters(CorrelationConfig(token_counter_digits=1), partitions=3)
    issued = [counters.issue(2, 1) for _ in range(5)]
    assert issued == ["CRM:00012", "CRM:00015", "CRM:00018", "CRM:00011", "CRM:00014"]


def test_user_number_is_configured_or_stable_from_the_owner() -> None:
    mailbox = MailboxConfig(
        mailbox_id="mb",
        owner=RecordRef("user", "alice"),
        email_address="alice@northwind.example",
        protocol=Protocol.IMAP,
    )
    derived = user_number(mailbox, 3)
    assert 0 <= derived < 1000
    assert derived == user_number(mailbox, 3)
    other = msgspec.structs.replace(mailbox, owner=RecordRef("user", "bob"))
    assert user_number(other, 6) != user_number(mailbox, 6)
    configured = msgspec.structs.replace(
        mailbox, outgoing=OutgoingSettings(server_profile="smtp", token_user_number=42)
    )
    assert user_number(configured, 3) == 42


# -- the message -------------------------------------------------------------------


def test_envelope_lists_every_recipient_once_bcc_included() -> None:
    assert envelope_recipients(EMAIL) == [
        "dana@contoso.example",
        "erin@contoso.example",
        "audit@northwind.example",
    ]


def test_built_message_carries_headers_for_correlation_and_no_bcc() -> None:
    raw = build_message(EMAIL, "tidings.abc@northwind.example", "Your quote CRM:0001001", T0)
    assert b"\r\n" in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Message-ID"] == "<tidings.abc@northwind.example>"
    assert parsed["In-Reply-To"] == "<m1@contoso.example>"
    assert parsed["References"] == "<m1@contoso.example>"
    assert parsed["Subject"] == "Your quote CRM:0001001"
    assert parsed["From"] == "Alice Smith <alice@northwind.example>"
    assert parsed["To"] == "Dana <dana@contoso.example>"
    assert parsed["Cc"] == "erin@contoso.example"
    assert parsed["Bcc"] is None
    assert b"audit@northwind.example" not in raw
    assert parsed.get_content().startswith("Hello Dana,")


def test_built_message_is_the_same_bytes_every_time_html_included() -> None:
    html = msgspec.structs.replace(EMAIL, body_html="<p>Hello <b>Dana</b></p>")
    first = build_message(html, "tidings.abc@northwind.example", "S", T0)
    assert first == build_message(html, "tidings.abc@northwind.example", "S", T0)
    parsed = email.message_from_bytes(first, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    body = parsed.get_body(("html",))
    assert body is not None
    assert "<b>Dana</b>" in body.get_content()


def test_non_ascii_subject_and_names_are_encoded() -> None:
    umlauts = msgspec.structs.replace(
        EMAIL, subject="Angebot für Jörg", sender=EmailAddress("alice@northwind.example", "Ålice")
    )
    raw = build_message(umlauts, "x@northwind.example", umlauts.subject, T0)
    assert raw.isascii()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Angebot für Jörg"
    assert "Ålice" in str(parsed["From"])
