"""What the runtime needs from a mailbox, whatever its protocol.

A source synchronizes one mailbox into mail.changes: each `sync_pass` emits the
changes since its cursors in batches, moving each cursor only after Kafka
acknowledged the batch it covers. Failures are raised as `ConnectorError`
(connectors/errors.py) so the runtime can tell permanent from transient.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import msgspec

from connectors import errors
from connectors.claimcheck import ClaimCheck, MessagePayload
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.gate import ServerGate
from schemas.ids import change_event_id, track_event_id
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import Cursor, FolderRole, MailboxConfig, MailboxCounters, ServerProfile
from schemas.track import TrackRequest


@dataclass(frozen=True)
class SourceWiring:
    """What every mailbox source is built with, whatever its protocol.

    `cursors` are the positions read back at start (the source keeps those of its
    own mailbox); `emitter` and `store` publish its events and move its cursors;
    `claim_check` fits each message into its event; `max_batch_items` bounds a
    batch. A server mailbox (IMAP, POP3, EWS, Graph) has its `profile` and the
    `gate` that bounds the connections to that server; a Maildir has neither.
    Protocol-specific parts (password or token providers) are the source's own
    keyword arguments.
    """

    config: MailboxConfig
    profile: ServerProfile | None
    partition: int
    cursors: dict[str, Cursor]
    emitter: Emitter
    store: CursorStore
    gate: ServerGate | None
    claim_check: ClaimCheck
    max_batch_items: int

    def server(self) -> tuple[ServerProfile, ServerGate]:
        """The profile and gate of a server mailbox; a permanent configuration
        ConnectorError when the wiring has none (a Maildir's)."""
        if self.profile is None or self.gate is None:
            raise errors.permanent(
                errors.CONFIGURATION,
                f"mailbox {self.config.mailbox_id} is {self.config.protocol}, "
                "which needs a server profile",
            )
        return self.profile, self.gate


@dataclass
class PassResult:
    """What one sync pass over every folder did.

    `listed` counts the items the server (or directory) holds in the synced
    folders; `pending` what the pass saw but has not emitted yet.
    """

    listed: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unreadable: int = 0
    pending: int = 0
    counters: MailboxCounters = field(default_factory=MailboxCounters)


BatchCallback = Callable[[PassResult], Awaitable[None]]
"""Called after each acknowledged batch of a pass (progress reporting)."""


@dataclass(frozen=True)
class ServerListing:
    """What a mailbox holds now, for reconciliation: item ids per folder.

    Only items within the mailbox's "process email from" window are listed.
    """

    items: dict[str, set[str]]


class MailboxSource(Protocol):
    """One mailbox, synchronized pass by pass."""

    protocol: str

    async def sync_pass(self, on_batch: BatchCallback | None = None) -> PassResult:
        """Emit every change since the cursors; raise ConnectorError on failure."""
        ...

    async def wait_for_change(self, timeout_s: float) -> bool | None:
        """Return when the mailbox may have changed (push: True), or after `timeout_s`
        or earlier without a push (falsy: the runtime waits the rest of its delay)."""
        ...

    async def list_server_items(self) -> ServerListing:
        """Every item id the mailbox holds now (for `tidings mailbox reconcile`)."""
        ...

    async def find_message(self, message_id: str) -> list[MailItemChanged]:
        """The created event a sync emits, now, for every item of the synced folders
        whose Message-ID normalizes to `message_id` (manual tracking; the "process
        email from" window does not apply). Empty when there is none; raise
        ConnectorError on failure. Cursors do not move."""
        ...

    async def close(self) -> None:
        """Release connections; the source may be used again afterwards (it reconnects)."""
        ...


@runtime_checkable
class ItemFinder(Protocol):
    """A source that can look up one appointment, contact or task (manual tracking of
    ACT items, docs/act.md): EWS and Graph. Other sources are refused with
    `item_lookup_refusal`."""

    protocol: str

    async def find_item(self, item_id: str, ical_uid: str) -> list[MailItemChanged]:
        """The created event a sync emits, now, for the item of the mailbox's ACT folders
        whose server id is `item_id`, or for every appointment whose iCalendar UID is
        `ical_uid` (one of them is ""). Empty when there is none, or when the mailbox
        does not sync ACT items; raise ConnectorError on failure. Cursors do not move."""
        ...


def item_lookup_refusal(source: object) -> str | None:
    """Why `source` cannot look up an ACT item for a track request (None: it can)."""
    if isinstance(source, ItemFinder):
        return None
    protocol = getattr(source, "protocol", "this")
    return (
        f"a {protocol} mailbox cannot look up appointments, contacts or tasks; "
        "--item-id and --ical-uid work for EWS mailboxes and Graph mailboxes"
    )


def item_not_found_reason(request: TrackRequest) -> str:
    """The one line saying the mailbox holds no ACT item the request names."""
    which = f"item {request.item_id}" if request.item_id else f"UID {request.ical_uid}"
    return (
        f"mailbox {request.mailbox_id} holds no appointment, contact or task with {which} "
        "in the folders tidings syncs; check the id and that act.enabled covers its folder"
    )


def fold_counters(before: MailboxCounters, result: PassResult) -> MailboxCounters:
    """Running totals after a pass: listed is the latest count, the rest accumulate."""
    return MailboxCounters(
        items_listed=result.listed,
        created_events=before.created_events + result.created,
        updated_events=before.updated_events + result.updated,
        deleted_events=before.deleted_events + result.deleted,
        errors=before.errors + result.unreadable,
    )


def item_event(
    mailbox_id: str,
    folder: str,
    item_id: str,
    change: ChangeKind,
    observed_at: datetime,
    *,
    version: str = "",
    payload: MessagePayload | None = None,
    server_time: datetime | None = None,
    size: int = 0,
    flags: list[str] | None = None,
    folder_role: FolderRole | None = None,
    unreadable: tuple[str, str] | None = None,
) -> MailItemChanged:
    """A change event of any connector. Its id is derived from (mailbox, folder,
    item, change, version) here and only here, so every re-emission of a change
    carries the same id. `payload` is the message as it travels (inline or by
    claim-check), when the event carries one; `unreadable` is the (code, reason)
    of an item the connector could not read."""
    body = payload or MessagePayload()
    code, reason = unreadable or (None, None)
    return MailItemChanged(
        event_id=change_event_id(mailbox_id, folder, item_id, change, version),
        mailbox_id=mailbox_id,
        folder=folder,
        item_id=item_id,
        change=change,
        version=version,
        observed_at=observed_at,
        server_time=server_time,
        size=size,
        flags=flags or [],
        folder_role=folder_role,
        raw=body.raw,
        blob_ref=body.blob_ref,
        headers=body.headers,
        preview=body.preview,
        unreadable_code=code,
        unreadable_reason=reason,
    )


def deleted_event(
    mailbox_id: str,
    folder: str,
    item_id: str,
    now: datetime,
    folder_role: FolderRole | None = None,
) -> MailItemChanged:
    """The event saying an item is gone from its folder."""
    return item_event(mailbox_id, folder, item_id, ChangeKind.DELETED, now, folder_role=folder_role)


def tracked_event(event: MailItemChanged, request: TrackRequest) -> MailItemChanged:
    """A created event `find_message` returned, as sent for a manual tracking request:
    marked with the request, under an id derived from the item's event id and the
    request's (never one of the item's change event ids, and the same again when
    the request is handled again)."""
    return msgspec.structs.replace(
        event,
        event_id=track_event_id(event.event_id, request.request_id),
        manual_track=request.mark,
    )
