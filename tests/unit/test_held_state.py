"""Held items: a conversation lists its held items, each item's email and decision is
stored once beside it, and an item's record goes when it leaves its conversation
(re-decided to wait on nothing, expired, or its conversation expired)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.engine import DecisionEngine, MemoryState
from schemas.config import InternalEmailPolicy, ProcessingConfig
from schemas.crm import PromotionDecision
from schemas.mail import ParsedEmail
from schemas.state import HeldItem
from tests.unit.helpers import T0, email, engine, final_decisions

ROOT = "root-1@nw.example"  # not tracked anywhere until its own copy arrives


def thread_emails() -> list[ParsedEmail]:
    """One conversation: its root (promoted by the support queue), replies that wait for
    it, and copies of the root skipped in alice's `responses` mailbox."""
    root = email("mb-support", "root", ROOT, "dana@contoso.example", ["support@nw.example"])
    replies = [
        email(
            "mb-alice",
            f"reply-{n}",
            f"reply-{n}@contoso.example",
            "dana@contoso.example",
            ["alice@nw.example"],
            in_reply_to=ROOT,
            references=[ROOT],
        )
        for n in range(3)
    ]
    copy = email("mb-alice", "copy", ROOT, "dana@contoso.example", ["alice@nw.example"])
    return [root, *replies, copy]


def state_of(eng: DecisionEngine) -> MemoryState:
    assert isinstance(eng.state, MemoryState)
    return eng.state


def assert_records_match_threads(state: MemoryState) -> None:
    listed = {
        (thread_key, entry.item_key)
        for thread_key, thread in state.held.items()
        for entry in thread.items
    }
    assert set(state.held_items) == listed


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(5)), st.lists(st.integers(0, 20), min_size=5, max_size=5))
def test_an_items_record_exists_exactly_while_its_conversation_lists_it(
    order: list[int], minutes: list[int]
) -> None:
    eng = engine()
    emails = thread_emails()
    now = T0
    for index, step in zip(order, minutes, strict=True):
        now += timedelta(minutes=step)  # the window is 15 minutes: some items expire
        eng.process(emails[index], 0, now)
        assert_records_match_threads(state_of(eng))
    eng.expire(ROOT, now + timedelta(hours=1))
    assert state_of(eng).held == {}
    assert state_of(eng).held_items == {}


def test_each_held_email_is_written_once_however_many_join_its_conversation() -> None:
    eng = engine()
    state = state_of(eng)
    written: list[tuple[str, str]] = []
    put = state.put_held_item

    def counting(thread_key: str, item_key: str, partition: int, value: HeldItem | None) -> None:
        if value is not None:
            written.append((thread_key, item_key))
        put(thread_key, item_key, partition, value)

    state.put_held_item = counting  # type: ignore[method-assign]
    replies = thread_emails()[1:4]
    for reply in replies:
        eng.process(reply, 0, T0)
    assert written == [(ROOT, reply.item_key) for reply in replies]
    assert [entry.item_key for entry in state.held[ROOT].items] == [r.item_key for r in replies]
    assert all(ROOT in entry.waiting_on for entry in state.held[ROOT].items)


def test_a_held_item_redecided_to_wait_on_nothing_leaves_with_its_record() -> None:
    eng = engine()
    emails = thread_emails()
    skipped_copy = emails[4]
    eng.process(skipped_copy, 0, T0)  # skipped in alice's mailbox: waits on its own id
    assert (ROOT, skipped_copy.item_key) in state_of(eng).held_items
    out = eng.process(emails[0], 0, T0 + timedelta(minutes=1))  # the queue tracks the root
    assert skipped_copy.item_key in {decision.item_key for decision in out.decisions}
    assert state_of(eng).held_items == {}
    assert ROOT not in state_of(eng).held


# -- what a reply waits on ---------------------------------------------------------

CRM_PARENT = "crm-1@nw.example"  # a CRM activity in the global index (helpers.engine)


def reply_to(parent: str, item: str = "r1") -> ParsedEmail:
    return email(
        "mb-alice",
        item,
        f"{item}@contoso.example",
        "dana@contoso.example",
        ["alice@nw.example"],
        subject="RE: Quote",
        in_reply_to=parent,
        references=[parent],
    )


def test_a_reply_to_a_crm_activity_tidings_does_not_track_is_not_held() -> None:
    # Nothing tidings does changes that activity: a copy of its email links to it.
    eng = engine()
    out = eng.process(reply_to(CRM_PARENT), 0, T0)
    assert out.decisions[0].correlated_activity_id is not None
    assert not state_of(eng).held and not state_of(eng).held_items


def test_a_reply_to_a_crm_activity_is_held_when_internal_email_is_tracked_twice() -> None:
    # A copy of internal email may then be tracked under its direction, in front of
    # the CRM's activity.
    eng = engine(ProcessingConfig(internal_email=InternalEmailPolicy.TWO))
    eng.process(reply_to(CRM_PARENT), 0, T0)
    assert [entry.waiting_on for entry in state_of(eng).held[CRM_PARENT].items] == [[CRM_PARENT]]


def test_a_reply_to_mail_tracked_here_still_waits_on_it() -> None:
    # Its regarding or conversation may still change with a later copy.
    eng = engine()
    eng.process(thread_emails()[0], 0, T0)  # the root, tracked by the support queue
    eng.process(reply_to(ROOT), 0, T0)
    assert [entry.waiting_on for entry in state_of(eng).held[ROOT].items] == [[ROOT]]


@given(st.permutations(range(3)))
def test_replies_to_a_crm_activity_end_the_same_in_any_order(order: list[int]) -> None:
    # The CRM activity's own email reaching a mailbox, and two replies to it.
    copy = email("mb-support", "copy", CRM_PARENT, "alice@nw.example", ["dana@contoso.example"])
    emails = [copy, reply_to(CRM_PARENT, "r1"), reply_to(CRM_PARENT, "r2")]
    reference = outcomes(final_decisions(engine(), emails))
    assert outcomes(final_decisions(engine(), [emails[n] for n in order])) == reference


def outcomes(decisions: dict[str, PromotionDecision]) -> dict[str, tuple[object, ...]]:
    """What each item's decision says, without its version and time."""
    return {
        key: (d.status, d.reason, d.activity_id, d.correlated_activity_id)
        for key, d in decisions.items()
    }
