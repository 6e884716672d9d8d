"""Forward mailbox: messages forwarded as attachments are decided as the forwarder's mail."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from processors.changes import StageOutput, handle_change
from processors.directory import Mailboxes
from processors.engine import DecisionEngine
from schemas.config import ProcessingConfig
from schemas.crm import DecisionStatus, ReasonCode
from schemas.errors import Severity
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import IncomingFilter
from tests.connector_harness import message
from tests.unit.helpers import MAILBOXES, T0, engine, mailbox

FORWARD = msgspec.structs.replace(
    mailbox("mb-forward", "queue:support", "crm-forward@nw.example", IncomingFilter.ALL),
    forward_mailbox=True,
)
SETTINGS = ProcessingConfig()


def original(n: int) -> EmailMessage:
    """Message n as a user received it (From Dana, Message-ID <imap-n@contoso.example>)."""
    parsed = email.message_from_bytes(message(n, "Order"), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def wrapper(sender: str, *attached: EmailMessage) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "crm-forward@nw.example"
    message["Subject"] = "FW: orders"
    message["Message-ID"] = "<wrapper-1@nw.example>"
    message.set_content("Forwarded by a server rule.\n")
    for inner in attached:
        message.add_attachment(inner)
    return message.as_bytes()


def event(raw: bytes) -> MailItemChanged:
    return MailItemChanged(
        event_id="ev-fwd-1",
        mailbox_id="mb-forward",
        folder="INBOX",
        item_id="17.M1",
        change=ChangeKind.CREATED,
        observed_at=T0,
        size=len(raw),
        raw=raw,
    )


def mailboxes() -> Mailboxes:
    found = Mailboxes()
    for config in [*MAILBOXES, FORWARD]:
        found.apply(config.mailbox_id, config)
    return found


def stage(raw: bytes) -> StageOutput:
    return handle_change(event(raw), FORWARD, SETTINGS, T0, None, mailboxes().by_address)


def test_each_attached_message_becomes_mail_of_the_forwarder() -> None:
    out = stage(wrapper("alice@nw.example", original(1), original(2)))
    assert out.decision is not None
    assert (out.decision.status, out.decision.reason) == (
        DecisionStatus.SKIPPED,
        ReasonCode.FORWARDED,
    )
    assert "mb-alice" in out.decision.explanation
    parsed = [f.parsed for f in out.forwarded]
    assert [p.message_id if p else None for p in parsed] == [
        "imap-1@contoso.example",
        "imap-2@contoso.example",
    ]
    for item in parsed:
        assert item is not None
        assert (item.mailbox_id, item.folder) == ("mb-alice", "INBOX")
        assert item.sender is not None and item.sender.address == "dana@contoso.example"
        assert item.item_id.startswith("fwd:mb-forward:17.M1#")
    assert len({p.event_id for p in parsed if p}) == 2


def test_unwrapping_again_yields_the_same_items() -> None:
    raw = wrapper("alice@nw.example", original(1))
    assert stage(raw) == stage(raw)


def test_the_unwrapped_message_is_decided_by_the_forwarders_mailbox() -> None:
    eng: DecisionEngine = engine()
    [forwarded] = stage(wrapper("alice@nw.example", original(1))).forwarded
    assert forwarded.parsed is not None
    decision = eng.process(forwarded.parsed, 0, T0).decisions[0]
    # mb-alice tracks responses only, and this order answers no tracked email.
    assert decision.mailbox_id == "mb-alice"
    assert decision.reason == ReasonCode.NO_CORRELATION_MATCH


def test_a_forward_from_an_unknown_address_is_an_error_not_a_drop() -> None:
    out = stage(wrapper("mallory@elsewhere.example", original(1)))
    assert out.forwarded == ()
    assert out.decision is not None and out.decision.reason == ReasonCode.FORWARD_UNATTRIBUTED
    assert out.error is not None and out.error.severity == Severity.PERMANENT
    assert "mallory@elsewhere.example" in out.error.message


def test_a_message_with_nothing_attached_is_unattributed() -> None:
    out = stage(wrapper("alice@nw.example"))
    assert out.decision is not None and out.decision.reason == ReasonCode.FORWARD_UNATTRIBUTED
    assert out.error is not None and "carries none" in out.error.message


def test_ordinary_mailboxes_do_not_unwrap() -> None:
    plain = msgspec.structs.replace(FORWARD, forward_mailbox=False)
    raw = wrapper("alice@nw.example", original(1))
    out = handle_change(event(raw), plain, SETTINGS, T0, None, mailboxes().by_address)
    assert out.parsed is not None and out.parsed.message_id == "wrapper-1@nw.example"
    assert out.forwarded == ()


def test_forward_mailboxes_are_never_the_target() -> None:
    found = mailboxes()
    assert found.by_address("crm-forward@nw.example") is None
    assert found.by_address("ALICE@nw.example") is not None


@given(st.binary(max_size=2000))
def test_unwrapping_any_bytes_never_raises(raw: bytes) -> None:
    out = stage(raw)
    assert out.decision is not None or out.parsed is not None


@given(st.text(max_size=300))
def test_unwrapping_any_attached_text_never_raises(text: str) -> None:
    inner = "From: x@y\r\nSubject: s\r\n\r\n" + text
    raw = (
        "From: alice@nw.example\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + "\r\n--b--\r\n"
    ).encode("utf-8", "surrogatepass")
    out = stage(raw)
    assert out.decision is not None
    assert out.decision.reason in (ReasonCode.FORWARDED, ReasonCode.FORWARD_UNATTRIBUTED) or (
        out.decision.status == DecisionStatus.ERRORED
    )
