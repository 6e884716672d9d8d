"""One IMAP mailbox, synchronized folder by folder: INBOX, Sent (found by
SPECIAL-USE, else by name) and any configured folder.

Per folder the cursor holds UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and the UIDs
already emitted. A pass asks STATUS first: when nothing moved, that one
command is the whole cost. Otherwise it EXAMINEs the folder (read-only, with
QRESYNC where offered) and emits, in this order, `deleted` events for UIDs that
vanished, `updated` events for flag changes (CONDSTORE), and `created` events
for new UIDs fetched in bounded ranges with BODY.PEEK (reading never sets
\\Seen). The cursor moves after Kafka acknowledged each batch.

A changed UIDVALIDITY means the server renumbered the folder: every old item
gets a `deleted` event, a notice says so on sync.errors, and the folder is
read again from scratch. Email activity ids come from Message-IDs, so the
re-read produces no duplicate activities.

Between passes the connection stays open when the server profile has slots to
spare; on INBOX the source then waits in IDLE for push, re-issued before
server timeouts, and falls back to polling when IDLE is missing or fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from connectors import errors
from connectors.claimcheck import MessagePayload, header_block
from connectors.errors import ConnectorError
from connectors.imap_protocol import (
    FetchedMessage,
    FolderState,
    ListedFolder,
    UidRanges,
    compress_uids,
    expand_uids,
    quote,
    search_date,
    uid_chunks,
)
from connectors.imap_session import ImapSession, SecretProvider
from connectors.source import (
    BatchCallback,
    PassResult,
    ServerListing,
    SourceWiring,
    deleted_event,
    fold_counters,
    item_event,
)
from connectors.tracking import header_message_id
from schemas import metrics
from schemas.base import utc_now
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.ids import error_id
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    FolderRole,
    ImapFolderPosition,
    ImapSettings,
    MailboxCounters,
    cursor_key,
)

log = logging.getLogger(__name__)
PROTOCOL = "imap"
SIZE_CHUNK = 1000
"""UIDs per FETCH of sizes (short answers, so a larger bound than bodies)."""
MEDIUM_MESSAGE_BYTES = 16 * 1024
"""Messages up to this size count as this much against a FETCH's byte budget."""
BIG_MESSAGE_BYTES = 128 * 1024
"""Messages larger than this are fetched one per command; those between the two
sizes count as this much against the budget."""
_CREATED_ITEMS = "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[])"
_HEADER_ITEMS = "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])"


def item_id(uidvalidity: int, uid: int) -> str:
    """An IMAP item's identity: UIDs are only unique within one UIDVALIDITY."""
    return f"{uidvalidity}:{uid}"


def visible_flags(flags: Sequence[str]) -> list[str]:
    """Flags worth recording (\\Recent is session state, not the message's)."""
    if not flags:
        return []
    return list(_visible(tuple(flags)))


@functools.lru_cache(maxsize=256)
def _visible(flags: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(f for f in flags if f.lower() != "\\recent"))


def pick_folders(
    listed: Sequence[ListedFolder], settings: ImapSettings
) -> list[tuple[str, FolderRole]]:
    """INBOX, then Sent (SPECIAL-USE \\Sent, else the first of `sent_names`), then the
    configured folders; raises a permanent MailboxMissing for a configured folder
    the server does not have."""
    names = {f.name for f in listed}
    chosen: list[tuple[str, FolderRole]] = [("INBOX", FolderRole.INBOX)]
    if settings.include_sent:
        sent = next((f.name for f in listed if "\\sent" in f.attributes), None)
        if sent is None:
            folded = {n.casefold(): n for n in names}
            sent = next(
                (folded[c.casefold()] for c in settings.sent_names if c.casefold() in folded), None
            )
        if sent is not None and sent.upper() != "INBOX":
            chosen.append((sent, FolderRole.SENT))
    for configured in settings.folders:
        folder = "INBOX" if configured.upper() == "INBOX" else configured
        if folder != "INBOX" and folder not in names:
            raise errors.permanent(
                errors.MAILBOX_MISSING,
                f"folder {folder!r} is configured but the server has no such folder",
                folder=folder,
            )
        if all(folder != name for name, _ in chosen):
            chosen.append((folder, FolderRole.OTHER))
    return chosen


