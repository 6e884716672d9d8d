"""One Maildir mailbox, synchronized folder by folder, batch by batch.

For each folder: list it, diff against the cursor, emit `created` events for new
items and `deleted` events for vanished ones in batches; after Kafka
acknowledged a batch, move the cursor past it. A crash between the two re-emits
at most that batch, with the same event ids.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.maildir import (
    FolderSignature,
    MaildirItem,
    changes_since,
    decode_position,
    encode_position,
    folder_signature,
    list_folder,
    modified_at,
    signature_settled,
)
from schemas.base import utc_now
from schemas.config import ConnectorConfig
from schemas.ids import change_event_id
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import Cursor, MailboxConfig, MailboxCounters, cursor_key

PROTOCOL = "maildir"


@dataclass
class PassResult:
    """What one sync pass over every folder did."""

    listed: int = 0
    created: int = 0
    deleted: int = 0
    unreadable: int = 0
    pending: int = 0
    counters: MailboxCounters = field(default_factory=MailboxCounters)


BatchCallback = Callable[[PassResult], Awaitable[None]]
"""Called after each acknowledged batch of a pass (progress reporting)."""


class MaildirMailbox:
    """Synchronizes one Maildir mailbox into mail.changes, cursor by cursor."""

    def __init__(
        self,
        config: MailboxConfig,
        partition: int,
        cursors: dict[str, Cursor],
        emitter: Emitter,
        store: CursorStore,
        *,
        limits: ConnectorConfig,
    ) -> None:
        assert config.maildir is not None
        self.config = config
        self.root = Path(config.maildir.path).expanduser()
        self.partition = partition
        self.emitter = emitter
        self.store = store
        self.max_batch_items = limits.max_batch_items
        self.max_inline_bytes = limits.max_inline_bytes
        self.seen: dict[str, set[str]] = {
            folder: decode_position(cursor.position)
            for folder in config.maildir.folders
            if (cursor := cursors.get(cursor_key(config.mailbox_id, folder))) is not None
        }
        self.counters = MailboxCounters()
        self.signatures: dict[str, FolderSignature] = {}
        self.listed: dict[str, int] = {}

    async def sync_pass(self, on_batch: BatchCallback | None = None) -> PassResult:
        """Sync every configured folder once; raises MailboxMissingError when the root is gone.

        A folder whose new/ and cur/ did not change since its last complete sync
        (and did not change too recently to tell) is not listed again.
        """
        assert self.config.maildir is not None
        result = PassResult()
        now_ns = time.time_ns()
        signatures = {f: folder_signature(self.root, f) for f in self.config.maildir.folders}
        changed = [
            f
            for f, signature in signatures.items()
            if self.signatures.get(f) != signature or not signature_settled(signature, now_ns)
        ]
        listings = {folder: list_folder(self.root, folder) for folder in changed}
        for folder, items in listings.items():
            self.listed[folder] = len(items)
        result.listed = sum(self.listed.values())
        result.pending = sum(
            len(changes_since(self.seen.get(f, set()), items).created)
            for f, items in listings.items()
        )
        for folder, items in listings.items():
            await self._sync_folder(folder, items, result, on_batch)
            self.signatures[folder] = signatures[folder]
        self.counters = MailboxCounters(
            items_listed=result.listed,
            created_events=self.counters.created_events + result.created,
            updated_events=self.counters.updated_events,
            deleted_events=self.counters.deleted_events + result.deleted,
            errors=self.counters.errors + result.unreadable,
        )
        result.counters = self.counters
        return result

    async def _sync_folder(
        self,
        folder: str,
        items: dict[str, MaildirItem],
        result: PassResult,
        on_batch: BatchCallback | None,
    ) -> None:
        seen = self.seen.setdefault(folder, set())
        changes = changes_since(seen, items)
        for start in range(0, len(changes.created), self.max_batch_items):
            names = changes.created[start : start + self.max_batch_items]
            events = [e for n in names if (e := self._created(folder, items[n])) is not None]
            await self.emitter.emit_changes(events, PROTOCOL)
            seen.update(e.item_id for e in events)
            await self._save(folder, seen)
            result.created += len(events)
            result.unreadable += sum(1 for e in events if e.unreadable_code)
            result.pending -= len(names)
            if on_batch is not None:
                await on_batch(result)
        if changes.deleted:
            now = utc_now()
            gone = [self._deleted(folder, name, now) for name in changes.deleted]
            await self.emitter.emit_changes(gone, PROTOCOL)
            seen.difference_update(changes.deleted)
            await self._save(folder, seen)
            result.deleted += len(gone)

    async def _save(self, folder: str, seen: set[str]) -> None:
        await self.store.save(
            self.config.mailbox_id, folder, encode_position(seen), self.partition, utc_now()
        )

    def _created(self, folder: str, item: MaildirItem) -> MailItemChanged | None:
        """The created event of an item; None when the file vanished since listing."""
        now = utc_now()
        delivered = modified_at(item.path)
        if delivered is None:
            return None
        raw: bytes | None = None
        code: str | None = None
        reason: str | None = None
        try:
            size = item.path.stat().st_size
            if size > self.max_inline_bytes:
                code = "TooLarge"
                reason = (
                    f"the message is {size} bytes, over the {self.max_inline_bytes}-byte limit "
                    "for events; raise connectors.max_inline_bytes or move the message"
                )
            else:
                raw = item.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            size = 0
            code, reason = "Unreadable", f"cannot read the file: {exc.strerror or exc}"
        return MailItemChanged(
            event_id=change_event_id(
                self.config.mailbox_id, folder, item.unique_name, "created", ""
            ),
            mailbox_id=self.config.mailbox_id,
            folder=folder,
            item_id=item.unique_name,
            change=ChangeKind.CREATED,
            observed_at=now,
            server_time=delivered,
            size=size,
            flags=sorted(item.flags),
            raw=raw,
            unreadable_code=code,
            unreadable_reason=reason,
        )

    def _deleted(self, folder: str, name: str, now: datetime) -> MailItemChanged:
        return MailItemChanged(
            event_id=change_event_id(self.config.mailbox_id, folder, name, "deleted", ""),
            mailbox_id=self.config.mailbox_id,
            folder=folder,
            item_id=name,
            change=ChangeKind.DELETED,
            observed_at=now,
        )
