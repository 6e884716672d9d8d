"""Copies of a tracked message: a message's only copy stays inline in its record (one
record for a message in one mailbox); from the second copy on, each mailbox
item's decision is its own record beside the message, so a message in N
mailboxes is written at the size of its mailbox ids per copy, not of every
copy's decision (N² bytes); messages stored by an earlier build, with every
copy inline, are read as they are and moved out on their next write."""

from __future__ import annotations

import msgspec

from processors.directory import ActivityIndex, Mailboxes
from processors.engine import DecisionEngine, MemoryState
from schemas.config import ProcessingConfig
from schemas.crm import DecisionStatus, ReasonCode
from schemas.mail import ParsedEmail
from schemas.mailbox import IncomingFilter
from schemas.state import TRACKED_CODEC, TrackedItem
from tests.unit.helpers import MAILBOXES, T0, directory, email, mailbox

MESSAGE = "news-1@contoso.example"
STAFF = [f"mb-staff-{n:02}" for n in range(30)]


def staff_engine() -> DecisionEngine:
    """The helpers' world plus 30 mailboxes that take all mail (owned by alice)."""
    mailboxes = Mailboxes()
    for config in MAILBOXES:
        mailboxes.apply(config.mailbox_id, config)
    for mailbox_id in STAFF:
        config = mailbox(mailbox_id, "user:alice", "all-staff@nw.example", IncomingFilter.ALL)
        mailboxes.apply(mailbox_id, config)
    state = MemoryState()
    return DecisionEngine(state, directory(), mailboxes, ActivityIndex(), ProcessingConfig())


def copy_in(mailbox_id: str) -> ParsedEmail:
    """The message from Dana (a contact) to the staff list, as `mailbox_id` holds it."""
    return email(mailbox_id, "1", MESSAGE, "dana@contoso.example", ["all-staff@nw.example"])


def state_of(eng: DecisionEngine) -> MemoryState:
    assert isinstance(eng.state, MemoryState)
    return eng.state


def test_each_copy_is_its_own_record_and_the_message_grows_by_mailbox_ids_only() -> None:
    eng = staff_engine()
    sizes = []
    decided = {}
    for mailbox_id in STAFF:
        emission = eng.process(copy_in(mailbox_id), 0, T0)
        decided[mailbox_id] = emission.decisions[0]
        sizes.append(len(TRACKED_CODEC.encode(state_of(eng).tracked[MESSAGE])))
    tracked = state_of(eng).tracked[MESSAGE]
    assert tracked.items == []
    assert tracked.mailboxes == STAFF
    copies = state_of(eng).tracked_items
    assert {copy.mailbox_id: copy.decision for copy in copies.values()} == decided
    assert [d.reason for d in decided.values()].count(ReasonCode.DUPLICATE) == len(STAFF) - 1
    growth_per_copy = (sizes[-1] - sizes[1]) / (len(STAFF) - 2)  # from the second copy on
    assert growth_per_copy <= len(STAFF[0]) + 4  # an id, its quotes and a comma


def test_a_message_in_one_mailbox_keeps_its_copy_inline_until_a_second_copy() -> None:
    eng = staff_engine()
    first = eng.process(copy_in(STAFF[0]), 0, T0).decisions[0]
    state = state_of(eng)
    assert state.tracked_items == {}
    assert state.tracked[MESSAGE].items == [
        TrackedItem(item_key=copy_in(STAFF[0]).item_key, mailbox_id=STAFF[0], decision=first)
    ]
    assert eng.process(copy_in(STAFF[0]), 0, T0).decisions == [first]  # decided again
    assert state.tracked_items == {} and len(state.tracked[MESSAGE].items) == 1

    second = eng.process(copy_in(STAFF[1]), 0, T0).decisions[0]
    assert state.tracked[MESSAGE].items == []
    assert {copy.mailbox_id: copy.decision for copy in state.tracked_items.values()} == {
        STAFF[0]: first,
        STAFF[1]: second,
    }
    assert eng.process(copy_in(STAFF[0]), 0, T0).decisions == [first]


def test_deciding_a_copy_again_gives_the_same_decision_and_writes_nothing_new() -> None:
    eng = staff_engine()
    for mailbox_id in STAFF[:5]:
        eng.process(copy_in(mailbox_id), 0, T0)
    state = state_of(eng)
    before = (dict(state.tracked), dict(state.tracked_items))
    first = eng.process(copy_in(STAFF[2]), 0, T0)
    again = eng.process(copy_in(STAFF[2]), 0, T0)
    assert first == again
    assert first.decisions[0] == state.tracked_items[(MESSAGE, copy_in(STAFF[2]).item_key)].decision
    assert (state.tracked, state.tracked_items) == before


def as_stored_by_an_earlier_build(state: MemoryState) -> None:
    """Rewrite `state` as builds before per-copy records kept it: every copy inline in
    its message's `items`, no queue copies."""
    for key, tracked in list(state.tracked.items()):
        copies = sorted(
            (copy for (owner, _), copy in state.tracked_items.items() if owner == key),
            key=lambda copy: copy.item_key,
        )
        state.tracked[key] = msgspec.structs.replace(tracked, items=copies, queue_copies=[])
    state.tracked_items.clear()


def test_copies_stored_inline_by_an_earlier_build_are_read_and_moved_out() -> None:
    earlier, now = staff_engine(), staff_engine()
    copies = [copy_in("mb-support"), *(copy_in(m) for m in STAFF[:3])]
    expected = [earlier.process(c, 0, T0) for c in copies]
    as_stored_by_an_earlier_build(state_of(earlier))
    state_of(now).tracked.update(state_of(earlier).tracked)

    redecided = now.process(copies[1], 0, T0)  # read from the inline copies, moved out

    assert redecided.decisions == expected[1].decisions
    state = state_of(now)
    assert state.tracked[MESSAGE].items == []
    assert set(state.tracked_items) == {(MESSAGE, c.item_key) for c in copies}
    assert [q.mailbox_id for q in state.tracked[MESSAGE].queue_copies] == ["mb-support"]
    assert redecided.activities[0].accepting_queue is not None
    assert redecided.activities[0].accepting_queue.id == "support"
    assert now.process(copies[0], 0, T0).decisions == expected[0].decisions


def test_only_promoted_copies_in_queue_mailboxes_are_queue_copies() -> None:
    eng = staff_engine()
    eng.process(copy_in(STAFF[0]), 0, T0)
    eng.process(copy_in("mb-support"), 0, T0)
    tracked = state_of(eng).tracked[MESSAGE]
    assert [(q.mailbox_id, q.duplicate) for q in tracked.queue_copies] == [("mb-support", True)]
    copy = state_of(eng).tracked_items[(MESSAGE, copy_in("mb-support").item_key)]
    assert isinstance(copy, TrackedItem)
    assert copy.decision.status == DecisionStatus.PROMOTED
