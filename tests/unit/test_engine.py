"""The decision engine: filters, correlation, dedupe, order independence, idempotency."""

from __future__ import annotations

import itertools

import pytest

from processors.engine import DecisionEngine, MemoryState
from schemas.config import InternalEmailPolicy, ProcessingConfig
from schemas.crm import CorrelationMethod, DecisionStatus, ReasonCode
from schemas.ids import email_activity_id
from schemas.state import TrackedMessage
from tests.unit.helpers import T0, email, engine, final_decisions, history_activity


def test_reply_to_crm_history_is_correlated_and_inherits_regarding() -> None:
    eng = engine()
    reply = email(
        "mb-alice",
        "1",
        "r1@contoso.example",
        "dana@contoso.example",
        ["alice@nw.example"],
        subject="RE: Quote",
        in_reply_to="crm-1@nw.example",
        references=["crm-1@nw.example"],
    )
    out = eng.process(reply, 0, T0)
    assert out.decisions[0].status == DecisionStatus.PROMOTED
    assert out.decisions[0].reason == ReasonCode.CORRELATION_MATCH
    activity = out.activities[0]
    assert activity.correlation_method == CorrelationMethod.IN_REPLY_TO
    assert activity.regarding is not None and str(activity.regarding) == "opportunity:opp-1"
    assert activity.parent_activity_id == email_activity_id("crm-1@nw.example")


def test_tracking_token_correlates_without_headers() -> None:
    eng = engine()
    item = email(
        "mb-alice",
        "1",
        "t1@contoso.example",
        "dana@contoso.example",
        ["alice@nw.example"],
        subject="Question about [crm: 0001001]",
    )
    out = eng.process(item, 0, T0)
    assert out.decisions[0].reason == ReasonCode.CORRELATION_MATCH
    assert out.activities[0].correlation_method == CorrelationMethod.TRACKING_TOKEN
    assert out.activities[0].parent_activity_id is None


def test_unknown_token_in_responses_mailbox_is_skipped() -> None:
    eng = engine()
    item = email(
        "mb-alice",
        "1",
        "t2@contoso.example",
        "dana@contoso.example",
        ["alice@nw.example"],
        subject="About CRM:0009999",
    )
    decision = eng.process(item, 0, T0).decisions[0]
    assert decision.status == DecisionStatus.SKIPPED
    assert decision.reason == ReasonCode.NO_CORRELATION_MATCH
    assert "CRM:0009999" in decision.explanation


def test_crm_records_filter_sender_and_recipient_match() -> None:
    eng = engine()
    lead = email("mb-bob", "1", "m1@lead.example", "priya@lead.example", ["bob@nw.example"])
    unknown = email("mb-bob", "2", "m2@x.example", "who@x.example", ["bob@nw.example"])
    sent = email(
        "mb-bob", "3", "m3@nw.example", "bob@nw.example", ["info@contoso.example"], folder="Sent"
    )
    sent_unknown = email(
        "mb-bob", "4", "m4@nw.example", "bob@nw.example", ["who@x.example"], folder="Sent"
    )
    got = final_decisions(eng, [lead, unknown, sent, sent_unknown])
    assert got[lead.item_key].reason == ReasonCode.SENDER_MATCH
    assert got[unknown.item_key].reason == ReasonCode.NO_SENDER_MATCH
    assert got[sent.item_key].reason == ReasonCode.RECIPIENT_MATCH
    assert got[sent_unknown.item_key].reason == ReasonCode.NO_RECIPIENT_MATCH


def test_same_message_in_two_mailboxes_is_one_activity_in_any_order() -> None:
    to_alice_cc_bob = ["alice@nw.example", "bob@nw.example"]
    copies = [
        email("mb-alice", "1", "d1@contoso.example", "dana@contoso.example", to_alice_cc_bob),
        email("mb-bob", "9", "d1@contoso.example", "dana@contoso.example", to_alice_cc_bob),
    ]
    outcomes = []
    for order in itertools.permutations(copies):
        eng = engine()
        got = final_decisions(eng, list(order))
        outcomes.append({k: (d.status, d.reason, d.activity_id) for k, d in got.items()})
        tracked = eng.state.get_tracked("d1@contoso.example")
        assert tracked is not None and tracked.mailboxes == ["mb-alice", "mb-bob"]
    assert outcomes[0] == outcomes[1]
    alice, bob = copies[0].item_key, copies[1].item_key
    assert outcomes[0][alice][1] == ReasonCode.DUPLICATE
    assert outcomes[0][bob][1] == ReasonCode.SENDER_MATCH


def test_reply_before_its_parent_is_decided_again() -> None:
    parent = email("mb-support", "1", "p1@x.example", "who@x.example", ["support@nw.example"])
    reply = email(
        "mb-alice",
        "2",
        "p2@nw.example",
        "alice@nw.example",
        ["who@x.example"],
        folder="Sent",
        subject="RE: help",
        in_reply_to="p1@x.example",
        references=["p1@x.example"],
    )
    results = []
    for order in ([parent, reply], [reply, parent]):
        got = final_decisions(engine(), order)
        results.append({k: (d.status, d.reason, d.correlation_method) for k, d in got.items()})
    assert results[0] == results[1]
    assert results[0][reply.item_key] == (
        DecisionStatus.PROMOTED,
        ReasonCode.CORRELATION_MATCH,
        CorrelationMethod.IN_REPLY_TO,
    )