def unchanged(position: ImapFolderPosition, status: dict[str, int]) -> bool:
    """True when STATUS shows nothing new, nothing expunged and no flag change."""
    return (
        status.get("UIDVALIDITY") == position.uidvalidity
        and status.get("UIDNEXT") == position.uidnext
        and status.get("MESSAGES") == position.exists
        and status.get("HIGHESTMODSEQ", 0) == position.highestmodseq
    )


def moved_since(position: ImapFolderPosition | None, state: FolderState) -> bool:
    """True when a folder's SELECT/EXAMINE answer shows changes a cursor does not
    cover: new UIDs, a different message count (expunges), newer flag changes
    (HIGHESTMODSEQ), or another UIDVALIDITY; always True without a cursor."""
    if position is None:
        return True
    return (
        state.uidvalidity != position.uidvalidity
        or state.uidnext != position.uidnext
        or state.exists != position.exists
        or (state.highestmodseq > position.highestmodseq > 0)
    )


class SizeBounds(NamedTuple):
    """What is known of new messages' sizes before their bodies are fetched: exact
    sizes of the big ones (over BIG_MESSAGE_BYTES), and which others are over
    MEDIUM_MESSAGE_BYTES (`medium`; None when that was not asked, so any of them
    may be)."""

    big: dict[int, int]
    medium: set[int] | None = None

    def upper_bound(self, uid: int) -> int:
        """At most how many bytes the message with this UID has (not big)."""
        if self.medium is None or uid in self.medium:
            return BIG_MESSAGE_BYTES
        return MEDIUM_MESSAGE_BYTES


def fetch_jobs(
    new: Sequence[int],
    sizes: SizeBounds,
    fetch_batch: int,
    fetch_bytes: int,
    max_message_bytes: int,
) -> list[tuple[list[int], bool]]:
    """FETCH ranges over `new` UIDs in ascending order: runs of ordinary messages of at
    most `fetch_batch` messages and at most `fetch_bytes` by their size bounds; each
    big message alone; `True` marks a message over `max_message_bytes`, of which
    only the headers are read."""
    jobs: list[tuple[list[int], bool]] = []
    run: list[int] = []
    run_bytes = 0
    for uid in sorted(new):
        size = sizes.big.get(uid)
        if size is not None:
            if run:
                jobs.append((run, False))
                run, run_bytes = [], 0
            jobs.append(([uid], size > max_message_bytes))
            continue
        bound = sizes.upper_bound(uid)
        if run and (len(run) >= fetch_batch or run_bytes + bound > fetch_bytes):
            jobs.append((run, False))
            run, run_bytes = [], 0
        run.append(uid)
        run_bytes += bound
    if run:
        jobs.append((run, False))
    return jobs


@dataclass
class _NewBatch:
    """New messages of one folder on their way to Kafka: the events not yet sent
    (with their UIDs), the UIDs emitted (`known`, also as `ranges` for the
    cursor) and those still to emit (`outstanding`, in UID order in `order`)."""

    folder: str
    state: FolderState
    known: set[int]
    ranges: UidRanges
    order: list[int]
    modseq: int
    outstanding: set[int] = field(init=False)
    events: list[MailItemChanged] = field(default_factory=list)
    uids: list[int] = field(default_factory=list)
    flushing: asyncio.Future[None] | None = None
    unanswered: dict[int, bool] = field(default_factory=dict)  # UID → fetched headers only
    _lowest: int = 0

    def __post_init__(self) -> None:
        self.outstanding = set(self.order)

    def take(self) -> tuple[list[MailItemChanged], list[int]]:
        """The events collected so far and their UIDs; collecting starts over."""
        taken = self.events, self.uids
        self.events, self.uids = [], []
        return taken

    def emitted(self, uids: list[int]) -> int:
        """Record `uids` as acknowledged; the UIDNEXT the cursor may now hold (the
        lowest UID still outstanding, or past the highest emitted)."""
        self.known.update(uids)
        self.ranges.add(uids)
        self.outstanding.difference_update(uids)
        order = self.order
        while self._lowest < len(order) and order[self._lowest] not in self.outstanding:
            self._lowest += 1
        return order[self._lowest] if self._lowest < len(order) else max(uids) + 1

    async def settle(self) -> None:
        """Wait for the batch being flushed (its acknowledgement and cursor), if any.

        Only one batch is ever unacknowledged: the next is sent after this returns.
        """
        flushing, self.flushing = self.flushing, None
        if flushing is not None:
            await flushing


