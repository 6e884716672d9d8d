"""Held items: a conversation lists its held items, each item's email and decision is
stored once beside it, and an item's record goes when it leaves its conversation
(re-decided to wait on nothing, expired, or its conversation expired)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.engine import DecisionEngine, MemoryState
from schemas.mail import ParsedEmail
from schemas.state import HeldItem
from tests.unit.helpers import T0, email, engine

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
