"""Which mailboxes a CRM appointment, contact or task is written to (the owner's sync
filter), and the mailbox user's part in it. Pure.

Defaults (schemas/act_sync.py), after Dynamics 365 server-side synchronization, where
a user's records sync to the user's own mailbox:
- the mailbox must be enabled and approved, an Exchange (EWS) or Microsoft 365
  (Graph) mailbox, with `act` settings enabled, CRM → Exchange enabled and the record's kind
  switched on;
- an appointment goes to its organizer's mailbox (organizer address = mailbox
  address); one without an organizer to the mailbox of its owner (same user or queue
  as the mailbox's owner). Attendees receive Exchange's invitation, not a copy from
  tidings — unless the attendee's mailbox uses the `owner_or_attendee` filter;
- a contact or task goes to the mailbox of its owner.
"""

from __future__ import annotations

from collections.abc import Iterable

from connectors.act_conflict import Role
from schemas.act import ActType, Appointment
from schemas.act_changes import CrmActChange
from schemas.act_sync import SyncFilter
from schemas.mailbox import MailboxConfig, Protocol

WRITABLE = frozenset({Protocol.GRAPH, Protocol.EWS})
"""Protocols the writer writes to (Exchange Web Services and Microsoft Graph)."""


def kind_enabled(config: MailboxConfig, kind: ActType) -> bool:
    """Whether CRM → Exchange writes records of `kind` into this mailbox."""
    act = config.act
    if act is None or not act.enabled or not act.crm_to_exchange.enabled:
        return False
    return {
        ActType.APPOINTMENT: act.appointments,
        ActType.CONTACT: act.contacts,
        ActType.TASK: act.tasks,
    }[kind]


def role_of(change: CrmActChange, config: MailboxConfig) -> Role:
    """The mailbox user's part in the record: organizer (or owner), attendee, other."""
    address = config.email_address.lower()
    payload = change.payload
    if isinstance(payload, Appointment):
        if payload.organizer is not None and payload.organizer.address:
            if payload.organizer.address.lower() == address:
                return Role.ORGANIZER
        elif change.owner == config.owner:
            return Role.ORGANIZER
        if any(a.address.lower() == address for a in payload.attendees):
            return Role.ATTENDEE
        return Role.OTHER
    return Role.ORGANIZER if change.owner == config.owner else Role.OTHER


def wants(change: CrmActChange, config: MailboxConfig) -> Role | None:
    """The mailbox's role when the record belongs in it, else None."""
    if not (config.enabled and config.approved) or config.protocol not in WRITABLE:
        return None
    if not kind_enabled(config, change.record_type):
        return None
    role = role_of(change, config)
    if role is Role.ORGANIZER:
        return role
    assert config.act is not None
    if role is Role.ATTENDEE and config.act.crm_to_exchange.sync_filter is (
        SyncFilter.OWNER_OR_ATTENDEE
    ):
        return role
    return None


def targets(change: CrmActChange, configs: Iterable[MailboxConfig]) -> dict[str, Role]:
    """Every mailbox (by id) a live CRM record is written to, with its role."""
    found: dict[str, Role] = {}
    for config in configs:
        role = wants(change, config)
        if role is not None:
            found[config.mailbox_id] = role
    return found
