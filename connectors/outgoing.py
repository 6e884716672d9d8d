"""Outgoing email, the pure part: what to do with an email given its last status,
when to retry, which Message-ID and tracking token it carries, and its bytes.
The I/O shell is connectors/outgoing_sender.py; SMTP is connectors/smtp.py.

State machine (statuses on outgoing.status, keyed by activity id):

    (none) ─► pending ─► sending ─► sent
                 ▲  │       │  └──► failed
                 └──┼───────┘ (a definite transient refusal: retried later)
                    └──────────────► failed (permanent, or retries exhausted)

The rule that keeps a send from being repeated: `sending` is written, and
acknowledged by Kafka, before the message data goes to the SMTP server, and
`sent` after the server accepted it. So whoever finds `sending` as an email's
last status (a restart, or a new owner of its partition) knows the sender
stopped while the server was receiving it, and cannot know whether the server
accepted it. Such an email is never sent again blindly (`Action.RESOLVE`): when
the mailbox has an IMAP Sent folder that holds its Message-ID (servers that
file what they relay, or the sender's own copy), it becomes `sent`; otherwise
it fails with `OutgoingOutcomeUnknown`, a permanent error asking a person to
check with the recipients — a possible duplicate is never traded for a
possible loss silently, nor the other way round.

Identity: the Message-ID is derived from the activity id (every attempt, and
every sender, uses the same one), so the Sent-folder lookup can find it and
replies correlate by In-Reply-To; the tracking token is chosen once, recorded
in the first status and reused by every retry.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, formataddr
from enum import StrEnum

import msgspec

from schemas.config import CorrelationConfig, OutgoingConfig
from schemas.mail import EmailAddress
from schemas.mailbox import MailboxConfig
from schemas.outgoing import OutgoingEmail, OutgoingStatus, SendStatus
from schemas.tracking_token import make_token, subject_with_token

_MESSAGE_ID_NAMESPACE = uuid.UUID("0f3d1a52-6c1e-4f7b-9b0e-746964696e67")
_FALLBACK_DOMAIN = "tidings.invalid"

# -- state machine ---------------------------------------------------------------

ALLOWED: dict[SendStatus | None, frozenset[SendStatus]] = {
    None: frozenset({SendStatus.PENDING, SendStatus.FAILED}),
    SendStatus.PENDING: frozenset({SendStatus.PENDING, SendStatus.SENDING, SendStatus.FAILED}),
    SendStatus.SENDING: frozenset({SendStatus.SENT, SendStatus.FAILED, SendStatus.PENDING}),
    SendStatus.SENT: frozenset({SendStatus.SENT}),  # only to record the Sent-folder copy
    SendStatus.FAILED: frozenset(),
}
"""Which status may follow which (None: no status yet)."""


class TransitionError(ValueError):
    """A status change the state machine does not allow (a bug, never input)."""


def check_transition(old: SendStatus | None, new: SendStatus) -> None:
    """Raise TransitionError unless `new` may follow `old`."""
    if new not in ALLOWED[old]:
        raise TransitionError(f"outgoing status {old} cannot become {new}")


class Action(StrEnum):
    """What the sender does with an email it reads."""

    SEND = "send"  # send attempt `Plan.attempt`, after `Plan.delay_s`
    RESOLVE = "resolve"  # last status `sending`: find out, never resend blindly
    COPY = "copy"  # sent, but its Sent-folder copy is still owed
    DONE = "done"  # sent or failed already: nothing to do


@dataclass(frozen=True)
class Plan:
    """The next step for one email."""

    action: Action
    attempt: int = 0
    delay_s: float = 0.0


def plan(last: OutgoingStatus | None, now: datetime, wants_copy: bool = False) -> Plan:
    """The next step for an email whose last status is `last` (None: never seen).

    A pending email is sent with the attempt after the last one made, once its
    `next_attempt_at` has come; `wants_copy` says whether the mailbox keeps a
    copy of sent email in its Sent folder.
    """
    if last is None:
        return Plan(Action.SEND, attempt=1)
    if last.status == SendStatus.SENDING:
        return Plan(Action.RESOLVE, attempt=last.attempt)
    if last.status == SendStatus.SENT:
        return Plan(Action.COPY if wants_copy and not last.copied_to_sent else Action.DONE)
    if last.status == SendStatus.FAILED:
        return Plan(Action.DONE)
    delay = 0.0
    if last.next_attempt_at is not None:
        delay = max(0.0, (last.next_attempt_at - now).total_seconds())
    return Plan(Action.SEND, attempt=last.attempt + 1, delay_s=delay)


def retry_delay(
    attempt: int, settings: OutgoingConfig, rand: Callable[[], float] = random.random
) -> float | None:
    """Seconds before the attempt after a transiently failed `attempt` (1-based), with
    ±10% jitter; None when `max_retries` retries are used up (1 + max_retries attempts)."""
    if attempt > settings.max_retries:
        return None
    return settings.retry_interval_s * (0.9 + 0.2 * rand())


def advance(
    last: OutgoingStatus, new: SendStatus, now: datetime, **changes: object
) -> OutgoingStatus:
    """The status after `last`: checked against the state machine, errors cleared
    unless given again, `updated_at` set to `now`."""
    check_transition(last.status, new)
    fields: dict[str, object] = {
        "status": new,
        "error_code": None,
        "error_message": None,
        "next_attempt_at": None,
        "updated_at": now,
    }
    fields.update(changes)
    return msgspec.structs.replace(last, **fields)


def retry_at(now: datetime, delay_s: float) -> datetime:
    """When a retry `delay_s` from `now` is due."""
    return now + timedelta(seconds=delay_s)


# -- identity --------------------------------------------------------------------


def message_id_for(activity_id: str, sender: str) -> str:
    """The Message-ID (without angle brackets) of an activity's email: the same for
    every attempt, in the sender's domain."""
    _, at, domain = sender.rpartition("@")
    domain = (domain.strip().lower() if at else "") or _FALLBACK_DOMAIN
    unique = uuid.uuid5(_MESSAGE_ID_NAMESPACE, f"outgoing:{activity_id}").hex
    return f"tidings.{unique}@{domain}"


