"""The delete rules of linked appointments, contacts and tasks: what a delete on
one side does on the other. Pure; shared by the CRM → Exchange writer
(connectors/act_writer.py, a CRM delete and an item found gone) and the Exchange →
CRM stage (processors/act.py, a linked item deleted in the mailbox), so it lives
with the contracts.

As Dynamics 365 documents them for tracked items ("Deleting records that have been
tracked", Microsoft Docs), and as Exchange recommends for meetings (cancel the
meetings the user organized, decline those they did not):

- appointment deleted in the CRM: deleted in the mailbox when the mailbox's user
  owns or organizes it and it is present or future (a meeting with attendees is
  cancelled: they receive the cancellation); a past one is kept (unlinked), and an
  attendee's copy is not touched (Exchange's cancellation reaches it);
- appointment deleted in the mailbox by its organizer (or the owner of a
  meeting-less appointment): deleted in the CRM; deleted by an attendee: only their
  copy goes, the CRM appointment stays (the link is dropped);
- contact deleted in the CRM: deleted in the mailbox when the mailbox's user is not
  the contact's owner; the owner keeps the Outlook contact (unlinked); deleted in
  the mailbox: never deletes the CRM contact (unlinked);
- task deleted in the CRM: deleted in the mailbox when it is current (not
  completed, not past its due date); deleted in the mailbox: deleted in the CRM.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    """The mailbox's user's part in a record."""

    ORGANIZER = "organizer"
    """Organizes the meeting, or owns the appointment, contact or task."""
    ATTENDEE = "attendee"
    OTHER = "other"


class DeleteAction(StrEnum):
    """What a delete on one side does on the other."""

    DELETE_IN_EXCHANGE = "delete_in_exchange"
    CANCEL_IN_EXCHANGE = "cancel_in_exchange"
    """Delete the organizer's meeting, sending the attendees a cancellation."""
    DELETE_IN_CRM = "delete_in_crm"
    UNLINK = "unlink"
    """Leave the other side alone; forget the link."""


@dataclass(frozen=True)
class DeleteDecision:
    action: DeleteAction
    reason: str


def on_crm_delete(
    record_type: str,
    role: Role,
    *,
    now: datetime,
    end: datetime | None = None,
    has_attendees: bool = False,
    completed: bool = False,
    due: datetime | None = None,
    delete_past: bool = False,
) -> DeleteDecision:
    """What deleting a linked record in the CRM does to the mailbox item."""
    if record_type == "appointment":
        if role is not Role.ORGANIZER:
            return DeleteDecision(
                DeleteAction.UNLINK, "an attendee's copy follows the organizer's cancellation"
            )
        if end is not None and end < now and not delete_past:
            return DeleteDecision(DeleteAction.UNLINK, "the appointment is in the past: kept")
        if has_attendees:
            return DeleteDecision(
                DeleteAction.CANCEL_IN_EXCHANGE, "organizer's meeting: cancelled for attendees"
            )
        return DeleteDecision(DeleteAction.DELETE_IN_EXCHANGE, "owner's appointment")
    if record_type == "contact":
        if role is Role.ORGANIZER:
            return DeleteDecision(DeleteAction.UNLINK, "the contact's owner keeps it in Outlook")
        return DeleteDecision(DeleteAction.DELETE_IN_EXCHANGE, "not the contact's owner")
    if record_type == "task":
        if completed or (due is not None and due < now):
            return DeleteDecision(DeleteAction.UNLINK, "the task is not current: kept")
        return DeleteDecision(DeleteAction.DELETE_IN_EXCHANGE, "current task")
    return DeleteDecision(DeleteAction.UNLINK, f"unknown record type {record_type!r}")


def on_exchange_delete(record_type: str, role: Role) -> DeleteDecision:
    """What deleting a linked item in the mailbox does to the CRM record."""
    if record_type == "appointment":
        if role is Role.ORGANIZER:
            return DeleteDecision(DeleteAction.DELETE_IN_CRM, "deleted by its organizer")
        return DeleteDecision(DeleteAction.UNLINK, "an attendee removed only their copy")
    if record_type == "contact":
        return DeleteDecision(DeleteAction.UNLINK, "a mailbox delete never deletes a CRM contact")
    if record_type == "task":
        return DeleteDecision(DeleteAction.DELETE_IN_CRM, "tracked task deleted in the mailbox")
    return DeleteDecision(DeleteAction.UNLINK, f"unknown record type {record_type!r}")
