"""schemas.blobs.S3BlobStore against a real S3 API: localbucket on a loopback port,
launched the way the embedded broker launches it (pipeline.localbucket_server)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.embedded import free_port, port_open
from schemas.blobs import (
    BlobNotFoundError,
    BlobStoreError,
    S3BlobStore,
    blob_ref,
    open_blob_store,
)
from schemas.config import BlobStoreConfig
from schemas.secret import SecretRef
from tests.workspace import ROOT

pytestmark = pytest.mark.integration
pytest.importorskip("boto3", reason="the s3 store needs boto3 (tidings[s3])")

BUCKET = "claims"
HOST = "127.0.0.1"


class Bucket:
    """A running localbucket: its data root and the settings that reach it."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.endpoint = f"http://{HOST}:{port}"
        self.settings = BlobStoreConfig(
            endpoint=self.endpoint,
            region="us-east-1",
            access_key_id=SecretRef(env="TEST_BLOBS_KEY_ID"),
            secret_access_key=SecretRef(env="TEST_BLOBS_SECRET"),
        )


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    # localbucket does not check credentials; the references must still resolve.
    monkeypatch.setenv("TEST_BLOBS_KEY_ID", "tidings")
    monkeypatch.setenv("TEST_BLOBS_SECRET", "tidings")
    root = tmp_path / "bucket-root"
    (root / BUCKET).mkdir(parents=True)
    port = free_port(HOST)
    log = (tmp_path / "localbucket.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pipeline.localbucket_server", str(root)),
            *("--host", HOST, "--port", str(port)),
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_open(HOST, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                output = (tmp_path / "localbucket.log").read_text(errors="replace")
                pytest.fail(f"localbucket did not start on {port}:\n{output[-3000:]}")
            time.sleep(0.05)
        yield Bucket(root, port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_round_trip_stores_under_prefix_and_digest(bucket: Bucket) -> None:
    store = open_blob_store(f"s3://{BUCKET}/tidings/claims", bucket.settings)
    assert isinstance(store, S3BlobStore)
    data = b"From: a@example.net\r\nSubject: big\r\n\r\n" + os.urandom(3 * 1024 * 1024)

    ref = store.put(data)

    digest = hashlib.sha256(data).hexdigest()
    assert ref == f"blob:sha256:{digest}" == blob_ref(data)
    assert store.get(ref) == data
    # localbucket keeps objects as plain files: the key is <prefix>/<sha256>.
    on_disk = bucket.root / BUCKET / "tidings" / "claims" / digest
    assert on_disk.read_bytes() == data


def test_put_is_idempotent_and_a_second_store_reads_it(bucket: Bucket) -> None:
    writer = open_blob_store(f"s3://{BUCKET}/p", bucket.settings)
    first = writer.put(b"same message")
    stored = bucket.root / BUCKET / "p" / first.removeprefix("blob:sha256:")
    mtime = stored.stat().st_mtime_ns
    time.sleep(0.01)

    assert writer.put(b"same message") == first
    assert stored.stat().st_mtime_ns == mtime  # not uploaded again
    reader = open_blob_store(f"s3://{BUCKET}/p/", bucket.settings)
    assert reader.get(first) == b"same message"


def test_bucket_root_without_prefix(bucket: Bucket) -> None:
    store = S3BlobStore(BUCKET, "", bucket.settings)
    ref = store.put(b"no prefix")
    assert (bucket.root / BUCKET / ref.removeprefix("blob:sha256:")).read_bytes() == b"no prefix"
    assert store.get(ref) == b"no prefix"


def test_missing_and_malformed_refs_raise_not_found(bucket: Bucket) -> None:
    store = open_blob_store(f"s3://{BUCKET}/p", bucket.settings)
    with pytest.raises(BlobNotFoundError, match="missing"):
        store.get(blob_ref(b"never stored"))
    with pytest.raises(BlobNotFoundError, match="malformed"):
        store.get("blob:sha256:xyz")


def test_missing_bucket_is_a_store_error_not_not_found(bucket: Bucket) -> None:
    store = open_blob_store("s3://no-such-bucket/p", bucket.settings)
    with pytest.raises(BlobStoreError, match="no-such-bucket") as raised:
        store.put(b"data")
    assert isinstance(raised.value, OSError)


def test_unreachable_endpoint_is_a_store_error(bucket: Bucket) -> None:
    dead = BlobStoreConfig(
        endpoint=f"http://{HOST}:{free_port(HOST)}",
        access_key_id=bucket.settings.access_key_id,
        secret_access_key=bucket.settings.secret_access_key,
    )
    store = S3BlobStore(BUCKET, "p", dead, timeout_s=2.0)
    with pytest.raises(BlobStoreError, match="failed"):
        store.get(blob_ref(b"x"))


def put(bucket: Bucket, key: str, body: bytes, **headers: str) -> tuple[int, str]:
    """Status and ETag of a raw PutObject (localbucket does not check signatures)."""
    request = urllib.request.Request(
        f"{bucket.endpoint}/{BUCKET}/{key}", data=body, method="PUT", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("ETag", "")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_put_honours_if_match_as_tansu_needs(bucket: Bucket) -> None:
    # tansu moves a partition's next offset with If-Match on the ETag it read: a
    # stale ETag must be refused, or two producers get the same offsets.
    status, first = put(bucket, "meta.json", b'{"offset": 1}')
    assert status == 200
    status, second = put(bucket, "meta.json", b'{"offset": 2}', **{"If-Match": first})
    assert status == 200 and second != first
    assert put(bucket, "meta.json", b'{"offset": 9}', **{"If-Match": first})[0] == 412
    assert put(bucket, "absent.json", b"{}", **{"If-Match": first})[0] == 412
    assert (bucket.root / BUCKET / "meta.json").read_bytes() == b'{"offset": 2}'
    assert put(bucket, "meta.json", b"{}", **{"If-None-Match": "*"})[0] == 412
