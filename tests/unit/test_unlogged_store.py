"""processors/faust_state.py: the tables' RocksDB store writes without a write-ahead log,
keeps what it holds when it closes, and after a crash recovers a prefix of its
writes, so faust's persisted offset is never ahead of the data it covers."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from processors.faust_state import UnloggedStore

ROOT = Path(__file__).resolve().parents[2]
CHANGELOG = TP("tidings-test-tracked-changelog", 1)


def table(datadir: Path) -> Any:
    """A table as ProcessorApp makes them, on the `tidings-rocksdb` store."""
    app = faust.App("tidings-test", store="tidings-rocksdb://", datadir=str(datadir))
    return app.Table("tracked", default=None, options={"driver": "rocksdict"}, partitions=2)


def test_the_tables_store_is_found_by_its_url_and_writes_no_log(tmp_path: Path) -> None:
    store = table(tmp_path).data
    assert isinstance(store, UnloggedStore)
    store._db_for_partition(1).put(b'"m1@x.example"', b"tracked")
    store.set_persisted_offset(CHANGELOG, 7)
    logs = list(store.partition_path(1).glob("*.log"))
    assert logs and all(log.stat().st_size == 0 for log in logs)


def test_the_tables_memory_table_has_a_bloom_filter(tmp_path: Path) -> None:
    store = table(tmp_path).data
    store._db_for_partition(0)
    written = max(store.partition_path(0).glob("OPTIONS-*")).read_text()
    assert "memtable_whole_key_filtering=true" in written
    assert "memtable_prefix_bloom_size_ratio=0.1" in written


def test_a_closed_store_keeps_its_writes_and_offset(tmp_path: Path) -> None:
    store = table(tmp_path).data
    store._db_for_partition(1).put(b'"m1@x.example"', b"tracked")
    store.set_persisted_offset(CHANGELOG, 7)
    store._dbs.clear()  # how faust drops a moved partition's database
    gc.collect()
    reopened = table(tmp_path).data
    assert reopened._db_for_partition(1).get(b'"m1@x.example"') == b"tracked"
    assert reopened.persisted_offset(CHANGELOG) == 7


def crash_after(datadir: Path, steps: str) -> None:
    """Run `steps` in a child process on a table's store in `datadir` (partition 1's
    database as `db`), then end it with no close: what RocksDB did not flush is
    lost, as in a `kill -9`."""
    child = f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from tests.unit.test_unlogged_store import CHANGELOG, table
        store = table(Path({str(datadir)!r})).data
        db = store._db_for_partition(1)
    """
    script = textwrap.dedent(child) + textwrap.dedent(steps) + "os._exit(0)\n"
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)


def test_after_a_crash_the_offset_is_never_ahead_of_the_data(tmp_path: Path) -> None:
    crash_after(
        tmp_path,
        """
        db.put(b'"m1@x.example"', b"first")
        store.set_persisted_offset(CHANGELOG, 10)
        db.flush()  # what RocksDB does when its memory table fills
        db.put(b'"m2@x.example"', b"second")
        store.set_persisted_offset(CHANGELOG, 20)
        """,
    )
    db = table(tmp_path).data
    partition = db._db_for_partition(1)
    assert partition.get(b'"m1@x.example"') == b"first"
    assert partition.get(b'"m2@x.example"') is None
    # Recovery replays the changelog after offset 10: m2's record included.
    assert db.persisted_offset(CHANGELOG) == 10


def test_a_flush_bounds_what_a_crash_replays(tmp_path: Path) -> None:
    crash_after(
        tmp_path,
        """
        db.put(b'"m1@x.example"', b"first")
        store.set_persisted_offset(CHANGELOG, 10)
        store.flush()  # the processors' timer; RocksDB flushes in the background
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            db.property_int_value("rocksdb.num-entries-active-mem-table")
            or db.property_int_value("rocksdb.num-immutable-mem-table")
        ):
            time.sleep(0.01)
        """,
    )
    db = table(tmp_path).data
    assert db._db_for_partition(1).get(b'"m1@x.example"') == b"first"
    assert db.persisted_offset(CHANGELOG) == 10
