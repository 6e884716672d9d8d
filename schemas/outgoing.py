"""Email the CRM wants sent from a mailbox (topic outgoing.mail)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec

from schemas.base import Record
from schemas.mail import EmailAddress


class SendStatus(StrEnum):
    """Where an outgoing email stands."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class OutgoingEmail(Record, frozen=True, kw_only=True):
    """An email activity to send through its mailbox. Keyed by `activity_id`."""

    activity_id: str
    mailbox_id: str
    sender: EmailAddress
    to: list[EmailAddress]
    cc: list[EmailAddress] = msgspec.field(default_factory=list)
    bcc: list[EmailAddress] = msgspec.field(default_factory=list)
    subject: str
    body_text: str = ""
    body_html: str | None = None
    in_reply_to: str | None = None
    status: SendStatus = SendStatus.PENDING
    message_id: str | None = None
    requested_at: datetime


class OutgoingStatus(Record, frozen=True, kw_only=True):
    """Where one outgoing email stands, as the sender last wrote it. Keyed by
    `activity_id` on outgoing.status (compacted: the latest status wins), on the
    partition number its email has on outgoing.mail.

    pending → sending → sent or failed; a transient failure before the server
    accepted goes back to pending with `next_attempt_at`. `sending` is written
    (and acknowledged) before the message data goes to the server, so a status
    left at `sending` means the outcome is not known (see connectors/outgoing.py).

    `message_id` (no angle brackets) is the Message-ID the email carries, the
    same for every attempt, so replies correlate by In-Reply-To;
    `tracking_token` the token put into its subject (None when correlation by
    token is off); `sent_at` the Date the message carries. `accepted` and
    `refused` list recipient addresses as the server answered RCPT TO.
    `copied_to_sent` is true once the Sent folder holds a copy.
    """

    activity_id: str
    mailbox_id: str
    status: SendStatus
    message_id: str
    attempt: int = 0
    tracking_token: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    accepted: list[str] = msgspec.field(default_factory=list)
    refused: list[str] = msgspec.field(default_factory=list)
    copied_to_sent: bool = False
    worker: str | None = None
    updated_at: datetime
