"""One Exchange mailbox over Exchange Web Services (EWS), synchronized folder by
folder: Inbox, Sent Items and any configured folder.

Per folder the cursor holds the SyncFolderItems sync state and the items emitted so
far (each with a hash of its ChangeKey). A pass pages SyncFolderItems from the
sync state (ids and sizes only), reads new items with GetItem in batches (MIME and
the properties correlation needs: Message-ID, In-Reply-To, References,
ConversationIndex, categories), changed ones as properties, and emits `created`,
`updated` and `deleted` events; the cursor moves after Kafka acknowledged the
page's events. Reading never changes the mailbox.

An expired sync state (ErrorInvalidSyncStateData) is followed by a full resync
compared against the items the cursor knows (connectors/ews_items.py), so nothing
is emitted twice; a notice on sync.errors says so. While a resync (or the first
sync) runs, the cursor keeps no sync state, so a crash restarts it, still without
duplicates.

exchangelib is blocking: its calls run in a thread pool of the mailbox's EWS
concurrency (never above EWSMaxConcurrency: 27 on Exchange 2013+ and Online, 10 on
2010, nor the profile's max_connections), and each request in flight holds a slot
of the profile's gate. ErrorServerBusy is waited out for its BackOffMilliseconds
hint (counted in tidings_connector_throttled_total) and retried; a hint too long
to wait in a pass becomes a transient ServerBusy for the runtime's retry clock.
HTTP 401 is a permanent AuthenticationFailed; network failures are transient.

Push: between passes `wait_for_change` listens to EWS streaming notifications on
the synced folders, and the Calendar / Contacts / Tasks folders when the mailbox
syncs appointments, contacts and tasks (connectors/ews_push.py; an event on any
wakes the whole pass, ACT folders included) unless the settings turn `streaming`
off; while streaming fails the mailbox polls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from connectors import errors
from connectors.claimcheck import MessagePayload, header_block
from connectors.errors import ConnectorError
from connectors.ews_act import act_event
from connectors.ews_client import (
    EwsClient,
    EwsFolder,
    SyncPage,
    SyncStateExpired,
    classify,
    make_account,
)
from connectors.ews_items import (
    EwsMessage,
    PagePlan,
    SyncChange,
    change_key_hash,
    complete_mime,
    event_flags,
    pack_known,
    plan_page,
    unpack_known,
    vanished,
)
from connectors.ews_push import EwsPush
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
from schemas.act import ActType, Appointment
from schemas.base import utc_now
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.ids import error_id, normalize_message_id
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    AuthMethod,
    EwsFolderPosition,
    EwsSettings,
    MailboxConfig,
    MailboxCounters,
    ServerProfile,
    cursor_key,
)

log = logging.getLogger(__name__)
PROTOCOL = "ews"
MAX_BUSY_RETRIES = 5
"""ErrorServerBusy answers in a row one request waits out before the pass gives up."""
MAX_BACKOFF_S = 60.0
"""A back-off hint longer than this is left to the runtime's retry clock."""
DEFAULT_BACKOFF_S = 2.0
"""The wait when the server is busy but gives no hint (doubled per answer in a row)."""
T = TypeVar("T")
SecretSource = Callable[[], Awaitable[str]]
"""Returns the password, or the bearer token for OAuth profiles, at connect time."""


