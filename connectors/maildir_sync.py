"""One Maildir mailbox, synchronized folder by folder, batch by batch.

For each folder: list it, diff against the cursor, emit `created` events for new
items and `deleted` events for vanished ones in batches; after Kafka
acknowledged a batch, move the cursor past it. A crash between the two re-emits
at most that batch, with the same event ids.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

from connectors.claimcheck import MessagePayload
from connectors.errors import MAILBOX_MISSING, permanent
from connectors.maildir import (
    FolderSignature,
    MailboxMissingError,
    MaildirItem,
    changes_since,
    decode_position,
    encode_position,
    folder_signature,
    items_with_message_id,
    list_folder,
    modified_at,
    signature_settled,
)
from connectors.source import (
    BatchCallback,
    PassResult,
    ServerListing,
    SourceWiring,
    deleted_event,
    fold_counters,
    item_event,
)
from schemas.base import utc_now
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import MailboxCounters, MaildirPosition, cursor_key

PROTOCOL = "maildir"
MAX_MESSAGE_BYTES = 50 * 1024 * 1024
"""Messages larger than this are not read: they are reported as TooLarge."""


class MaildirMailbox:
    """Synchronizes one Maildir mailbox into mail.changes, cursor by cursor."""

    protocol = PROTOCOL

    def __init__(self, wiring: SourceWiring, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        """The wiring's `claim_check` fits each message into its event (inline, or
        stored as a blob); a message over `max_message_bytes` is not read and is
        reported as TooLarge. A Maildir needs no server profile or gate."""
        config = wiring.config
        assert config.maildir is not None
        self.config = config
        self.root = Path(config.maildir.path).expanduser()
        self.partition = wiring.partition
        self.emitter = wiring.emitter
        self.store = wiring.store
        self.max_batch_items = wiring.max_batch_items
        self.claim_check = wiring.claim_check
        self.max_message_bytes = max_message_bytes
        self.seen: dict[str, set[str]] = {
            folder: decode_position(cursor.position)
            for folder in config.maildir.folders
            if (cursor := wiring.cursors.get(cursor_key(config.mailbox_id, folder))) is not None
            and isinstance(cursor.position, MaildirPosition)
        }
        self.counters = MailboxCounters()
        self.signatures: dict[str, FolderSignature] = {}
        self.listed: dict[str, int] = {}

    async def sync_pass(self, on_batch: BatchCallback | None = None) -> PassResult:
        """Sync every configured folder once; a missing root is a permanent MailboxMissing.

        A folder whose new/ and cur/ did not change since its last complete sync
        (and did not change too recently to tell) is not listed again.
        """
        try:
            return await self._sync_pass(on_batch)
        except MailboxMissingError as exc:
            raise permanent(MAILBOX_MISSING, str(exc)) from None

    async def wait_for_change(self, timeout_s: float) -> None:
        """A Maildir has no push: just wait (the runtime polls it often and cheaply)."""
        await asyncio.sleep(timeout_s)

    async def list_server_items(self) -> ServerListing:
        """The unique names every configured folder holds now."""
        assert self.config.maildir is not None
        try:
            return ServerListing(
                {f: set(list_folder(self.root, f)) for f in self.config.maildir.folders}
            )
        except MailboxMissingError as exc:
            raise permanent(MAILBOX_MISSING, str(exc)) from None

    async def find_message(self, message_id: str) -> list[MailItemChanged]:
        """The created event of every item of the configured folders whose Message-ID is
        `message_id` (headers are read in a worker thread); a missing root is a
        permanent MailboxMissing."""
        assert self.config.maildir is not None
        found: list[MailItemChanged] = []
        for folder in self.config.maildir.folders:
            try:
                items = await asyncio.to_thread(
                    items_with_message_id, self.root, folder, message_id
                )
            except MailboxMissingError as exc:
                raise permanent(MAILBOX_MISSING, str(exc)) from None
            for item in items:
                event = await self._created(folder, item)
                if event is not None:
                    found.append(event)
        return found

    async def close(self) -> None:
        """Nothing to release."""

    async def _sync_pass(self, on_batch: BatchCallback | None) -> PassResult:
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
        self.counters = fold_counters(self.counters, result)
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
            events = [e for n in names if (e := await self._created(folder, items[n])) is not None]
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

    async def _created(self, folder: str, item: MaildirItem) -> MailItemChanged | None:
        """The created event of an item; None when the file vanished since listing.

        The message travels inline or by claim-check; one over `max_message_bytes`
        is not read (TooLarge), one that cannot be read is reported as Unreadable.
        A failure to store a claim-check blob is raised (the batch is retried).
        """
        now = utc_now()
        delivered = modified_at(item.path)
        if delivered is None:
            return None
        payload = MessagePayload()
        raw: bytes | None = None
        unreadable: tuple[str, str] | None = None
        try:
            size = _file_size(item.path)
            if size > self.max_message_bytes:
                unreadable = (
                    "TooLarge",
                    f"the message is {size} bytes, over the {self.max_message_bytes}-byte "
                    "ceiling for messages tidings reads; move the message or raise the ceiling",
                )
            elif self.claim_check.fits_inline(size):
                raw = _read_file(item.path)
            else:  # large: keep the event loop free while reading
                raw = await asyncio.to_thread(_read_file, item.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            size = 0
            unreadable = ("Unreadable", f"cannot read the file: {exc.strerror or exc}")
        if raw is not None:
            size = len(raw)
            payload = await self.claim_check.payload(raw, PROTOCOL)
        return item_event(
            self.config.mailbox_id,
            folder,
            item.unique_name,
            ChangeKind.CREATED,
            now,
            payload=payload,
            server_time=delivered,
            size=size,
            flags=sorted(item.flags),
            folder_role=self.config.folder_role(folder),
            unreadable=unreadable,
        )

    def _deleted(self, folder: str, name: str, now: datetime) -> MailItemChanged:
        return deleted_event(
            self.config.mailbox_id, folder, name, now, self.config.folder_role(folder)
        )


def _file_size(path: Path) -> int:
    """The size of a message file (one stat; cheap enough to run on the event loop)."""
    return path.stat().st_size


def _read_file(path: Path) -> bytes:
    """The bytes of a message file. Callers read small files inline (as before the
    claim-check) and large ones in a worker thread."""
    return path.read_bytes()
