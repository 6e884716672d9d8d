"""Pure Graph mapping: delta pages decoded, created/updated/deleted decided against
what is known, the known map's round trip, flags, header blocks, Retry-After."""

from __future__ import annotations

import base64

from connectors.graph import wanted_folders
from connectors.graph_items import (
    DELTA_PAGE,
    BatchAnswer,
    DeltaItem,
    HeaderPair,
    Removed,
    batch_body_bytes,
    change_hash,
    classify,
    flags,
    header_block,
    latest,
    pack_known,
    retry_after_s,
    swept,
    unpack_known,
)
from schemas.mailbox import FolderRole, GraphSettings

PAGE = b"""{
  "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(message)",
  "@odata.nextLink": "https://graph.microsoft.com/v1.0/users/a/mailFolders/x/messages/delta?$skiptoken=abc",
  "value": [
    {"@odata.type": "#microsoft.graph.message", "@odata.etag": "W/\\"CQ1\\"", "id": "AAMk1",
     "changeKey": "CQ1", "internetMessageId": "<m1@x>", "receivedDateTime": "2026-03-30T10:15:00Z",
     "isRead": true, "flag": {"flagStatus": "flagged"}, "categories": ["Tracked to CRM", "Blue"],
     "conversationIndex": "AQHZ", "parentFolderId": "x"},
    {"@odata.type": "#microsoft.graph.message", "id": "AAMk2", "@removed": {"reason": "deleted"}}
  ]
}"""


def item(item_id: str, change_key: str = "ck1", removed: bool = False) -> DeltaItem:
    return DeltaItem(
        id=item_id, change_key=change_key, removed=Removed("deleted") if removed else None
    )


def test_a_delta_page_decodes_with_removed_items_and_links() -> None:
    page = DELTA_PAGE.decode(PAGE)
    assert page.next_link is not None and page.next_link.endswith("$skiptoken=abc")
    assert page.delta_link is None
    first, gone = page.value
    assert first.internet_message_id == "<m1@x>" and first.removed is None
    assert first.received_date_time is not None and first.received_date_time.year == 2026
    assert flags(first) == ["\\Seen", "\\Flagged", "Blue", "Tracked to CRM"]
    assert gone.removed == Removed("deleted") and gone.change_key is None


def test_classify_against_known() -> None:
    known = {"a": change_hash("ck1"), "b": change_hash("ck1"), "c": change_hash("ck1")}
    plan = classify(
        [item("a"), item("b", "ck2"), item("c", removed=True), item("d"), item("e", removed=True)],
        known,
    )
    assert [i.id for i in plan.created] == ["d"]
    assert [i.id for i in plan.updated] == ["b"]
    assert plan.deleted == ["c"]  # "e" was never emitted: nothing to delete
    assert classify([item("a")], known) == classify([item("a")], known)  # idempotent


def test_the_last_entry_of_an_item_in_a_round_wins() -> None:
    entries = [item("a", "ck1"), item("b"), item("a", "ck2")]
    assert [(i.id, i.change_key) for i in latest(entries)] == [("a", "ck2"), ("b", "ck1")]
    plan = classify([item("a"), item("a", removed=True)], {})
    assert plan.created == [] and plan.deleted == []


def test_a_full_reenumeration_sweeps_what_it_did_not_list() -> None:
    assert swept({"a", "b", "c"}, {"a", "c", "z"}) == ["b"]


def test_known_map_round_trips_through_the_cursor() -> None:
    known = {f"AAMkAD{n:05d}=": change_hash(f"ck{n}") for n in range(2000)}
    packed = pack_known(known)
    assert unpack_known(packed, len(known)) == known
    assert unpack_known(b"", 0) == {}
    assert len(packed) < 40 * len(known)
    assert change_hash(None) == "-" and change_hash("x") == change_hash("x") != change_hash("y")


def test_header_block_and_batch_bodies() -> None:
    block = header_block([HeaderPair("Message-ID", "<m@x>"), HeaderPair("In-Reply-To", "<p@x>")])
    assert block == b"Message-ID: <m@x>\r\nIn-Reply-To: <p@x>\r\n\r\n"
    mime = b"Subject: hi\r\n\r\nbody\r\n"
    answer = BatchAnswer(id="0", status=200, body=base64.b64encode(mime).decode())
    assert batch_body_bytes(answer.body) == mime
    assert batch_body_bytes({"error": {}}) is None


def test_retry_after() -> None:
    assert retry_after_s("7", 1.0, 120.0) == 7.0
    assert retry_after_s(None, 4.0, 120.0) == 4.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 2.0, 120.0) == 2.0
    assert retry_after_s("9999", 1.0, 120.0) == 120.0
    assert retry_after_s("-3", 1.0, 120.0) == 0.0


def test_wanted_folders() -> None:
    assert wanted_folders(GraphSettings()) == [
        ("inbox", FolderRole.INBOX),
        ("sentitems", FolderRole.SENT),
    ]
    chosen = wanted_folders(GraphSettings(include_sent=False, folders=["Projects", "INBOX"]))
    assert chosen == [("inbox", FolderRole.INBOX), ("Projects", FolderRole.OTHER)]
