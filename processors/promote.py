"""The promotion decision for one email: promoted (why) or skipped (why).

Pure: a ParsedEmail and a DecisionContext of lookups in, a Verdict out. The
rules and their order are documented in docs/decisions.md.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from msgspec.structs import replace

from processors.correlate import Correlation, Lookup, SmartLookup, correlate, find_tokens
from processors.directory import CUSTOMER_TYPES, ORG_TYPES, Directory
from schemas.base import RecordRef
from schemas.config import InternalEmailPolicy, ProcessingConfig
from schemas.crm import CorrelationMethod, DecisionStatus, Direction, ReasonCode
from schemas.mail import AutoReplyKind, ManualTrack, ParsedEmail
from schemas.mailbox import FolderRole, IncomingFilter, MailboxConfig
from schemas.state import TrackedItem, TrackedMessage


class DecisionContext(msgspec.Struct, frozen=True):
    """Everything a decision may look at. Lookups are functions so state stays outside.
    (A Struct, as the other per-decision values: built in a tenth of a frozen
    dataclass's time, and copied with a change in a twentieth.)"""

    mailbox: MailboxConfig | None
    directory: Directory
    settings: ProcessingConfig
    tracked: Callable[[str], TrackedMessage | None]
    tracked_copy: Callable[[str, str], TrackedItem | None]  # (tracking key, item key)
    by_message_id: Lookup
    by_token: Lookup
    by_conversation_index: Lookup | None = None
    by_smart_key: SmartLookup | None = None


class Verdict(msgspec.Struct, frozen=True):
    """The outcome for one item before any state changes.

    `tracking_key` is where the message is (or would be) tracked: its
    normalized Message-ID, qualified by direction when internal email is
    tracked as two activities. `linked_activity_id` is set for a Duplicate of an
    activity tidings does not hold itself (imported from the CRM).
    """

    status: DecisionStatus
    reason: ReasonCode
    explanation: str
    direction: Direction | None = None
    correlation: Correlation | None = None
    tracking_key: str | None = None
    qualifier: str = ""
    internal: bool = False
    linked_activity_id: str | None = None

    @property
    def promoted(self) -> bool:
        """True when the item is (linked to) an activity."""
        return self.status == DecisionStatus.PROMOTED


def decide(email: ParsedEmail, item_key: str, ctx: DecisionContext) -> Verdict:
    """Decide one email of one mailbox (see docs/decisions.md for the order of rules).

    An email tracked by hand (`email.manual_track`) is promoted with reason
    ManualTrack whatever the mailbox's filter (`none` included) and the sender,
    internal-email and auto-reply rules say; an unknown mailbox, or an
    unapproved one under `process_only_approved`, still stops it. Correlation
    runs and is recorded as for any email, and a message already tracked stays
    one activity.
    """
    mailbox = ctx.mailbox
    if mailbox is None:
        return _skip(ReasonCode.MAILBOX_UNKNOWN, f"mailbox {email.mailbox_id} is not configured")
    if ctx.settings.process_only_approved and not mailbox.approved:
        return _skip(
            ReasonCode.MAILBOX_NOT_APPROVED,
            f"mailbox {mailbox.mailbox_id} is not approved (only approved mailboxes are processed)",
        )
    manual = email.manual_track
    if manual is None and mailbox.incoming_filter == IncomingFilter.NONE:
        return _skip(
            ReasonCode.FILTER_NONE, f"mailbox {mailbox.mailbox_id} has its filter set to none"
        )
    if manual is None and email.sender is None:
        return _skip(ReasonCode.INVALID_SENDER, "the message has no valid From address")

    direction = message_direction(email, mailbox, ctx.directory)
    internal = is_internal(email, ctx.directory)
    two = internal and ctx.settings.internal_email == InternalEmailPolicy.TWO
    qualifier = direction.value if two else ""
    key = tracking_key(email.message_id, qualifier)
    correlation = correlate(
        email,
        ctx.by_message_id,
        ctx.by_token,
        ctx.settings.correlation,
        by_conversation_index=ctx.by_conversation_index,
        by_smart_key=ctx.by_smart_key,
    )
    returned = _returned_email(email, ctx)
    if returned is not None:
        correlation = returned
    base = Verdict(
        DecisionStatus.PROMOTED,
        ReasonCode.DUPLICATE,
        "",
        direction=direction,
        correlation=correlation,
        tracking_key=key,
        qualifier=qualifier,
        internal=internal,
    )
    existing = ctx.tracked(key)
    if manual is not None:
        return _tracked_by_hand(email, item_key, manual, base, existing, ctx)
    if existing is not None:
        own = ctx.tracked_copy(key, item_key)
        if own is not None:
            return replace(base, reason=own.decision.reason, explanation=own.decision.explanation)
        return replace(
            base,
            explanation=f"already tracked as activity {existing.activity_id}; "
            f"{mailbox.mailbox_id} is added to its receiving mailboxes",
        )
    known = ctx.by_message_id(email.message_id) if not qualifier else None
    if known is not None:
        return replace(
            base,
            explanation=f"already a CRM activity {known.activity_id}",
            linked_activity_id=known.activity_id,
        )
    reason, explanation = _apply_rules(email, mailbox, base, ctx)
    status = DecisionStatus.SKIPPED if reason in _SKIP_REASONS else DecisionStatus.PROMOTED
    return replace(base, status=status, reason=reason, explanation=explanation)


def _tracked_by_hand(
    email: ParsedEmail,
    item_key: str,
    manual: ManualTrack,
    base: Verdict,
    existing: TrackedMessage | None,
    ctx: DecisionContext,
) -> Verdict:
    """Promoted as ManualTrack: linked to the message's activity when it is tracked
    already (by tidings, or in the CRM), else a new one; the explanation names
    the request, and the correlation when there is one."""
    parts = [manual.describe()]
    if base.correlation is not None:
        parts.append(describe_correlation(base.correlation))
    verdict = replace(base, reason=ReasonCode.MANUAL_TRACK)
    if existing is not None:
        if ctx.tracked_copy(base.tracking_key or "", item_key) is None:
            parts.append(
                f"already tracked as activity {existing.activity_id}; "
                f"{email.mailbox_id} is added to its receiving mailboxes"
            )
    elif not base.qualifier and (known := ctx.by_message_id(email.message_id)) is not None:
        parts.append(f"already a CRM activity {known.activity_id}")
        verdict = replace(verdict, linked_activity_id=known.activity_id)
    return replace(verdict, explanation="; ".join(parts))


_SKIP_REASONS = frozenset(
    {
        ReasonCode.INTERNAL_EMAIL_REJECT,
        ReasonCode.AUTO_REPLY,
        ReasonCode.BOUNCE,
        ReasonCode.NO_CORRELATION_MATCH,
        ReasonCode.NO_SENDER_MATCH,
        ReasonCode.NO_RECIPIENT_MATCH,
    }
)


def _skip(reason: ReasonCode, explanation: str) -> Verdict:
    return Verdict(DecisionStatus.SKIPPED, reason, explanation)


def _apply_rules(
    email: ParsedEmail,
    mailbox: MailboxConfig,
    verdict: Verdict,
    ctx: DecisionContext,
) -> tuple[ReasonCode, str]:
    sender = email.sender
    assert sender is not None
    correlation = verdict.correlation
    if verdict.internal and ctx.settings.internal_email == InternalEmailPolicy.REJECT:
        return (
            ReasonCode.INTERNAL_EMAIL_REJECT,
            f"email between CRM users from {sender.address}; internal email is set to reject",
        )
    bounce = email.auto_reply == AutoReplyKind.BOUNCE
    if bounce and correlation is not None and ctx.settings.mark_bounces:
        target = correlation.target
        return (
            ReasonCode.BOUNCE,
            f"delivery of tracked email <{target.message_id}> (activity "
            f"{target.activity_id}) failed: {email.bounce_detail or 'no details'}",
        )
    machine_made = correlation is None and email.auto_reply != AutoReplyKind.NONE
    if machine_made and ctx.settings.skip_uncorrelated_auto_replies:
        if email.auto_reply == AutoReplyKind.BOUNCE:
            return ReasonCode.BOUNCE, "delivery status notification that answers no tracked email"
        return ReasonCode.AUTO_REPLY, "automatic reply that answers no tracked email"
    flt = mailbox.incoming_filter
    if correlation is not None:
        return ReasonCode.CORRELATION_MATCH, describe_correlation(correlation)
    if flt == IncomingFilter.ALL:
        return ReasonCode.ACCEPT_ALL, f"mailbox {mailbox.mailbox_id} accepts all email"
    if flt == IncomingFilter.RESPONSES:
        return ReasonCode.NO_CORRELATION_MATCH, _no_correlation(email, mailbox, ctx)
    accepted = CUSTOMER_TYPES if flt == IncomingFilter.CRM_RECORDS else None
    wanted = "a contact, account or lead" if accepted else "a CRM record"
    if verdict.direction == Direction.INCOMING:
        match = _first_match([sender.address], ctx.directory, accepted)
        if match is not None:
            return ReasonCode.SENDER_MATCH, f"sender {sender.address} is {match.type} {match.id}"
        return ReasonCode.NO_SENDER_MATCH, f"sender {sender.address} is not {wanted}"
    recipients = [a.address for a in email.recipients()]
    match = _first_match(recipients, ctx.directory, accepted)
    if match is not None:
        return ReasonCode.RECIPIENT_MATCH, f"a recipient is {match.type} {match.id}"
    return ReasonCode.NO_RECIPIENT_MATCH, f"no recipient is {wanted}"


def _returned_email(email: ParsedEmail, ctx: DecisionContext) -> Correlation | None:
    """For a bounce, the tracked email it returns (by the returned Message-ID)."""
    if email.auto_reply != AutoReplyKind.BOUNCE or not email.bounced_message_id:
        return None
    target = ctx.by_message_id(email.bounced_message_id)
    if target is None or target.message_id == email.message_id:
        return None
    return Correlation(CorrelationMethod.IN_REPLY_TO, target, email.bounced_message_id, 0)


def _first_match(
    addresses: list[str], directory: Directory, accepted: frozenset[str] | None
) -> RecordRef | None:
    for address in addresses:
        for ref in directory.resolve(address):
            if accepted is None or ref.type in accepted:
                return ref
    return None


def _no_correlation(email: ParsedEmail, mailbox: MailboxConfig, ctx: DecisionContext) -> str:
    tokens = find_tokens(email.subject, ctx.settings.correlation)
    if tokens:
        return f"tracking token {tokens[0]} matches no tracked email"
    return (
        f"mailbox {mailbox.mailbox_id} tracks responses to tracked email only, "
        "and this email answers none"
    )


def describe_correlation(correlation: Correlation) -> str:
    """One line saying what an email correlated to and how."""
    target = correlation.target.activity_id
    tracked = correlation.target.message_id
    if correlation.method == CorrelationMethod.TRACKING_TOKEN:
        return f"subject carries tracking token {correlation.matched} of activity {target}"
    if correlation.method == CorrelationMethod.CONVERSATION_INDEX:
        return f"its Thread-Index continues tracked email <{tracked}> (activity {target})"
    if correlation.method == CorrelationMethod.SMART_MATCHING:
        return (
            f"same subject words and enough common addresses as tracked email <{tracked}> "
            f"(activity {target}, smart matching)"
        )
    return f"answers tracked email <{correlation.matched}> (activity {target})"


def tracking_key(message_id: str, qualifier: str) -> str:
    """Where a message is tracked: its Message-ID, plus '#direction' for two-activity mode."""
    return f"{message_id}#{qualifier}" if qualifier else message_id


def mailbox_addresses(mailbox: MailboxConfig, directory: Directory) -> set[str]:
    """The addresses that are the mailbox itself: its own and its owner's."""
    return {mailbox.email_address.lower(), *directory.addresses_of(mailbox.owner)}


def message_direction(
    email: ParsedEmail, mailbox: MailboxConfig, directory: Directory
) -> Direction:
    """Outgoing when in a sent folder or sent from the mailbox's own address, else incoming."""
    if email.folder_role == FolderRole.SENT:
        return Direction.OUTGOING
    sender = email.sender.address if email.sender else ""
    return (
        Direction.OUTGOING
        if sender in mailbox_addresses(mailbox, directory)
        else Direction.INCOMING
    )


def is_internal(email: ParsedEmail, directory: Directory) -> bool:
    """True when the sender and every recipient are CRM users or queues."""
    if email.sender is None:
        return False
    addresses = [email.sender.address, *(a.address for a in email.recipients())]
    if len(addresses) < 2:
        return False
    return all(
        any(ref.type in ORG_TYPES for ref in directory.resolve(address)) for address in addresses
    )
