"""Two-way merge of a linked appointment, contact or task, field by field, and the
delete rules. Pure: versions are field maps (name → JSON-able value) and times.

Merge (`resolve`). A link remembers, per field, the hash of the value both sides
held after the last sync. A side *changed* a field when its value's hash differs
from that one. Then, per field and its direction (schemas/act_sync.py):

- neither side changed it: nothing;
- one side changed it: the value goes to the other side when the direction lets
  it flow that way, else nothing (the sides stay apart until the next allowed
  change, and the link keeps the old hash so that change is still seen);
- both changed it to the same value: nothing to write, the link takes the value;
- both changed it to different values (a conflict): the last writer by change
  time wins (the CRM record's modified time against the mailbox item's last
  modified time); at equal times the CRM wins, unless `tie_winner` is
  `exchange`. When the direction lets only one side's value flow, that side
  wins whatever the times (the other side's edit is not synchronized).
- not linked yet (first write): every field goes to the mailbox.

Echoes. A write tidings made is seen again by the other side's reader: the CRM
emits the record again with the values tidings wrote, the mailbox shows the item
with them. Their hashes equal the link's, so nothing is written back
(`is_echo` also recognises the mailbox item by the ChangeKey the server gave
tidings' own write).

Deletes (`on_crm_delete`, `on_exchange_delete`, defined in schemas/act_deletes.py
because the Exchange → CRM stage applies them too, re-exported here), as Dynamics 365 documents them
for tracked items, whether synchronized by the Outlook client or server-side
synchronization ("Deleting records that have been tracked", Microsoft Docs,
MicrosoftDocs/dynamics-365-customer-engagement,
ce/outlook-addin/user-guide/delete-records-that-have-been-tracked.md), and as
Exchange recommends for meetings ("Delete appointments in a recurring series by
using EWS in Exchange", learn.microsoft.com: cancel meetings the user organized,
decline those they did not):

- appointment deleted in the CRM: deleted in the mailbox when the mailbox's user
  owns or organizes it and it is present or future (a meeting with attendees is
  cancelled: they receive the cancellation); a past one is kept (unlinked), and
  an attendee's copy is not touched by tidings (Exchange's cancellation reaches
  it);
- appointment deleted in the mailbox by its organizer (or the owner of a
  meeting-less appointment): deleted in the CRM; deleted by an attendee: only
  their copy goes, the CRM appointment stays (the link is dropped);
- contact deleted in the CRM: deleted in the mailbox when the mailbox's user is
  not the contact's owner; the owner keeps the Outlook contact (unlinked);
  deleted in the mailbox: never deletes the CRM contact (unlinked);
- task deleted in the CRM: deleted in the mailbox when it is current (not
  completed, not past its due date); deleted in the mailbox: deleted in the CRM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

from schemas.act import ActPayload
from schemas.act_deletes import (
    DeleteAction,
    DeleteDecision,
    Role,
    on_crm_delete,
    on_exchange_delete,
)
from schemas.act_sync import NEVER_MERGED, FieldDirection, Side

_ENCODER = msgspec.json.Encoder(order="sorted")


def payload_fields(payload: ActPayload) -> dict[str, Any]:
    """The mergeable fields of a payload as JSON-able values (identity and version
    fields — ical_uid, change_time, change_key — left out)."""
    raw = msgspec.to_builtins(payload)
    assert isinstance(raw, dict)
    return {k: v for k, v in raw.items() if k not in NEVER_MERGED and k != "type"}


SYNC_FIELDS: dict[str, tuple[str, ...]] = {
    "appointment": (
        "subject",
        "body",
        "start",
        "end",
        "all_day",
        "location",
        "organizer",
        "attendees",
        "recurrence",
        "exceptions",
        "categories",
    ),
    "contact": (
        "given_name",
        "surname",
        "display_name",
        "emails",
        "phones",
        "company",
        "job_title",
        "department",
        "notes",
        "categories",
    ),
    "task": ("subject", "body", "due", "status", "importance", "categories"),
}
"""The fields two-way sync merges, per kind: what both Exchange and Microsoft 365
store and give back unchanged (time zones, response states, free/busy and other
server-kept properties are left to the server)."""


def sync_fields(kind: str, payload: ActPayload) -> dict[str, Any]:
    """The merged fields of a payload in a canonical form, so the same item read back
    from either server compares equal: attendees without their response state and
    sorted by address, addresses lower-cased, the recurrence rule with its parts in
    a fixed order (INTERVAL=1 spelled out) and without its time zone, exceptions
    in start order."""
    fields = payload_fields(payload)
    out: dict[str, Any] = {name: fields.get(name) for name in SYNC_FIELDS.get(kind, ())}
    if "attendees" in out:
        attendees = [
            {"address": str(a["address"]).lower(), "name": a.get("name", ""), "role": a["role"]}
            for a in out["attendees"] or []
        ]
        out["attendees"] = sorted(attendees, key=lambda a: a["address"])
    if out.get("organizer"):
        out["organizer"] = str(out["organizer"]["address"]).lower()
    if out.get("recurrence"):
        rec = dict(out["recurrence"])
        rec["rrule"] = canonical_rrule(rec["rrule"])
        rec.pop("time_zone", None)
        rec.pop("first_day_of_week", None)
        out["recurrence"] = rec
    if "exceptions" in out:
        out["exceptions"] = sorted(out["exceptions"] or [], key=lambda e: e["original_start"])
    if "emails" in out:
        out["emails"] = [str(e).lower() for e in out["emails"] or []]
    return out


_RRULE_ORDER = ("FREQ", "INTERVAL", "BYDAY", "BYMONTHDAY", "BYMONTH", "BYSETPOS", "WKST")


def canonical_rrule(rrule: str) -> str:
    """An RRULE pattern with its parts in a fixed order, INTERVAL spelled out, BYDAY
    days in week order; unknown parts kept after them, sorted."""
    parts = dict(p.split("=", 1) for p in rrule.upper().split(";") if "=" in p)
    parts.setdefault("INTERVAL", "1")
    if "BYDAY" in parts:
        week = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
        days = parts["BYDAY"].split(",")
        parts["BYDAY"] = ",".join(sorted(days, key=lambda d: (week.index(d[-2:]), d)))
    order = [k for k in _RRULE_ORDER if k in parts] + sorted(set(parts) - set(_RRULE_ORDER))
    return ";".join(f"{k}={parts[k]}" for k in order)


def with_fields(payload: ActPayload, fields: Mapping[str, Any]) -> ActPayload:
    """`payload` with `fields` (JSON-able values, as `payload_fields` gives) replaced."""
    raw = msgspec.to_builtins(payload)
    assert isinstance(raw, dict)
    raw.update(fields)
    return msgspec.convert(raw, type(payload))


def field_hash(value: Any) -> str:
    """A stable hash of one field's value (canonical JSON, keys sorted)."""
    return hashlib.blake2b(_ENCODER.encode(value), digest_size=12).hexdigest()