class EwsMailbox:
    """Synchronizes one Exchange mailbox (EWS) into mail.changes."""

    protocol = PROTOCOL

    def __init__(self, wiring: SourceWiring, *, secret: SecretSource) -> None:
        config = wiring.config
        profile, self.gate = wiring.server()
        if config.credentials is None and profile.auth != AuthMethod.XOAUTH2:
            raise errors.permanent(
                errors.CONFIGURATION, f"mailbox {config.mailbox_id} has no credentials"
            )
        self.config = config
        self.settings = config.ews or EwsSettings()
        self.profile = profile
        self.partition = wiring.partition
        self.emitter = wiring.emitter
        self.store = wiring.store
        self.claim_check = wiring.claim_check
        self.secret = secret
        self.max_batch_items = wiring.max_batch_items
        self.concurrency = self.settings.concurrency(profile.max_connections)
        self.user = config.credentials.username if config.credentials else config.email_address
        self.where = f"EWS {self.settings.server_url or profile.host}"
        self.positions: dict[str, EwsFolderPosition] = {}
        prefix = cursor_key(config.mailbox_id, "")
        for key, cursor in wiring.cursors.items():
            if key.startswith(prefix) and isinstance(cursor.position, EwsFolderPosition):
                self.positions[cursor.folder] = cursor.position
        self.client: EwsClient | None = None
        self.folders: list[EwsFolder] | None = None
        self.act_folders: list[EwsFolder] | None = None  # appointments, contacts, tasks
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.counters = MailboxCounters()
        self.push = EwsPush(config.mailbox_id, self.where, retry_s=self.settings.streaming_retry_s)

    # -- calls -----------------------------------------------------------------

    async def _connect(self) -> EwsClient:
        if self.client is not None:
            return self.client
        try:
            secret = await self.secret()
        except LookupError as exc:
            raise errors.permanent(
                errors.CONFIGURATION, f"mailbox {self.config.mailbox_id}: {exc}"
            ) from None
        oauth = self.profile.auth == AuthMethod.XOAUTH2
        account = await self._run(
            make_account,
            self.config,
            self.profile,
            self.settings,
            secret,
            self.concurrency,
            oauth,
        )
        self.client = EwsClient(account, self.settings, self.where)
        return self.client

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the mailbox's thread pool, holding a slot of the profile's
        gate; ErrorServerBusy waited out (at most MAX_BUSY_RETRIES times in a row) and
        reported to the gate, which lowers the profile's concurrency."""
        if self.executor is None:
            self.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=f"ews-{self.config.mailbox_id}"
            )
        loop = asyncio.get_running_loop()
        busy = 0
        while True:
            async with self.gate.slot():
                try:
                    return await loop.run_in_executor(self.executor, lambda: fn(*args))
                except ConnectorError:
                    raise
                except Exception as exc:
                    failure = classify(exc, self.where, self.user)
            if isinstance(failure, SyncStateExpired):
                raise failure
            if isinstance(failure, ConnectorError):
                raise failure from None
            busy += 1
            wait = failure.back_off_s or DEFAULT_BACKOFF_S * 2 ** (busy - 1)
            metrics.CONNECTOR_THROTTLED.labels(PROTOCOL).inc()
            self.gate.throttled()  # the profile's concurrency shrinks (AIMD)
            if busy > MAX_BUSY_RETRIES or wait > MAX_BACKOFF_S:
                raise errors.transient(
                    errors.SERVER_BUSY,
                    f"{self.where} is busy (ErrorServerBusy, back off {wait:.0f}s); retrying later",
                )
            log.info("mailbox %s: %s busy, waiting %.1fs", self.config.mailbox_id, self.where, wait)
            metrics.CONNECTOR_THROTTLE_WAIT_SECONDS.labels(PROTOCOL).inc(wait)
            await asyncio.sleep(wait)

    async def _folders(self, client: EwsClient) -> list[EwsFolder]:
        if self.folders is None:
            self.folders = await self._run(client.folders)
        return self.folders

    def _reset(self) -> None:
        self.client = None
        self.folders = None
        self.act_folders = None

    async def close(self) -> None:
        """Drop the account and stop the worker threads (they finish their request)."""
        self._reset()
        await self.push.close()
        executor, self.executor = self.executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    # -- a pass ----------------------------------------------------------------

    async def sync_pass(self, on_batch: BatchCallback | None = None) -> PassResult:
        """Sync every folder once."""
        result = PassResult()
        try:
            client = await self._connect()
            for folder in [*await self._folders(client), *await self._act(client)]:
                await self._sync_folder(client, folder, result, on_batch)
        except (ConnectorError, asyncio.CancelledError):
            self._reset()
            raise
        self.counters = fold_counters(self.counters, result)
        result.counters = self.counters
        return result

    async def _sync_folder(
        self,
        client: EwsClient,
        folder: EwsFolder,
        result: PassResult,
        on_batch: BatchCallback | None,
    ) -> None:
        position = self.positions.get(folder.name)
        known = unpack_known(position.known_z, position.count) if position else {}
        same_folder = position is not None and position.folder_id == folder.folder.id
        state = position.sync_state if position is not None and same_folder else None
        reported: set[str] | None = set() if state is None else None
        page_task = asyncio.ensure_future(self._run(client.sync_page, folder.folder, state))
        try:
            while True:
                try:
                    page = await page_task
                except SyncStateExpired:
                    if state is None:
                        raise errors.transient(
                            errors.PROTOCOL_ERROR,
                            f"{self.where} refused a sync from scratch of {folder.name}",
                            folder=folder.name,
                        ) from None
                    await self._expired(folder, len(known))
                    state, reported = None, set()
                    page_task = asyncio.ensure_future(
                        self._run(client.sync_page, folder.folder, None)
                    )
                    continue
                if not page.last:
                    # Asked now, the next page arrives while this one is read and emitted.
                    page_task = asyncio.ensure_future(
                        self._run(client.sync_page, folder.folder, page.sync_state)
                    )
                if reported is not None:
                    reported.update(c.item_id for c in page.changes if c.kind != "delete")
                plan = plan_page(page.changes, known)
                result.pending += len(plan.fetch_new)
                events = await self._page_events(client, folder, page, plan, known, result)
                if page.last and reported is not None:
                    gone = vanished(known, reported)
                    events.extend(self._deleted(folder, gone))
                    for item in gone:
                        known.pop(item, None)
                # While a resync runs, the cursor keeps no sync state (see module doc).
                keep = page.sync_state if reported is None or page.last else None
                await self._emit(folder, events, known, keep, result, on_batch)
                state = page.sync_state
                if page.last:
                    break
        finally:
            if not page_task.done():
                page_task.cancel()
                await asyncio.gather(page_task, return_exceptions=True)
        result.listed += len(known)

    async def _expired(self, folder: EwsFolder, known: int) -> None:
        now = utc_now()
        message = (
            f"{folder.name}: the EWS sync state expired (ErrorInvalidSyncStateData); the "
            f"folder is read again and compared with the {known} items already emitted"
        )
        log.warning("mailbox %s: %s", self.config.mailbox_id, message)
        notice = SyncError(
            error_id=error_id(
                f"{self.config.mailbox_id}|{folder.name}|{now.isoformat()}", "SyncStateExpired"
            ),
            mailbox_id=self.config.mailbox_id,
            scope=ErrorScope.MAILBOX,
            severity=Severity.NOTICE,
            code="SyncStateExpired",
            message=message,
            component="connectors",
            folder=folder.name,
            occurred_at=now,
        )
        await self.emitter.emit_error(notice, PROTOCOL)

    async def _page_events(
        self,
        client: EwsClient,
        folder: EwsFolder,
        page: SyncPage,
        plan: PagePlan,
        known: dict[str, str],
        result: PassResult,
    ) -> list[MailItemChanged]:
        """The events of one page, `known` updated to match; GetItem batches run at once."""
        if folder.act is not None:
            return await self._act_page_events(client, folder, plan, known, result)
        limit = self.profile.max_message_bytes
        small = [c for c in plan.fetch_new if page.sizes.get(c.item_id, 0) <= limit]
        large = [c for c in plan.fetch_new if page.sizes.get(c.item_id, 0) > limit]
        batch = self.settings.get_item_batch
        jobs: list[tuple[list[SyncChange], bool]] = [
            (small[i : i + batch], True) for i in range(0, len(small), batch)
        ]
        jobs += [(large[i : i + batch], False) for i in range(0, len(large), batch)]
        jobs += [
            (plan.fetch_changed[i : i + batch], False)
            for i in range(0, len(plan.fetch_changed), batch)
        ]
        answers = await asyncio.gather(
            *(
                self._run(client.get_messages, [(c.item_id, c.change_key) for c in changes], full)
                for changes, full in jobs
            )
        )
        observed = utc_now()
        changed = {c.item_id for c in plan.fetch_changed}
        events: list[MailItemChanged] = []
        for (changes, full), answer in zip(jobs, answers, strict=True):
            for change, got in zip(changes, answer, strict=True):
                if isinstance(got, tuple):
                    event = self._unreadable(folder, change, got[1], observed)
                    if event is not None:
                        events.append(event)
                        known[change.item_id] = change_key_hash(change.change_key)
                    else:
                        result.pending -= int(change.item_id not in changed)
                    continue
                if change.item_id in changed:
                    events.append(self._updated(folder, got, observed))
                elif self._before_window(got):
                    result.pending -= 1
                    continue
                else:
                    events.append(await self._created(folder, got, full, observed))
                known[got.item_id] = change_key_hash(got.change_key)
        events.extend(self._deleted(folder, plan.deleted))
        for item in plan.deleted:
            known.pop(item, None)
        return events

    def _before_window(self, message: EwsMessage) -> bool:
        since = self.config.process_email_from
        return since is not None and message.received is not None and message.received < since

    # -- appointments, contacts, tasks (docs/act.md) -----------------------------

    async def _act(self, client: EwsClient) -> list[EwsFolder]:
        """The Calendar / Contacts / Tasks folders, when the mailbox syncs them."""
        act = self.config.act
        if act is None or not act.enabled:
            return []
        if self.act_folders is None:
            self.act_folders = await self._run(client.act_folders, act)
        return self.act_folders

    async def _act_page_events(
        self,
        client: EwsClient,
        folder: EwsFolder,
        plan: PagePlan,
        known: dict[str, str],
        result: PassResult,
    ) -> list[MailItemChanged]:
        """A page of an ACT folder: new and changed items read whole (GetItem batches,
        at once) and mapped to payloads (connectors/ews_act.py); `known` updated."""
        assert folder.act is not None
        mailbox_id, kind = self.config.mailbox_id, folder.act
        todo = [*plan.fetch_new, *plan.fetch_changed]
        step = self.settings.get_item_batch
        chunks = [todo[i : i + step] for i in range(0, len(todo), step)]
        answers = await asyncio.gather(
            *(
                self._run(client.get_act_items, [(c.item_id, c.change_key) for c in chunk])
                for chunk in chunks
            )
        )
        observed = utc_now()
        changed = {c.item_id for c in plan.fetch_changed}
        events: list[MailItemChanged] = []
        for chunk, answer in zip(chunks, answers, strict=True):
            for change, got in zip(chunk, answer, strict=True):
                how = ChangeKind.UPDATED if change.item_id in changed else ChangeKind.CREATED
                if isinstance(got, tuple) and got[1] == "ErrorItemNotFound":
                    result.pending -= int(how == ChangeKind.CREATED)  # gone meanwhile
                    continue
                if isinstance(got, tuple):
                    code, _, detail = got[1].partition(": ")
                    why = (code, detail or f"GetItem answered {code} for this item")
                    event = act_event(
                        mailbox_id, folder.name, change.item_id, kind, how, observed,
                        version=change.change_key, unreadable=why,
                    )  # fmt: skip
                else:
                    event = act_event(
                        mailbox_id, folder.name, change.item_id, kind, how, observed, got,
                        version=got.change_key or change.change_key,
                    )  # fmt: skip
                events.append(event)
                known[change.item_id] = change_key_hash(change.change_key)
        events.extend(self._deleted(folder, plan.deleted))
        for item in plan.deleted:
            known.pop(item, None)
        return events

    async def _created(
        self, folder: EwsFolder, message: EwsMessage, full: bool, observed: Any
    ) -> MailItemChanged:
        raw = complete_mime(message)
        unreadable: tuple[str, str] | None = None
        if full:
            payload = self.claim_check.inline(raw) or await self.claim_check.payload(raw, PROTOCOL)
        else:
            payload = MessagePayload(headers=header_block(raw)[: self.claim_check.header_limit])
            unreadable = (
                "TooLarge",
                f"the message is {message.size} bytes, over the profile's max_message_bytes "
                f"({self.profile.max_message_bytes}); only its properties were read",
            )
        return self._event(folder, message, ChangeKind.CREATED, "", observed, payload, unreadable)

    def _updated(self, folder: EwsFolder, message: EwsMessage, observed: Any) -> MailItemChanged:
        return self._event(folder, message, ChangeKind.UPDATED, message.change_key, observed)

    def _event(
        self,
        folder: EwsFolder,
        message: EwsMessage,
        change: ChangeKind,
        version: str,
        observed: Any,
        payload: MessagePayload | None = None,
        unreadable: tuple[str, str] | None = None,
    ) -> MailItemChanged:
        return item_event(
            self.config.mailbox_id,
            folder.name,
            message.item_id,
            change,
            observed,
            version=version,
            payload=payload,
            server_time=message.received,
            size=message.size,
            flags=event_flags(message),
            folder_role=folder.role,
            unreadable=unreadable,
        )

    def _unreadable(
        self, folder: EwsFolder, change: SyncChange, code: str, observed: Any
    ) -> MailItemChanged | None:
        """An item GetItem could not return: gone meanwhile (None: nothing to emit; a
        later Delete is ignored), else a created event saying why it is unreadable."""
        if code == "ErrorItemNotFound":
            return None
        return item_event(
            self.config.mailbox_id,
            folder.name,
            change.item_id,
            ChangeKind.CREATED,
            observed,
            folder_role=folder.role,
            unreadable=(code, f"GetItem answered {code} for this item"),
        )

    def _deleted(self, folder: EwsFolder, items: Sequence[str]) -> list[MailItemChanged]:
        now = utc_now()
        if folder.act is not None:
            mailbox_id, kind = self.config.mailbox_id, folder.act
            deleted = ChangeKind.DELETED
            return [act_event(mailbox_id, folder.name, i, kind, deleted, now) for i in items]
        return [
            deleted_event(self.config.mailbox_id, folder.name, item, now, folder.role)
            for item in items
        ]

    async def _emit(
        self,
        folder: EwsFolder,
        events: list[MailItemChanged],
        known: dict[str, str],
        sync_state: str | None,
        result: PassResult,
        on_batch: BatchCallback | None,
    ) -> None:
        """Emit a page's events in batches, then store the cursor (after Kafka's acks)."""
        for start in range(0, len(events), self.max_batch_items):
            batch = events[start : start + self.max_batch_items]
            await self.emitter.emit_changes(batch, PROTOCOL)
            for event in batch:
                if event.change == ChangeKind.CREATED:
                    result.created += 1
                    result.pending -= 1
                    result.unreadable += int(event.unreadable_code is not None)
                elif event.change == ChangeKind.UPDATED:
                    result.updated += 1
                else:
                    result.deleted += 1
        position = EwsFolderPosition(
            folder_id=folder.folder.id,
            sync_state=sync_state,
            known_z=pack_known(known),
            count=len(known),
        )
        await self.store.save(
            self.config.mailbox_id, folder.name, position, self.partition, utc_now()
        )
        self.positions[folder.name] = position
        if on_batch is not None and events:
            await on_batch(result)

    # -- waiting, listing, finding ---------------------------------------------

    async def wait_for_change(self, timeout_s: float) -> bool:
        """Until a streaming notification (True) or `timeout_s` (False); a plain sleep
        when streaming is off, or before the first pass connected."""
        client, folders = self.client, self.folders
        if not self.settings.streaming or client is None or folders is None:
            await asyncio.sleep(timeout_s)
            return False
        watched = [f.folder for f in [*folders, *(self.act_folders or [])]]
        pushed = await self.push.wait(client.account, watched, timeout_s)
        if pushed:
            metrics.CONNECTOR_PUSH_WAKEUPS.labels(PROTOCOL).inc()
        return pushed

    async def list_server_items(self) -> ServerListing:
        """Item ids per folder (received within "process email from"), for reconciliation."""
        items: dict[str, set[str]] = {}
        try:
            client = await self._connect()
            since = self.config.process_email_from
            for folder in await self._folders(client):
                listed = await self._run(client.list_folder, folder.folder, ["datetime_received"])
                items[folder.name] = {
                    item.id
                    for item in listed
                    if since is None
                    or item.datetime_received is None
                    or item.datetime_received >= since
                }
        except (ConnectorError, asyncio.CancelledError):
            self._reset()
            raise
        return ServerListing(items)

    async def find_message(self, message_id: str) -> list[MailItemChanged]:
        """Every message of the synced folders whose Message-ID normalizes to
        `message_id`, as the created event a sync emits: the folder listed with
        InternetMessageId (SyncFolderItems from scratch), matches read with GetItem.
        Cursors do not move."""
        found: list[MailItemChanged] = []
        try:
            client = await self._connect()
            for folder in await self._folders(client):
                listed = await self._run(client.list_folder, folder.folder, ["message_id"])
                ids = [
                    (item.id, item.changekey or "")
                    for item in listed
                    if normalize_message_id(item.message_id) == message_id
                ]
                if not ids:
                    continue
                observed = utc_now()
                for got in await self._run(client.get_messages, ids, True):
                    if (
                        isinstance(got, EwsMessage)
                        and header_message_id(complete_mime(got)) == message_id
                    ):
                        found.append(await self._created(folder, got, True, observed))
        except (ConnectorError, asyncio.CancelledError):
            self._reset()
            raise
        return found

    async def find_item(self, item_id: str, ical_uid: str) -> list[MailItemChanged]:
        """The created event a sync emits for the item of the ACT folders whose id is
        `item_id`, or for every appointment whose iCalendar UID is `ical_uid`: each
        folder listed (SyncFolderItems from scratch, ids only), candidates read with
        GetItem. Empty when the mailbox does not sync ACT items. Cursors do not move."""
        found: list[MailItemChanged] = []
        try:
            client = await self._connect()
            for folder in await self._act(client):
                if ical_uid and folder.act != ActType.APPOINTMENT:
                    continue
                listed = await self._run(client.list_folder, folder.folder, [])
                ids = [(i.id, i.changekey or "") for i in listed if not item_id or i.id == item_id]
                step = self.settings.get_item_batch
                observed = utc_now()
                for start in range(0, len(ids), step):
                    chunk = ids[start : start + step]
                    for (got_id, key), got in zip(
                        chunk, await self._run(client.get_act_items, chunk), strict=True
                    ):
                        if isinstance(got, tuple) or folder.act is None:
                            continue  # unreadable items are reported by the sync
                        if ical_uid and not (
                            isinstance(got, Appointment) and got.ical_uid == ical_uid
                        ):
                            continue
                        event = act_event(
                            self.config.mailbox_id, folder.name, got_id, folder.act,
                            ChangeKind.CREATED, observed, got, version=got.change_key or key,
                        )  # fmt: skip
                        found.append(event)
        except (ConnectorError, asyncio.CancelledError):
            self._reset()
            raise
        return found


