"""The outgoing sender for real: the embedded broker (tansu), an aiosmtpd server on a
loopback port started here, and dovecot for the Sent folder. Includes the crash
between the server's acceptance and the `sent` status (the sender is killed -9 in
a subprocess) and counts what the SMTP server received."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from pipeline.embedded import free_port
from schemas.base import RecordRef
from schemas.config import OutgoingConfig
from schemas.errors import OutgoingErrorCode as Code
from schemas.errors import SyncError
from schemas.mail import EmailAddress
from schemas.mailbox import (
    Credentials,
    MailboxConfig,
    MaildirSettings,
    OutgoingSettings,
    Protocol,
    ServerProfile,
    TransportSecurity,
)
from schemas.outgoing import OutgoingEmail, OutgoingStatus, SendStatus
from schemas.secret import SecretRef
from schemas.topics import OUTGOING_STATUS
from tests.act_harness import outgoing_sender, outgoing_statuses, queue_mail
from tests.connector_harness import PASSWORD_ENV, ConnectorHarness, mailbox
from tests.mailserver import Dovecot
from tests.sender_process import crash_and_restart

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SMTP_PASSWORD_ENV = "TEST_SMTP_PASSWORD"
SMTP_PASSWORD = "smtp-secret-9f1c"
FAST = OutgoingConfig(max_retries=2, retry_interval_s=0.5, send_timeout_s=20)


# -- an SMTP server ----------------------------------------------------------------


@dataclass
class Received:
    """One message the server accepted."""

    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


@dataclass
class Handler:
    """Accepts mail, records it, and answers as told: `data_replies` are popped per
    DATA (then 250), `refuse` maps recipients to RCPT replies; `hold_s` delays the
    answer to DATA after the message is recorded (the window a crash falls in);
    `file_in` delivers each accepted message to that dovecot Sent folder too
    (as servers that file what they relay do)."""

    data_replies: list[str] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    hold_s: float = 0.0
    file_in: tuple[Dovecot, str] | None = None
    received: list[Received] = field(default_factory=list)
    accepted_event: threading.Event = field(default_factory=threading.Event)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        content = envelope.original_content or b""
        self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), content))
        if self.file_in is not None:
            server_, user = self.file_in
            await asyncio.to_thread(server_.append, user, "Sent", content, flags="\\Seen")
        self.accepted_event.set()
        if self.hold_s:
            await asyncio.sleep(self.hold_s)
        return "250 2.0.0 queued"


def _authenticator(
    server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@contextlib.contextmanager
def smtp_server(
    handler: Handler, *, tls: tuple[Path, Path] | None = None, auth: bool = False
) -> Iterator[int]:
    """aiosmtpd on a free loopback port (STARTTLS offered and required when `tls`
    names a certificate and key); yields the port."""
    port = free_port("127.0.0.1")
    options: dict[str, Any] = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        options.update(tls_context=context, require_starttls=True)
    if auth:
        options.update(authenticator=_authenticator, auth_require_tls=tls is not None)
    controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def smtp_profile(port: int, **changes: object) -> ServerProfile:
    settings: dict[str, object] = {
        "protocol": Protocol.SMTP,
        "host": "127.0.0.1",
        "port": port,
        "security": TransportSecurity.PLAIN,
        "allow_plaintext": True,
        "timeout_s": 10.0,
    }
    settings.update(changes)
    return ServerProfile(**settings)  # type: ignore[arg-type]


# -- the sender ------------------------------------------------------------------


def outgoing_email(activity_id: str, mailbox_id: str, **changes: object) -> OutgoingEmail:
    settings: dict[str, object] = {
        "activity_id": activity_id,
        "mailbox_id": mailbox_id,
        "sender": EmailAddress("alice@northwind.example", "Alice"),
        "to": [EmailAddress("dana@contoso.example", "Dana")],
        "subject": "Your quote",
        "body_text": "Hello Dana\n",
        "requested_at": T0,
    }
    settings.update(changes)
    return OutgoingEmail(**settings)  # type: ignore[arg-type]


def maildir_mailbox(mailbox_id: str, tmp: Path, **outgoing: Any) -> MailboxConfig:
    """A Maildir mailbox (no IMAP: no Sent folder to check) sending through "smtp"."""
    (tmp / mailbox_id).mkdir(parents=True, exist_ok=True)
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef("user", "alice"),
        email_address="alice@northwind.example",
        protocol=Protocol.MAILDIR,
        maildir=MaildirSettings(path=str(tmp / mailbox_id)),
        outgoing=OutgoingSettings(server_profile="smtp", **outgoing),
    )


def errors_of(errors: list[SyncError], activity_id: str) -> list[SyncError]:
    return [e for e in errors if e.item_id == activity_id]


# -- tests -------------------------------------------------------------------------


async def test_sends_with_token_and_message_id_copies_to_sent_and_never_twice(
    tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot.add_user("alice", "imap-pw")
    monkeypatch.setenv(PASSWORD_ENV, "imap-pw")
    monkeypatch.setenv(SMTP_PASSWORD_ENV, SMTP_PASSWORD)
    handler = Handler()
    tls = (dovecot.ca_file, dovecot.key_file)
    with smtp_server(handler, tls=tls, auth=True) as port:
        profiles = {
            "dovecot": dovecot.profile(),
            "smtp": smtp_profile(
                port,
                host="localhost",
                security=TransportSecurity.STARTTLS,
                allow_plaintext=False,
                ca_file=str(dovecot.ca_file),
            ),
        }
        config = mailbox(
            "mb-alice",
            "alice",
            outgoing=OutgoingSettings(
                server_profile="smtp",
                credentials=Credentials(
                    username="alice", password=SecretRef(env=SMTP_PASSWORD_ENV)
                ),
                save_to_sent=True,
                token_user_number=7,
            ),
        )
        async with ConnectorHarness.up(tmp_path / "data", profiles) as h:
            await h.add_mailbox(config)
            first = outgoing_email(
                "act-1",
                "mb-alice",
                bcc=[EmailAddress("audit@northwind.example")],
                in_reply_to="m0@contoso.example",
            )
            async with outgoing_sender(h, FAST):
                await queue_mail(h, first)
                history = await h.wait_for(
                    OUTGOING_STATUS, "act-1", lambda v: bool(v) and v[-1].copied_to_sent, 90
                )
                await queue_mail(h, first)  # the CRM queues it again: not sent again
                await queue_mail(h, outgoing_email("act-2", "mb-alice", subject="Next"))
                await outgoing_statuses(h, "act-2")
            errors = await h.errors("mb-alice")

    assert [s.status for s in history] == [
        SendStatus.PENDING,
        SendStatus.SENDING,
        SendStatus.SENT,
        SendStatus.SENT,
    ]
    sent = history[-1]
    assert sent.attempt == 1
    assert sent.tracking_token is not None
    assert sent.tracking_token.startswith("CRM:0007")
    assert sent.accepted == ["dana@contoso.example", "audit@northwind.example"]
    assert len(handler.received) == 2  # act-1 once, act-2 once
    ids = [r.message["Message-ID"] for r in handler.received]
    assert ids[0] == f"<{sent.message_id}>"
    assert ids[1] != ids[0]
    message = handler.received[0].message
    assert message["Subject"] == f"Your quote {sent.tracking_token}"
    assert message["In-Reply-To"] == "<m0@contoso.example>"
    assert message["Bcc"] is None
    assert handler.received[0].recipients == ["dana@contoso.example", "audit@northwind.example"]
    imap = dovecot.client("alice", "imap-pw")
    try:
        imap.select("Sent")
        _, found = imap.search(None, "HEADER", "Message-ID", sent.message_id)
        _, everything = imap.search(None, "ALL")
    finally:
        imap.logout()
    assert len(found[0].split()) == 1
    assert len(everything[0].split()) == 2  # one copy each, none twice
    assert errors == []
    for status in history:
        assert SMTP_PASSWORD not in msgspec.json.encode(status).decode()


async def test_transient_failures_are_retried_then_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = Handler(data_replies=["451 4.3.0 try later", "421 4.3.2 busy"])
    with smtp_server(handler) as port:
        async with ConnectorHarness.up(tmp_path / "data", {"smtp": smtp_profile(port)}) as h:
            await h.add_mailbox(maildir_mailbox("mb-a", tmp_path))
            async with outgoing_sender(h, FAST):
                await queue_mail(h, outgoing_email("act-r", "mb-a"))
                history = await outgoing_statuses(h, "act-r")
            errors = errors_of(await h.errors("mb-a"), "act-r")

    assert [(s.status, s.attempt) for s in history] == [
        (SendStatus.PENDING, 0),
        (SendStatus.SENDING, 1),
        (SendStatus.PENDING, 1),
        (SendStatus.SENDING, 2),
        (SendStatus.PENDING, 2),
        (SendStatus.SENDING, 3),
        (SendStatus.SENT, 3),
    ]
    assert history[2].error_code == Code.TRANSIENT
    assert history[2].next_attempt_at is not None
    assert len({s.message_id for s in history}) == 1
    assert len(handler.received) == 1
    assert [(e.code, e.severity) for e in errors] == [
        (Code.TRANSIENT, "transient"),
        (Code.TRANSIENT, "transient"),
    ]


async def test_permanent_failures_fail_the_item_with_a_sync_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SMTP_PASSWORD_ENV, "wrong-password")
    handler = Handler(
        refuse={"nobody@contoso.example": "550 5.1.1 no such user"},
        data_replies=[],
    )
    with smtp_server(handler, auth=True) as port:
        profiles = {"smtp": smtp_profile(port)}
        async with ConnectorHarness.up(tmp_path / "data", profiles) as h:
            await h.add_mailbox(maildir_mailbox("mb-a", tmp_path))
            bad_login = maildir_mailbox(
                "mb-b",
                tmp_path,
                credentials=Credentials(username="b", password=SecretRef(env=SMTP_PASSWORD_ENV)),
            )
            await h.add_mailbox(bad_login)
            async with outgoing_sender(h, msgspec.structs.replace(FAST, max_retries=1)):
                await queue_mail(
                    h,
                    outgoing_email("act-x", "mb-a", to=[EmailAddress("nobody@contoso.example")]),
                    outgoing_email(
                        "act-y",
                        "mb-a",
                        to=[EmailAddress("nobody@contoso.example"), EmailAddress("d@contoso.ex")],
                    ),
                    outgoing_email("act-z", "mb-b"),
                    outgoing_email("act-u", "mb-unknown"),
                )
                ids = ("act-x", "act-y", "act-z", "act-u")
                final = {a: (await outgoing_statuses(h, a))[-1] for a in ids}
            errors = await h.errors("mb-a") + await h.errors("mb-b") + await h.errors("mb-unknown")

    assert (final["act-x"].status, final["act-x"].error_code) == (
        SendStatus.FAILED,
        Code.NO_RECIPIENTS,
    )
    assert final["act-y"].status == SendStatus.SENT
    assert final["act-y"].refused == ["nobody@contoso.example"]
    assert (final["act-z"].status, final["act-z"].error_code) == (
        SendStatus.FAILED,
        Code.AUTHENTICATION_FAILED,
    )
    assert (final["act-u"].status, final["act-u"].error_code) == (
        SendStatus.FAILED,
        Code.MAILBOX_UNKNOWN,
    )
    assert [r.recipients for r in handler.received] == [["d@contoso.ex"]]
    codes = {(e.item_id, e.code, e.severity) for e in errors}
    assert ("act-x", Code.NO_RECIPIENTS, "permanent") in codes
    assert ("act-z", Code.AUTHENTICATION_FAILED, "permanent") in codes
    assert ("act-u", Code.MAILBOX_UNKNOWN, "permanent") in codes
    assert ("act-y", Code.RECIPIENTS_PARTLY_REFUSED, "notice") in codes
    for error in errors:
        assert "wrong-password" not in error.message


# -- a crash between acceptance and the status write -------------------------------


async def crash_after_acceptance(
    h: ConnectorHarness, handler: Handler, activity_id: str, mailbox_id: str, log: Path
) -> list[OutgoingStatus]:
    """Queue an email, kill -9 the sender once the server has the message (its answer
    held back), restart the sender and return the email's statuses."""
    return await crash_and_restart(
        h,
        outgoing_email(activity_id, mailbox_id),
        reached=handler.accepted_event.is_set,
        log=log,
        settings=FAST,
    )