def user_number(config: MailboxConfig, digits: int) -> int:
    """The user-number part of a mailbox's tracking tokens: the configured one, else a
    stable number from the owner's id (fits `digits`)."""
    if config.outgoing is not None and config.outgoing.token_user_number is not None:
        return config.outgoing.token_user_number % _power_of_ten(digits)
    digest = hashlib.sha256(f"{config.owner.type}:{config.owner.id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _power_of_ten(digits)


def _power_of_ten(digits: int) -> int:
    return int("1" + "0" * digits)


class TokenCounters:
    """Hands out tracking-token counters without coordination between senders.

    A sender owns whole partitions of outgoing.mail, so counters are drawn per
    (partition, user number): the k-th token of a user on partition p gets
    counter k·P + p (P partitions), modulo the counter's digits. Two senders
    never pick the same counter before it wraps around (as Dynamics' counter
    does). `seen` replays the tokens already recorded on outgoing.status.
    """

    def __init__(self, config: CorrelationConfig, partitions: int) -> None:
        self.config = config
        self.partitions = max(1, partitions)
        self._issued: dict[tuple[int, int], int] = {}

    def seen(self, partition: int, token: str) -> None:
        """Count a token a status on `partition` recorded (other prefixes are ignored)."""
        number = self._user_of(token)
        if number is not None:
            key = (partition, number)
            self._issued[key] = self._issued.get(key, 0) + 1

    def issue(self, partition: int, user: int) -> str:
        """A new token for `user`'s next email read from `partition`."""
        key = (partition, user)
        k = self._issued.get(key, 0)
        self._issued[key] = k + 1
        counter = (k * self.partitions + partition) % _power_of_ten(
            self.config.token_counter_digits
        )
        return make_token(self.config, user, counter)

    def forget(self, partition: int) -> None:
        """Drop what was counted for a partition this sender no longer owns."""
        for key in [k for k in self._issued if k[0] == partition]:
            del self._issued[key]

    def _user_of(self, token: str) -> int | None:
        prefix, _, digits = token.partition(":")
        base = str(self.config.token_base_number)
        users, counters = self.config.token_user_digits, self.config.token_counter_digits
        if prefix.upper() != self.config.token_prefix.upper() or not digits.isdigit():
            return None
        if len(digits) != len(base) + users + counters or not digits.startswith(base):
            return None
        return int(digits[len(base) : len(base) + users])


def first_status(
    email: OutgoingEmail, token: str | None, now: datetime, worker: str | None = None
) -> OutgoingStatus:
    """The `pending` status an email gets when the sender first reads it: its
    Message-ID (the CRM's when it set one, else derived from the activity id)
    and tracking token, no attempt made yet."""
    message_id = (email.message_id or "").strip().strip("<>")
    return OutgoingStatus(
        activity_id=email.activity_id,
        mailbox_id=email.mailbox_id,
        status=SendStatus.PENDING,
        message_id=message_id or message_id_for(email.activity_id, email.sender.address),
        tracking_token=token,
        worker=worker,
        updated_at=now,
    )


# -- the message -----------------------------------------------------------------


def subject_for(email: OutgoingEmail, token: str | None, config: CorrelationConfig) -> str:
    """The subject as sent: with the tracking token when there is one and correlation
    by token is on (a subject that carries a token already keeps it)."""
    if token is None or not config.tracking_token:
        return email.subject
    return subject_with_token(email.subject, token, config)


def envelope_recipients(email: OutgoingEmail) -> list[str]:
    """To, Cc and Bcc addresses for RCPT TO, each once, in that order."""
    seen: dict[str, str] = {}
    for party in (*email.to, *email.cc, *email.bcc):
        address = party.address.strip()
        if address and address.lower() not in seen:
            seen[address.lower()] = address
    return list(seen.values())


def build_message(email: OutgoingEmail, message_id: str, subject: str, date: datetime) -> bytes:
    """The RFC 5322 bytes of an outgoing email (CRLF line ends; Bcc not in the headers).

    The same inputs give the same bytes (the MIME boundary derives from the
    Message-ID), so a Sent-folder copy made after a restart equals what was sent.
    """
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = _address(email.sender)
    message["To"] = ", ".join(_address(a) for a in email.to)
    if email.cc:
        message["Cc"] = ", ".join(_address(a) for a in email.cc)
    message["Subject"] = subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = f"<{message_id}>"
    if email.in_reply_to:
        parent = f"<{email.in_reply_to.strip('<> ')}>"
        message["In-Reply-To"] = parent
        message["References"] = parent
    message["MIME-Version"] = "1.0"
    message.set_content(email.body_text or "")
    if email.body_html is not None:
        message.add_alternative(email.body_html, subtype="html")
        message.set_boundary("=_tidings_" + uuid.uuid5(_MESSAGE_ID_NAMESPACE, message_id).hex)
    return message.as_bytes()


def _address(party: EmailAddress) -> str:
    return formataddr((party.name or "", party.address))
