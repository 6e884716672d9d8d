"""Manual tracking in the processors: the parse stage carries the mark, `decide` promotes
a marked email as ManualTrack whatever the filter, and the engine versions it above
every automatic decision of the item and keeps it promoted when it decides again."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from processors.changes import handle_change
from processors.engine import DecisionEngine
from processors.promote import DecisionContext, decide
from schemas.config import InternalEmailPolicy, ProcessingConfig
from schemas.crm import (
    MANUAL_DECISION_VERSION,
    REMOVED_DECISION_VERSION,
    CorrelationMethod,
    DecisionStatus,
    PromotionDecision,
    ReasonCode,
)
from schemas.ids import email_activity_id
from schemas.mail import AutoReplyKind, ChangeKind, MailItemChanged, ManualTrack, ParsedEmail
from schemas.mailbox import IncomingFilter
from tests.unit.helpers import MAILBOXES, T0, directory, email, engine, mailbox

MARK = ManualTrack(request_id="t-123", requested_by="alice", requested_at=T0)
STRANGER = "stranger@unknown.example"


def by_hand(item: ParsedEmail, mark: ManualTrack = MARK) -> ParsedEmail:
    """`item` as the connector sends it for a manual tracking request."""
    return msgspec.structs.replace(
        item, event_id=f"{item.event_id}-{mark.request_id}", manual_track=mark
    )


def stranger_mail(mailbox_id: str = "mb-alice", item: str = "1") -> ParsedEmail:
    """Incoming email from an address no CRM record has, answering nothing."""
    return email(mailbox_id, item, f"s{item}@unknown.example", STRANGER, ["alice@nw.example"])


def context(
    flt: IncomingFilter, settings: ProcessingConfig | None = None, approved: bool = True
) -> DecisionContext:
    """What `decide` sees for mailbox mb-x with filter `flt` and nothing tracked."""
    return DecisionContext(
        mailbox=mailbox("mb-x", "user:alice", "alice@nw.example", flt, approved=approved),
        directory=directory(),
        settings=settings or ProcessingConfig(),
        tracked=lambda key: None,
        tracked_copy=lambda key, item_key: None,
        by_message_id=lambda message_id: None,
        by_token=lambda token: None,
    )


def latest(decisions: list[PromotionDecision]) -> PromotionDecision:
    """The decision the sinks keep: the highest version."""
    return max(decisions, key=lambda d: d.version)


# -- decide --------------------------------------------------------------------------


@pytest.mark.parametrize("flt", list(IncomingFilter))
def test_every_filter_is_bypassed_by_a_manual_track(flt: IncomingFilter) -> None:
    item = stranger_mail("mb-x")
    verdict = decide(by_hand(item), item.item_key, context(flt))
    assert verdict.status == DecisionStatus.PROMOTED
    assert verdict.reason == ReasonCode.MANUAL_TRACK
    assert verdict.explanation == "tracked by hand (request t-123 by alice)"
    assert verdict.tracking_key == item.message_id
    # Without the mark only `all` promotes this email.
    plain = decide(item, item.item_key, context(flt))
    assert plain.promoted == (flt == IncomingFilter.ALL)


@pytest.mark.parametrize(
    ("settings", "item", "skipped_as"),
    [
        (
            ProcessingConfig(internal_email=InternalEmailPolicy.REJECT),
            email("mb-x", "1", "i1@nw.example", "bob@nw.example", ["alice@nw.example"]),
            ReasonCode.INTERNAL_EMAIL_REJECT,
        ),
        (
            ProcessingConfig(),
            msgspec.structs.replace(stranger_mail("mb-x"), auto_reply=AutoReplyKind.AUTO_REPLY),
            ReasonCode.AUTO_REPLY,
        ),
        (
            ProcessingConfig(),
            email("mb-x", "1", "n@x.example", None, ["alice@nw.example"]),
            ReasonCode.INVALID_SENDER,
        ),
    ],
)
def test_internal_auto_reply_and_sender_rules_are_bypassed_too(
    settings: ProcessingConfig, item: ParsedEmail, skipped_as: ReasonCode
) -> None:
    assert decide(item, item.item_key, context(IncomingFilter.ALL, settings)).reason == skipped_as
    verdict = decide(by_hand(item), item.item_key, context(IncomingFilter.ALL, settings))
    assert (verdict.status, verdict.reason) == (DecisionStatus.PROMOTED, ReasonCode.MANUAL_TRACK)


def test_unapproved_mailbox_and_unknown_mailbox_are_not_bypassed() -> None:
    item = by_hand(stranger_mail("mb-x"))
    only_approved = ProcessingConfig(process_only_approved=True)
    verdict = decide(
        item, item.item_key, context(IncomingFilter.ALL, only_approved, approved=False)
    )
    assert (verdict.status, verdict.reason) == (
        DecisionStatus.SKIPPED,
        ReasonCode.MAILBOX_NOT_APPROVED,
    )
    unknown = msgspec.structs.replace(context(IncomingFilter.ALL), mailbox=None)
    assert decide(item, item.item_key, unknown).reason == ReasonCode.MAILBOX_UNKNOWN


def test_explanation_without_requester_names_the_request_only() -> None:
    item = stranger_mail("mb-x")
    anonymous = ManualTrack(request_id="t-9")
    verdict = decide(by_hand(item, anonymous), item.item_key, context(IncomingFilter.RESPONSES))
    assert verdict.explanation == "tracked by hand (request t-9)"


# -- the engine ----------------------------------------------------------------------


def test_a_skipped_item_tracked_by_hand_outranks_its_automatic_decision() -> None:
    eng = engine()
    item = stranger_mail()
    skipped = eng.process(item, 0, T0).decisions[0]
    assert (skipped.status, skipped.reason, skipped.version) == (
        DecisionStatus.SKIPPED,
        ReasonCode.NO_CORRELATION_MATCH,
        1,
    )
    out = eng.process(by_hand(item), 0, T0 + timedelta(minutes=1))
    decision = latest(out.decisions)
    assert (decision.status, decision.reason) == (DecisionStatus.PROMOTED, ReasonCode.MANUAL_TRACK)
    assert decision.item_key == skipped.item_key
    assert MANUAL_DECISION_VERSION <= decision.version < REMOVED_DECISION_VERSION
    assert decision.activity_id == email_activity_id(item.message_id)
    assert [a.receiving_mailboxes for a in out.activities] == [["mb-alice"]]


def test_the_version_outranks_even_when_the_engine_no_longer_holds_the_skip() -> None:
    item = stranger_mail()
    first = engine().process(item, 0, T0).decisions[0]
    # A fresh engine (the held skip expired, or state elsewhere) decides the manual track.
    manual = engine().process(by_hand(item), 0, T0 + timedelta(days=1)).decisions[0]
    assert manual.reason == ReasonCode.MANUAL_TRACK
    assert manual.version == MANUAL_DECISION_VERSION > first.version


def test_an_expired_hold_changes_nothing_for_the_version() -> None:
    eng = engine(ProcessingConfig(late_correlation_window_s=60))
    item = stranger_mail()
    eng.process(item, 0, T0)
    manual = eng.process(by_hand(item), 0, T0 + timedelta(hours=2)).decisions[0]
    assert manual.version == MANUAL_DECISION_VERSION


def test_the_same_manual_track_twice_yields_the_same_output() -> None:
    eng = engine()
    item = by_hand(stranger_mail())
    first = eng.process(item, 0, T0)
    again = eng.process(item, 0, T0 + timedelta(seconds=5))
    assert again.decisions == first.decisions
    assert [a.version for a in again.activities] == [a.version for a in first.activities]


def test_a_later_automatic_event_of_the_item_stays_a_manual_track() -> None:
    eng = engine()
    item = stranger_mail()
    manual = eng.process(by_hand(item), 0, T0).decisions[0]
    replayed = eng.process(item, 0, T0 + timedelta(minutes=1)).decisions[0]
    fields = ("status", "reason", "explanation", "activity_id", "version", "decided_at")
    assert [getattr(replayed, f) for f in fields] == [getattr(manual, f) for f in fields]
    assert replayed.reason == ReasonCode.MANUAL_TRACK


def test_a_second_request_supersedes_the_first() -> None:
    eng = engine()
    item = stranger_mail()
    first = eng.process(by_hand(item), 0, T0).decisions[0]
    other = ManualTrack(request_id="t-456", requested_by="bob")
    second = eng.process(by_hand(item, other), 0, T0 + timedelta(minutes=1)).decisions[0]
    assert second.version == first.version + 1
    assert second.explanation == "tracked by hand (request t-456 by bob)"


def test_a_manual_track_of_a_reply_is_correlated_and_linked_to_its_conversation() -> None:
    eng = engine()
    reply = email(
        "mb-alice",
        "2",
        "r1@unknown.example",
        STRANGER,
        ["alice@nw.example"],
        subject="RE: Quote",
        in_reply_to="crm-1@nw.example",
        references=["crm-1@nw.example"],
    )
    out = eng.process(by_hand(reply), 0, T0)
    decision = out.decisions[0]
    assert decision.reason == ReasonCode.MANUAL_TRACK
    assert decision.correlation_method == CorrelationMethod.IN_REPLY_TO
    assert decision.correlated_activity_id == email_activity_id("crm-1@nw.example")
    assert "answers tracked email <crm-1@nw.example>" in decision.explanation
    activity = out.activities[0]
    assert activity.parent_activity_id == email_activity_id("crm-1@nw.example")
    assert activity.regarding is not None and str(activity.regarding) == "opportunity:opp-1"


def test_held_replies_are_decided_again_once_the_message_is_tracked_by_hand() -> None:
    eng = engine()
    original = stranger_mail()
    reply = email(
        "mb-alice",
        "2",
        "r2@unknown.example",
        STRANGER,
        ["alice@nw.example"],
        subject="RE: Hello",
        in_reply_to=original.message_id,
        references=[original.message_id],
    )
    assert eng.process(original, 0, T0).decisions[0].reason == ReasonCode.NO_CORRELATION_MATCH
    assert eng.process(reply, 0, T0).decisions[0].reason == ReasonCode.NO_CORRELATION_MATCH
    out = eng.process(by_hand(original), 0, T0 + timedelta(minutes=1))
    final = {d.item_key: d for d in out.decisions}
    assert final[original.item_key].reason == ReasonCode.MANUAL_TRACK
    assert final[reply.item_key].reason == ReasonCode.CORRELATION_MATCH
    assert final[reply.item_key].version == 2  # an automatic re-decision counts on from 1


def test_a_message_tracked_elsewhere_stays_one_activity_with_this_mailbox_added() -> None:
    eng = engine()
    incoming = email(
        "mb-support",
        "1",
        "m1@contoso.example",
        "dana@contoso.example",
        ["support@nw.example", "bob@nw.example"],
    )
    promoted = eng.process(incoming, 0, T0)
    assert promoted.decisions[0].reason == ReasonCode.ACCEPT_ALL
    copy = email(
        "mb-alice",
        "7",
        "m1@contoso.example",
        "dana@contoso.example",
        ["support@nw.example", "bob@nw.example"],
    )
    out = eng.process(by_hand(copy), 0, T0 + timedelta(minutes=1))
    decision = out.decisions[0]
    assert (decision.reason, decision.activity_id) == (
        ReasonCode.MANUAL_TRACK,
        promoted.activities[0].activity_id,
    )
    assert "already tracked as activity" in decision.explanation
    assert out.activities[0].receiving_mailboxes == ["mb-alice", "mb-support"]


def test_a_message_already_in_the_crm_is_linked_not_duplicated() -> None:
    eng = engine()
    copy = email(
        "mb-alice",
        "3",
        "crm-1@nw.example",
        "alice@nw.example",
        ["dana@contoso.example"],
        folder="Sent",
    )
    out = eng.process(by_hand(copy), 0, T0)
    decision = out.decisions[0]
    assert decision.reason == ReasonCode.MANUAL_TRACK
    assert decision.activity_id == email_activity_id("crm-1@nw.example")
    assert "already a CRM activity" in decision.explanation
    assert out.activities == []


def test_every_filter_of_the_engine_promotes_a_manual_track() -> None:
    for config in MAILBOXES:
        eng: DecisionEngine = engine()
        item = stranger_mail(config.mailbox_id)
        decision = latest(eng.process(by_hand(item), 0, T0).decisions)
        assert (decision.status, decision.reason) == (
            DecisionStatus.PROMOTED,
            ReasonCode.MANUAL_TRACK,
        )


# -- the parse stage -----------------------------------------------------------------


def test_the_parse_stage_carries_the_mark() -> None:
    raw = (
        b"From: Stranger <stranger@unknown.example>\r\nTo: alice@nw.example\r\n"
        b"Subject: Hello\r\nMessage-ID: <S1@Unknown.Example>\r\n\r\nbody\r\n"
    )
    event = MailItemChanged(
        event_id="ev-track",
        mailbox_id="mb-alice",
        folder="INBOX",
        item_id="1",
        change=ChangeKind.CREATED,
        observed_at=T0,
        raw=raw,
        manual_track=MARK,
    )
    out = handle_change(event, MAILBOXES[0], ProcessingConfig(), T0)
    assert out.parsed is not None
    assert out.parsed.manual_track == MARK
    assert out.parsed.message_id == "S1@unknown.example"
    plain = handle_change(
        msgspec.structs.replace(event, manual_track=None), MAILBOXES[0], ProcessingConfig(), T0
    )
    assert plain.parsed is not None and plain.parsed.manual_track is None
