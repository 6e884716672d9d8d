"""The claim-check store: messages too large to travel in an event are stored
here and the event carries a reference (`blob:sha256:<hex>`), which every
part resolves against the same configured store.

References are content addresses, so storing the same message twice is
harmless and a replayed event finds its blob. The store is shared contract
(connectors write, processors read), hence it lives in schemas/.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from schemas.config import BlobStoreConfig

REF_PREFIX = "blob:sha256:"


class BlobNotFoundError(LookupError):
    """A reference names a blob the store does not hold."""


class BlobStoreError(OSError):
    """The store could not be reached or refused a request; retrying may help.

    An OSError, so callers that treat I/O failures as transient treat a remote
    store's failures the same way.
    """


class BlobStore(Protocol):
    """Stores and returns message bytes by content reference."""

    def put(self, data: bytes) -> str:
        """Store `data` (idempotent) and return its reference."""
        ...

    def get(self, ref: str) -> bytes:
        """The bytes of `ref`; raises BlobNotFoundError when missing."""
        ...


def blob_ref(data: bytes) -> str:
    """The reference of `data`: its SHA-256."""
    return REF_PREFIX + hashlib.sha256(data).hexdigest()


def _digest_of(ref: str) -> str:
    if not ref.startswith(REF_PREFIX):
        raise BlobNotFoundError(f"not a claim-check reference: {ref!r}")
    digest = ref[len(REF_PREFIX) :]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BlobNotFoundError(f"malformed claim-check reference: {ref!r}")
    return digest


class DirectoryBlobStore:
    """Blobs as files `<root>/<2 hex>/<64 hex>`, written atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store `data` unless a blob with the same content is already there."""
        ref = blob_ref(data)
        path = self._path(_digest_of(ref))
        if path.exists():
            return ref
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def get(self, ref: str) -> bytes:
        """Read a blob back; raises BlobNotFoundError when it is missing."""
        path = self._path(_digest_of(ref))
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"claim-check blob {ref} is missing from {self.root}") from None


_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class S3BlobStore:
    """Blobs as objects `<prefix>/<64 hex>` in an S3 bucket (AWS or any S3-compatible server).

    `endpoint` None means AWS; any other endpoint is addressed path-style
    (`http://host:port/bucket/key`), which every S3-compatible server answers.
    Keys come from the secret references in the settings, else from boto3's
    usual chain (environment, profile, instance role). Every request has a
    connect and read timeout. Needs boto3 (`pip install tidings[s3]`).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        settings: BlobStoreConfig | None = None,
        *,
        timeout_s: float = 60.0,
    ) -> None:
        if not bucket:
            raise ValueError("an s3:// claim-check store needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = _s3_client(settings or BlobStoreConfig(), timeout_s)

    def key(self, ref: str) -> str:
        """The object key of `ref`; raises BlobNotFoundError when `ref` is malformed."""
        digest = _digest_of(ref)
        return f"{self.prefix}/{digest}" if self.prefix else digest

    def put(self, data: bytes) -> str:
        """Store `data` unless an object with the same content is already there."""
        ref = blob_ref(data)
        key = self.key(ref)
        if not self._exists(key):
            self._call("put", key, Body=data)
        return ref

    def get(self, ref: str) -> bytes:
        """Read a blob back; raises BlobNotFoundError when it is missing."""
        key = self.key(ref)
        data = self._call("get", key)
        if data is None:
            raise BlobNotFoundError(
                f"claim-check blob {ref} is missing from s3://{self.bucket}/{key}"
            )
        assert isinstance(data, bytes)
        return data

    def _exists(self, key: str) -> bool:
        return self._call("head", key) is not None

    def _call(self, operation: str, key: str, **extra: Any) -> Any:
        """One S3 request (a get returns the object's bytes); None when the object does
        not exist; BlobStoreError when the store fails or refuses."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
        )

        method = {"get": "get_object", "head": "head_object", "put": "put_object"}[operation]
        try:
            response = getattr(self._client, method)(Bucket=self.bucket, Key=key, **extra)
            if operation == "get":
                with response["Body"] as body:
                    return body.read()
            return response
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if operation != "put" and str(error.get("Code", "")) in _NOT_FOUND_CODES:
                return None
            raise BlobStoreError(
                f"s3://{self.bucket}/{key}: {operation} refused: {error.get('Code', '?')}"
            ) from None
        except BotoCoreError as exc:
            raise BlobStoreError(
                f"s3://{self.bucket}/{key}: {operation} failed: {type(exc).__name__}"
            ) from None


def _s3_client(settings: BlobStoreConfig, timeout_s: float) -> Any:
    """A boto3 S3 client for `settings`; ImportError naming the extra when boto3 is missing."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ImportError(
            "the s3:// claim-check store needs boto3: install tidings[s3]", name="boto3"
        ) from None
    options: dict[str, Any] = {"region_name": settings.region}
    if settings.endpoint:
        options["endpoint_url"] = settings.endpoint
    if settings.access_key_id is not None:
        options["aws_access_key_id"] = settings.access_key_id.resolve()
    if settings.secret_access_key is not None:
        options["aws_secret_access_key"] = settings.secret_access_key.resolve()
    config = Config(
        connect_timeout=min(timeout_s, 10.0),
        read_timeout=timeout_s,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path" if settings.endpoint else "auto"},
    )
    return boto3.session.Session().client("s3", config=config, **options)


def open_blob_store(url: str, settings: BlobStoreConfig | None = None) -> BlobStore:
    """The store a URL names: `file:///dir` (the default, inside the data directory) or
    `s3://bucket/prefix` (reached with `settings`: endpoint, region, key references)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return DirectoryBlobStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        return S3BlobStore(parsed.netloc, unquote(parsed.path), settings)
    raise ValueError(
        f"unsupported claim-check store {url!r}: use file:///path or s3://bucket/prefix"
    )
