"""Manual tracking of appointments, contacts and tasks outside the broker: what a
request names (`track_target`), the CLI's checks, the request's wire form (additive
fields; an old email request still decodes), and the connector's routing decision
(`item_lookup_refusal`: EWS and Graph look items up, other sources refuse)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from connectors.ews import EwsMailbox
from connectors.graph import GraphMailbox
from connectors.imap import ImapMailbox
from connectors.maildir_sync import MaildirMailbox
from connectors.pop3 import Pop3Mailbox
from connectors.source import item_lookup_refusal, item_not_found_reason
from pipeline.track import TrackRefusedError, new_track_request
from schemas.base import RecordRef
from schemas.mailbox import ActSettings, MailboxConfig, MaildirSettings, Protocol
from schemas.track import TrackRequest, TrackTarget, track_target

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def config(act: bool = True) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id="mb-alice",
        owner=RecordRef("user", "alice"),
        email_address="alice@northwind.example",
        protocol=Protocol.MAILDIR,
        maildir=MaildirSettings(path="/tmp/none"),
        act=ActSettings() if act else None,
    )


@pytest.mark.parametrize(
    ("message_id", "item_id", "ical_uid", "target"),
    [
        ("<a@b.example>", "", "", TrackTarget.MESSAGE),
        ("", "AAMkAGI2=", "", TrackTarget.ITEM),
        ("", "", "040000008200E00074C5B7101A82E008", TrackTarget.ITEM),
    ],
)
def test_a_request_names_one_target(
    message_id: str, item_id: str, ical_uid: str, target: TrackTarget
) -> None:
    assert track_target(message_id, item_id, ical_uid) == target


@pytest.mark.parametrize(
    ("message_id", "item_id", "ical_uid", "why"),
    [
        ("", "", "", "names nothing"),
        ("<a@b.example>", "AAMk", "", "a Message-ID and an item id"),
        ("", "AAMk", "uid-1", "an item id and an iCalendar UID"),
        ("", "AAMk with space", "", "printable ASCII"),
        ("", "", "uid\u00e9", "printable ASCII"),
    ],
)
def test_a_request_naming_none_or_several_targets_is_invalid(
    message_id: str, item_id: str, ical_uid: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        track_target(message_id, item_id, ical_uid)


def test_the_cli_request_for_an_item_carries_it_and_no_message_id() -> None:
    request = new_track_request({"mb-alice": config()}, "mb-alice", "", "ops", NOW, item_id="AAMk=")
    assert (request.message_id, request.item_id, request.ical_uid) == ("", "AAMk=", "")
    by_uid = new_track_request({"mb-alice": config()}, "mb-alice", "", "ops", NOW, ical_uid="U1")
    assert (by_uid.item_id, by_uid.ical_uid) == ("", "U1")


def test_the_cli_refuses_an_item_of_a_mailbox_without_act_and_an_ambiguous_request() -> None:
    with pytest.raises(TrackRefusedError, match=r"act\.enabled"):
        new_track_request({"mb-alice": config(act=False)}, "mb-alice", "", "ops", NOW, item_id="A")
    with pytest.raises(TrackRefusedError, match="give only one"):
        new_track_request({"mb-alice": config()}, "mb-alice", "<a@b.c>", None, NOW, item_id="A")


def test_item_fields_are_additive_on_the_wire() -> None:
    old = msgspec.json.encode(
        {"request_id": "t-1", "mailbox_id": "mb-a", "message_id": "a@b.c",
         "requested_at": "2026-03-02T10:00:00Z"}
    )  # fmt: skip
    decoded = msgspec.json.decode(old, type=TrackRequest)
    assert (decoded.item_id, decoded.ical_uid, decoded.schema_version) == ("", "", 1)
    item = TrackRequest(request_id="t-2", mailbox_id="mb-a", item_id="AAMk", requested_at=NOW)
    assert msgspec.json.decode(msgspec.json.encode(item), type=TrackRequest) == item


def test_only_ews_and_graph_sources_look_up_items() -> None:
    assert callable(getattr(EwsMailbox, "find_item", None))
    assert callable(getattr(GraphMailbox, "find_item", None))
    for cls in (ImapMailbox, Pop3Mailbox, MaildirMailbox):
        assert not hasattr(cls, "find_item")

    class Refuser:
        protocol = "imap"

    why = item_lookup_refusal(Refuser())
    assert why is not None and "imap" in why and "EWS mailboxes and Graph" in why
    assert "\n" not in why


def test_the_not_found_line_names_the_item_or_the_uid() -> None:
    by_id = TrackRequest(request_id="t", mailbox_id="mb-a", item_id="AAMk", requested_at=NOW)
    by_uid = TrackRequest(request_id="t", mailbox_id="mb-a", ical_uid="U-9", requested_at=NOW)
    assert "item AAMk" in item_not_found_reason(by_id)
    assert "UID U-9" in item_not_found_reason(by_uid)
