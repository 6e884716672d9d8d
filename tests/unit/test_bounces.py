"""Bounces: what a delivery status notification returns, and how it marks tracked email."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.parse import ParseFailure, parse_item
from schemas.config import ProcessingConfig
from schemas.crm import CorrelationMethod, DecisionStatus, ReasonCode
from schemas.ids import email_activity_id
from schemas.mail import AutoReplyKind, ChangeKind, MailItemChanged, ParsedEmail
from schemas.mailbox import FolderRole
from tests.unit.helpers import T0, engine

ORIGINAL_HEADERS = (
    "From: alice@nw.example\r\n"
    "To: nobody@contoso.example\r\n"
    "Subject: Quote\r\n"
    "Message-ID: <{mid}>\r\n"
    "References: <{root}>\r\n"
)


def dsn(returned_id: str, root: str, *, headers_only: bool = False) -> bytes:
    """A multipart/report delivery failure for the message `returned_id` (RFC 3464)."""
    original = ORIGINAL_HEADERS.format(mid=returned_id, root=root)
    returned_part = (
        "Content-Type: text/rfc822-headers\r\n\r\n" + original
        if headers_only
        else "Content-Type: message/rfc822\r\n\r\n" + original + "\r\nHello Bob.\r\n"
    )
    text = (
        "From: MAILER-DAEMON@nw.example\r\n"
        "To: alice@nw.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@nw.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\r\n\r\n'
        "--R\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--R\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.nw.example\r\n\r\n"
        "Final-Recipient: rfc822; nobody@contoso.example\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        "--R\r\n" + returned_part + "\r\n--R--\r\n"
    )
    return text.encode()


def parsed(raw: bytes, mailbox_id: str = "mb-alice") -> ParsedEmail:
    event = MailItemChanged(
        event_id="ev-dsn",
        mailbox_id=mailbox_id,
        folder="INBOX",
        item_id="dsn-1",
        change=ChangeKind.CREATED,
        observed_at=T0,
        raw=raw,
    )
    result = parse_item(event, FolderRole.INBOX, 10_000)
    assert not isinstance(result, ParseFailure)
    return result


@pytest.mark.parametrize("headers_only", [False, True])
def test_the_returned_message_and_failure_are_read(headers_only: bool) -> None:
    email = parsed(dsn("crm-1@nw.example", "root@nw.example", headers_only=headers_only))
    assert email.auto_reply == AutoReplyKind.BOUNCE
    assert email.bounced_message_id == "crm-1@nw.example"
    assert email.thread_key == "root@nw.example"  # meets the returned message's conversation
    assert email.bounce_detail == "5.1.1 nobody@contoso.example (550 5.1.1 user unknown)"


def test_a_bounce_of_tracked_email_marks_it_and_is_not_an_activity() -> None:
    out = engine().process(parsed(dsn("crm-1@nw.example", "root@nw.example")), 0, T0)
    [decision] = out.decisions
    assert (decision.status, decision.reason) == (DecisionStatus.SKIPPED, ReasonCode.BOUNCE)
    assert decision.correlated_activity_id == email_activity_id("crm-1@nw.example")
    assert decision.correlation_method == CorrelationMethod.IN_REPLY_TO
    assert "crm-1@nw.example" in decision.explanation
    assert "5.1.1 nobody@contoso.example" in decision.explanation
    assert out.activities == []


def test_marking_can_be_switched_off() -> None:
    settings = ProcessingConfig(mark_bounces=False)
    out = engine(settings).process(parsed(dsn("crm-1@nw.example", "root@nw.example")), 0, T0)
    assert out.decisions[0].reason == ReasonCode.CORRELATION_MATCH


def test_a_bounce_of_untracked_email_is_skipped_and_waits_for_it() -> None:
    eng = engine()
    bounce = parsed(dsn("unknown@nw.example", "root@nw.example"))
    out = eng.process(bounce, 0, T0)
    assert out.decisions[0].reason == ReasonCode.BOUNCE
    assert out.decisions[0].correlated_activity_id is None
    held = eng.state.get_held(bounce.thread_key)
    assert held is not None and "unknown@nw.example" in held.items[0].waiting_on


@given(st.text(max_size=400))
def test_any_delivery_status_text_never_raises(text: str) -> None:
    raw = dsn("crm-1@nw.example", "root@nw.example").replace(
        b"Action: failed", ("Action: failed\r\n" + text.replace("\r", " ")).encode()
    )
    result = parsed(raw)
    assert result.auto_reply == AutoReplyKind.BOUNCE
    assert result.bounced_message_id == "crm-1@nw.example"
