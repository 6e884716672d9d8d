"""The on-disk stores: keys never merge, scans stay in their prefix, offsets and
indexes survive a reopen, and the engine decides the same on disk as in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.directory import ActivityIndex
from processors.disk_state import DiskState
from processors.engine import DecisionEngine
from processors.index_store import IndexStore, StateLocked, last_part, make_key
from schemas.config import ProcessingConfig, SmartMatchingConfig
from tests.unit.helpers import T0, email, engine, history_activity


@given(st.lists(st.text(max_size=12), min_size=1, max_size=4))
def test_keys_round_trip_their_last_part_and_never_merge(parts: list[str]) -> None:
    assert last_part(make_key(*parts)) == parts[-1]
    if len(parts) >= 2:
        joined = [parts[0] + "\x00" + parts[1], *parts[2:]]
        assert make_key(*parts) != make_key(*joined)


@given(st.lists(st.text(alphabet="ab\\\x00é", max_size=6), min_size=1, max_size=4))
def test_a_key_is_its_escaped_parts_joined_by_nul(parts: list[str]) -> None:
    escaped = [p.replace("\\", "\\\\").replace("\x00", "\\0").encode() for p in parts]
    assert make_key(*parts) == b"\x00".join(escaped)


def test_scan_stays_inside_its_prefix() -> None:
    store = IndexStore()
    try:
        store.write(
            {
                make_key("m", "a", "1"): b"",
                make_key("m", "a", "2"): b"",
                make_key("m", "ab", "3"): b"",
            },
            [],
        )
        assert [last_part(k) for k, _ in store.scan(make_key("m", "a"))] == ["1", "2"]
        assert store.first(make_key("m", "b")) is None
        store.write({}, [make_key("m", "a", "1")])
        found = store.first(make_key("m", "a"))
        assert found is not None and last_part(found[0]) == "2"
    finally:
        store.close()


def test_a_batched_block_stores_its_writes_together_at_its_end() -> None:
    store = IndexStore()
    store.write({make_key("k", "gone"): b"old", make_key("k", "kept"): b"1"}, [])
    with store.batched():
        store.write({make_key("k", "new"): b"2"}, [make_key("k", "gone")])
        store.write({make_key("k", "kept"): b"3"}, [])
        assert store.get(make_key("k", "new")) == b"2"  # gets see the block's writes
        assert store.get(make_key("k", "gone")) is None
        assert store.get(make_key("k", "kept")) == b"3"
        assert [last_part(key) for key, _ in store.scan(make_key("k"))] == ["gone", "kept"]
    assert dict(store.scan(make_key("k"))) == {
        make_key("k", "kept"): b"3",
        make_key("k", "new"): b"2",
    }
    store.write({make_key("k", "after"): b"4"}, [])  # outside a block: at once
    assert store.get(make_key("k", "after")) == b"4"
    store.close()


def test_index_and_offsets_survive_a_reopen_and_a_second_opener_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "activity-index"
    store = IndexStore(path)
    index = ActivityIndex(SmartMatchingConfig(), store)
    parent = history_activity("p-1@nw.example", "CRM:0001001", "account:a-1")
    index.apply(parent.activity_id, parent)
    store.save_offsets("tidings.crm.activities", {0: 5, 3: 17})
    with pytest.raises(StateLocked, match="in use by another processor worker"):
        IndexStore(path)
    store.close()

    reopened = IndexStore(path)
    try:
        again = ActivityIndex(SmartMatchingConfig(), reopened)
        assert len(again) == 1
        found = again.by_token("crm:0001001")
        assert found is not None and found.activity_id == parent.activity_id
        assert reopened.offsets("tidings.crm.activities") == {0: 5, 3: 17}
        again.apply(parent.activity_id, None)
        assert again.by_message_id("p-1@nw.example") is None and len(again) == 0
    finally:
        reopened.close()


def test_the_engine_decides_the_same_on_disk_as_in_memory() -> None:
    items = [
        email("mb-support", "1", "d1@x.example", "who@x.example", ["support@nw.example"]),
        email(
            "mb-alice",
            "2",
            "d2@x.example",
            "who@x.example",
            ["alice@nw.example"],
            in_reply_to="d1@x.example",
            references=["d1@x.example"],
        ),
        email("mb-alice", "3", "d3@x.example", "nobody@x.example", ["alice@nw.example"]),
    ]
    in_memory = engine()
    store = IndexStore()
    try:
        on_disk = DecisionEngine(
            DiskState(store),
            in_memory.directory,
            in_memory.mailboxes,
            in_memory.activities,
            ProcessingConfig(),
        )
        for item in items:
            assert on_disk.process(item, 0, T0) == in_memory.process(item, 0, T0)
    finally:
        store.close()
