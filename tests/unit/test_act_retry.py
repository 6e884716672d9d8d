"""The act writer's later retries: the pure rules (connectors/act_retry.py) and the
writer's parking flow with a fake mailbox target and the topic writes captured
(no broker): park, retry later, land and tombstone, supersede, permanent, give up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from connectors import errors
from connectors.act_graph_write import ItemRef, MailboxItem
from connectors.act_retry import due, park, retry_delay, same_change, supersedes
from connectors.act_writer import ActWriter
from schemas import metrics
from schemas.act import ActPayload, ActType, Task
from schemas.act_changes import ActParked, CrmActChange, link_key
from schemas.act_sync import ActWriterSettings
from schemas.base import RecordRef
from schemas.config import KafkaConfig
from schemas.mailbox import ActSettings
from tests.act_harness import ews_mailbox

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SETTINGS = ActWriterSettings(retry_delay_s=60, retry_max_delay_s=3600, give_up_after_s=86400)
OWNER = RecordRef("user", "alice")


def change(at: datetime, deleted: bool = False, subject: str = "Send the quote") -> CrmActChange:
    return CrmActChange(
        record_id="task-1",
        record_type=ActType.TASK,
        owner=OWNER,
        payload=None if deleted else Task(subject=subject),
        deleted=deleted,
        crm_change_time=at,
    )


def parked(c: CrmActChange, mailbox: str, next_at: datetime, retries: int = 0) -> ActParked:
    return ActParked(
        record_id=c.record_id,
        mailbox_id=mailbox,
        change=c,
        retries=retries,
        first_failed_at=T0,
        next_attempt_at=next_at,
        updated_at=T0,
    )


# -- the pure rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retries", "seconds"),
    [(0, 60), (1, 120), (2, 240), (5, 1920), (6, 3600), (20, 3600), (10_000, 3600)],
)
def test_the_delay_doubles_up_to_the_cap(retries: int, seconds: float) -> None:
    assert retry_delay(retries, SETTINGS) == timedelta(seconds=seconds)


def test_a_first_failure_parks_with_the_first_delay() -> None:
    entry = park(change(T0), "mb-1", "ServerBusy", "busy", T0, None, SETTINGS)
    assert entry is not None
    assert (entry.retries, entry.first_failed_at) == (0, T0)
    assert entry.next_attempt_at == T0 + timedelta(seconds=60)
    assert (entry.last_code, entry.last_message) == ("ServerBusy", "busy")


def test_the_same_change_failing_again_counts_a_retry_and_keeps_its_clock() -> None:
    first = park(change(T0), "mb-1", "ServerBusy", "busy", T0, None, SETTINGS)
    later = T0 + timedelta(minutes=2)
    again = park(change(T0), "mb-1", "Timeout", "slow", later, first, SETTINGS)
    assert again is not None
    assert (again.retries, again.first_failed_at) == (1, T0)
    assert again.next_attempt_at == later + timedelta(seconds=120)


def test_a_newer_change_starts_its_own_clock() -> None:
    first = park(change(T0), "mb-1", "ServerBusy", "busy", T0, None, SETTINGS)
    later = T0 + timedelta(hours=23, minutes=59)
    newer = park(change(T0 + timedelta(hours=1)), "mb-1", "ServerBusy", "b", later, first, SETTINGS)
    assert newer is not None and (newer.retries, newer.first_failed_at) == (0, later)


def test_past_the_give_up_limit_there_is_no_entry() -> None:
    first = park(change(T0), "mb-1", "ServerBusy", "busy", T0, None, SETTINGS)
    assert park(change(T0), "mb-1", "x", "y", T0 + timedelta(hours=24), first, SETTINGS) is None
    assert park(change(T0), "mb-1", "x", "y", T0 + timedelta(hours=23), first, SETTINGS)


@pytest.mark.parametrize(
    ("new_at", "new_deleted", "old_deleted", "wins"),
    [
        (1, False, False, True),  # newer write
        (0, False, False, True),  # the same version (the retry itself)
        (-1, False, False, False),  # older: the parked one is newer
        (0, True, False, True),  # a delete at the same time replaces a write
        (0, False, True, False),  # a write does not replace a delete of the same time
        (1, False, True, True),  # a newer write does
    ],
)
def test_supersedes(new_at: int, new_deleted: bool, old_deleted: bool, wins: bool) -> None:
    old = parked(change(T0, old_deleted), "mb-1", T0)
    assert supersedes(change(T0 + timedelta(minutes=new_at), new_deleted), old) is wins


def test_same_change() -> None:
    assert same_change(change(T0), change(T0, subject="other payload, same version"))
    assert not same_change(change(T0), change(T0, deleted=True))
    assert not same_change(change(T0), change(T0 + timedelta(seconds=1)))


def test_due_takes_the_earliest_due_entry_per_mailbox() -> None:
    now = T0 + timedelta(minutes=10)
    a1 = parked(change(T0), "mb-a", T0 + timedelta(minutes=1))
    a2 = parked(change(T0), "mb-a", T0 + timedelta(minutes=2))
    b1 = parked(change(T0), "mb-b", T0 + timedelta(minutes=5))
    later = parked(change(T0), "mb-c", T0 + timedelta(minutes=11))
    assert due([later, a2, b1, a1], now) == [a1, b1]
    assert due([later], now) == []


# -- the writer's flow, with a fake target ----------------------------------------------


class FlakyTarget:
    """A mailbox whose calls fail with `failure` while `down` is set."""

    def __init__(self) -> None:
        self.down = False
        self.failure = errors.transient(errors.SERVER_BUSY, "ews busy")
        self.created: list[ActPayload] = []
        self.items: dict[str, MailboxItem] = {}

    def _check(self) -> None:
        if self.down:
            raise self.failure

    async def get(self, kind: ActType, item_id: str) -> MailboxItem | None:
        self._check()
        return self.items.get(item_id)

    async def create(self, kind: ActType, payload: ActPayload, transaction: str) -> ItemRef:
        self._check()
        self.created.append(payload)
        ref = ItemRef(item_id=f"item-{len(self.created)}", change_key="ck", change_time=T0)
        self.items[ref.item_id] = MailboxItem(ref, payload)
        return ref

    async def update(
        self, kind: ActType, ref: ItemRef, merged: ActPayload, fields: set[str], current: Any
    ) -> ItemRef:
        self._check()
        self.items[ref.item_id] = MailboxItem(ref, merged)
        return ref

    async def delete(self, kind: ActType, item_id: str, cancel: bool) -> None:
        self._check()
        self.items.pop(item_id, None)

    async def close(self) -> None:
        return None


def due_now(w: ActWriter) -> None:
    """Make every parked entry due."""
    for key, entry in w.owned.parked.items():
        w.owned.parked[key] = msgspec.structs.replace(entry, next_attempt_at=T0)


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str, bytes | None, int | None]] = []

    async def __call__(self, topic: str, key: str, value: bytes | None, partition: int | None):  # type: ignore[no-untyped-def]
        self.messages.append((topic, key, value, partition))

    def on(self, topic: str) -> list[tuple[str, bytes | None, int | None]]:
        return [(k, v, p) for t, k, v, p in self.messages if t.endswith(topic)]


def writer(target: FlakyTarget, **settings: Any) -> tuple[ActWriter, Sent]:
    config = ews_mailbox("mb-alice", "alice@northwind.example", "svc", "ENV", act=ActSettings())
    w = ActWriter(
        KafkaConfig(),
        "t.",
        {},
        target_factory=lambda *_: target,
        settings=ActWriterSettings(retry_pause_s=0, retry_delay_s=0.001, **settings),
    )
    w.directory.configs = {"mb-alice": config}
    w.owned.partitions = {0}
    w.parking = True
    sent = Sent()
    w._send = sent  # type: ignore[method-assign]
    w._target = lambda config: target  # type: ignore[method-assign]
    return w, sent


def count(outcome: str) -> float:
    value = metrics.ACT_WRITER_RETRIES.labels(outcome)._value.get()
    return float(value)


KEY = link_key("task-1", "mb-alice")


async def test_a_change_parks_then_lands_once_and_the_entry_is_tombstoned() -> None:
    target = FlakyTarget()
    w, sent = writer(target)
    parked_before, written_before = count("parked"), count("written")
    target.down = True
    await w.apply(change(T0), 0)
    assert target.created == [] and w.stats.parked == 1 and w.stats.failed == 0
    assert [(k, p) for k, v, p in sent.on("act.retry") if v is not None] == [(KEY, 0)]
    assert KEY in w.owned.parked and count("parked") == parked_before + 1

    due_now(w)
    await w._retry_due()  # still down: one more retry, parked again with a longer delay
    assert w.owned.parked[KEY].retries == 1 and w.stats.retried == 1

    target.down = False
    due_now(w)
    await w._retry_due()
    assert len(target.created) == 1 and KEY not in w.owned.parked
    assert sent.on("act.retry")[-1] == (KEY, None, 0)  # tombstoned
    assert [k for k, v, _ in sent.on("act.links") if v is not None] == [KEY]
    assert count("written") == written_before + 1
    await w._retry_due()  # nothing left
    assert len(target.created) == 1


async def test_a_newer_change_supersedes_the_parked_one() -> None:
    target = FlakyTarget()
    w, sent = writer(target)
    superseded = count("superseded")
    target.down = True
    await w.apply(change(T0), 0)
    target.down = False
    await w.apply(change(T0 + timedelta(minutes=5), subject="Send the new quote"), 0)
    assert [p.subject for p in target.created if isinstance(p, Task)] == ["Send the new quote"]
    assert w.stats.created == 1
    assert KEY not in w.owned.parked and sent.on("act.retry")[-1][1] is None
    assert count("superseded") == superseded + 1
    # an older change read again (after a crash) never overwrites a parked newer one
    target.down = True
    await w.apply(change(T0 + timedelta(minutes=9)), 0)
    assert w.owned.parked[KEY].change.crm_change_time == T0 + timedelta(minutes=9)
    target.down = False
    await w.apply(change(T0 + timedelta(minutes=7), subject="older"), 0)
    assert w.stats.updated == 0 and KEY in w.owned.parked
    due_now(w)
    await w._retry_due()  # the parked newer version lands
    assert w.stats.updated == 1 and KEY not in w.owned.parked


async def test_a_delete_of_the_record_ends_a_parked_create() -> None:
    target = FlakyTarget()
    w, sent = writer(target)
    target.down = True
    await w.apply(change(T0), 0)
    assert KEY in w.owned.parked
    await w.apply(change(T0 + timedelta(minutes=1), deleted=True), 0)  # never linked
    assert KEY not in w.owned.parked and sent.on("act.retry")[-1] == (KEY, None, 0)
    target.down = False
    await w._retry_due()
    assert target.created == []


async def test_a_permanent_failure_is_reported_not_parked() -> None:
    target = FlakyTarget()
    target.failure = errors.permanent("ErrorInvalidRequest", "bad request")
    w, sent = writer(target)
    target.down = True
    await w.apply(change(T0), 0)
    assert w.stats.failed == 1 and w.stats.parked == 0 and not sent.on("act.retry")


async def test_the_writer_gives_up_after_the_limit() -> None:
    target = FlakyTarget()
    w, sent = writer(target, give_up_after_s=3600)
    gave_up = count("gave_up")
    target.down = True
    await w.apply(change(T0), 0)
    entry = w.owned.parked[KEY]
    old = datetime.now(UTC) - timedelta(hours=2)
    w.owned.parked[KEY] = msgspec.structs.replace(entry, first_failed_at=old, next_attempt_at=old)
    await w._retry_due()
    assert KEY not in w.owned.parked and sent.on("act.retry")[-1] == (KEY, None, 0)
    assert w.stats.failed == 1 and count("gave_up") == gave_up + 1


async def test_without_parking_the_old_behaviour_stays() -> None:
    target = FlakyTarget()
    w, sent = writer(target, park=False)
    w.parking = False
    target.down = True
    await w.apply(change(T0), 0)
    assert w.stats.failed == 1 and not sent.on("act.retry") and not w.owned.parked


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        ActWriterSettings(max_attempts=0)
    with pytest.raises(ValueError, match="retry_delay_s"):
        ActWriterSettings(retry_delay_s=7200, retry_max_delay_s=3600)
    with pytest.raises(ValueError, match="give_up_after_s"):
        ActWriterSettings(give_up_after_s=0)