def test_reply_sharing_no_thread_key_is_decided_by_what_is_known_then() -> None:
    """A reply found only by its tracking token lives on another partition than its
    parent: before the parent's activity reaches the global index it is decided
    without it (and stays so: nothing it waits on can change); decided once the
    index knows the parent, it correlates (docs/decisions.md, "Order does not
    matter")."""
    eng = engine()
    reply = email(
        "mb-alice",
        "9",
        "late-1@contoso.example",
        "dana@contoso.example",
        ["alice@nw.example"],
        subject="RE: renewal [CRM:0001002]",
    )
    before = eng.process(reply, 0, T0)
    assert [(d.status, d.reason) for d in before.decisions] == [
        (DecisionStatus.SKIPPED, ReasonCode.NO_CORRELATION_MATCH)
    ]
    parent = history_activity("renewal-1@nw.example", "CRM:0001002", "opportunity:opp-2")
    eng.activities.apply(parent.activity_id, parent)
    after = engine_with(eng).process(reply, 0, T0)
    assert [(d.status, d.reason, d.correlation_method) for d in after.decisions] == [
        (DecisionStatus.PROMOTED, ReasonCode.CORRELATION_MATCH, CorrelationMethod.TRACKING_TOKEN)
    ]
    assert after.activities[0].correlated_activity_id == parent.activity_id


def engine_with(eng: DecisionEngine) -> DecisionEngine:
    """A fresh engine (no tracked or held state) over the same indexes as `eng`."""
    return DecisionEngine(MemoryState(), eng.directory, eng.mailboxes, eng.activities, eng.settings)


def test_processing_twice_gives_the_same_output() -> None:
    eng = engine()
    item = email("mb-support", "1", "s1@x.example", "who@x.example", ["support@nw.example"])
    first = eng.process(item, 0, T0)
    second = eng.process(item, 0, T0)
    assert first.decisions == second.decisions
    assert first.activities == second.activities


def test_internal_email_policies() -> None:
    internal = email("mb-support", "1", "i1@nw.example", "bob@nw.example", ["support@nw.example"])
    reject = engine(ProcessingConfig(internal_email=InternalEmailPolicy.REJECT))
    assert reject.process(internal, 0, T0).decisions[0].reason == ReasonCode.INTERNAL_EMAIL_REJECT
    two = engine(ProcessingConfig(internal_email=InternalEmailPolicy.TWO))
    sent = email(
        "mb-bob", "2", "i1@nw.example", "bob@nw.example", ["support@nw.example"], folder="Sent"
    )
    got = final_decisions(two, [internal, sent])
    assert got[internal.item_key].activity_id == email_activity_id("i1@nw.example", "incoming")
    # bob's own sent copy: crm-records filter, recipients are org → not promoted by its filter
    assert got[sent.item_key].reason == ReasonCode.NO_RECIPIENT_MATCH


class CountingState(MemoryState):
    """MemoryState that lists the tracking keys read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get_tracked(self, key: str) -> TrackedMessage | None:
        self.reads.append(key)
        return super().get_tracked(key)


@pytest.mark.parametrize("policy", list(InternalEmailPolicy))
def test_qualified_forms_are_read_only_when_internal_email_is_two(
    policy: InternalEmailPolicy,
) -> None:
    base = engine()
    state = CountingState()
    eng = DecisionEngine(
        state,
        base.directory,
        base.mailboxes,
        base.activities,
        ProcessingConfig(internal_email=policy),
    )
    reply = email(
        "mb-support", "1", "r1@x.example", "who@x.example", ["support@nw.example"],
        in_reply_to="p1@x.example",
    )  # fmt: skip
    eng.process(reply, 0, T0)
    qualified = {key for key in state.reads if "#" in key}
    if policy == InternalEmailPolicy.TWO:
        assert qualified == {
            f"{mid}#{way}"
            for mid in ("r1@x.example", "p1@x.example")
            for way in ("incoming", "outgoing")
        }
    else:
        assert qualified == set()
        assert {"r1@x.example", "p1@x.example"} <= set(state.reads)


def test_a_message_tracked_as_two_activities_is_found_after_the_switch_to_one() -> None:
    """Its tracked forms are not read any more; the activity index finds it."""
    two = engine(ProcessingConfig(internal_email=InternalEmailPolicy.TWO))
    internal = email("mb-support", "1", "i1@nw.example", "bob@nw.example", ["support@nw.example"])
    tracked = two.process(internal, 0, T0)
    for activity in tracked.activities:  # back from crm.activities
        two.activities.apply(activity.activity_id, activity)
    one = DecisionEngine(
        two.state, two.directory, two.mailboxes, two.activities, ProcessingConfig()
    )
    reply = email(
        "mb-support", "2", "r1@x.example", "who@x.example", ["support@nw.example"],
        in_reply_to="i1@nw.example",
    )  # fmt: skip
    decision = one.process(reply, 0, T0).decisions[0]
    assert decision.correlation_method == CorrelationMethod.IN_REPLY_TO
    assert decision.correlated_activity_id == email_activity_id("i1@nw.example", "incoming")
    copy = email("mb-alice", "3", "i1@nw.example", "bob@nw.example", ["alice@nw.example"])
    linked = one.process(copy, 0, T0).decisions[0]
    assert (linked.status, linked.reason) == (DecisionStatus.PROMOTED, ReasonCode.DUPLICATE)
    assert linked.activity_id in {a.activity_id for a in tracked.activities}


def test_no_sender_is_invalid_sender() -> None:
    item = email("mb-support", "1", "n1@x.example", None, ["support@nw.example"])
    assert engine().process(item, 0, T0).decisions[0].reason == ReasonCode.INVALID_SENDER
