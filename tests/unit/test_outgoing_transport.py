"""The pure parts of sending through SMTP, EWS and Graph: which transport a mailbox
uses, how EWS and Graph failures map onto the SMTP Outgoing* codes (transient,
permanent, outcome unknown), and Bcc carried in the MIME for EWS and Graph."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.errors import ConnectorError
from connectors.outgoing_transport import (
    Choice,
    choose,
    ews_failure,
    graph_failure,
    with_bcc,
)
from schemas.base import RecordRef, RecordType
from schemas.errors import OutgoingErrorCode as Code
from schemas.mail import EmailAddress
from schemas.mailbox import (
    GraphApp,
    MailboxConfig,
    MaildirSettings,
    OutgoingSettings,
    Protocol,
    ServerProfile,
)
from schemas.outgoing import OutgoingEmail
from schemas.secret import SecretRef

APP = GraphApp(tenant_id="t", client_id="c", client_secret=SecretRef(env="X"))
PROFILES = {
    "smtp": ServerProfile(protocol=Protocol.SMTP, host="smtp.example"),
    "exchange": ServerProfile(protocol=Protocol.EWS, host="ex.example"),
    "m365": ServerProfile(protocol=Protocol.GRAPH, host="graph.example", graph=APP),
    "imap": ServerProfile(protocol=Protocol.IMAP, host="imap.example"),
}


def mailbox(protocol: Protocol, profile: str | None, outgoing: str | None = None) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id="mb-1",
        owner=RecordRef(type=RecordType.USER, id="u1"),
        email_address="alice@example.com",
        protocol=protocol,
        server_profile=profile,
        maildir=MaildirSettings(path="/tmp/x") if protocol == Protocol.MAILDIR else None,
        outgoing=OutgoingSettings(server_profile=outgoing) if outgoing else None,
    )


@pytest.mark.parametrize(
    ("config", "protocol", "profile"),
    [
        (mailbox(Protocol.IMAP, "imap", "smtp"), Protocol.SMTP, "smtp"),
        (mailbox(Protocol.IMAP, "imap", "exchange"), Protocol.EWS, "exchange"),
        (mailbox(Protocol.EWS, "exchange"), Protocol.EWS, "exchange"),
        (mailbox(Protocol.GRAPH, "m365"), Protocol.GRAPH, "m365"),
        (mailbox(Protocol.EWS, "exchange", "smtp"), Protocol.SMTP, "smtp"),  # named wins
        (mailbox(Protocol.GRAPH, "m365", "exchange"), Protocol.EWS, "exchange"),
    ],
)
def test_the_transport_follows_the_outgoing_profile_else_the_mailboxs_own(
    config: MailboxConfig, protocol: Protocol, profile: str
) -> None:
    choice = choose(config, PROFILES)
    assert isinstance(choice, Choice)
    assert (choice.protocol, choice.profile_name) == (protocol, profile)
    assert choose(config, PROFILES) == choice  # pure


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (mailbox(Protocol.IMAP, "imap"), "no outgoing settings"),
        (mailbox(Protocol.MAILDIR, None), "no outgoing settings"),
        (mailbox(Protocol.IMAP, "imap", "imap"), "not an smtp, ews or graph profile"),
        (mailbox(Protocol.IMAP, "imap", "nowhere"), "not an smtp, ews or graph profile"),
        (mailbox(Protocol.EWS, "m365"), "no outgoing settings"),  # profile of another kind
    ],
)
def test_mailboxes_that_cannot_send_are_not_configured(config: MailboxConfig, says: str) -> None:
    problem = choose(config, PROFILES)
    assert isinstance(problem, ConnectorError)
    assert problem.code == Code.NOT_CONFIGURED
    assert problem.permanent
    assert says in problem.message


@pytest.mark.parametrize(
    ("name", "text", "sent", "code", "permanent"),
    [
        ("UnauthorizedError", "", False, Code.AUTHENTICATION_FAILED, True),
        ("ErrorAccessDenied", "", True, Code.AUTHENTICATION_FAILED, True),
        ("ErrorSendAsDenied", "", True, Code.SENDER_REFUSED, True),
        ("ErrorInvalidRecipients", "", True, Code.NO_RECIPIENTS, True),
        ("ErrorMessageSizeExceeded", "", True, Code.REJECTED, True),
        ("ErrorServerBusy", "", True, Code.TRANSIENT, False),
        ("ErrorInternalServerTransientError", "", True, Code.TRANSIENT, False),
        ("ErrorSomethingNew", "", True, Code.TRANSIENT, False),  # a definite answer
        # No connection at all: nothing can have been sent.
        (
            "ErrorTimeoutExpired",
            "Reraised from ConnectionError(NewConnectionError: Connection refused)",
            True,
            Code.TRANSIENT,
            False,
        ),
        # The connection failed before CreateItem: nothing sent.
        ("ErrorTimeoutExpired", "Reraised from ReadTimeout(...)", False, Code.TRANSIENT, False),
        # The answer to CreateItem was lost: it may have been sent.
        ("ErrorTimeoutExpired", "Reraised from ReadTimeout(...)", True, Code.OUTCOME_UNKNOWN, True),
        ("Timeout", "no answer within 20s", True, Code.OUTCOME_UNKNOWN, True),
        ("RuntimeError", "boom", True, Code.OUTCOME_UNKNOWN, True),
        ("RuntimeError", "boom", False, Code.TRANSIENT, False),
    ],
)
def test_ews_failures_map_to_the_smtp_codes(
    name: str, text: str, sent: bool, code: Code, permanent: bool
) -> None:
    failure = ews_failure(name, text, sent=sent, where="EWS ex.example")
    assert (failure.code, failure.permanent) == (code, permanent)
    assert failure.message.startswith("EWS ex.example")


@pytest.mark.parametrize(
    ("status", "code", "expected", "permanent"),
    [
        (429, "TooManyRequests", Code.TRANSIENT, False),
        (503, "ServiceUnavailable", Code.TRANSIENT, False),
        (500, "InternalServerError", Code.OUTCOME_UNKNOWN, True),
        (504, "", Code.OUTCOME_UNKNOWN, True),
        (400, "ErrorInvalidRecipients", Code.NO_RECIPIENTS, True),
        (400, "ErrorMessageSizeExceeded", Code.REJECTED, True),
        (413, "", Code.REJECTED, True),
        (403, "ErrorSendAsDenied", Code.SENDER_REFUSED, True),
        (403, "ErrorAccessDenied", Code.AUTHENTICATION_FAILED, True),
        (403, "", Code.AUTHENTICATION_FAILED, True),
        (401, "InvalidAuthenticationToken", Code.AUTHENTICATION_FAILED, True),
        (404, "ErrorInvalidUser", Code.NOT_CONFIGURED, True),
        (400, "ErrorInvalidRequest", Code.REJECTED, True),
    ],
)
def test_graph_answers_map_to_the_smtp_codes(
    status: int, code: str, expected: Code, permanent: bool
) -> None:
    failure = graph_failure(status, code, "graph sendMail for alice")
    assert (failure.code, failure.permanent) == (expected, permanent)
    assert str(status) in failure.message


def test_bcc_travels_as_a_header_only_when_there_is_one() -> None:
    email = OutgoingEmail(
        activity_id="a1",
        mailbox_id="mb-1",
        sender=EmailAddress("alice@example.com"),
        to=[EmailAddress("dana@example.com")],
        bcc=[EmailAddress("audit@example.com"), EmailAddress("boss@example.com")],
        subject="Hi",
        requested_at=datetime(2026, 3, 2, tzinfo=UTC),
    )
    mime = b"Subject: Hi\r\n\r\nbody\r\n"
    assert with_bcc(mime, email) == (
        b"Bcc: audit@example.com, boss@example.com\r\nSubject: Hi\r\n\r\nbody\r\n"
    )
    no_bcc = OutgoingEmail(
        activity_id="a2",
        mailbox_id="mb-1",
        sender=EmailAddress("alice@example.com"),
        to=[EmailAddress("dana@example.com")],
        subject="Hi",
        requested_at=datetime(2026, 3, 2, tzinfo=UTC),
    )
    assert with_bcc(mime, no_bcc) == mime
