"""The EWS connector's pure decisions: page plans against what the cursor knew, the
cursor's item list, flags and the MIME completed from EWS properties."""

from __future__ import annotations

import base64

import pytest

from connectors.ews_items import (
    EwsMessage,
    SyncChange,
    SyncKind,
    change_key_hash,
    complete_mime,
    event_flags,
    pack_known,
    plan_page,
    unpack_known,
    vanished,
)
from schemas.mailbox import EwsSettings, ExchangeVersion, ews_max_concurrency

RAW = b"From: a@x.example\r\nSubject: hi\r\n\r\nbody\r\n"


def test_a_first_sync_fetches_every_created_item_once() -> None:
    changes = [
        SyncChange(SyncKind.CREATE, "A", "ck1"),
        SyncChange(SyncKind.CREATE, "B", "ck1"),
        SyncChange(SyncKind.UPDATE, "A", "ck2"),
    ]
    plan = plan_page(changes, {})
    assert [c.item_id for c in plan.fetch_new] == ["A", "B"]
    assert plan.fetch_changed == [] and plan.deleted == [] and plan.skipped == 0


def test_a_resync_skips_known_items_and_reads_changed_ones() -> None:
    known = {"A": change_key_hash("ck1"), "B": change_key_hash("ck1")}
    changes = [
        SyncChange(SyncKind.CREATE, "A", "ck1"),  # same ChangeKey: already emitted
        SyncChange(SyncKind.CREATE, "B", "ck2"),  # changed while the state was expired
        SyncChange(SyncKind.CREATE, "C", "ck1"),  # new
    ]
    plan = plan_page(changes, known)
    assert plan.skipped == 1
    assert [c.item_id for c in plan.fetch_changed] == ["B"]
    assert [c.item_id for c in plan.fetch_new] == ["C"]
    assert vanished(known, {"A", "B", "C"}) == []
    assert vanished({**known, "Z": "x"}, {"A", "B"}) == ["Z"]


def test_updates_and_deletes_of_unknown_items() -> None:
    known = {"A": change_key_hash("ck1")}
    changes = [
        SyncChange(SyncKind.READ_FLAG, "A", "ck2"),
        SyncChange(SyncKind.UPDATE, "N", "ck5"),  # never emitted: read as new
        SyncChange(SyncKind.DELETE, "A"),  # already in the page: first change wins
        SyncChange(SyncKind.DELETE, "GONE"),  # never emitted: nothing
    ]
    plan = plan_page(changes, known)
    assert [c.item_id for c in plan.fetch_changed] == ["A"]
    assert [c.item_id for c in plan.fetch_new] == ["N"]
    assert plan.deleted == []
    assert plan_page([SyncChange(SyncKind.DELETE, "A")], known).deleted == ["A"]


def test_plans_are_pure() -> None:
    known = {"A": change_key_hash("ck1")}
    changes = [SyncChange(SyncKind.DELETE, "A"), SyncChange(SyncKind.CREATE, "B", "c")]
    assert plan_page(changes, known) == plan_page(changes, known)
    assert known == {"A": change_key_hash("ck1")}


def test_known_items_round_trip_and_corruption_is_an_error() -> None:
    known = {f"AAMkAD{n:040d}": change_key_hash(f"ck{n}") for n in range(500)}
    packed = pack_known(known)
    assert unpack_known(packed, len(known)) == known
    assert len(packed) < 500 * 20  # the shared prefixes compress
    assert unpack_known(b"", 0) == {}
    with pytest.raises(ValueError, match="corrupt"):
        unpack_known(b"not zlib", 3)


def test_flags_carry_read_state_and_categories() -> None:
    message = EwsMessage("A", "ck", is_read=True, categories=("Tracked to CRM", "Blue", "Blue"))
    assert event_flags(message) == ["\\Seen", "category:Blue", "category:Tracked to CRM"]
    assert event_flags(EwsMessage("A", "ck")) == []


def test_complete_mime_adds_only_missing_correlation_headers() -> None:
    index = bytes(range(22))
    message = EwsMessage(
        "A",
        "ck",
        mime=RAW,
        message_id="<m1@x.example>",
        in_reply_to="<m0@x.example>",
        references="<m0@x.example>",
        conversation_index=index,
    )
    raw = complete_mime(message)
    assert raw.endswith(RAW)
    assert raw.startswith(b"Message-ID: <m1@x.example>\r\nIn-Reply-To: <m0@x.example>\r\n")
    assert b"Thread-Index: " + base64.b64encode(index) + b"\r\n" in raw
    # Present headers are left alone; values with line breaks are never added.
    with_id = b"Message-ID: <orig@x.example>\r\n" + RAW
    again = complete_mime(EwsMessage("A", "ck", mime=with_id, message_id="<m1@x.example>"))
    assert again == with_id
    unsafe = EwsMessage("A", "ck", mime=RAW, references="<a>\r\nBcc: evil@x.example")
    assert complete_mime(unsafe) == RAW


def test_concurrency_never_exceeds_ews_max_concurrency() -> None:
    assert ews_max_concurrency(ExchangeVersion.EXCHANGE_2010) == 10
    assert ews_max_concurrency(ExchangeVersion.ONLINE) == 27
    assert EwsSettings().concurrency(100) == 27
    assert EwsSettings(version=ExchangeVersion.EXCHANGE_2010).concurrency(100) == 10
    assert EwsSettings(max_concurrency=50).concurrency(100) == 27
    assert EwsSettings(max_concurrency=4).concurrency(100) == 4
    assert EwsSettings().concurrency(3) == 3
    with pytest.raises(ValueError, match="sync_page"):
        EwsSettings(sync_page=1000)
