"""Stable identities: replaying an input yields the same ids, so sinks stay idempotent."""

from __future__ import annotations

import hashlib
import uuid

_NAMESPACE = uuid.UUID("5b0b7f0e-8d3c-4c1e-9f57-7469646e6773")


def _digest(*parts: str) -> str:
    joined = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(joined).hexdigest()[:32]


def change_event_id(mailbox_id: str, folder: str, item_id: str, change: str, version: str) -> str:
    """The id of one change to one item: equal for every re-emission of that change."""
    return _digest("change", mailbox_id, folder, item_id, change, version)


def track_event_id(event_id: str, request_id: str) -> str:
    """The id of the event a connector sends for a manual tracking request: derived from
    the item's own change event id and the request, so it differs from every
    change event of the item (nothing downstream takes it for a replay of one)
    and is the same when the request is handled again."""
    return _digest("track", event_id, request_id)


def error_id(event_or_scope: str, code: str, attempt: int = 1) -> str:
    """The id of one error: the same failure of the same event (and attempt) has one id."""
    return _digest("error", event_or_scope, code, str(attempt))


def normalize_message_id(raw: str | None) -> str | None:
    """A Message-ID without angle brackets or whitespace, its domain lower-cased.

    Returns None when nothing id-like remains. The local part keeps its case
    (RFC 5322 treats it as case-sensitive).
    """
    if raw is None:
        return None
    text = "".join(raw.split())
    if text.startswith("<"):
        end = text.find(">")
        text = text[1:end] if end != -1 else text[1:]
    text = text.strip("<>")
    if not text:
        return None
    local, at, domain = text.rpartition("@")
    return f"{local}@{domain.lower()}" if at and local else text


def email_activity_id(normalized_message_id: str, qualifier: str = "") -> str:
    """The activity id of an email: a UUID derived from its normalized Message-ID.

    `qualifier` separates activities that share a Message-ID on purpose (the
    sent and received copies of internal email tracked as two activities).
    """
    name = f"email:{normalized_message_id}"
    if qualifier:
        name = f"{name}#{qualifier}"
    return uuid5_text(_NAMESPACE, name)


def created_record_id(record_type: str, address: str) -> str:
    """The id of the record tidings creates for an unknown address (one per address and
    type, so creating it again is an idempotent upsert)."""
    return uuid5_text(_NAMESPACE, f"record:{record_type}:{address.strip().lower()}")


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))`, computed without building a UUID object
    (several per decision; the object's checks cost more than the hash)."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
