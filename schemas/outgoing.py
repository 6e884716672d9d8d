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