async def test_crash_after_acceptance_without_a_sent_folder_fails_as_unknown_never_resent(
    tmp_path: Path,
) -> None:
    handler = Handler(hold_s=30)
    with smtp_server(handler) as port:
        async with ConnectorHarness.up(tmp_path / "data", {"smtp": smtp_profile(port)}) as h:
            await h.add_mailbox(maildir_mailbox("mb-a", tmp_path))
            history = await crash_after_acceptance(
                h, handler, "act-c", "mb-a", tmp_path / "sender.log"
            )
            errors = errors_of(await h.errors("mb-a"), "act-c")

    assert [s.status for s in history] == [
        SendStatus.PENDING,
        SendStatus.SENDING,
        SendStatus.FAILED,
    ]
    assert history[-1].error_code == Code.OUTCOME_UNKNOWN
    assert "no IMAP Sent folder" in (history[-1].error_message or "")
    assert len(handler.received) == 1  # exactly one message at the SMTP server
    assert [(e.code, e.severity) for e in errors] == [(Code.OUTCOME_UNKNOWN, "permanent")]


async def test_crash_after_acceptance_resolved_as_sent_by_the_sent_folder(
    tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot.add_user("alice", "imap-pw")
    monkeypatch.setenv(PASSWORD_ENV, "imap-pw")
    handler = Handler(hold_s=30, file_in=(dovecot, "alice"))
    with smtp_server(handler) as port:
        profiles = {"dovecot": dovecot.profile(), "smtp": smtp_profile(port)}
        config = mailbox("mb-alice", "alice", outgoing=OutgoingSettings(server_profile="smtp"))
        async with ConnectorHarness.up(tmp_path / "data", profiles) as h:
            await h.add_mailbox(config)
            history = await crash_after_acceptance(
                h, handler, "act-s", "mb-alice", tmp_path / "sender.log"
            )
            errors = errors_of(await h.errors("mb-alice"), "act-s")

    assert [s.status for s in history] == [
        SendStatus.PENDING,
        SendStatus.SENDING,
        SendStatus.SENT,
    ]
    assert history[-1].copied_to_sent
    assert history[-1].worker == "sender-2"
    assert len(handler.received) == 1
    assert errors == []
