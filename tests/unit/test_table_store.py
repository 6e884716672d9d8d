"""processors/faust_state.py: the tables' RocksDB store (`tidings-rocksdb://`) keeps
the write-ahead log, so a crash keeps every write (the tables stay at one point
with each other), and puts a bloom filter on each database's memory table."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from processors.faust_state import TableStore

ROOT = Path(__file__).resolve().parents[2]
CHANGELOG = TP("tidings-test-tracked-changelog", 1)


def table(datadir: Path) -> Any:
    """A table as ProcessorApp makes them, on the `tidings-rocksdb` store."""
    app = faust.App("tidings-test", store="tidings-rocksdb://", datadir=str(datadir))
    return app.Table("tracked", default=None, options={"driver": "rocksdict"}, partitions=2)


def test_the_tables_store_is_found_by_its_url_and_writes_its_log(tmp_path: Path) -> None:
    store = table(tmp_path).data
    assert isinstance(store, TableStore)
    store._db_for_partition(1).put(b'"m1@x.example"', b"tracked")
    logs = list(store.partition_path(1).glob("*.log"))
    assert logs and any(log.stat().st_size > 0 for log in logs)


def test_the_tables_memory_table_has_a_bloom_filter(tmp_path: Path) -> None:
    store = table(tmp_path).data
    store._db_for_partition(0)
    written = max(store.partition_path(0).glob("OPTIONS-*")).read_text()
    assert "memtable_whole_key_filtering=true" in written
    assert "memtable_prefix_bloom_size_ratio=0.1" in written


def test_a_crash_keeps_every_write_and_the_offset(tmp_path: Path) -> None:
    crash = f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from tests.unit.test_table_store import CHANGELOG, table
        store = table(Path({str(tmp_path)!r})).data
        db = store._db_for_partition(1)
        db.put(b'"m1@x.example"', b"first")
        store.set_persisted_offset(CHANGELOG, 10)
        db.flush()  # what RocksDB does when its memory table fills
        db.put(b'"m2@x.example"', b"second")
        store.set_persisted_offset(CHANGELOG, 20)
        os._exit(0)  # no close, as in a kill -9
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(crash)], check=True, cwd=ROOT)
    store = table(tmp_path).data
    partition = store._db_for_partition(1)
    assert partition.get(b'"m1@x.example"') == b"first"
    assert partition.get(b'"m2@x.example"') == b"second"
    assert store.persisted_offset(CHANGELOG) == 20