def field_hashes(fields: Mapping[str, Any]) -> dict[str, str]:
    """The hash of every field of a field map."""
    return {name: field_hash(value) for name, value in fields.items()}


class Action(StrEnum):
    """What happens to one field."""

    KEEP = "keep"
    """Nothing to write (unchanged, or both sides already agree)."""
    TO_EXCHANGE = "to_exchange"
    TO_CRM = "to_crm"
    HELD = "held"
    """Changed on a side whose changes the direction does not let flow."""


@dataclass(frozen=True)
class FieldDecision:
    """The decision for one field, with the reason in words (for logs and tests)."""

    name: str
    action: Action
    value: Any
    reason: str
    conflict: bool = False


@dataclass(frozen=True)
class Resolution:
    """What to write where, and the hashes the link holds once it is written."""

    to_exchange: dict[str, Any] = field(default_factory=dict)
    to_crm: dict[str, Any] = field(default_factory=dict)
    synced: dict[str, str] = field(default_factory=dict)
    decisions: tuple[FieldDecision, ...] = ()

    @property
    def conflicts(self) -> list[FieldDecision]:
        """Fields both sides changed to different values."""
        return [d for d in self.decisions if d.conflict]

    @property
    def noop(self) -> bool:
        """Nothing to write anywhere."""
        return not self.to_exchange and not self.to_crm


def winner(crm_time: datetime | None, exchange_time: datetime | None, tie: Side) -> Side:
    """The last writer by change time; `tie` at equal (or unknown) times."""
    if crm_time is None or exchange_time is None or crm_time == exchange_time:
        return tie
    return Side.CRM if crm_time > exchange_time else Side.EXCHANGE


