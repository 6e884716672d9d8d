"""Every incoming filter against every correlation method, through the decision engine.

The world: a tracked email "Quote for March" that Alice sent to Dana (contact)
ten days ago, regarding opportunity opp-1, with a tracking token and a
Thread-Index. Each case is a reply from Dana that carries exactly one way of
finding it again (or none), into a mailbox with one incoming filter.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from processors.conversation_index import new_conversation_index, thread_index_header
from processors.directory import ActivityIndex, Mailboxes
from processors.engine import DecisionEngine, MemoryState
from schemas.base import RecordRef
from schemas.config import CorrelationConfig, ProcessingConfig
from schemas.crm import (
    Activity,
    ActivityParty,
    CorrelationMethod,
    DecisionStatus,
    Direction,
    PartyRole,
    ReasonCode,
)
from schemas.ids import email_activity_id
from schemas.mail import ParsedEmail
from schemas.mailbox import IncomingFilter
from tests.unit.helpers import T0, directory, email, mailbox

TRACKED_ID = "quote-march@nw.example"
TRACKED_ACTIVITY = email_activity_id(TRACKED_ID)
ROOT_INDEX = new_conversation_index(T0 - timedelta(days=10))
TRACKED = Activity(
    activity_id=TRACKED_ACTIVITY,
    version=1,
    message_id=TRACKED_ID,
    subject="Quote for March",
    direction=Direction.OUTGOING,
    parties=[
        ActivityParty(role=PartyRole.FROM, address="alice@nw.example"),
        ActivityParty(role=PartyRole.TO, address="dana@contoso.example"),
    ],
    sent_at=T0 - timedelta(days=10),
    regarding=RecordRef("opportunity", "opp-1"),
    conversation_id=TRACKED_ACTIVITY,
    tracking_token="CRM:0001001",
    conversation_index=ROOT_INDEX.key,
    source="crm",
    created_at=T0 - timedelta(days=10),
    updated_at=T0 - timedelta(days=10),
)
ALL_ON = CorrelationConfig(smart_matching=True)


def world(flt: IncomingFilter, correlation: CorrelationConfig = ALL_ON) -> DecisionEngine:
    mailboxes = Mailboxes()
    mailboxes.apply("mb", mailbox("mb", "user:alice", "alice@nw.example", flt))
    index = ActivityIndex(correlation.smart if correlation.smart_matching else None)
    index.apply(TRACKED_ACTIVITY, TRACKED)
    settings = ProcessingConfig(correlation=correlation)
    return DecisionEngine(MemoryState(), directory(), mailboxes, index, settings)


def reply(method: CorrelationMethod, sender: str = "dana@contoso.example") -> ParsedEmail:
    """A reply to the tracked email that only `method` can link back."""
    base = email("mb", "1", "reply-1@contoso.example", sender, ["alice@nw.example"], "Budget")
    sent = msgspec.structs.replace(base, sent_at=T0)
    if method == CorrelationMethod.IN_REPLY_TO:
        return msgspec.structs.replace(sent, in_reply_to=TRACKED_ID, references=[TRACKED_ID])
    if method == CorrelationMethod.TRACKING_TOKEN:
        return msgspec.structs.replace(sent, subject="Budget [CRM: 0001001]")
    if method == CorrelationMethod.CONVERSATION_INDEX:
        return msgspec.structs.replace(sent, thread_index=thread_index_header(ROOT_INDEX.child()))
    if method == CorrelationMethod.SMART_MATCHING:
        return msgspec.structs.replace(sent, subject="RE: quote for march")
    return sent


METHODS = [
    CorrelationMethod.IN_REPLY_TO,
    CorrelationMethod.TRACKING_TOKEN,
    CorrelationMethod.CONVERSATION_INDEX,
    CorrelationMethod.SMART_MATCHING,
]
# What an uncorrelated reply from Dana (a contact) gets under each filter.
UNCORRELATED = {
    IncomingFilter.ALL: ReasonCode.ACCEPT_ALL,
    IncomingFilter.RESPONSES: ReasonCode.NO_CORRELATION_MATCH,
    IncomingFilter.CRM_RECORDS: ReasonCode.SENDER_MATCH,
    IncomingFilter.EMAIL_ENABLED: ReasonCode.SENDER_MATCH,
    IncomingFilter.NONE: ReasonCode.FILTER_NONE,
}
PARENTING = {CorrelationMethod.IN_REPLY_TO, CorrelationMethod.CONVERSATION_INDEX}


@pytest.mark.parametrize("flt", list(IncomingFilter))
@pytest.mark.parametrize("method", METHODS)
def test_a_correlated_reply_under_every_filter(
    flt: IncomingFilter, method: CorrelationMethod
) -> None:
    out = world(flt).process(reply(method), 0, T0)
    decision = out.decisions[0]
    if flt == IncomingFilter.NONE:
        assert decision.reason == ReasonCode.FILTER_NONE
        assert decision.status == DecisionStatus.SKIPPED
        return
    assert decision.reason == ReasonCode.CORRELATION_MATCH, decision.explanation
    assert decision.correlation_method == method
    assert decision.correlated_activity_id == TRACKED_ACTIVITY
    activity = out.activities[0]
    assert activity.correlation_method == method
    assert activity.regarding == RecordRef("opportunity", "opp-1")
    assert activity.conversation_id == TRACKED_ACTIVITY
    expected_parent = TRACKED_ACTIVITY if method in PARENTING else None
    assert activity.parent_activity_id == expected_parent


@pytest.mark.parametrize("flt", list(IncomingFilter))
def test_an_uncorrelated_reply_under_every_filter(flt: IncomingFilter) -> None:
    decision = world(flt).process(reply(CorrelationMethod.NONE), 0, T0).decisions[0]
    assert decision.reason == UNCORRELATED[flt], decision.explanation
    assert decision.correlation_method == CorrelationMethod.NONE


@pytest.mark.parametrize("method", METHODS)
def test_each_method_switched_off_finds_nothing(method: CorrelationMethod) -> None:
    switch = {
        CorrelationMethod.IN_REPLY_TO: "in_reply_to",
        CorrelationMethod.TRACKING_TOKEN: "tracking_token",
        CorrelationMethod.CONVERSATION_INDEX: "conversation_index",
        CorrelationMethod.SMART_MATCHING: "smart_matching",
    }[method]
    correlation = msgspec.structs.replace(ALL_ON, **{switch: False})
    decision = world(IncomingFilter.RESPONSES, correlation).process(reply(method), 0, T0)
    assert decision.decisions[0].reason == ReasonCode.NO_CORRELATION_MATCH


def test_smart_matching_is_off_by_default() -> None:
    item = msgspec.structs.replace(reply(CorrelationMethod.NONE), subject="RE: Quote for March")
    decision = world(IncomingFilter.RESPONSES, CorrelationConfig()).process(item, 0, T0)
    assert decision.decisions[0].reason == ReasonCode.NO_CORRELATION_MATCH


def test_methods_apply_in_dynamics_order() -> None:
    everything = msgspec.structs.replace(
        reply(CorrelationMethod.CONVERSATION_INDEX),
        subject="RE: quote for march [CRM:0001001]",
        in_reply_to=TRACKED_ID,
    )
    eng = world(IncomingFilter.RESPONSES)
    assert eng.process(everything, 0, T0).decisions[0].correlation_method == (
        CorrelationMethod.IN_REPLY_TO
    )
    no_headers = msgspec.structs.replace(everything, item_id="2", in_reply_to=None)
    assert eng.process(no_headers, 0, T0).decisions[0].correlation_method == (
        CorrelationMethod.TRACKING_TOKEN
    )


def test_conversation_index_finds_the_nearest_tracked_ancestor() -> None:
    deep = ROOT_INDEX.child().child().child()  # two untracked replies in between
    item = msgspec.structs.replace(
        reply(CorrelationMethod.NONE), thread_index=thread_index_header(deep)
    )
    out = world(IncomingFilter.RESPONSES).process(item, 0, T0)
    assert out.decisions[0].correlation_method == CorrelationMethod.CONVERSATION_INDEX
    assert out.activities[0].parent_activity_id == TRACKED_ACTIVITY
    assert out.activities[0].conversation_index == deep.key


def test_a_foreign_conversation_index_does_not_correlate() -> None:
    other = new_conversation_index(T0)
    item = msgspec.structs.replace(
        reply(CorrelationMethod.NONE), thread_index=thread_index_header(other.child())
    )
    decision = world(IncomingFilter.RESPONSES).process(item, 0, T0).decisions[0]
    assert decision.reason == ReasonCode.NO_CORRELATION_MATCH


def test_smart_matching_needs_common_addresses_and_the_window() -> None:
    stranger = reply(CorrelationMethod.SMART_MATCHING, sender="someone@else.example")
    one_common = msgspec.structs.replace(stranger, to=[], cc=stranger.to)  # only Alice
    eng = world(IncomingFilter.RESPONSES)
    assert eng.process(one_common, 0, T0).decisions[0].reason == ReasonCode.NO_CORRELATION_MATCH
    late = msgspec.structs.replace(
        reply(CorrelationMethod.SMART_MATCHING), item_id="2", sent_at=T0 + timedelta(days=120)
    )
    assert eng.process(late, 0, T0).decisions[0].reason == ReasonCode.NO_CORRELATION_MATCH


def test_deciding_twice_is_the_same_for_every_method() -> None:
    for method in METHODS:
        eng = world(IncomingFilter.RESPONSES)
        first = eng.process(reply(method), 0, T0)
        again = eng.process(reply(method), 0, T0)
        assert first.decisions == again.decisions
        assert [a.activity_id for a in first.activities] == [
            a.activity_id for a in again.activities
        ]
