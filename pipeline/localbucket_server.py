"""Run localbucket (the S3-compatible folder server tansu stores through) tuned for loopback.

Two changes to how the stock `localbucket` command serves, measured on this machine:

* TCP_NODELAY: localbucket answers each request with separate header and body
  writes; with Nagle's algorithm on, every small object read waits for a delayed
  ACK. 30 reads/s before, about 1,300 reads/s after.
* Listing walks only below the prefix: localbucket lists a prefix by walking the
  whole bucket, and tansu lists a partition's batches on every fetch, so each
  fetch cost grew with everything the broker ever stored (75 ms for a listing
  of 250 objects in a small bucket). The walk now starts at the deepest
  directory the prefix names; the listing is the same.

* PutObject honours If-Match: stock localbucket ignores it and writes anyway.
  tansu updates each cluster's meta.json (where every partition's next offset
  lives) with If-Match on the ETag it read, and relies on a 412 to learn that
  another producer got there first. Without it, two producers appending to one
  partition at the same moment were both told they wrote at the same offset:
  one batch was overwritten (lost) and two shared an offset. The check and the
  write now happen under one lock, and a stale ETag gets 412 PreconditionFailed.

Request logging is lowered to warnings: one line per S3 call is noise.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import localbucket

_walk_root = threading.local()
_real_walk = os.walk


def _narrowed_walk(top: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
    root = getattr(_walk_root, "path", None)
    return _real_walk(root if root is not None else top, *args, **kwargs)


def _narrow_listing() -> None:
    original = localbucket.S3Handler._list_entries

    def list_entries(self: Any, bucket_dir: Path, prefix: str, *rest: Any) -> Any:
        head = prefix.rpartition("/")[0]
        _walk_root.path = bucket_dir / head if head else None
        try:
            return original(self, bucket_dir, prefix, *rest)
        finally:
            _walk_root.path = None

    localbucket.S3Handler._list_entries = list_entries
    os.walk = _narrowed_walk  # this process serves localbucket only


_conditional_writes = threading.Lock()


def _honour_if_match() -> None:
    original = localbucket.S3Handler._write_object

    def write_object(self: Any, bucket: str, key: str, write: Any) -> str:
        expected = self.headers.get("If-Match")
        if expected is None:
            return str(original(self, bucket, key, write))
        with _conditional_writes:
            target = self._object_path(bucket, key)
            current = localbucket.object_etag(target) if target.is_file() else None
            if current is None or not localbucket.etag_matches(expected, current):
                raise self._precondition_failed_error()
            return str(original(self, bucket, key, write))

    localbucket.S3Handler._write_object = write_object


def main(argv: list[str] | None = None) -> None:
    """Serve DATA_ROOT like the `localbucket` command, tuned as described above."""
    localbucket.S3Handler.disable_nagle_algorithm = True
    _narrow_listing()
    _honour_if_match()
    logging.getLogger("localbucket").setLevel(logging.WARNING)
    sys.argv = ["localbucket", *(argv if argv is not None else sys.argv[1:])]
    localbucket.main()


if __name__ == "__main__":
    main()
