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
a mailbox item back to the CRM record it is linked to, and marks a link deleted
when the linked item is deleted in the mailbox (the only write to act.links not
made by the writer).

act.retry holds the CRM changes the writer parked after transient failures
(`ActParked`), keyed and partitioned like act.links.
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
    owner: RecordRef | None = None
    """The CRM record's owner as the CRM last gave it: the Exchange → CRM stage keeps
    it on the records it writes for the item (an explicit CRM-side owner stays).
    None on links written before the field existed."""
    partition: int | None = None
    """The act.links partition the link lives on (its record's crm.act.changes
    partition), so a reader that is not the writer can publish the link's
    successor where the writer reads it: the Exchange → CRM stage marks a link
    deleted when the mailbox item is deleted. None on older links."""


class ActParked(Record, frozen=True, kw_only=True):
    """A CRM change the writer could not write into one mailbox after its immediate
    attempts (transient failures), parked to be retried later. Keyed by
    `link_key(record id, mailbox id)` on act.retry (compacted), on the partition
    its record has on crm.act.changes (like its links), so the writer that owns
    the record retries it, after a restart too. A tombstone ends the entry: the
    change landed, a newer change superseded it, it failed for good, or the
    writer gave up (`give_up_after_s` past `first_failed_at`).

    `change` is the whole CRM version to write (a newer one for the record
    replaces it); `retries` counts the later retries made so far (0: only the
    immediate attempts); `next_attempt_at` is when the next one is due;
    `last_code` / `last_message` are the last failure's.
    """

    record_id: str
    mailbox_id: str
    change: CrmActChange
    retries: int = 0
    first_failed_at: datetime
    next_attempt_at: datetime
    last_code: str = ""
    last_message: str = ""
    updated_at: datetime


def link_key(record_id: str, mailbox_id: str) -> str:
    """The act.links key of a record's link to a mailbox."""
    return f"{record_id}|{mailbox_id}"
