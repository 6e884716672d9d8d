"""The conversation index: decoding Thread-Index headers and finding ancestors."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from processors.conversation_index import (
    CHILD_BYTES,
    HEADER_BYTES,
    new_conversation_index,
    parse_thread_index,
    thread_index_header,
)

GUID = uuid.UUID("9f0c4d2e-6a1b-4c3d-8e5f-0123456789ab")
STARTED = datetime(2026, 3, 30, 10, 15, tzinfo=UTC)
# An Outlook Thread-Index of a first message (January 2005) and of a reply to it.
OUTLOOK_ROOT = "AcT7ZO8bQv6xGEeUSUCQg3nhXDdp3w=="
OUTLOOK_REPLY = "AcT7ZO8bQv6xGEeUSUCQg3nhXDdp3wBZ7Wpg"


def test_outlook_headers_decode_to_a_root_and_its_reply() -> None:
    root = parse_thread_index(OUTLOOK_ROOT)
    reply = parse_thread_index(OUTLOOK_REPLY)
    assert root is not None and reply is not None
    assert (root.depth, reply.depth) == (0, 1)
    assert reply.ancestor_keys() == [root.key]
    assert reply.conversation_guid == root.conversation_guid
    assert root.started_at is not None and (root.started_at.year, root.started_at.month) == (
        2005,
        1,
    )


def test_a_new_index_round_trips_through_the_header() -> None:
    index = new_conversation_index(STARTED, GUID)
    parsed = parse_thread_index(thread_index_header(index))
    assert parsed == index
    assert parsed.conversation_guid == GUID
    assert parsed.started_at is not None
    assert abs((parsed.started_at - STARTED).total_seconds()) < 0.01  # 48 of 64 FILETIME bits


def test_ancestors_are_listed_nearest_first() -> None:
    root = new_conversation_index(STARTED, GUID)
    reply = root.child()
    third = reply.child(sequence=1)
    assert third.depth == 2
    assert third.ancestor_keys() == [reply.key, root.key]
    assert root.ancestor_keys() == []


def test_header_whitespace_and_missing_padding_are_tolerated() -> None:
    folded = OUTLOOK_ROOT[:10] + "\r\n " + OUTLOOK_ROOT[10:].rstrip("=")
    assert parse_thread_index(folded) == parse_thread_index(OUTLOOK_ROOT)


def test_what_is_not_a_conversation_index_is_none() -> None:
    assert parse_thread_index(None) is None
    assert parse_thread_index("") is None
    assert parse_thread_index("not base64 at all!") is None
    short = base64.b64encode(b"\x01" + bytes(10)).decode()
    assert parse_thread_index(short) is None
    partial_child = base64.b64encode(b"\x01" + bytes(HEADER_BYTES - 1) + bytes(3)).decode()
    assert parse_thread_index(partial_child) is None
    wrong_reserved = base64.b64encode(b"\x02" + bytes(HEADER_BYTES - 1)).decode()
    assert parse_thread_index(wrong_reserved) is None
    too_deep = base64.b64encode(b"\x01" + bytes(HEADER_BYTES - 1 + 65 * CHILD_BYTES)).decode()
    assert parse_thread_index(too_deep) is None


@given(st.text(max_size=200))
def test_parsing_any_text_never_raises(text: str) -> None:
    index = parse_thread_index(text)
    if index is not None:
        assert (len(index.raw) - HEADER_BYTES) % CHILD_BYTES == 0
        assert len(index.ancestor_keys()) == index.depth
        index.started_at  # noqa: B018 - must not raise either


@given(st.binary(min_size=0, max_size=120))
def test_parsing_any_bytes_as_base64_never_raises(raw: bytes) -> None:
    index = parse_thread_index(base64.b64encode(raw).decode())
    valid = len(raw) >= HEADER_BYTES and (len(raw) - HEADER_BYTES) % CHILD_BYTES == 0
    assert (index is not None) == (valid and raw[0] == 1 and len(raw) <= HEADER_BYTES + 320)
