"""Stage one: a change event from a mailbox becomes a parsed email, or a final decision.

Pure: a MailItemChanged (and the mailbox's configuration) in; out either a
ParsedEmail for the decision stage, or a PromotionDecision (plus a SyncError
when the item could not be read) that ends the item here, or nothing for a
flags-only update (the item's decision stands).

A claim-checked event's content is read by the caller (`read_blob`, with the
store's loader, off the event loop) and passed in; when it cannot be read the
email is parsed from the header block and preview the event carries, and a
transient BlobUnavailable error says so. No item is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from processors.parse import ParseFailure, parse_headers_and_preview, parse_item
from schemas.blobs import BlobNotFoundError
from schemas.config import ProcessingConfig
from schemas.crm import REMOVED_DECISION_VERSION, DecisionStatus, PromotionDecision, ReasonCode
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.ids import error_id
from schemas.mail import ChangeKind, ItemType, MailItemChanged, ParsedEmail
from schemas.mailbox import FolderRole, MailboxConfig

BlobLoader = Callable[[str], bytes]
"""Returns the bytes of a claim-check reference (BlobStore.get)."""

BLOB_UNAVAILABLE = "BlobUnavailable"
PREVIEW_DEFECT = "body from preview: claim-check blob unavailable"


@dataclass(frozen=True)
class BlobUnavailable:
    """A claim-check blob that could not be read, and why (one line)."""

    reason: str


@dataclass(frozen=True)
class StageOutput:
    """At most one of `parsed` or `decision`, neither for a flags-only update.

    `error` accompanies an errored decision, or a parsed email that was built
    from the event's headers and preview because its blob was unavailable.
    """

    parsed: ParsedEmail | None = None
    decision: PromotionDecision | None = None
    error: SyncError | None = None

    @property
    def empty(self) -> bool:
        """True when there is nothing to emit."""
        return self.parsed is None and self.decision is None and self.error is None


def needs_blob(event: MailItemChanged) -> bool:
    """True when the event's message must be read from the claim-check store."""
    return (
        event.blob_ref is not None
        and event.raw is None
        and event.item_type == ItemType.EMAIL
        and event.change != ChangeKind.DELETED
        and not event.unreadable_code
    )


def read_blob(ref: str, load: BlobLoader) -> bytes | BlobUnavailable:
    """The bytes of `ref`, or why they cannot be read (missing blob, store failure)."""
    try:
        return load(ref)
    except (BlobNotFoundError, OSError) as exc:
        return BlobUnavailable(str(exc) or type(exc).__name__)


def is_flags_only(event: MailItemChanged) -> bool:
    """True for an update carrying no content (IMAP CONDSTORE flag changes)."""
    return (
        event.change == ChangeKind.UPDATED
        and event.raw is None
        and event.blob_ref is None
        and not event.unreadable_code
    )


def handle_change(
    event: MailItemChanged,
    mailbox: MailboxConfig | None,
    settings: ProcessingConfig,
    now: datetime,
    blob: bytes | BlobUnavailable | None = None,
) -> StageOutput:
    """Route one change event: deletions and non-email end here, email is parsed.

    `blob` is the content of a claim-checked event (see `needs_blob`), read by
    the caller; None for such an event means no store was available. A
    flags-only update yields an empty output.
    """
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
    if is_flags_only(event):
        return StageOutput()
    role = event.folder_role or _mailbox_role(event.folder, mailbox)
    if needs_blob(event) and not isinstance(blob, bytes):
        missing = blob if blob is not None else BlobUnavailable("no claim-check store was given")
        return _from_preview(event, role, settings, missing, now)
    content = blob if isinstance(blob, bytes) else None
    result = parse_item(event, role, settings.max_description_chars, content)
    if isinstance(result, ParseFailure):
        return _failed(event, result, now)
    return StageOutput(parsed=result)


def _mailbox_role(folder: str, mailbox: MailboxConfig | None) -> FolderRole:
    return mailbox.folder_role(folder) if mailbox else _guess_role(folder)


def _from_preview(
    event: MailItemChanged,
    role: FolderRole,
    settings: ProcessingConfig,
    missing: BlobUnavailable,
    now: datetime,
) -> StageOutput:
    """The email from the event's headers and preview, with a transient error saying why."""
    result = parse_headers_and_preview(event, role, settings.max_description_chars, PREVIEW_DEFECT)
    if isinstance(result, ParseFailure):
        return _failed(event, ParseFailure(result.code, f"{result.message}: {missing.reason}"), now)
    message = (
        f"cannot read the claim-check blob of {event.folder}/{event.item_id} "
        f"({missing.reason}); decided from its headers and preview"
    )
    return StageOutput(parsed=result, error=_error(event, BLOB_UNAVAILABLE, message, now))


def _failed(event: MailItemChanged, failure: ParseFailure, now: datetime) -> StageOutput:
    message = f"cannot read {event.folder}/{event.item_id}: {failure.message}"
    error = _error(event, failure.code, message, now)
    reason = ReasonCode.MALFORMED if failure.code == "Malformed" else ReasonCode.UNREADABLE
    decision = _final(event, DecisionStatus.ERRORED, reason, message, now)
    return StageOutput(decision=decision, error=error)


def _error(event: MailItemChanged, code: str, message: str, now: datetime) -> SyncError:
    """An item-scoped error; a missing blob is transient (the store may come back)."""
    return SyncError(
        error_id=error_id(event.event_id, code),
        mailbox_id=event.mailbox_id,
        scope=ErrorScope.ITEM,
        severity=Severity.TRANSIENT if code == BLOB_UNAVAILABLE else Severity.PERMANENT,
        code=code,
        message=message,
        component="processors",
        folder=event.folder,
        item_id=event.item_id,
        event_id=event.event_id,
        occurred_at=now,
    )


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
