"""processors.directory: the in-memory indexes fed by compacted topics."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from processors.directory import ActivityIndex, Directory, Mailboxes, TrackedRef
from processors.index_store import IndexStore
from schemas.base import RecordRef
from schemas.crm import Activity, CrmRecord, Direction
from schemas.mailbox import IncomingFilter, MailboxConfig, Protocol
from tests.unit.helpers import RECORDS

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def record(record_id: str, record_type: str, *addresses: str) -> CrmRecord:
    return CrmRecord(
        record_id=record_id,
        record_type=record_type,
        name=record_id.title(),
        email_addresses=list(addresses),
    )


def directory(*records: CrmRecord) -> Directory:
    found = Directory()
    for item in records:
        found.apply(item.record_id, item)
    return found


# -- Directory ------------------------------------------------------------------


def test_resolve_orders_user_queue_contact_account_lead_then_others() -> None:
    shared = "shared@x.example"
    found = directory(
        record("z-other", "opportunity", shared),
        record("lead-1", "lead", shared),
        record("acct-1", "account", shared),
        record("a-custom", "custom_entity", shared),
        record("contact-1", "contact", shared),
        record("queue-1", "queue", shared),
        record("user-1", "user", shared),
    )
    assert found.resolve(shared) == [
        RecordRef("user", "user-1"),
        RecordRef("queue", "queue-1"),
        RecordRef("contact", "contact-1"),
        RecordRef("account", "acct-1"),
        RecordRef("lead", "lead-1"),
        RecordRef("custom_entity", "a-custom"),  # other types by type name, then id
        RecordRef("opportunity", "z-other"),
    ]


def test_resolve_answers_the_current_records_after_an_address_was_asked_about() -> None:
    found = directory(record("contact-1", "contact", "Pat@x.example"))
    assert found.resolve("pat@x.example") == [RecordRef("contact", "contact-1")]
    found.apply("user-1", record("user-1", "user", "pat@X.example"))
    assert found.resolve("PAT@x.example") == [
        RecordRef("user", "user-1"),
        RecordRef("contact", "contact-1"),
    ]
    found.apply("user-1", record("user-1", "user", "other@x.example"))
    found.resolve("pat@x.example").clear()  # an answer is the caller's own list
    assert found.resolve("pat@x.example") == [RecordRef("contact", "contact-1")]
    found.apply("contact-1", None)
    assert found.resolve("pat@x.example") == []
    assert found.resolve("other@x.example") == [RecordRef("user", "user-1")]


def test_resolve_orders_records_of_one_type_by_id() -> None:
    found = directory(
        record("c-3", "contact", "s@x.example"),
        record("c-1", "contact", "s@x.example"),
        record("c-2", "contact", "s@x.example"),
    )
    assert [ref.id for ref in found.resolve("s@x.example")] == ["c-1", "c-2", "c-3"]


def test_shared_address_resolves_to_every_record() -> None:
    found = directory(*RECORDS)
    assert found.resolve("shared@contoso.example") == [
        RecordRef("contact", "c-2"),
        RecordRef("contact", "c-3"),
    ]
    assert found.resolve("dana@contoso.example") == [RecordRef("contact", "c-1")]
    assert len(found) == len(RECORDS)


@pytest.mark.parametrize("query", ["dana@contoso.example", "DANA@Contoso.Example"])
def test_addresses_are_case_insensitive(query: str) -> None:
    found = directory(record("c-1", "contact", "Dana@CONTOSO.example"))
    assert found.resolve(query) == [RecordRef("contact", "c-1")]


def test_stored_addresses_are_trimmed() -> None:
    found = directory(record("c-1", "contact", "  dana@contoso.example  "))
    assert found.resolve("dana@contoso.example") == [RecordRef("contact", "c-1")]
    assert found.addresses_of(RecordRef("contact", "c-1")) == ["dana@contoso.example"]


def test_unknown_address_resolves_to_nothing() -> None:
    assert directory(*RECORDS).resolve("stranger@else.example") == []
    assert Directory().resolve("a@b.example") == []


def test_update_removes_stale_addresses() -> None:
    found = directory(record("c-1", "contact", "old@x.example", "keep@x.example"))
    found.apply("c-1", record("c-1", "contact", "new@x.example", "keep@x.example"))
    assert found.resolve("old@x.example") == []
    assert found.resolve("new@x.example") == [RecordRef("contact", "c-1")]
    assert found.resolve("keep@x.example") == [RecordRef("contact", "c-1")]
    assert len(found) == 1


def test_update_that_changes_the_type_re_ranks_the_record() -> None:
    found = directory(record("r-1", "contact", "a@x.example"))
    found.apply("r-1", record("r-1", "lead", "a@x.example"))
    assert found.resolve("a@x.example") == [RecordRef("lead", "r-1")]


def test_update_with_duplicate_addresses_in_different_case_is_clean() -> None:
    found = directory(record("r-1", "contact", "A@X.example", "a@x.example"))
    assert found.resolve("a@x.example") == [RecordRef("contact", "r-1")]
    found.apply("r-1", None)
    assert found.resolve("a@x.example") == []


def test_tombstone_deletes_the_record_and_its_addresses() -> None:
    found = directory(*RECORDS)
    found.apply("c-2", None)
    assert found.record("c-2") is None
    assert found.resolve("shared@contoso.example") == [RecordRef("contact", "c-3")]
    found.apply("c-3", None)
    assert found.resolve("shared@contoso.example") == []
    assert len(found) == len(RECORDS) - 2


def test_tombstone_of_an_unknown_record_is_harmless() -> None:
    found = directory(*RECORDS)
    found.apply("never-seen", None)
    assert len(found) == len(RECORDS)


def test_deleting_one_sharer_keeps_the_other() -> None:
    found = directory(
        record("u-1", "user", "info@x.example"), record("acct", "account", "info@x.example")
    )
    found.apply("u-1", None)
    assert found.resolve("info@x.example") == [RecordRef("account", "acct")]


def test_record_and_addresses_of() -> None:
    found = directory(*RECORDS)
    dana = found.record("c-1")
    assert dana is not None and dana.name == "Dana"
    assert found.addresses_of(RecordRef("contact", "c-1")) == ["dana@contoso.example"]
    assert found.addresses_of(RecordRef("lead", "c-1")) == []  # wrong type
    assert found.addresses_of(RecordRef("contact", "missing")) == []


def test_reapplying_the_same_record_is_idempotent() -> None:
    found = directory(*RECORDS)
    for item in RECORDS:
        found.apply(item.record_id, item)
    assert len(found) == len(RECORDS)
    assert found.resolve("shared@contoso.example") == [
        RecordRef("contact", "c-2"),
        RecordRef("contact", "c-3"),
    ]


# -- Mailboxes ------------------------------------------------------------------


def mailbox(mailbox_id: str, flt: IncomingFilter = IncomingFilter.RESPONSES) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef("user", "alice"),
        email_address="alice@nw.example",
        protocol=Protocol.MAILDIR,
        incoming_filter=flt,
    )


def test_mailboxes_insert_replace_remove() -> None:
    boxes = Mailboxes()
    assert boxes.get("mb") is None
    boxes.apply("mb", mailbox("mb"))
    assert len(boxes) == 1
    boxes.apply("mb", mailbox("mb", IncomingFilter.ALL))
    config = boxes.get("mb")
    assert config is not None and config.incoming_filter == IncomingFilter.ALL
    assert len(boxes) == 1
    boxes.apply("mb", None)
    assert boxes.get("mb") is None
    assert len(boxes) == 0
    boxes.apply("mb", None)  # removing twice is harmless
    assert len(boxes) == 0


# -- ActivityIndex --------------------------------------------------------------


def activity(
    activity_id: str,
    message_id: str,
    token: str | None = None,
    regarding: RecordRef | None = None,
) -> Activity:
    return Activity(
        activity_id=activity_id,
        version=1,
        message_id=message_id,
        direction=Direction.OUTGOING,
        conversation_id=f"conv-{activity_id}",
        regarding=regarding,
        tracking_token=token,
        created_at=T0,
        updated_at=T0,
    )


def test_activity_index_by_message_id_and_token() -> None:
    index = ActivityIndex()
    regarding = RecordRef("opportunity", "o1")
    index.apply("a1", activity("a1", "m1@x.example", "crm:0001001", regarding))
    expected = TrackedRef("a1", "m1@x.example", "conv-a1", regarding, "CRM:0001001")
    assert index.by_message_id("m1@x.example") == expected
    assert index.by_token("CRM:0001001") == expected
    assert index.by_token("crm:0001001") == expected  # token lookup is case-insensitive
    assert index.by_message_id("other@x.example") is None
    assert index.by_token("CRM:0009999") is None
    assert len(index) == 1


def test_activity_without_token_is_found_only_by_message_id() -> None:
    index = ActivityIndex()
    index.apply("a1", activity("a1", "m1@x.example"))
    tracked = index.by_message_id("m1@x.example")
    assert tracked is not None and tracked.tracking_token is None
    assert index.by_token("") is None


def test_update_re_indexes_message_id_and_token() -> None:
    index = ActivityIndex()
    index.apply("a1", activity("a1", "old@x.example", "CRM:0001001"))
    index.apply("a1", activity("a1", "new@x.example", "CRM:0002002"))
    assert index.by_message_id("old@x.example") is None
    assert index.by_token("CRM:0001001") is None
    new = index.by_message_id("new@x.example")
    assert new is not None and new.activity_id == "a1"
    assert index.by_token("CRM:0002002") == new
    assert len(index) == 1


def test_a_version_that_changes_nothing_indexed_writes_nothing(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    index = ActivityIndex(store=store)
    index.apply("a1", activity("a1", "m1@x.example", "CRM:0001001"))
    writes = []
    write = store.write

    def counted(puts: Mapping[bytes, bytes], deletes: list[bytes]) -> None:
        writes.append(1)
        write(puts, deletes)

    store.write = counted  # type: ignore[method-assign]
    later = msgspec.structs.replace(activity("a1", "m1@x.example", "CRM:0001001"), version=2)
    index.apply("a1", later)  # another copy of the message: its receiving mailboxes grew
    assert writes == []
    index.apply("a2", activity("a2", "m2@x.example"))
    assert writes == [1] and len(index) == 2
    store.close()
    assert len(ActivityIndex(store=IndexStore(tmp_path / "index"))) == 2  # the count is kept


def test_update_that_drops_the_token_unindexes_it() -> None:
    index = ActivityIndex()
    index.apply("a1", activity("a1", "m@x.example", "CRM:0001001"))
    index.apply("a1", activity("a1", "m@x.example", None))
    assert index.by_token("CRM:0001001") is None
    assert index.by_message_id("m@x.example") is not None


def test_update_picks_up_a_new_regarding() -> None:
    index = ActivityIndex()
    index.apply("a1", activity("a1", "m@x.example"))
    index.apply("a1", activity("a1", "m@x.example", regarding=RecordRef("case", "k1")))
    tracked = index.by_message_id("m@x.example")
    assert tracked is not None and tracked.regarding == RecordRef("case", "k1")


def test_delete_forgets_the_activity() -> None:
    index = ActivityIndex()
    index.apply("a1", activity("a1", "m1@x.example", "CRM:0001001"))
    index.apply("a2", activity("a2", "m2@x.example"))
    index.apply("a1", None)
    assert index.by_message_id("m1@x.example") is None
    assert index.by_token("CRM:0001001") is None
    assert index.by_message_id("m2@x.example") is not None
    assert len(index) == 1
    index.apply("a1", None)  # deleting twice is harmless
    assert len(index) == 1


def test_deleting_an_older_holder_keeps_the_newer_one_of_a_shared_message_id() -> None:
    # Internal email tracked twice: two activities of one Message-ID.
    index = ActivityIndex()
    index.apply("sent", activity("sent", "m@x.example"))
    index.apply("received", activity("received", "m@x.example"))
    index.apply("sent", None)
    tracked = index.by_message_id("m@x.example")
    assert tracked is not None and tracked.activity_id == "received"


def test_deleting_the_newer_holder_of_a_shared_message_id_keeps_the_older_one() -> None:
    index = ActivityIndex()
    index.apply("sent", activity("sent", "m@x.example", "CRM:0001001"))
    index.apply("received", activity("received", "m@x.example", "CRM:0001001"))
    index.apply("received", None)
    assert len(index) == 1
    tracked = index.by_message_id("m@x.example")
    assert tracked is not None and tracked.activity_id == "sent"
    assert index.by_token("CRM:0001001") == tracked
