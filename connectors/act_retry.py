"""Later retries of the CRM → Exchange writer: the pure decisions about parked
changes (act.retry, `ActParked`); connectors/act_writer.py does the I/O.

Why a topic. A CRM change that still fails after the writer's immediate attempts
(`max_attempts`, a few seconds) must neither be lost nor hold up the changes of
other records. Its offset on crm.act.changes is committed, so the change itself
is kept elsewhere: on act.retry (compacted, key `record id|mailbox id`, on the
partition its record has on crm.act.changes, like its links). The writer that
owns the partition reads it on assignment, as it reads act.links, so a crash or a
rebalance keeps every parked change; a tombstone ends an entry. Kept in Kafka
rather than in a local file because the writer is a consumer group whose
partitions move between machines.

The rules, per (record, mailbox):
- a transient failure after the immediate attempts parks the change: the first
  retry `retry_delay_s` later, the delay doubling per failed retry, capped at
  `retry_max_delay_s` (`retry_delay`);
- `give_up_after_s` after the change's first failure, a failing retry gives up
  (a permanent SyncError, the entry tombstoned);
- a permanent failure (bad request, invalid item, access denied: the target
  classifies it) is reported and never parked; it ends a parked entry too;
- a newer CRM change for the record supersedes the parked one (the CRM sends whole
  versions, so the newer one carries every field): it is tried at once, and on
  success or permanent failure the parked entry is tombstoned; if it fails
  transiently it replaces the entry (its own give-up clock starts). An older
  change than the parked one (a re-read after a crash) writes nothing: the parked
  version is the newer one;
- due entries are retried one attempt each, at most one per mailbox per round of
  the writer's loop, so a mailbox still down costs one request per round, and
  other records' changes keep flowing between rounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from schemas.act_changes import ActParked, CrmActChange
from schemas.act_sync import ActWriterSettings


def retry_delay(retries: int, settings: ActWriterSettings) -> timedelta:
    """The wait before the retry that follows `retries` failed ones: `retry_delay_s`
    doubled per failed retry, at most `retry_max_delay_s`."""
    seconds = settings.retry_delay_s * 2 ** min(retries, 62)
    return timedelta(seconds=min(seconds, settings.retry_max_delay_s))


def same_change(a: CrmActChange, b: CrmActChange) -> bool:
    """Whether two CRM changes are the same version of a record."""
    return a.crm_change_time == b.crm_change_time and a.deleted == b.deleted


def supersedes(change: CrmActChange, parked: ActParked) -> bool:
    """Whether `change` replaces the parked one: the same version or a newer one
    (a delete at the same change time replaces a write)."""
    old = parked.change
    if change.crm_change_time != old.crm_change_time:
        return change.crm_change_time > old.crm_change_time
    return change.deleted or not old.deleted


def park(
    change: CrmActChange,
    mailbox_id: str,
    code: str,
    message: str,
    now: datetime,
    previous: ActParked | None,
    settings: ActWriterSettings,
) -> ActParked | None:
    """The entry to keep after `change` failed transiently in `mailbox_id`, or None
    when the writer gives up on it (`give_up_after_s` since its first failure).
    `previous` is the parked entry of the same record and mailbox, if any: the same
    change failing again counts one more retry; another (newer) change starts anew."""
    if previous is not None and same_change(previous.change, change):
        first, retries = previous.first_failed_at, previous.retries + 1
    else:
        first, retries = now, 0
    if now - first >= timedelta(seconds=settings.give_up_after_s):
        return None
    return ActParked(
        record_id=change.record_id,
        mailbox_id=mailbox_id,
        change=change,
        retries=retries,
        first_failed_at=first,
        next_attempt_at=now + retry_delay(retries, settings),
        last_code=code,
        last_message=message,
        updated_at=now,
    )


def due(parked: Iterable[ActParked], now: datetime) -> list[ActParked]:
    """The entries to retry in this round: due ones, earliest first, at most one per
    mailbox."""
    picked: list[ActParked] = []
    mailboxes: set[str] = set()
    for entry in sorted(parked, key=lambda e: (e.next_attempt_at, e.record_id, e.mailbox_id)):
        if entry.next_attempt_at > now:
            break
        if entry.mailbox_id in mailboxes:
            continue
        mailboxes.add(entry.mailbox_id)
        picked.append(entry)
    return picked


def describe(entry: ActParked, settings: ActWriterSettings) -> str:
    """One line for the SyncError of a parked change: why, when the next retry is,
    when the writer gives up."""
    give_up = entry.first_failed_at + timedelta(seconds=settings.give_up_after_s)
    return (
        f"parked after {entry.last_code}: {entry.last_message}; retry {entry.retries + 1} "
        f"at {entry.next_attempt_at:%Y-%m-%d %H:%M:%S}Z, given up at {give_up:%Y-%m-%d %H:%M}Z"
    )
