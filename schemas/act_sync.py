"""Per-mailbox settings of CRM → Exchange synchronization of appointments, contacts
and tasks (and of the two-way sync of linked items): which CRM records go to the
mailbox (the sync filter), which way each field flows, and who wins a tie.

Kept apart from schemas/act.py (the item payloads) so that schemas/mailbox.py can
hold these settings without importing the payload types.

They sit in `MailboxConfig.act.crm_to_exchange`; the kinds written are those
`MailboxConfig.act` enables (appointments, contacts, tasks: all by default).

Defaults, modelled on Dynamics 365 server-side synchronization:
- filter `owner`: a record goes to the mailbox of its owner (for an appointment:
  its organizer's mailbox when the organizer is a mailbox, else its owner's);
  `owner_or_attendee` also puts a copy into every attendee's mailbox without
  sending invitations (off by default: attendees get Exchange's invitation);
- field directions: every field flows both ways, except `organizer` (set once,
  when the item is created), `categories` (Outlook's own, e.g. "Tracked to CRM")
  and `change_time` / `change_key` / `ical_uid` (identity, never merged);
  `field_directions` overrides one field, by name (e.g. {"body": "crm-to-exchange"});
- ties: when both sides changed a field at the same change time, the CRM wins
  (`tie_winner = "exchange"` reverses it).
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class FieldDirection(StrEnum):
    """Which way one field of a linked item flows."""

    BOTH = "both"
    CRM_TO_EXCHANGE = "crm-to-exchange"
    EXCHANGE_TO_CRM = "exchange-to-crm"
    NONE = "none"

    @property
    def to_exchange(self) -> bool:
        """A CRM change of the field is written to the mailbox."""
        return self in (FieldDirection.BOTH, FieldDirection.CRM_TO_EXCHANGE)

    @property
    def to_crm(self) -> bool:
        """A mailbox change of the field is written to the CRM."""
        return self in (FieldDirection.BOTH, FieldDirection.EXCHANGE_TO_CRM)


class Side(StrEnum):
    """One side of a link: the CRM or the mailbox (Exchange / Microsoft 365)."""

    CRM = "crm"
    EXCHANGE = "exchange"


class SyncFilter(StrEnum):
    """Which mailboxes a CRM record is written to."""

    OWNER = "owner"
    OWNER_OR_ATTENDEE = "owner_or_attendee"


NEVER_MERGED = frozenset({"ical_uid", "change_time", "change_key", "kind"})
"""Payload fields that identify a version instead of holding data: never merged."""
DEFAULT_DIRECTIONS: dict[str, FieldDirection] = {
    "organizer": FieldDirection.NONE,
    "categories": FieldDirection.NONE,
}
"""Fields whose default direction is not `both` (every other field flows both ways)."""


class ActSyncSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """CRM → Exchange (and two-way once linked) settings of one mailbox (see the
    module docstring for the defaults)."""

    enabled: bool = True
    sync_filter: SyncFilter = SyncFilter.OWNER
    field_directions: dict[str, FieldDirection] = msgspec.field(default_factory=dict)
    tie_winner: Side = Side.CRM
    send_invitations: bool = True
    """Meetings the mailbox organizes are sent to their attendees (and cancelled)."""
    delete_past_appointments: bool = False
    """Dynamics deletes an appointment in the mailbox only when it is present or
    future; on, a past one is deleted too."""

    def direction(self, field: str) -> FieldDirection:
        """The direction of `field`: the override, else the default."""
        if field in NEVER_MERGED:
            return FieldDirection.NONE
        found = self.field_directions.get(field)
        if found is not None:
            return found
        return DEFAULT_DIRECTIONS.get(field, FieldDirection.BOTH)


class ActWriterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The CRM → Exchange writer's retries (`[connectors.act_writer]`).

    A change that fails transiently is tried `max_attempts` times at once, with
    pauses growing from `retry_pause_s`; then it is parked on act.retry and retried
    later by the writer: first `retry_delay_s` after, the delay doubling per retry
    up to `retry_max_delay_s`. `give_up_after_s` after its first failure the writer
    gives up on it (a permanent SyncError, code `ActRetryGivenUp`). `park` off
    restores the old behaviour: report and skip after the immediate attempts.
    """

    max_attempts: int = 3
    retry_pause_s: float = 1.0
    park: bool = True
    retry_delay_s: float = 60.0
    retry_max_delay_s: float = 3600.0
    give_up_after_s: float = 86400.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("connectors.act_writer.max_attempts must be at least 1")
        if not 0 < self.retry_delay_s <= self.retry_max_delay_s:
            raise ValueError(
                "connectors.act_writer: retry_delay_s must be positive and at most "
                "retry_max_delay_s"
            )
        if self.give_up_after_s <= 0:
            raise ValueError("connectors.act_writer.give_up_after_s must be positive")
