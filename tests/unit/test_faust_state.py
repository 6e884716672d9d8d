"""processors/faust_state.py: the key bytes the tables' stores and changelogs hold,
and TableState's writes, pending (and read back) until the changelog is taken."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import faust
from faust.serializers import codecs
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from processors.faust_state import Processing, TableState, store_key
from schemas.crm import Direction
from schemas.state import TRACKED_CODEC, HeldThread, TrackedMessage


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_store_keys_are_the_bytes_fausts_json_key_serializer_gives(key: str) -> None:
    assert store_key(key) == codecs.dumps("json", key)


def test_message_ids_and_member_keys_take_the_fast_path_unchanged() -> None:
    for key in ("m1@x.example", "m1@x.example#incoming", "12:m1@x.example|mb|INBOX|7"):
        assert store_key(key) == b'"' + key.encode() + b'"' == codecs.dumps("json", key)
    for key in ('quoted"local@x.example', "back\\slash@x.example", "tab\t@x.example", "é@x"):
        assert store_key(key) == codecs.dumps("json", key)


# -- TableState: writes pending until the changelog is taken ---------------------


def _state(datadir: Path) -> TableState:
    """TableState over four tables as ProcessorApp makes them (tidings-rocksdb store)."""
    app = faust.App("tidings-test", store="tidings-rocksdb://", datadir=str(datadir))
    tables = [
        app.Table(
            name,
            default=None,
            options={"driver": "rocksdict"},
            key_type=str,
            value_type=bytes,
            partitions=2,
            changelog_topic=app.topic(
                f"{name}-changelog", key_serializer="json", value_serializer="raw", partitions=2
            ),
        )
        for name in ("tracked", "tracked-items", "held", "held-items")
    ]
    return TableState(*tables)


class _Event:
    """What TableState reads of faust's current event: its message's partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def _event(partition: int) -> _Event:
    return _Event(partition)


def _tracked(message_id: str) -> TrackedMessage:
    return TrackedMessage(
        message_id=message_id,
        activity_id=f"act-{message_id}",
        version=1,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        direction=Direction.INCOMING,
        conversation_id=f"act-{message_id}",
    )


def _stored(state: TableState, table: int, partition: int, key: str) -> bytes | None:
    db = state._tables[table].data._db_for_partition(partition)
    value: bytes | None = db.get(store_key(key))
    return value


def test_a_write_is_read_back_at_once_and_stored_when_the_changelog_is_taken(
    tmp_path: Path,
) -> None:
    state = _state(tmp_path)
    with Processing(_event(1)):
        state.put_tracked("m1@x.example", _tracked("m1@x.example"))
        assert state.get_tracked("m1@x.example") == _tracked("m1@x.example")
    assert _stored(state, 0, 1, "m1@x.example") is None  # pending: not stored yet
    with Processing(_event(1)):  # a later event of the batch reads it too
        assert state.get_tracked("m1@x.example") == _tracked("m1@x.example")

    records = state.take_changelog()

    assert _stored(state, 0, 1, "m1@x.example") == TRACKED_CODEC.encode(_tracked("m1@x.example"))
    assert [(r.key, r.partition) for r in records] == [(store_key("m1@x.example"), 1)]
    assert state.take_changelog() == []


def test_a_pending_delete_hides_the_stored_value(tmp_path: Path) -> None:
    state = _state(tmp_path)
    with Processing(_event(1)):
        state.put_held("t1", HeldThread(partition=1))
    state.take_changelog()
    assert _stored(state, 2, 1, "t1") is not None

    state.put_held("t1", None)  # the expiry timer: outside of any event

    assert state.get_held("t1") is None
    with Processing(_event(1)):
        assert state.get_held("t1") is None
    assert [(r.key, r.value, r.partition) for r in state.take_changelog()] == [
        (store_key("t1"), None, 1)
    ]
    assert _stored(state, 2, 1, "t1") is None


def test_pending_writes_stay_on_their_partition(tmp_path: Path) -> None:
    state = _state(tmp_path)
    with Processing(_event(0)):
        state.put_tracked("m1@x.example", _tracked("m1@x.example"))
    with Processing(_event(1)):
        assert state.get_tracked("m1@x.example") is None
    assert state.get_tracked("m1@x.example") == _tracked("m1@x.example")  # any partition
    state.take_changelog()
    assert _stored(state, 0, 0, "m1@x.example") is not None
    assert _stored(state, 0, 1, "m1@x.example") is None


def test_a_delivered_offset_is_stored_with_the_next_write_batch(tmp_path: Path) -> None:
    state = _state(tmp_path)
    store = state._tables[0].data
    changelog = TP(state._changelogs[0], 1)
    with Processing(_event(1)):
        state.put_tracked("m1@x.example", _tracked("m1@x.example"))
    state.take_changelog()
    state.persisted()[state._changelogs[0]](1, 41)  # the producer delivered it

    assert store.persisted_offset(changelog) is None  # waits for the next batch
    assert state.get_tracked("m1@x.example") == _tracked("m1@x.example")
    state.take_changelog()
    assert store.persisted_offset(changelog) == 41


def test_the_offset_of_a_partition_revoked_meanwhile_is_dropped(tmp_path: Path) -> None:
    state = _state(tmp_path)
    store = state._tables[0].data
    state.persisted()[state._changelogs[0]](0, 7)  # partition 0's database is not open

    state.take_changelog()

    assert 0 not in store._dbs
    assert store.persisted_offset(TP(state._changelogs[0], 0)) is None
