"""Queues: the queues whose mailboxes received an email, and the one that accepted it."""

from __future__ import annotations

from datetime import timedelta

from schemas.base import RecordRef
from schemas.mailbox import IncomingFilter
from tests.unit.helpers import T0, email, engine, mailbox

SUPPORT = RecordRef("queue", "support")
SALES = RecordRef("queue", "sales")


def test_a_queue_mailbox_accepts_mail_for_its_queue() -> None:
    out = engine().process(
        email(
            "mb-support", "1", "q1@contoso.example", "dana@contoso.example", ["support@nw.example"]
        ),
        0,
        T0,
    )
    activity = out.activities[0]
    assert activity.queues == [SUPPORT]
    assert activity.accepting_queue == SUPPORT


def test_user_mailboxes_put_nothing_in_a_queue() -> None:
    out = engine().process(
        email("mb-bob", "1", "u1@contoso.example", "dana@contoso.example", ["bob@nw.example"]),
        0,
        T0,
    )
    assert out.activities[0].queues == []
    assert out.activities[0].accepting_queue is None


def test_two_queues_receive_it_and_the_first_to_accept_keeps_it() -> None:
    eng = engine()
    eng.mailboxes.apply(
        "mb-sales", mailbox("mb-sales", "queue:sales", "sales@nw.example", IncomingFilter.ALL)
    )
    to = ["support@nw.example", "sales@nw.example"]
    first = email("mb-sales", "1", "q2@contoso.example", "dana@contoso.example", to)
    second = email("mb-support", "7", "q2@contoso.example", "dana@contoso.example", to)
    eng.process(first, 0, T0)
    out = eng.process(second, 0, T0 + timedelta(seconds=5))
    activity = out.activities[-1]
    assert activity.queues == [SALES, SUPPORT]
    assert activity.accepting_queue == SALES
    assert activity.receiving_mailboxes == ["mb-sales", "mb-support"]


def test_a_copy_linked_as_duplicate_is_a_queue_item_but_did_not_accept_it() -> None:
    eng = engine()
    eng.mailboxes.apply(
        "mb-sales",
        mailbox("mb-sales", "queue:sales", "sales@nw.example", IncomingFilter.RESPONSES),
    )
    to = ["support@nw.example", "sales@nw.example"]
    eng.process(email("mb-support", "1", "q3@contoso.example", "dana@contoso.example", to), 0, T0)
    out = eng.process(
        email("mb-sales", "2", "q3@contoso.example", "dana@contoso.example", to), 0, T0
    )
    # Sales only takes responses: its copy is linked (Duplicate), a queue item all the same.
    assert out.activities[-1].queues == [SALES, SUPPORT]
    assert out.activities[-1].accepting_queue == SUPPORT