def resolve(
    crm: Mapping[str, Any],
    exchange: Mapping[str, Any] | None,
    synced: Mapping[str, str] | None,
    *,
    crm_time: datetime | None,
    exchange_time: datetime | None,
    direction: Callable[[str], FieldDirection],
    tie: Side = Side.CRM,
) -> Resolution:
    """Merge the CRM version and the mailbox version of a linked item (see the
    module docstring). `exchange` None: the item is not in the mailbox yet;
    `synced` None: not linked yet. Fields only one side has count as None on the
    other."""
    if exchange is None or synced is None:
        return Resolution(
            to_exchange=dict(crm),
            synced=field_hashes(crm),
            decisions=tuple(
                FieldDecision(n, Action.TO_EXCHANGE, v, "not linked yet") for n, v in crm.items()
            ),
        )
    to_exchange: dict[str, Any] = {}
    to_crm: dict[str, Any] = {}
    hashes: dict[str, str] = {}
    decisions: list[FieldDecision] = []
    for name in sorted(set(crm) | set(exchange)):
        decision = resolve_field(
            name,
            crm.get(name),
            exchange.get(name),
            synced.get(name),
            crm_time=crm_time,
            exchange_time=exchange_time,
            direction=direction(name),
            tie=tie,
        )
        decisions.append(decision)
        if decision.action is Action.TO_EXCHANGE:
            to_exchange[name] = decision.value
            hashes[name] = field_hash(decision.value)
        elif decision.action is Action.TO_CRM:
            to_crm[name] = decision.value
            hashes[name] = field_hash(decision.value)
        elif decision.action is Action.KEEP and field_hash(crm.get(name)) == field_hash(
            exchange.get(name)
        ):
            hashes[name] = field_hash(crm.get(name))
        elif name in synced:
            hashes[name] = synced[name]
    return Resolution(to_exchange, to_crm, hashes, tuple(decisions))


def resolve_field(
    name: str,
    crm: Any,
    exchange: Any,
    synced: str | None,
    *,
    crm_time: datetime | None,
    exchange_time: datetime | None,
    direction: FieldDirection,
    tie: Side,
) -> FieldDecision:
    """The decision for one field (see `resolve`)."""
    crm_hash, exchange_hash = field_hash(crm), field_hash(exchange)
    crm_changed = crm_hash != synced
    exchange_changed = exchange_hash != synced
    if crm_hash == exchange_hash:
        return FieldDecision(name, Action.KEEP, crm, "both sides hold the same value")
    if crm_changed and not exchange_changed:
        if direction.to_exchange:
            return FieldDecision(name, Action.TO_EXCHANGE, crm, "changed in the CRM")
        return FieldDecision(name, Action.HELD, crm, f"changed in the CRM; direction {direction}")
    if exchange_changed and not crm_changed:
        if direction.to_crm:
            return FieldDecision(name, Action.TO_CRM, exchange, "changed in the mailbox")
        return FieldDecision(
            name, Action.HELD, exchange, f"changed in the mailbox; direction {direction}"
        )
    # Both changed, to different values.
    if direction is FieldDirection.NONE:
        return FieldDecision(name, Action.HELD, crm, "changed on both sides; direction none", True)
    if direction is FieldDirection.CRM_TO_EXCHANGE:
        side = Side.CRM
        why = "changed on both sides; only CRM changes flow"
    elif direction is FieldDirection.EXCHANGE_TO_CRM:
        side = Side.EXCHANGE
        why = "changed on both sides; only mailbox changes flow"
    else:
        side = winner(crm_time, exchange_time, tie)
        tied = crm_time is None or exchange_time is None or crm_time == exchange_time
        why = f"changed on both sides; {side} wins " + ("the tie" if tied else "as last writer")
    if side is Side.CRM:
        return FieldDecision(name, Action.TO_EXCHANGE, crm, why, True)
    return FieldDecision(name, Action.TO_CRM, exchange, why, True)


def is_echo(
    exchange_change_key: str | None,
    exchange_fields: Mapping[str, Any],
    link_change_key: str | None,
    synced: Mapping[str, str],
) -> bool:
    """Whether a mailbox version is tidings' own last write seen again: the same
    ChangeKey the server returned for that write, or every field as last synced."""
    if exchange_change_key and exchange_change_key == link_change_key:
        return True
    return all(synced.get(name) == field_hash(v) for name, v in exchange_fields.items())


__all__ = [
    "Action",
    "DeleteAction",
    "DeleteDecision",
    "FieldDecision",
    "Resolution",
    "Role",
    "canonical_rrule",
    "field_hash",
    "field_hashes",
    "is_echo",
    "on_crm_delete",
    "on_exchange_delete",
    "payload_fields",
    "resolve",
    "resolve_field",
    "sync_fields",
    "winner",
    "with_fields",
]