class ImapMailbox:
    """Synchronizes one IMAP mailbox into mail.changes."""

    protocol = PROTOCOL

    def __init__(self, wiring: SourceWiring, *, secret: SecretProvider) -> None:
        config = wiring.config
        if config.credentials is None:
            raise errors.permanent(
                errors.CONFIGURATION, f"mailbox {config.mailbox_id} has no credentials"
            )
        self.config = config
        self.settings = config.imap or ImapSettings()
        self.profile, self.gate = wiring.server()
        self.username = config.credentials.username
        self.partition = wiring.partition
        self.emitter = wiring.emitter
        self.store = wiring.store
        self.claim_check = wiring.claim_check
        self.secret = secret
        self.max_batch_items = wiring.max_batch_items
        self.positions: dict[str, ImapFolderPosition] = {}
        prefix = cursor_key(config.mailbox_id, "")
        for key, cursor in wiring.cursors.items():
            if key.startswith(prefix) and isinstance(cursor.position, ImapFolderPosition):
                self.positions[cursor.folder] = cursor.position
        self.session: ImapSession | None = None
        self.folders: list[tuple[str, FolderRole]] | None = None
        self.counters = MailboxCounters()
        self.idle_failed = False
        self.idle_seen: tuple[int, int, int, int] | None = None
        """INBOX as the last wait that found it moved saw it (uidvalidity, uidnext,
        exists, highestmodseq)."""

    # -- connection ------------------------------------------------------------

    async def _connect(self) -> ImapSession:
        if self.session is not None and not self.session.broken:
            return self.session
        await self._disconnect()
        await self.gate.acquire()
        try:
            self.session = await ImapSession.open(self.profile, self.username, self.secret)
        except BaseException:
            self.gate.release()
            raise
        self.folders = None
        self.idle_failed = False
        return self.session

    async def _disconnect(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            try:
                await session.close()
            finally:
                self.gate.release()

    async def close(self) -> None:
        """Log out and give the connection slot back."""
        await self._disconnect()

    async def _folders(self, session: ImapSession) -> list[tuple[str, FolderRole]]:
        if self.folders is None:
            self.folders = pick_folders(await session.list_folders(), self.settings)
        return self.folders

    # -- a pass ----------------------------------------------------------------

    async def sync_pass(self, on_batch: BatchCallback | None = None) -> PassResult:
        """Sync every folder once; the connection stays open unless others wait for it."""
        result = PassResult()
        try:
            session = await self._connect()
            for folder, role in await self._folders(session):
                await self._sync_folder(session, folder, role, result, on_batch)
        except ConnectorError:
            await self._disconnect()
            raise
        except asyncio.CancelledError:
            await self._disconnect()
            raise
        if self.gate.contended.is_set():
            await self._disconnect()
        self.counters = fold_counters(self.counters, result)
        result.counters = self.counters
        return result

    async def _sync_folder(
        self,
        session: ImapSession,
        folder: str,
        role: FolderRole,
        result: PassResult,
        on_batch: BatchCallback | None,
    ) -> None:
        position = self.positions.get(folder)
        status = await session.status(folder)
        result.listed += status.get("MESSAGES", 0)
        if position is not None and unchanged(position, status):
            return
        if position is not None and status.get("UIDVALIDITY") != position.uidvalidity:
            await self._renumbered(folder, position, status.get("UIDVALIDITY", 0), result)
            position = None
        known_arg = (
            (position.uidvalidity, position.highestmodseq, position.uids) if position else None
        )
        state = await session.examine(folder, known_arg)
        known = expand_uids(position.uids) if position else set()
        if position is not None:
            gone = await self._vanished(session, state, position, known)
            if gone:
                await self._emit_deleted(folder, state.uidvalidity, sorted(gone), result)
                known -= gone
                await self._save(
                    folder,
                    state,
                    UidRanges(known),
                    len(known),
                    position.uidnext,
                    position.highestmodseq,
                )
            changed = await self._flag_changes(session, state, position, known)
            if changed:
                await self._emit_updated(folder, role, state.uidvalidity, changed, result)
        new = await self._new_uids(session, position, known)
        result.pending += len(new)
        ranges = await self._emit_new(
            session, folder, role, state, new, known, position, result, on_batch
        )
        await self._save(folder, state, ranges, len(known), state.uidnext, state.highestmodseq)

    async def _vanished(
        self,
        session: ImapSession,
        state: FolderState,
        position: ImapFolderPosition,
        known: set[int],
    ) -> set[int]:
        """UIDs of the cursor the server no longer has: QRESYNC says so in EXAMINE's
        answer; without it one UID SEARCH ALL is compared with the cursor."""
        if not known:
            return set()
        if session.qresync and position.highestmodseq > 0:
            return state.vanished & known
        present = set(await session.uid_search("ALL"))
        return known - present

    async def _flag_changes(
        self,
        session: ImapSession,
        state: FolderState,
        position: ImapFolderPosition,
        known: set[int],
    ) -> list[FetchedMessage]:
        if not (session.condstore and position.highestmodseq and known):
            return []
        if state.highestmodseq <= position.highestmodseq:
            return []
        if session.qresync:
            changed = state.changed
        else:
            changed = await session.uid_fetch(
                f"1:{position.uidnext - 1}",
                f"(UID FLAGS) (CHANGEDSINCE {position.highestmodseq})",
            )
        return [m for m in changed if m.uid in known and m.modseq > position.highestmodseq]

    async def _new_uids(
        self, session: ImapSession, position: ImapFolderPosition | None, known: set[int]
    ) -> list[int]:
        if position is None:
            since = self.config.process_email_from
            criteria = ("SINCE", search_date(since)) if since else ("ALL",)
            found = await session.uid_search(*criteria)
        else:
            found = [
                u
                for u in await session.uid_search("UID", f"{position.uidnext}:*")
                if u >= position.uidnext
            ]
        return sorted(set(found) - known)

    # -- created ---------------------------------------------------------------

    async def _emit_new(
        self,
        session: ImapSession,
        folder: str,
        role: FolderRole,
        state: FolderState,
        new: list[int],
        known: set[int],
        position: ImapFolderPosition | None,
        result: PassResult,
        on_batch: BatchCallback | None,
    ) -> UidRanges:
        """Fetch new messages in bounded ranges, in UID order, and emit them in batches;
        returns the UIDs emitted so far (`known`, which it updates) as ranges.

        The next batch is fetched while the previous one waits for Kafka's
        acknowledgement and its cursor, and is sent only after that, so a crash
        still re-emits at most one batch. The cursor's UIDNEXT never passes a UID
        that is not emitted yet. A UID the FETCH answers did not include stays
        outstanding until `_answer_missing` settles it.
        """
        modseq = position.highestmodseq if position else 0
        batch = _NewBatch(folder, state, known, UidRanges(known), new, modseq)
        try:
            if new:
                profile = self.profile
                jobs = fetch_jobs(
                    new,
                    await self._size_bounds(session, new),
                    profile.fetch_batch,
                    profile.fetch_bytes,
                    profile.max_message_bytes,
                )
                await self._fetch_and_emit(session, role, jobs, batch, result, on_batch)
                if batch.unanswered:
                    await self._answer_missing(session, role, batch, result)
            await batch.settle()
            await self._flush_new(batch, *batch.take(), result, on_batch)
        finally:
            if batch.flushing is not None:
                batch.flushing.cancel()
                await asyncio.gather(batch.flushing, return_exceptions=True)
        return batch.ranges

    async def _fetch_and_emit(
        self,
        session: ImapSession,
        role: FolderRole,
        jobs: list[tuple[list[int], bool]],
        batch: _NewBatch,
        result: PassResult,
        on_batch: BatchCallback | None,
    ) -> None:
        prefetch: asyncio.Future[list[FetchedMessage]] | None = None
        try:
            for index, (uids, large) in enumerate(jobs):
                fetching = prefetch or asyncio.ensure_future(self._fetch(session, uids, large))
                prefetch = None
                if index + 1 < len(jobs):
                    # Queued now, the next FETCH goes out the moment this one ends, so
                    # the server streams it while this batch becomes events.
                    prefetch = asyncio.ensure_future(self._fetch(session, *jobs[index + 1]))
                fetched = await fetching
                missing = set(uids).difference(m.uid for m in fetched)
                batch.unanswered.update(dict.fromkeys(missing, large))
                await self._add_events(batch, role, fetched, large)
                if len(batch.events) >= self.max_batch_items:
                    await batch.settle()
                    batch.flushing = asyncio.ensure_future(
                        self._flush_new(batch, *batch.take(), result, on_batch)
                    )
        finally:
            if prefetch is not None and not prefetch.done():
                prefetch.cancel()
                session.broken = True

    async def _answer_missing(
        self, session: ImapSession, role: FolderRole, batch: _NewBatch, result: PassResult
    ) -> None:
        """Settle the new UIDs the FETCH answers left out. Those the server no longer
        lists were expunged between SEARCH and FETCH: nothing to emit. Those it still
        lists are fetched once more; any it still does not return become unreadable
        items (NotReturned), so the folder's every message is accounted for and none
        is skipped silently (the cursor passes them once this batch is sent)."""
        missing = sorted(batch.unanswered)
        listed = set(await session.uid_search("UID", compress_uids(missing)))
        expunged = set(missing) - listed
        batch.outstanding -= expunged
        result.pending -= len(expunged)
        for large in (False, True):
            uids = [u for u in missing if u in listed and batch.unanswered[u] is large]
            if not uids:
                continue
            fetched = await self._fetch(session, uids, large)
            await self._add_events(batch, role, fetched, large)
            returned = {m.uid for m in fetched}
            lost = [u for u in uids if u not in returned]
            if lost:
                log.warning(
                    "%s %s: the server lists UIDs %s but returned nothing for them twice; "
                    "they are recorded as unreadable",
                    self.config.mailbox_id,
                    batch.folder,
                    compress_uids(lost),
                )
                batch.events.extend(self._not_returned(batch, role, uid) for uid in lost)
                batch.uids.extend(lost)
        batch.unanswered.clear()

    def _not_returned(self, batch: _NewBatch, role: FolderRole, uid: int) -> MailItemChanged:
        reason = (
            f"the server lists UID {uid} in {batch.folder} but returned nothing for it "
            "when it was fetched, twice"
        )
        message = FetchedMessage(uid)
        return self._event(
            batch.folder,
            role,
            batch.state.uidvalidity,
            message,
            ChangeKind.CREATED,
            "",
            utc_now(),
            unreadable=("NotReturned", reason),
        )

    async def _size_bounds(self, session: ImapSession, new: list[int]) -> SizeBounds:
        """Size classes of the new messages: one SEARCH finds the big ones (usually
        none), one short FETCH per thousand sizes them; when the others are too
        many to assume all medium within one FETCH's budget, one more SEARCH
        tells the medium ones from the small."""
        wanted = set(new)
        span = f"{min(new)}:{max(new)}"
        found = await session.uid_search("UID", span, "LARGER", str(BIG_MESSAGE_BYTES))
        big = sorted(wanted.intersection(found))
        sizes: dict[int, int] = {}
        for chunk in uid_chunks(big, SIZE_CHUNK):
            fetched = await session.uid_fetch(compress_uids(chunk), "(UID RFC822.SIZE)")
            sizes.update((m.uid, m.size) for m in fetched)
        if (len(new) - len(big)) * BIG_MESSAGE_BYTES <= self.profile.fetch_bytes:
            return SizeBounds(sizes)
        found = await session.uid_search("UID", span, "LARGER", str(MEDIUM_MESSAGE_BYTES))
        return SizeBounds(sizes, wanted.intersection(found).difference(sizes))

    async def _fetch(
        self, session: ImapSession, uids: list[int], large: bool
    ) -> list[FetchedMessage]:
        items = _HEADER_ITEMS if large else _CREATED_ITEMS
        return await session.uid_fetch(compress_uids(uids), items)

    async def _add_events(
        self, batch: _NewBatch, role: FolderRole, fetched: list[FetchedMessage], large: bool
    ) -> None:
        """The `created` events of fetched messages, added to the batch."""
        batch.events.extend(
            await self._created_events(batch.folder, role, batch.state.uidvalidity, fetched, large)
        )
        batch.uids.extend(message.uid for message in fetched)

    async def _created_events(
        self,
        folder: str,
        role: FolderRole,
        uidvalidity: int,
        fetched: list[FetchedMessage],
        large: bool,
    ) -> list[MailItemChanged]:
        """The `created` events of fetched messages; those that do not fit in an event go
        to the claim-check store, `large` ones (headers only) say TooLarge."""
        observed = utc_now()
        events = []
        for message in fetched:
            if large:
                event = self._too_large(folder, role, uidvalidity, message, observed)
            else:
                raw = message.body if message.body is not None else b""
                payload = self.claim_check.inline(raw) or await self.claim_check.payload(
                    raw, PROTOCOL
                )
                event = self._event(
                    folder, role, uidvalidity, message, ChangeKind.CREATED, "", observed, payload
                )
            events.append(event)
        return events

    async def _flush_new(
        self,
        batch: _NewBatch,
        events: list[MailItemChanged],
        uids: list[int],
        result: PassResult,
        on_batch: BatchCallback | None,
    ) -> None:
        """Emit `events`, wait for Kafka, then store the cursor past them."""
        if not events:
            return
        await self.emitter.emit_changes(events, PROTOCOL)
        uidnext = batch.emitted(uids)
        await self._save(
            batch.folder, batch.state, batch.ranges, len(batch.known), uidnext, batch.modseq
        )
        result.created += len(events)
        result.unreadable += sum(1 for event in events if event.unreadable_code)
        result.pending -= len(events)
        if on_batch is not None:
            await on_batch(result)

    def _too_large(
        self,
        folder: str,
        role: FolderRole,
        uidvalidity: int,
        message: FetchedMessage,
        observed: datetime,
    ) -> MailItemChanged:
        headers = header_block(message.body or b"")[: self.claim_check.header_limit]
        reason = (
            f"the message is {message.size} bytes, over the profile's max_message_bytes "
            f"({self.profile.max_message_bytes}); only its headers were read"
        )
        return self._event(
            folder,
            role,
            uidvalidity,
            message,
            ChangeKind.CREATED,
            "",
            observed,
            MessagePayload(headers=headers),
            unreadable=("TooLarge", reason),
        )

    def _event(
        self,
        folder: str,
        role: FolderRole,
        uidvalidity: int,
        message: FetchedMessage,
        change: ChangeKind,
        version: str,
        observed: datetime,
        payload: MessagePayload | None = None,
        unreadable: tuple[str, str] | None = None,
    ) -> MailItemChanged:
        return item_event(
            self.config.mailbox_id,
            folder,
            item_id(uidvalidity, message.uid),
            change,
            observed,
            version=version,
            payload=payload,
            server_time=message.internal_date,
            size=message.size,
            flags=visible_flags(message.flags),
            folder_role=role,
            unreadable=unreadable,
        )

    # -- updated and deleted ---------------------------------------------------

    async def _emit_updated(
        self,
        folder: str,
        role: FolderRole,
        uidvalidity: int,
        changed: list[FetchedMessage],
        result: PassResult,
    ) -> None:
        observed = utc_now()
        for start in range(0, len(changed), self.max_batch_items):
            batch = changed[start : start + self.max_batch_items]
            events = [
                self._event(
                    folder, role, uidvalidity, m, ChangeKind.UPDATED, str(m.modseq), observed
                )
                for m in batch
            ]
            await self.emitter.emit_changes(events, PROTOCOL)
            result.updated += len(events)

    async def _emit_deleted(
        self, folder: str, uidvalidity: int, uids: list[int], result: PassResult
    ) -> None:
        now = utc_now()
        for start in range(0, len(uids), self.max_batch_items):
            events = [
                deleted_event(self.config.mailbox_id, folder, item_id(uidvalidity, uid), now)
                for uid in uids[start : start + self.max_batch_items]
            ]
            await self.emitter.emit_changes(events, PROTOCOL)
            result.deleted += len(events)

    async def _renumbered(
        self, folder: str, position: ImapFolderPosition, uidvalidity: int, result: PassResult
    ) -> None:
        """The folder's UIDVALIDITY changed: retire every old item and say so."""
        old = sorted(expand_uids(position.uids))
        now = utc_now()
        message = (
            f"{folder}: UIDVALIDITY changed from {position.uidvalidity} to {uidvalidity}; "
            f"the folder is read again ({len(old)} earlier items retired; activities are "
            "matched by Message-ID, so none is duplicated)"
        )
        log.warning("mailbox %s: %s", self.config.mailbox_id, message)
        notice = SyncError(
            error_id=error_id(
                f"{self.config.mailbox_id}|{folder}|{position.uidvalidity}>{uidvalidity}",
                "UidValidityChanged",
            ),
            mailbox_id=self.config.mailbox_id,
            scope=ErrorScope.MAILBOX,
            severity=Severity.NOTICE,
            code="UidValidityChanged",
            message=message,
            component="connectors",
            folder=folder,
            occurred_at=now,
        )
        await self.emitter.emit_error(notice, PROTOCOL)
        await self._emit_deleted(folder, position.uidvalidity, old, result)
        self.positions.pop(folder, None)

    async def _save(
        self,
        folder: str,
        state: FolderState,
        uids: UidRanges,
        count: int,
        uidnext: int,
        modseq: int,
    ) -> None:
        position = ImapFolderPosition(
            uidvalidity=state.uidvalidity,
            uidnext=uidnext,
            highestmodseq=modseq,
            uids=uids.sequence_set(),
            count=count,
            exists=state.exists if uidnext == state.uidnext else -1,
        )
        await self.store.save(self.config.mailbox_id, folder, position, self.partition, utc_now())
        self.positions[folder] = position

    # -- waiting and listing ---------------------------------------------------

    async def wait_for_change(self, timeout_s: float) -> bool:
        """IDLE on INBOX when possible (push: True); otherwise sleep until the next poll.

        Mail that arrived after the last pass looked at INBOX but before IDLE
        began is not pushed by the server (IDLE reports only what happens while
        it runs), so INBOX is EXAMINEd first and a UIDNEXT, EXISTS or
        HIGHESTMODSEQ other than the last pass saw returns True at once."""
        session = self.session
        usable = (
            session is not None
            and not session.broken
            and self.profile.use_idle
            and not self.idle_failed
            and "IDLE" in session.capabilities
            and not self.gate.contended.is_set()
        )
        if not usable or session is None:
            if self.gate.contended.is_set():
                await self._disconnect()
            await asyncio.sleep(timeout_s)
            return False
        pushed = False
        try:
            state = await session.examine("INBOX")
            seen = (state.uidvalidity, state.uidnext, state.exists, state.highestmodseq)
            if moved_since(self.positions.get("INBOX"), state) and seen != self.idle_seen:
                self.idle_seen = seen  # once per state: a pass that cannot catch up is no loop
                pushed = True
            elif await session.idle(
                min(timeout_s, self.profile.idle_reissue_s), self.gate.contended
            ):
                pushed = True
            if pushed:
                metrics.CONNECTOR_PUSH_WAKEUPS.labels(PROTOCOL).inc()
        except ConnectorError as exc:
            log.info("mailbox %s: IDLE unusable, polling instead: %s", self.config.mailbox_id, exc)
            self.idle_failed = True
            await self._disconnect()
        if self.gate.contended.is_set():
            await self._disconnect()
        return pushed

    async def find_message(self, message_id: str) -> list[MailItemChanged]:
        """Every message of the synced folders whose Message-ID is `message_id`, as the
        created event a sync emits: `UID SEARCH HEADER Message-ID` per folder (a
        substring match, so each hit's header is checked), then FETCH as a sync
        does (headers only for a message over the profile's max_message_bytes)."""
        found: list[MailItemChanged] = []
        try:
            session = await self._connect()
            for folder, role in await self._folders(session):
                state = await session.examine(folder)
                uids = await session.uid_search("HEADER", "Message-ID", quote(message_id))
                for uid in sorted(uids):
                    found.extend(
                        await self._fetch_matching(session, folder, role, state, uid, message_id)
                    )
        except (ConnectorError, asyncio.CancelledError):
            await self._disconnect()
            raise
        return found

    async def _fetch_matching(
        self,
        session: ImapSession,
        folder: str,
        role: FolderRole,
        state: FolderState,
        uid: int,
        message_id: str,
    ) -> list[MailItemChanged]:
        """The created event of one message SEARCH found, when its Message-ID is exactly
        `message_id`; none when it is not (or it was expunged meanwhile)."""
        sized = await session.uid_fetch(str(uid), "(UID RFC822.SIZE)")
        if not sized:
            return []
        large = sized[0].size > self.profile.max_message_bytes
        fetched = [
            m
            for m in await self._fetch(session, [uid], large)
            if header_message_id(m.body or b"") == message_id
        ]
        return await self._created_events(folder, role, state.uidvalidity, fetched, large)

    async def list_server_items(self) -> ServerListing:
        """Item ids per folder (within "process email from"), for reconciliation."""
        items: dict[str, set[str]] = {}
        try:
            session = await self._connect()
            since = self.config.process_email_from
            criteria = ("SINCE", search_date(since)) if since else ("ALL",)
            for folder, _ in await self._folders(session):
                state = await session.examine(folder)
                uids = await session.uid_search(*criteria)
                items[folder] = {item_id(state.uidvalidity, uid) for uid in uids}
        finally:
            with contextlib.suppress(ConnectorError):
                await self._disconnect()
        return ServerListing(items)
