"""processors/act.py, the two-way parts of Exchange → CRM: a linked item deleted in
the mailbox follows the delete rules (`on_linked_delete`), and the owner of a meeting
tracked in several mailboxes stays put (`record_owner`, `ActOwnerIndex`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from processors.act import (
    ActLinkIndex,
    ActMemory,
    ActOwnerIndex,
    handle_act,
    on_linked_delete,
    record_owner,
)
from schemas.act import ActRecord, ActType, Appointment, Attendee, Contact, Task
from schemas.act_changes import ActLink, link_key
from schemas.act_deletes import DeleteAction
from schemas.base import RecordRef
from schemas.crm import DecisionStatus, ReasonCode
from schemas.mail import ChangeKind, ItemType
from schemas.mailbox import ActSettings, MailboxConfig, Protocol
from tests.act_harness import act_change

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)
TRACKED = ["Tracked to CRM"]
ALICE_REF, BOB_REF, CAROL_REF = (RecordRef("user", n) for n in ("alice", "bob", "carol"))
CRM_OWNER = RecordRef("user", "crm-owner")


def mailbox(mailbox_id: str, address: str) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef("user", address.split("@", maxsplit=1)[0]),
        email_address=address,
        protocol=Protocol.EWS,
        act=ActSettings(),
    )


ALICE = mailbox("mb-alice", "alice@nw.example")
BOB = mailbox("mb-bob", "bob@nw.example")
CAROL = mailbox("mb-carol", "carol@nw.example")


def meeting(organizer: str = "alice@nw.example") -> Appointment:
    return Appointment(
        ical_uid="uid-1",
        subject="Review",
        start=T0,
        end=T0 + timedelta(hours=1),
        organizer=Attendee(address=organizer),
        attendees=[Attendee(address="bob@nw.example"), Attendee(address="carol@nw.example")],
        categories=TRACKED,
        change_time=T0,
    )


def link(
    kind: ActType = ActType.APPOINTMENT,
    organizer: bool = True,
    mailbox_id: str = "mb-alice",
    partition: int | None = 3,
    deleted: bool = False,
    owner: RecordRef | None = CRM_OWNER,
) -> ActLink:
    return ActLink(
        record_id="crm-1",
        mailbox_id=mailbox_id,
        record_type=kind,
        item_id="item-1",
        ical_uid="uid-1" if kind == ActType.APPOINTMENT else "",
        organizer=organizer,
        deleted=deleted,
        updated_at=T0,
        owner=owner,
        partition=partition,
    )


def no_one(address: str) -> list[RecordRef]:
    return []


# -- a linked item deleted in the mailbox -----------------------------------------------


@pytest.mark.parametrize(
    ("kind", "organizer", "action", "tombstone", "reason"),
    [
        (ActType.APPOINTMENT, True, DeleteAction.DELETE_IN_CRM, "crm-1", ReasonCode.ITEM_DELETED),
        (ActType.APPOINTMENT, False, DeleteAction.UNLINK, None, ReasonCode.NOT_ORGANIZER),
        (ActType.CONTACT, True, DeleteAction.UNLINK, None, ReasonCode.ITEM_DELETED),
        (ActType.CONTACT, False, DeleteAction.UNLINK, None, ReasonCode.ITEM_DELETED),
        (ActType.TASK, True, DeleteAction.DELETE_IN_CRM, "crm-1", ReasonCode.ITEM_DELETED),
    ],
)
def test_linked_delete_rules(
    kind: ActType, organizer: bool, action: DeleteAction, tombstone: str | None, reason: ReasonCode
) -> None:
    rule = on_linked_delete(link(kind, organizer), NOW)
    assert (rule.action, rule.tombstone, rule.reason) == (action, tombstone, reason)
    assert rule.link is not None and rule.link.deleted and rule.link.partition == 3
    assert rule.link.updated_at == NOW and rule.link.item_id == "item-1"


def test_a_link_already_deleted_changes_nothing() -> None:
    rule = on_linked_delete(link(deleted=True), NOW)
    assert rule.tombstone is None and rule.link is None


def test_a_link_of_unknown_partition_is_left_to_the_writer() -> None:
    rule = on_linked_delete(link(partition=None), NOW)
    assert rule.tombstone == "crm-1" and rule.link is None
    assert "the writer drops the link" in rule.explanation


def index(*links: ActLink) -> ActLinkIndex:
    found = ActLinkIndex()
    for one in links:
        found.apply(link_key(one.record_id, one.mailbox_id), one)
    return found


def test_the_organizer_deleting_a_linked_meeting_deletes_the_record() -> None:
    links = index(link())
    change = act_change(ALICE, "item-1", None, ChangeKind.DELETED)
    tracked = ActMemory(record=None, decisions=1)  # tracked or not: the link decides
    out = handle_act(change, ALICE, tracked, no_one, NOW, links=links.lookup)
    assert out.tombstone == "crm-1" and out.record is None and out.memory is None
    assert out.link is not None and out.link.deleted and out.link.mailbox_id == "mb-alice"
    assert out.decision.status == DecisionStatus.REMOVED
    assert (out.decision.reason, out.decision.activity_id) == (ReasonCode.ITEM_DELETED, "crm-1")
    # the same event again decides the same (idempotent)
    again = handle_act(change, ALICE, tracked, no_one, NOW, links=links.lookup)
    assert again == out


def test_an_attendee_deleting_a_linked_copy_drops_only_the_link() -> None:
    links = index(link(mailbox_id="mb-bob", organizer=False))
    change = act_change(BOB, "item-1", None, ChangeKind.DELETED)
    out = handle_act(change, BOB, None, no_one, NOW, links=links.lookup)
    assert out.tombstone is None and out.record is None
    assert out.link is not None and out.link.deleted and out.link.mailbox_id == "mb-bob"
    assert out.decision.reason == ReasonCode.NOT_ORGANIZER


def test_a_linked_contact_deleted_in_the_mailbox_keeps_the_crm_contact() -> None:
    links = index(link(ActType.CONTACT))
    change = act_change(ALICE, "item-1", None, ChangeKind.DELETED, kind=ItemType.CONTACT)
    contact = Contact(display_name="Dana", categories=TRACKED)
    tracked = ActMemory(
        record=ActRecord(
            record_id="crm-1",
            record_type=ActType.CONTACT,
            version=1,
            payload=contact,
            updated_at=T0,
        )
    )
    out = handle_act(change, ALICE, tracked, no_one, NOW, links=links.lookup)
    assert out.tombstone is None and out.link is not None and out.link.deleted


def test_an_unlinked_delete_keeps_the_tracked_rules() -> None:
    links = index(link(mailbox_id="mb-bob"))  # another mailbox's link
    task = Task(subject="Send", categories=TRACKED)
    created = handle_act(act_change(ALICE, "t-1", task), ALICE, None, no_one, T0)
    out = handle_act(
        act_change(ALICE, "t-1", None, ChangeKind.DELETED, kind=ItemType.TASK),
        ALICE,
        created.memory,
        no_one,
        NOW,
        links=links.lookup,
    )
    assert created.record is not None and out.tombstone == created.record.record_id
    assert out.link is None


# -- the owner of a meeting -------------------------------------------------------------


@pytest.mark.parametrize(
    ("copy_of", "crm_owner", "current", "expected"),
    [
        # the organizer's own copy: its mailbox's owner, whoever tracked first
        (ALICE, None, None, ALICE_REF),
        (ALICE, None, BOB_REF, ALICE_REF),
        # an attendee's copy keeps the owner the record has (the organizer's, or the
        # first tracker's) ...
        (BOB, None, ALICE_REF, ALICE_REF),
        (BOB, None, CAROL_REF, CAROL_REF),
        (BOB, None, BOB_REF, BOB_REF),
        # ... and is the first tracker when the record has none yet
        (BOB, None, None, BOB_REF),
        # an explicit CRM-side owner is kept, whichever copy changed
        (ALICE, CRM_OWNER, ALICE_REF, CRM_OWNER),
        (BOB, CRM_OWNER, None, CRM_OWNER),
    ],
)
def test_meeting_owner(
    copy_of: MailboxConfig,
    crm_owner: RecordRef | None,
    current: RecordRef | None,
    expected: RecordRef,
) -> None:
    assert record_owner(meeting(), copy_of, crm_owner=crm_owner, current=current) == expected


@pytest.mark.parametrize("payload", [Contact(display_name="Dana"), Task(subject="Send")])
def test_contacts_and_tasks_belong_to_their_mailbox_unless_the_crm_says(
    payload: Contact | Task,
) -> None:
    assert record_owner(payload, BOB, current=ALICE_REF) == BOB_REF
    assert record_owner(payload, BOB, crm_owner=CRM_OWNER) == CRM_OWNER


def test_a_meeting_without_organizer_belongs_to_the_copys_mailbox() -> None:
    own = Appointment(ical_uid="u", subject="Dentist", start=T0, end=T0)
    assert record_owner(own, BOB, current=ALICE_REF) == BOB_REF


def test_the_owner_stays_with_the_first_tracker_then_moves_to_the_organizer() -> None:
    """Bob (attendee) tracks first, Carol (attendee) later, then Alice (organizer):
    the owner goes bob → bob → alice, and stays alice when Bob's copy changes again."""
    owners = ActOwnerIndex()
    owners_seen = []
    for box in (BOB, CAROL, ALICE, BOB):
        out = handle_act(
            act_change(box, f"item-{box.mailbox_id}", meeting()),
            box,
            None,
            no_one,
            NOW,
            owners=owners.lookup,
        )
        assert out.record is not None
        owners.apply(out.record.record_id, out.record)  # crm.act read back
        owners_seen.append(out.record.owner)
    assert owners_seen == [BOB_REF, BOB_REF, ALICE_REF, ALICE_REF]


def test_a_linked_meeting_keeps_the_crm_owner() -> None:
    links = index(link(mailbox_id="mb-bob", organizer=False))
    out = handle_act(
        act_change(BOB, "item-1", meeting()), BOB, None, no_one, NOW, links=links.lookup
    )
    assert out.record is not None and out.record.record_id == "crm-1"
    assert out.record.owner == CRM_OWNER


def test_the_owner_index_holds_meetings_only_and_forgets_tombstones() -> None:
    owners = ActOwnerIndex()
    record = ActRecord(
        record_id="m-1", record_type=ActType.APPOINTMENT, version=1, payload=meeting(),
        owner=ALICE_REF, updated_at=T0,
    )  # fmt: skip
    task = ActRecord(
        record_id="t-1", record_type=ActType.TASK, version=1, payload=Task(subject="x"),
        owner=ALICE_REF, updated_at=T0,
    )  # fmt: skip
    owners.apply("m-1", record)
    owners.apply("t-1", task)
    assert (owners.lookup("m-1"), owners.lookup("t-1"), len(owners)) == (ALICE_REF, None, 1)
    owners.apply("m-1", None)
    assert owners.lookup("m-1") is None and len(owners) == 0
