"""Builders for unit tests: a small CRM world and emails in it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from processors.directory import ActivityIndex, Directory, Mailboxes
from processors.engine import DecisionEngine, MemoryState
from schemas.base import RecordRef
from schemas.config import ProcessingConfig
from schemas.crm import Activity, CrmRecord, Direction, PromotionDecision
from schemas.ids import email_activity_id
from schemas.mail import EmailAddress, ParsedEmail
from schemas.mailbox import FolderRole, IncomingFilter, MailboxConfig, Protocol

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

RECORDS = [
    CrmRecord(
        record_id="alice", record_type="user", name="Alice", email_addresses=["alice@nw.example"]
    ),
    CrmRecord(record_id="bob", record_type="user", name="Bob", email_addresses=["bob@nw.example"]),
    CrmRecord(
        record_id="support",
        record_type="queue",
        name="Support",
        email_addresses=["support@nw.example"],
    ),
    CrmRecord(
        record_id="contoso",
        record_type="account",
        name="Contoso",
        email_addresses=["info@contoso.example"],
    ),
    CrmRecord(
        record_id="c-1",
        record_type="contact",
        name="Dana",
        email_addresses=["dana@contoso.example"],
        parent_account_id="contoso",
    ),
    CrmRecord(
        record_id="c-2",
        record_type="contact",
        name="Eli",
        email_addresses=["shared@contoso.example"],
    ),
    CrmRecord(
        record_id="c-3",
        record_type="contact",
        name="Fay",
        email_addresses=["shared@contoso.example"],
    ),
    CrmRecord(
        record_id="l-1", record_type="lead", name="Priya", email_addresses=["priya@lead.example"]
    ),
]


def mailbox(
    mailbox_id: str, owner: str, address: str, flt: IncomingFilter, approved: bool = True
) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef.parse(owner),
        email_address=address,
        protocol=Protocol.MAILDIR,
        incoming_filter=flt,
        approved=approved,
    )


MAILBOXES = [
    mailbox("mb-alice", "user:alice", "alice@nw.example", IncomingFilter.RESPONSES),
    mailbox("mb-bob", "user:bob", "bob@nw.example", IncomingFilter.CRM_RECORDS),
    mailbox("mb-support", "queue:support", "support@nw.example", IncomingFilter.ALL),
]


def history_activity(message_id: str, token: str | None, regarding: str | None) -> Activity:
    """A tracked email that already exists in the CRM."""
    activity_id = email_activity_id(message_id)
    return Activity(
        activity_id=activity_id,
        version=1,
        message_id=message_id,
        subject=f"Quote {token or ''}".strip(),
        direction=Direction.OUTGOING,
        regarding=RecordRef.parse(regarding) if regarding else None,
        conversation_id=activity_id,
        tracking_token=token,
        source="crm",
        created_at=T0 - timedelta(days=10),
        updated_at=T0 - timedelta(days=10),
    )


def directory() -> Directory:
    """The small CRM world's records, by address."""
    found = Directory()
    for record in RECORDS:
        found.apply(record.record_id, record)
    return found


def engine(settings: ProcessingConfig | None = None) -> DecisionEngine:
    mailboxes = Mailboxes()
    for config in MAILBOXES:
        mailboxes.apply(config.mailbox_id, config)
    index = ActivityIndex()
    history = history_activity("crm-1@nw.example", "CRM:0001001", "opportunity:opp-1")
    index.apply(history.activity_id, history)
    return DecisionEngine(
        MemoryState(), directory(), mailboxes, index, settings or ProcessingConfig()
    )


def email(
    mailbox_id: str,
    item: str,
    message_id: str,
    sender: str | None,
    to: list[str],
    subject: str = "Hello",
    folder: str = "INBOX",
    in_reply_to: str | None = None,
    references: list[str] | None = None,
) -> ParsedEmail:
    refs = references or []
    return ParsedEmail(
        event_id=f"ev-{mailbox_id}-{item}",
        mailbox_id=mailbox_id,
        folder=folder,
        folder_role=FolderRole.SENT if folder == "Sent" else FolderRole.INBOX,
        item_id=item,
        observed_at=T0,
        message_id=message_id,
        thread_key=refs[0] if refs else (in_reply_to or message_id),
        subject=subject,
        sender=EmailAddress(sender) if sender else None,
        to=[EmailAddress(a) for a in to],
        in_reply_to=in_reply_to,
        references=refs,
        body_text="body",
    )


def final_decisions(eng: DecisionEngine, emails: list[ParsedEmail]) -> dict[str, PromotionDecision]:
    """Decide `emails` in order; each item's latest decision (the highest version)."""
    latest: dict[str, PromotionDecision] = {}
    for item in emails:
        out = eng.process(item, partition=0, now=T0)
        for decision in out.decisions:
            current = latest.get(decision.item_key)
            if current is None or decision.version >= current.version:
                latest[decision.item_key] = decision
    return latest
