"""Sync errors (topic sync.errors) and the typed decode error every consumer raises."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from schemas.base import Record


class ErrorScope(StrEnum):
    """How much an error affects: one item, a whole mailbox, or a server."""

    ITEM = "item"
    MAILBOX = "mailbox"
    SERVER = "server"


class Severity(StrEnum):
    """Transient errors are retried; permanent ones need a person; notices need
    nobody (an event worth recording, such as a folder re-read after its
    UIDVALIDITY changed)."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    NOTICE = "notice"


class OutgoingErrorCode(StrEnum):
    """Codes of the errors the outgoing sender reports (component "outgoing")."""

    NOT_CONFIGURED = "OutgoingNotConfigured"  # the mailbox has no usable outgoing settings
    MAILBOX_UNKNOWN = "OutgoingMailboxUnknown"  # no mailbox.config for the email's mailbox
    MAILBOX_DISABLED = "OutgoingMailboxDisabled"  # the mailbox is not approved or not enabled
    AUTHENTICATION_FAILED = "OutgoingAuthenticationFailed"  # SMTP AUTH refused (535 ...)
    TLS_FAILED = "OutgoingTlsFailed"  # no STARTTLS, certificate rejected, plaintext refused
    SENDER_REFUSED = "OutgoingSenderRefused"  # MAIL FROM refused permanently (5xx)
    NO_RECIPIENTS = "OutgoingNoRecipients"  # no recipient given, or every one refused (5xx)
    REJECTED = "OutgoingRejected"  # the message refused permanently (5xx after DATA)
    TRANSIENT = "OutgoingTransient"  # 4xx, connection refused or lost, timeout: retried
    RETRIES_EXHAUSTED = "OutgoingRetriesExhausted"  # transient failures past max_retries
    OUTCOME_UNKNOWN = "OutgoingOutcomeUnknown"  # may have been sent: never sent again blindly
    RECIPIENTS_PARTLY_REFUSED = "OutgoingRecipientsPartlyRefused"  # sent, some refused (notice)
    SENT_COPY_FAILED = "OutgoingSentCopyFailed"  # sent, but the Sent-folder copy failed


class SyncError(Record, frozen=True, kw_only=True):
    """One error, with where it happened and a one-line message a person can act on.

    `error_id` is stable for the same failure of the same event, so a replay
    does not count it twice. Messages never carry secrets. `alert` marks an
    error that disabled its mailbox: a person must act (then
    `tidings mailbox enable`). Keyed by
    `mailbox_id` on sync.errors.
    """

    error_id: str
    mailbox_id: str
    scope: ErrorScope
    severity: Severity
    code: str
    message: str
    component: str
    folder: str | None = None
    item_id: str | None = None
    event_id: str | None = None
    attempt: int = 1
    alert: bool = False
    occurred_at: datetime


class DecodeError(Exception):
    """A message on `topic` could not be decoded or validated.

    Carries where the message sits (topic, partition, offset) and why, so one
    layer can send the original bytes to the DLQ before committing the offset.
    """

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason


EXIT_NEEDS_ATTENTION = 3
"""Exit code of a process that stopped on purpose because a restart cannot help
(a flood of undecodable input, a misconfigured topic); supervisors do not restart it."""


class StopAndAlert(RuntimeError):
    """A condition a restart cannot fix: stop with EXIT_NEEDS_ATTENTION and say why."""
