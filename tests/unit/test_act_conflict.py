"""The two-way merge of linked items, the delete rules and the sync filter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.act_conflict import (
    Action,
    DeleteAction,
    Role,
    field_hash,
    field_hashes,
    is_echo,
    on_crm_delete,
    on_exchange_delete,
    payload_fields,
    resolve,
    with_fields,
)
from connectors.act_filters import role_of, targets, wants
from schemas.act import ActType, Appointment, Attendee, Contact, Task
from schemas.act_changes import CrmActChange
from schemas.act_sync import ActSyncSettings, FieldDirection, Side, SyncFilter
from schemas.base import RecordRef
from schemas.mailbox import ActSettings, MailboxConfig, Protocol

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
T2 = T0 + timedelta(minutes=10)
BOTH = FieldDirection.BOTH


def both(_: str) -> FieldDirection:
    return BOTH


LINKED = {"subject": "Review", "location": "Room 1"}
SYNCED = field_hashes(LINKED)


@pytest.mark.parametrize(
    ("crm", "exchange", "crm_time", "ex_time", "direction", "tie", "to_ex", "to_crm"),
    [
        # nothing changed
        ("Review", "Review", T1, T1, BOTH, Side.CRM, {}, {}),
        # one side changed
        ("CRM", "Review", T1, T0, BOTH, Side.CRM, {"subject": "CRM"}, {}),
        ("Review", "EX", T0, T1, BOTH, Side.CRM, {}, {"subject": "EX"}),
        # one side changed, but its direction does not flow
        ("CRM", "Review", T1, T0, FieldDirection.EXCHANGE_TO_CRM, Side.CRM, {}, {}),
        ("Review", "EX", T0, T1, FieldDirection.CRM_TO_EXCHANGE, Side.CRM, {}, {}),
        ("CRM", "Review", T1, T0, FieldDirection.NONE, Side.CRM, {}, {}),
        # both changed: last writer wins
        ("CRM", "EX", T2, T1, BOTH, Side.CRM, {"subject": "CRM"}, {}),
        ("CRM", "EX", T1, T2, BOTH, Side.CRM, {}, {"subject": "EX"}),
        # a tie: the CRM wins unless set otherwise
        ("CRM", "EX", T1, T1, BOTH, Side.CRM, {"subject": "CRM"}, {}),
        ("CRM", "EX", T1, T1, BOTH, Side.EXCHANGE, {}, {"subject": "EX"}),
        # both changed, one-way direction: that side wins whatever the times
        ("CRM", "EX", T1, T2, FieldDirection.CRM_TO_EXCHANGE, Side.CRM, {"subject": "CRM"}, {}),
        ("CRM", "EX", T2, T1, FieldDirection.EXCHANGE_TO_CRM, Side.CRM, {}, {"subject": "EX"}),
        ("CRM", "EX", T2, T1, FieldDirection.NONE, Side.CRM, {}, {}),
        # both changed to the same value: nothing to write
        ("Same", "Same", T1, T2, BOTH, Side.CRM, {}, {}),
    ],
)
def test_resolve_one_field(
    crm: str,
    exchange: str,
    crm_time: datetime,
    ex_time: datetime,
    direction: FieldDirection,
    tie: Side,
    to_ex: dict[str, Any],
    to_crm: dict[str, Any],
) -> None:
    result = resolve(
        {**LINKED, "subject": crm},
        {**LINKED, "subject": exchange},
        SYNCED,
        crm_time=crm_time,
        exchange_time=ex_time,
        direction=lambda name: direction if name == "subject" else BOTH,
        tie=tie,
    )
    assert (result.to_exchange, result.to_crm) == (to_ex, to_crm)
    assert [d.name for d in result.conflicts] == (
        ["subject"] if crm != exchange and "Review" not in (crm, exchange) else []
    )


def test_resolve_merges_fields_independently() -> None:
    result = resolve(
        {"subject": "CRM subject", "location": "Room 1"},
        {"subject": "Review", "location": "Room 9"},
        SYNCED,
        crm_time=T1,
        exchange_time=T2,
        direction=both,
    )
    assert result.to_exchange == {"subject": "CRM subject"}
    assert result.to_crm == {"location": "Room 9"}
    assert result.synced == field_hashes({"subject": "CRM subject", "location": "Room 9"})
    assert not result.conflicts


def test_unlinked_writes_every_field_to_the_mailbox() -> None:
    result = resolve(LINKED, None, None, crm_time=T0, exchange_time=None, direction=both)
    assert result.to_exchange == LINKED and not result.to_crm
    assert result.synced == SYNCED


def test_a_held_field_keeps_the_old_hash_so_a_later_change_is_still_seen() -> None:
    result = resolve(
        {**LINKED, "subject": "CRM"},
        LINKED,
        SYNCED,
        crm_time=T1,
        exchange_time=T0,
        direction=lambda n: FieldDirection.EXCHANGE_TO_CRM,
    )
    assert result.noop
    assert [d.action for d in result.decisions if d.name == "subject"] == [Action.HELD]
    assert result.synced["subject"] == SYNCED["subject"]


def test_resolving_twice_after_applying_is_a_noop() -> None:
    crm, exchange = {**LINKED, "subject": "A"}, {**LINKED, "location": "B"}
    first = resolve(crm, exchange, SYNCED, crm_time=T1, exchange_time=T2, direction=both)
    crm2, ex2 = {**crm, **first.to_crm}, {**exchange, **first.to_exchange}
    second = resolve(crm2, ex2, first.synced, crm_time=T2, exchange_time=T2, direction=both)
    assert second.noop and second.synced == first.synced


def test_echo_by_change_key_or_by_hashes() -> None:
    assert is_echo("ck-9", {"subject": "new"}, "ck-9", SYNCED)
    assert is_echo("ck-10", LINKED, "ck-9", SYNCED)
    assert not is_echo("ck-10", {**LINKED, "subject": "edited"}, "ck-9", SYNCED)


def test_payload_fields_leave_identity_out_and_round_trip() -> None:
    payload = Appointment(
        ical_uid="u1", subject="S", start=T0, end=T1, change_key="ck", change_time=T1
    )
    fields = payload_fields(payload)
    assert {"ical_uid", "change_key", "change_time", "type"}.isdisjoint(fields)
    changed = with_fields(payload, {"subject": "New", "location": "Room 2"})
    assert isinstance(changed, Appointment)
    assert (changed.subject, changed.location, changed.ical_uid) == ("New", "Room 2", "u1")
    assert field_hash(fields) == field_hash(payload_fields(payload))


# -- property: never loses the newer value --------------------------------------

VALUES = st.sampled_from(["a", "b", "c"])
DIRECTIONS = st.sampled_from(list(FieldDirection))
TIMES = st.sampled_from([T0, T1, T2])


@given(
    base=VALUES,
    crm=VALUES,
    exchange=VALUES,
    crm_time=TIMES,
    ex_time=TIMES,
    direction=DIRECTIONS,
    tie=st.sampled_from(list(Side)),
)
def test_never_loses_the_newer_value_of_a_field_its_direction_lets_flow(
    base: str,
    crm: str,
    exchange: str,
    crm_time: datetime,
    ex_time: datetime,
    direction: FieldDirection,
    tie: Side,
) -> None:
    result = resolve(
        {"f": crm},
        {"f": exchange},
        {"f": field_hash(base)},
        crm_time=crm_time,
        exchange_time=ex_time,
        direction=lambda _: direction,
        tie=tie,
    )
    crm_after = result.to_crm.get("f", crm)
    ex_after = result.to_exchange.get("f", exchange)
    crm_changed, ex_changed = crm != base, exchange != base
    # Only a value whose direction allows it ever crosses.
    assert "f" not in result.to_exchange or direction.to_exchange
    assert "f" not in result.to_crm or direction.to_crm
    # A side's own value is only replaced by the other side's.
    assert crm_after in (crm, exchange) and ex_after in (crm, exchange)
    if crm_changed and not ex_changed and direction.to_exchange:
        assert crm_after == ex_after == crm
    if ex_changed and not crm_changed and direction.to_crm:
        assert crm_after == ex_after == exchange
    if crm_changed and ex_changed and direction is FieldDirection.BOTH:
        newer = (
            crm if (crm_time > ex_time or (crm_time == ex_time and tie is Side.CRM)) else exchange
        )
        assert crm_after == ex_after == newer
    # Once both sides agree, the link holds that value.
    if crm_after == ex_after:
        assert result.synced["f"] == field_hash(crm_after)


# -- deletes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "role", "kwargs", "action"),
    [
        ("appointment", Role.ORGANIZER, {"end": T2, "has_attendees": True}, "cancel_in_exchange"),
        ("appointment", Role.ORGANIZER, {"end": T2}, "delete_in_exchange"),
        ("appointment", Role.ORGANIZER, {"end": T0 - timedelta(days=1)}, "unlink"),
        (
            "appointment",
            Role.ORGANIZER,
            {"end": T0 - timedelta(days=1), "delete_past": True},
            "delete_in_exchange",
        ),
        ("appointment", Role.ATTENDEE, {"end": T2}, "unlink"),
        ("contact", Role.ORGANIZER, {}, "unlink"),
        ("contact", Role.OTHER, {}, "delete_in_exchange"),
        ("task", Role.ORGANIZER, {}, "delete_in_exchange"),
        ("task", Role.ORGANIZER, {"completed": True}, "unlink"),
        ("task", Role.ORGANIZER, {"due": T0 - timedelta(days=1)}, "unlink"),
    ],
)
def test_crm_delete_rules(kind: str, role: Role, kwargs: dict[str, Any], action: str) -> None:
    assert on_crm_delete(kind, role, now=T0, **kwargs).action == DeleteAction(action)


@pytest.mark.parametrize(
    ("kind", "role", "action"),
    [
        ("appointment", Role.ORGANIZER, "delete_in_crm"),
        ("appointment", Role.ATTENDEE, "unlink"),
        ("contact", Role.ORGANIZER, "unlink"),
        ("task", Role.ORGANIZER, "delete_in_crm"),
    ],
)
def test_exchange_delete_rules(kind: str, role: Role, action: str) -> None:
    assert on_exchange_delete(kind, role).action == DeleteAction(action)


# -- sync filter ----------------------------------------------------------------------


def mailbox(
    mailbox_id: str, user: str, *, protocol: Protocol = Protocol.GRAPH, **sync: Any
) -> MailboxConfig:
    return MailboxConfig(
        mailbox_id=mailbox_id,
        owner=RecordRef("user", user),
        email_address=f"{user}@nw.example",
        protocol=protocol,
        act=ActSettings(crm_to_exchange=ActSyncSettings(**sync)),
    )


def change(payload: Any, kind: ActType, owner: str = "alice") -> CrmActChange:
    return CrmActChange(
        record_id="r1",
        record_type=kind,
        owner=RecordRef("user", owner),
        payload=payload,
        crm_change_time=T0,
    )


MEETING = Appointment(
    ical_uid="u",
    start=T0,
    end=T1,
    organizer=Attendee(address="alice@nw.example"),
    attendees=[Attendee(address="bob@nw.example")],
)


def test_a_meeting_goes_to_its_organizer_and_optionally_to_attendees() -> None:
    alice, bob = mailbox("mb-a", "alice"), mailbox("mb-b", "bob")
    bob_copies = mailbox("mb-b", "bob", sync_filter=SyncFilter.OWNER_OR_ATTENDEE)
    meeting = change(MEETING, ActType.APPOINTMENT, owner="bob")
    assert targets(meeting, [alice, bob]) == {"mb-a": Role.ORGANIZER}
    assert targets(meeting, [alice, bob_copies]) == {"mb-a": Role.ORGANIZER, "mb-b": Role.ATTENDEE}


def test_contacts_and_tasks_go_to_their_owner_and_switches_apply() -> None:
    alice = mailbox("mb-a", "alice")
    contact = change(Contact(display_name="Dana"), ActType.CONTACT)
    task = change(Task(subject="Call"), ActType.TASK, owner="bob")
    assert wants(contact, alice) is Role.ORGANIZER
    assert wants(task, alice) is None and role_of(task, alice) is Role.OTHER
    assert wants(contact, mailbox("mb-a", "alice", enabled=False)) is None
    assert wants(contact, mailbox("mb-a", "alice", protocol=Protocol.IMAP)) is None
    no_contacts = MailboxConfig(
        mailbox_id="mb-a",
        owner=RecordRef("user", "alice"),
        email_address="alice@nw.example",
        protocol=Protocol.GRAPH,
        act=ActSettings(contacts=False),
    )
    assert wants(contact, no_contacts) is None
    assert wants(task, no_contacts) is None  # owned by bob
    appointment = change(Appointment(ical_uid="x", start=T0, end=T1), ActType.APPOINTMENT)
    assert wants(appointment, alice) is Role.ORGANIZER  # no organizer: the owner's


def test_field_directions_default_and_override() -> None:
    settings = ActSyncSettings(field_directions={"body": FieldDirection.CRM_TO_EXCHANGE})
    assert settings.direction("subject") is BOTH
    assert settings.direction("body") is FieldDirection.CRM_TO_EXCHANGE
    assert settings.direction("categories") is FieldDirection.NONE
    assert settings.direction("change_key") is FieldDirection.NONE
