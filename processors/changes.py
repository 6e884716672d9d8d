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

import msgspec

from processors.parse import (
    ParseFailure,
    forwarded_messages,
    parse_headers_and_preview,
    parse_item,
)
from schemas.blobs import BlobNotFoundError
from schemas.config import ProcessingConfig
from schemas.crm import REMOVED_DECISION_VERSION, DecisionStatus, PromotionDecision, ReasonCode
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.ids import change_event_id, error_id
from schemas.mail import ChangeKind, ItemType, MailItemChanged, ParsedEmail
from schemas.mailbox import FolderRole, MailboxConfig

BlobLoader = Callable[[str], bytes]
"""Returns the bytes of a claim-check reference (BlobStore.get)."""
MailboxLookup = Callable[[str], MailboxConfig | None]
"""The (non-forward) mailbox with an email address, if any."""

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
    `forwarded` holds the outputs of the messages a forward mailbox's item
    carried as attachments (its own decision says so).
    """

    parsed: ParsedEmail | None = None
    decision: PromotionDecision | None = None
    error: SyncError | None = None
    forwarded: tuple[StageOutput, ...] = ()

    @property
    def empty(self) -> bool:
        """True when there is nothing to emit."""
        return (
            self.parsed is None
            and self.decision is None
            and self.error is None
            and not self.forwarded
        )


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
    mailbox_of: MailboxLookup | None = None,
) -> StageOutput:
    """Route one change event: deletions and non-email end here, email is parsed.

    `blob` is the content of a claim-checked event (see `needs_blob`), read by
    the caller; None for such an event means no store was available. A
    flags-only update yields an empty output. An email of a forward mailbox is
    unwrapped (see `unwrap_forward`); `mailbox_of` finds mailboxes by address.
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
    if mailbox is not None and mailbox.forward_mailbox:
        raw = event.raw if event.raw is not None else content
        return unwrap_forward(event, result, raw or b"", mailbox_of or _nobody, settings, now)
    return StageOutput(parsed=result)


def unwrap_forward(
    event: MailItemChanged,
    wrapper: ParsedEmail,
    raw: bytes,
    mailbox_of: MailboxLookup,
    settings: ProcessingConfig,
    now: datetime,
) -> StageOutput:
    """A forward mailbox's item: every message attached whole becomes an item of the
    mailbox whose address forwarded it (the wrapper's From), in its INBOX; the
    wrapper itself is skipped as `Forwarded`. A wrapper with nothing attached, or
    from an address no mailbox has, is skipped as `ForwardUnattributed` with a
    permanent error saying what to fix."""
    forwarder = wrapper.sender.address if wrapper.sender else ""
    attached = forwarded_messages(raw)
    target = mailbox_of(forwarder) if forwarder else None
    if not attached or target is None:
        why = (
            "a forward mailbox takes messages forwarded as attachments; this one carries none"
            if not attached
            else f"forwarded by {forwarder or 'no sender'}, which is no mailbox's address; "
            "add that user's mailbox or fix the forwarding rule"
        )
        message = f"{event.folder}/{event.item_id}: {why}"
        unattributed = ReasonCode.FORWARD_UNATTRIBUTED
        return StageOutput(
            decision=_final(event, DecisionStatus.SKIPPED, unattributed, message, now),
            error=_error(event, unattributed.value, message, now),
        )
    outputs = tuple(
        _unwrapped(event, target, index, message, settings, now)
        for index, message in enumerate(attached)
    )
    explanation = (
        f"forwarded as an attachment by {forwarder}: {len(attached)} message(s) decided "
        f"as mail of mailbox {target.mailbox_id}"
    )
    decision = _final(event, DecisionStatus.SKIPPED, ReasonCode.FORWARDED, explanation, now)
    return StageOutput(decision=decision, forwarded=outputs)


def _unwrapped(
    wrapper: MailItemChanged,
    target: MailboxConfig,
    index: int,
    raw: bytes,
    settings: ProcessingConfig,
    now: datetime,
) -> StageOutput:
    """One attached message as an item of `target`'s INBOX, with ids derived from the
    wrapper's, so re-reading the wrapper yields the same items."""
    item_id = f"fwd:{wrapper.mailbox_id}:{wrapper.item_id}#{index}"
    event = msgspec.structs.replace(
        wrapper,
        event_id=change_event_id(
            target.mailbox_id, "INBOX", item_id, wrapper.change.value, wrapper.version
        ),
        mailbox_id=target.mailbox_id,
        folder="INBOX",
        folder_role=FolderRole.INBOX,
        item_id=item_id,
        raw=raw,
        blob_ref=None,
        size=len(raw),
    )
    result = parse_item(event, FolderRole.INBOX, settings.max_description_chars)
    if isinstance(result, ParseFailure):
        return _failed(event, result, now)
    return StageOutput(parsed=result)


def _nobody(address: str) -> MailboxConfig | None:
    return None


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