async def send_message(
    config: MailboxConfig,
    profile: ServerProfile,
    raw: bytes,
    secret: SecretSource,
    *,
    save_copy: bool = True,
) -> None:
    """Send a MIME message through the mailbox's EWS (CreateItem with
    MessageDisposition SendAndSaveCopy: Exchange keeps the copy in Sent Items; or
    SendOnly). Raises ConnectorError (permanent for credentials and rights)."""
    settings = config.ews or EwsSettings()
    where = f"EWS {settings.server_url or profile.host}"
    user = config.credentials.username if config.credentials else config.email_address
    try:
        token = await secret()
    except LookupError as exc:
        raise errors.permanent(
            errors.CONFIGURATION, f"mailbox {config.mailbox_id}: {exc}"
        ) from None
    oauth = profile.auth == AuthMethod.XOAUTH2

    def send() -> None:
        account = make_account(config, profile, settings, token, 1, oauth)
        EwsClient(account, settings, where).send(raw, save_copy)

    try:
        await asyncio.to_thread(send)
    except ConnectorError:
        raise
    except Exception as exc:
        failure = classify(exc, where, user)
        if isinstance(failure, ConnectorError):
            raise failure from None
        with contextlib.suppress(Exception):
            metrics.CONNECTOR_THROTTLED.labels(PROTOCOL).inc()
        raise errors.transient(
            errors.SERVER_BUSY, f"{where} is busy; retry the send later"
        ) from None
