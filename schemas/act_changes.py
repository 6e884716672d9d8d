"""CRM → Exchange: the CRM's versions of appointments, contacts and tasks
(topic crm.act.changes) and the links between CRM records and mailbox items
(topic act.links).

crm.act.changes is written by the CRM (or its change feed): one record per CRM
record id, the latest version wins (compacted); a deleted record is a version
with `deleted` set (kept, so the writer knows what to delete and in which
mailboxes), which the CRM may later tombstone.

act.links is written by the CRM → Exchange writer (connectors/act_writer.py)
only after the server confirmed a write: key `record id|mailbox id`, on the
partition number its record has on crm.act.changes (the two topics must have the
same partition count), so the writer that owns a record's partition reads every
link of that record when it is assigned it. A tombstone drops a link. The link
remembers the mailbox item, its ChangeKey after tidings' last write, both sides'
change times and a hash of every field as last synchronized: what the two-way
merge (connectors/act_conflict.py) compares against, and how echoes of tidings'
own writes are recognised on both sides. The Exchange → CRM path reads it to map
a mailbox item back to the CRM record it is linked to.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.act import ActPayload, ActType
from schemas.act_sync import Side
from schemas.base import Record, RecordRef


class CrmActChange(Record, frozen=True, kw_only=True):
    """The CRM's version of an appointment, contact or task. Keyed by `record_id`
    on crm.act.changes.

    `owner` is the record's owner (a user or a queue: the mailbox with that owner
    gets it); `payload` the record as the CRM holds it (None only when
    `deleted`); `crm_change_time` its modified time (UTC), which orders versions
    and decides conflicts. `regarding` is informational.
    """

    record_id: str
    record_type: ActType
    owner: RecordRef
    payload: ActPayload | None = None
    deleted: bool = False
    crm_change_time: datetime
    regarding: RecordRef | None = None

    def __post_init__(self) -> None:
        if self.payload is None and not self.deleted:
            raise ValueError("a CRM change without a payload must be deleted")


class ActLink(Record, frozen=True, kw_only=True):
    """A CRM record linked to an item of one mailbox. Keyed by `link_key(record id,
    mailbox id)` on act.links (see the module docstring).

    `item_id` / `change_key` are the server's (EWS ItemId and ChangeKey, Graph
    id and changeKey) after tidings' last write or last merge; `crm_change_time`
    and `exchange_change_time` the two sides' change times then; `synced` the
    hash of every field (connectors/act_conflict.py `field_hash`) both sides
    held. `origin` is the side the item was first created from; `organizer` is
    true when the mailbox's user organizes (or owns) the record, which decides
    what a delete does.
    """

    record_id: str
    mailbox_id: str
    record_type: ActType
    item_id: str
    change_key: str = ""
    ical_uid: str = ""
    crm_change_time: datetime | None = None
    exchange_change_time: datetime | None = None
    synced: dict[str, str] = msgspec.field(default_factory=dict)
    origin: Side = Side.CRM
    organizer: bool = True
    deleted: bool = False
    """The record was deleted (in the CRM, or the item in the mailbox): nothing is
    written for it again, and replayed older versions cannot resurrect it."""
    updated_at: datetime


def link_key(record_id: str, mailbox_id: str) -> str:
    """The act.links key of a record's link to a mailbox."""
    return f"{record_id}|{mailbox_id}"
