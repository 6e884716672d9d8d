"""Stage one: a change event from a mailbox becomes a parsed email, or a final decision.

Pure: a MailItemChanged (and the mailbox's configuration) in; out either a
ParsedEmail for the decision stage, or a PromotionDecision (plus a SyncError
when the item could not be read) that ends the item here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from processors.parse import ParseFailure, parse_item
from schemas.config import ProcessingConfig
from schemas.crm import REMOVED_DECISION_VERSION, DecisionStatus, PromotionDecision, ReasonCode
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.ids import error_id
from schemas.mail import ChangeKind, ItemType, MailItemChanged, ParsedEmail
from schemas.mailbox import FolderRole, MailboxConfig


@dataclass(frozen=True)
class StageOutput:
    """Exactly one of `parsed` or `decision`; `error` accompanies an errored decision."""

    parsed: ParsedEmail | None = None
    decision: PromotionDecision | None = None
    error: SyncError | None = None


def handle_change(
    event: MailItemChanged,
    mailbox: MailboxConfig | None,
    settings: ProcessingConfig,
    now: datetime,
) -> StageOutput:
    """Route one change event: deletions and non-email end here, email is parsed."""
    if event.change == ChangeKind.DELETED:
        return StageOutput(
            decision=_final(
                event,
                DecisionStatus.REMOVED,
                ReasonCode.ITEM_DELETED,
                "the item was deleted from the mailbox; its activity, if any, stays",
                now,
            )
        )
    if event.item_type != ItemType.EMAIL:
        return StageOutput(
            decision=_final(
                event,
                DecisionStatus.SKIPPED,
                ReasonCode.UNSUPPORTED_ITEM,
                f"{event.item_type} items are not synchronized yet",
                now,
            )
        )
    role = mailbox.folder_role(event.folder) if mailbox else _guess_role(event.folder)
    result = parse_item(event, role, settings.max_description_chars)
    if isinstance(result, ParseFailure):
        return _failed(event, result, now)
    return StageOutput(parsed=result)


def _failed(event: MailItemChanged, failure: ParseFailure, now: datetime) -> StageOutput:
    message = f"cannot read {event.folder}/{event.item_id}: {failure.message}"
    error = SyncError(
        error_id=error_id(event.event_id, failure.code),
        mailbox_id=event.mailbox_id,
        scope=ErrorScope.ITEM,
        severity=Severity.PERMANENT,
        code=failure.code,
        message=message,
        component="processors",
        folder=event.folder,
        item_id=event.item_id,
        event_id=event.event_id,
        occurred_at=now,
    )
    reason = ReasonCode.MALFORMED if failure.code == "Malformed" else ReasonCode.UNREADABLE
    decision = _final(event, DecisionStatus.ERRORED, reason, message, now)
    return StageOutput(decision=decision, error=error)


def _final(
    event: MailItemChanged,
    status: DecisionStatus,
    reason: ReasonCode,
    explanation: str,
    now: datetime,
) -> PromotionDecision:
    return PromotionDecision(
        item_key=event.item_key,
        mailbox_id=event.mailbox_id,
        folder=event.folder,
        item_id=event.item_id,
        event_id=event.event_id,
        status=status,
        reason=reason,
        explanation=explanation,
        version=REMOVED_DECISION_VERSION if status == DecisionStatus.REMOVED else 1,
        decided_at=now,
    )


def _guess_role(folder: str) -> FolderRole:
    if folder.upper() == "INBOX":
        return FolderRole.INBOX
    return FolderRole.SENT if "sent" in folder.lower() else FolderRole.OTHER
