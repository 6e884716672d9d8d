"""One Microsoft 365 mailbox through Microsoft Graph, synchronized folder by folder
with delta queries: Inbox, Sent Items and any configured folder.

Per folder the cursor (GraphFolderPosition) holds the delta link of the last
completed round, the next link of a round under way, and the ids emitted so far
with a hash of their changeKeys. A pass follows the links page by page
(`$select` of identity, version, threading and flags, `Prefer:
odata.maxpagesize`, immutable ids); unknown items are `created` with their MIME
(`$value`, twenty to a JSON batch), known items whose changeKey moved are
`updated` (flags: read, flagged, categories), and `@removed` known items are
`deleted`. The cursor moves after Kafka acknowledged each batch of events.

A delta link the server no longer knows (410) starts the folder over with a
full enumeration: what is already known is not emitted again, what the
enumeration no longer lists is deleted, and a notice says so on sync.errors.

Requests go through GraphClient (connectors/graph_client.py): at most four at
once per mailbox, throttling waited out, tokens from msal
(connectors/graph_auth.py). A pass holds one slot of the server profile's gate.
Between passes `wait_for_change` waits for Graph change notifications when the
process serves the webhook (connectors/graph_push.py), on the mail folders and
the calendar, contacts and To Do list the ACT sync reads (a notification on any
wakes the whole pass, ACT rounds included); else, or while subscribing fails,
the delta is polled (see docs/graph.md).
`send_mime` sends a message as the mailbox (POST sendMail).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

import msgspec

from connectors import errors, graph_push
from connectors.claimcheck import MessagePayload, header_block
from connectors.errors import ConnectorError
from connectors.graph_act_sync import GraphActSync
from connectors.graph_auth import GraphTokens
from connectors.graph_client import DeltaExpired, GraphClient, error_code, failure
from connectors.graph_items import (
    BATCH_LIMIT,
    DELTA_PAGE,
    DELTA_SELECT,
    DeltaItem,
    Known,
    batch_body_bytes,
    change_hash,
    classify,
    flags,
    latest,
    pack_known,
    swept,
    unpack_known,
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
from connectors.tracking import header_message_id
from schemas import metrics
from schemas.base import utc_now
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.ids import error_id
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import (
    FolderRole,
    GraphFolderPosition,
    GraphSettings,
    MailboxCounters,
    cursor_key,
)

log = logging.getLogger(__name__)
PROTOCOL = "graph"
WELL_KNOWN_FOLDERS = frozenset(
    {"inbox", "sentitems", "drafts", "deleteditems", "archive", "junkemail", "outbox"}
)
DELTA_EXPIRED = "DeltaLinkExpired"


@dataclass(frozen=True)
class GraphFolder:
    """A folder a pass reads: its display name (the event's folder), id and role."""

    name: str
    folder_id: str
    role: FolderRole


def wanted_folders(settings: GraphSettings) -> list[tuple[str, FolderRole]]:
    """Inbox, Sent Items (unless off), then the configured folders, in that order."""
    chosen: list[tuple[str, FolderRole]] = [("inbox", FolderRole.INBOX)]
    if settings.include_sent:
        chosen.append(("sentitems", FolderRole.SENT))
    for name in settings.folders:
        if all(name.casefold() != have.casefold() for have, _ in chosen):
            chosen.append((name, FolderRole.OTHER))
    return chosen


@dataclass
class _Round:
    """A delta round of one folder under way: what is known, what was seen, where
    the next page is, and whether the round is a full re-enumeration that must
    sweep (delete) what it does not list again."""

    folder: GraphFolder
    known: Known
    url: str
    delta_link: str | None
    sweep: bool
    known_at_start: frozenset[str] = frozenset()
    seen: set[str] = field(default_factory=set)


class GraphMailbox:
    """Synchronizes one Microsoft 365 mailbox into mail.changes through Microsoft Graph."""

    protocol = PROTOCOL

    def __init__(self, wiring: SourceWiring) -> None:
        config = wiring.config
        profile, self.gate = wiring.server()
        if profile.graph is None:
            raise errors.permanent(
                errors.CONFIGURATION,
                f"mailbox {config.mailbox_id}: profile {config.server_profile} has no graph "
                "settings ([server_profiles.NAME.graph] tenant_id, client_id, ...)",
            )
        self.config = config
        self.settings = config.graph or GraphSettings()
        self.user = self.settings.user or config.email_address
        self.profile = profile
        self.partition = wiring.partition
        self.emitter = wiring.emitter
        self.store = wiring.store
        self.claim_check = wiring.claim_check
        self.max_batch_items = wiring.max_batch_items
        self.page_size = profile.graph.page_size
        self.client = GraphClient(
            profile, GraphTokens(profile, self.settings, self.user), self.user
        )
        self.positions: dict[str, GraphFolderPosition] = {}
        prefix = cursor_key(config.mailbox_id, "")
        for key, cursor in wiring.cursors.items():
            if key.startswith(prefix) and isinstance(cursor.position, GraphFolderPosition):
                self.positions[cursor.folder] = cursor.position
        self.folders: list[GraphFolder] | None = None
        self.counters = MailboxCounters()
        self.push: graph_push.GraphPush | None = None
        self.act_sync: GraphActSync | None = None

    @property
    def user_path(self) -> str:
        return f"/users/{quote(self.user, safe='@')}"

    async def close(self) -> None:
        """Delete the notification subscriptions and close the HTTP connections."""
        push, self.push = self.push, None
        if push is not None:
            await push.close()
        await self.client.close()

    # -- folders ---------------------------------------------------------------

    async def _folders(self) -> list[GraphFolder]:
        """The folders to read, resolved once per source (ids are stable)."""
        if self.folders is not None:
            return self.folders
        found: list[GraphFolder] = []
        listing: list[dict[str, str]] | None = None
        for key, role in wanted_folders(self.settings):
            if key.lower() in WELL_KNOWN_FOLDERS:
                body = await self.client.get(
                    f"{self.user_path}/mailFolders/{key.lower()}",
                    kind="folder",
                    params={"$select": "id,displayName"},
                )
                folder = msgspec.json.decode(body, type=dict[str, object])
                name, folder_id = str(folder.get("displayName", key)), str(folder["id"])
            else:
                if listing is None:
                    body = await self.client.get(
                        f"{self.user_path}/mailFolders",
                        kind="folders",
                        params={"$select": "id,displayName", "$top": "250"},
                    )
                    value = msgspec.json.decode(body, type=dict[str, object]).get("value")
                    listing = [
                        {"id": str(f["id"]), "displayName": str(f.get("displayName", ""))}
                        for f in (value if isinstance(value, list) else [])
                    ]
                match = next(
                    (f for f in listing if f["displayName"].casefold() == key.casefold()), None
                )
                if match is None:
                    raise errors.permanent(
                        errors.MAILBOX_MISSING,
                        f"folder {key!r} is configured but {self.user} has no such folder",
                        folder=key,
                    )
                name, folder_id = match["displayName"], match["id"]
            if all(folder_id != have.folder_id for have in found):
                found.append(GraphFolder(name, folder_id, role))
        self.folders = found
        return found

    # -- a pass ----------------------------------------------------------------

    async def sync_pass(self, on_batch: BatchCallback | None = None) -> PassResult:
        """Run every folder's delta to its end once; a pass the server throttled tells
        the profile's gate, which lowers its concurrency."""
        result = PassResult()
        throttles = self.client.throttles
        async with self.gate.slot():
            try:
                for folder in await self._folders():
                    await self._sync_folder(folder, result, on_batch)
                await self._sync_act(result, on_batch)
            except (ConnectorError, asyncio.CancelledError):
                await self.client.close()
                raise
            finally:
                if self.client.throttles > throttles:
                    self.gate.throttled()  # the profile's connection limit backs off (AIMD)
        self.counters = fold_counters(self.counters, result)
        result.counters = self.counters
        return result

    async def _sync_act(self, result: PassResult, on_batch: BatchCallback | None) -> None:
        """Calendar, contacts and To Do tasks, when the mailbox syncs them
        (connectors/graph_act_sync.py; docs/act.md)."""
        act_sync = self._act_sync_of()
        if act_sync is None:
            return
        before = (result.created, result.updated, result.deleted)
        await act_sync.run(result)
        if on_batch is not None and (result.created, result.updated, result.deleted) != before:
            await on_batch(result)

    def _act_sync_of(self) -> GraphActSync | None:
        """The ACT reader (made once), or None when the mailbox does not sync ACT items."""
        act = self.config.act
        if act is None or not act.enabled:
            return None
        if self.act_sync is None:
            self.act_sync = GraphActSync(
                self.client, self.user_path, self.config.mailbox_id, act, self.positions,
                self._save_act, self._emit_act, self._notice, self.page_size,
            )  # fmt: skip
        return self.act_sync

    async def find_item(self, item_id: str, ical_uid: str) -> list[MailItemChanged]:
        """The created event a sync emits for the ACT item whose Graph id is `item_id`
        (an event, contact or To Do task of the enabled kinds), or for every event whose
        iCalUId is `ical_uid` (GraphActSync.find). Empty when the mailbox does not sync
        ACT items. Cursors do not move."""
        act_sync = self._act_sync_of()
        if act_sync is None:
            return []
        try:
            return await act_sync.find(item_id, ical_uid)
        except (ConnectorError, asyncio.CancelledError):
            await self.client.close()
            raise

    async def _save_act(self, folder: str, position: GraphFolderPosition) -> None:
        await self.store.save(self.config.mailbox_id, folder, position, self.partition, utc_now())
        self.positions[folder] = position

    async def _emit_act(self, events: Sequence[MailItemChanged]) -> None:
        await self._emit(events, PassResult())

    def _delta_url(self, folder: GraphFolder) -> str:
        return (
            f"{self.user_path}/mailFolders/{folder.folder_id}/messages/delta?$select={DELTA_SELECT}"
        )

    def _start(self, folder: GraphFolder) -> _Round:
        """The round to run now: resumed, incremental, or a full (re-)enumeration."""
        position = self.positions.get(folder.name)
        if position is None or position.folder_id != folder.folder_id:
            known: Known = {}
            if position is not None:
                known = unpack_known(position.known_z, position.count)
            return self._full(folder, known)
        known = unpack_known(position.known_z, position.count)
        if position.next_link:
            return _Round(folder, known, position.next_link, position.delta_link, sweep=False)
        if position.delta_link:
            return _Round(folder, known, position.delta_link, position.delta_link, sweep=False)
        return self._full(folder, known)

    def _full(self, folder: GraphFolder, known: Known) -> _Round:
        return _Round(
            folder,
            known,
            self._delta_url(folder),
            None,
            sweep=bool(known),
            known_at_start=frozenset(known),
        )

    async def _sync_folder(
        self, folder: GraphFolder, result: PassResult, on_batch: BatchCallback | None
    ) -> None:
        position = self.positions.get(folder.name)
        if position is not None and position.folder_id != folder.folder_id:
            await self._notice(
                folder.name,
                "FolderReplaced",
                f"{folder.name}: the folder id changed; it is read again (items it no "
                "longer holds are deleted, none is emitted twice)",
                f"{position.folder_id}>{folder.folder_id}",
            )
        state = self._start(folder)
        pending: list[DeltaItem] = []
        headers = {
            "Prefer": f'odata.maxpagesize={self.page_size}, IdType="ImmutableId"',
        }
        # One chunk at a time is applied (MIME fetched, emitted, cursor saved) while
        # the next pages download; the next chunk waits for it.
        applying: asyncio.Future[None] | None = None

        async def settle() -> None:
            nonlocal applying
            running, applying = applying, None
            if running is not None:
                await running

        try:
            while True:
                try:
                    body = await self.client.get(state.url, kind="delta", headers=headers)
                except DeltaExpired as expired:
                    if state.url == self._delta_url(folder):
                        raise errors.transient(
                            errors.PROTOCOL_ERROR,
                            f"{folder.name}: a fresh delta query answered 410",
                        ) from None
                    await settle()
                    state = await self._expired(state, str(expired), pending)
                    pending = []
                    continue
                try:
                    page = DELTA_PAGE.decode(body)
                except msgspec.DecodeError:
                    raise errors.transient(
                        errors.PROTOCOL_ERROR, f"{folder.name}: graph answered an unreadable page"
                    ) from None
                pending.extend(page.value)
                state.seen.update(item.id for item in page.value if item.removed is None)
                result.listed += sum(1 for item in page.value if item.removed is None)
                if page.delta_link is not None:
                    await settle()
                    await self._apply(state, pending, result, on_batch)
                    if state.sweep:
                        gone = swept(state.known_at_start, state.seen)
                        await self._emit_deleted(folder, gone, state.known, result)
                    await self._save(folder, state.known, page.delta_link, None)
                    return
                if page.next_link is None:
                    raise errors.transient(
                        errors.PROTOCOL_ERROR,
                        f"{folder.name}: a delta page had no next or delta link",
                    )
                state.url = page.next_link
                if len(pending) >= self.max_batch_items:
                    await settle()
                    # A sweeping round cannot resume mid-way (what it saw is not kept).
                    resume = None if state.sweep else page.next_link
                    applying = asyncio.ensure_future(
                        self._apply_and_save(state, pending, resume, result, on_batch)
                    )
                    pending = []
        finally:
            if applying is not None and not applying.done():
                applying.cancel()
                await asyncio.gather(applying, return_exceptions=True)

    async def _apply_and_save(
        self,
        state: _Round,
        items: list[DeltaItem],
        resume: str | None,
        result: PassResult,
        on_batch: BatchCallback | None,
    ) -> None:
        """Apply one chunk of a round, then save the cursor past it."""
        await self._apply(state, items, result, on_batch)
        await self._save(state.folder, state.known, state.delta_link, resume)

    async def _expired(self, state: _Round, code: str, pending: list[DeltaItem]) -> _Round:
        """The server forgot the delta state (410): say so and enumerate the folder again."""
        folder = state.folder
        await self._notice(
            folder.name,
            DELTA_EXPIRED,
            f"{folder.name}: the delta link expired ({code or 'HTTP 410'}); the folder is "
            f"read again in full ({len(state.known)} known items are not emitted again; "
            "items no longer there are deleted)",
            state.url,
        )
        await self._save(folder, state.known, None, None)
        return self._full(folder, state.known)

    async def _notice(self, folder: str, code: str, message: str, detail: str) -> None:
        log.warning("mailbox %s: %s", self.config.mailbox_id, message)
        notice = SyncError(
            error_id=error_id(f"{self.config.mailbox_id}|{folder}|{detail}", code),
            mailbox_id=self.config.mailbox_id,
            scope=ErrorScope.MAILBOX,
            severity=Severity.NOTICE,
            code=code,
            message=message,
            component="connectors",
            folder=folder,
            occurred_at=utc_now(),
        )
        await self.emitter.emit_error(notice, PROTOCOL)

    async def _apply(
        self,
        state: _Round,
        items: list[DeltaItem],
        result: PassResult,
        on_batch: BatchCallback | None,
    ) -> None:
        """Emit what `items` mean against `state.known` and record it there."""
        plan = classify(items, state.known)
        folder = state.folder
        if plan.deleted:
            await self._emit_deleted(folder, plan.deleted, state.known, result)
        if plan.updated:
            observed = utc_now()
            events = [
                self._event(folder, item, ChangeKind.UPDATED, observed) for item in plan.updated
            ]
            await self._emit(events, result)
            for item in plan.updated:
                state.known[item.id] = change_hash(item.change_key)
            result.updated += len(events)
        result.pending += len(plan.created)
        for start in range(0, len(plan.created), self.max_batch_items):
            chunk = plan.created[start : start + self.max_batch_items]
            events = await self._created_events(folder, chunk)
            await self._emit(events, result)
            for item in chunk:
                state.known[item.id] = change_hash(item.change_key)
            result.created += len(events)
            result.unreadable += sum(1 for e in events if e.unreadable_code)
            result.pending -= len(chunk)
        if on_batch is not None and (plan.created or plan.updated or plan.deleted):
            await on_batch(result)

    async def _emit(self, events: Sequence[MailItemChanged], result: PassResult) -> None:
        for start in range(0, len(events), self.max_batch_items):
            await self.emitter.emit_changes(events[start : start + self.max_batch_items], PROTOCOL)

    async def _emit_deleted(
        self, folder: GraphFolder, ids: Sequence[str], known: Known, result: PassResult
    ) -> None:
        if not ids:
            return
        now = utc_now()
        events = [
            deleted_event(self.config.mailbox_id, folder.name, item, now, folder.role)
            for item in ids
        ]
        await self._emit(events, result)
        for item in ids:
            known.pop(item, None)
        result.deleted += len(events)

    # -- created items ---------------------------------------------------------

    async def _created_events(
        self, folder: GraphFolder, items: Sequence[DeltaItem]
    ) -> list[MailItemChanged]:
        """The created events of `items`, their MIME fetched in JSON batches (four
        batches at once); items gone meanwhile are left out (not known either, so a
        later `@removed` for them is ignored)."""
        chunks = [items[i : i + BATCH_LIMIT] for i in range(0, len(items), BATCH_LIMIT)]
        fetched = await asyncio.gather(*(self._fetch_mime(chunk) for chunk in chunks))
        observed = utc_now()
        events: list[MailItemChanged] = []
        for chunk, answers in zip(chunks, fetched, strict=True):
            for item, (status, mime, code) in zip(chunk, answers, strict=True):
                if status == 404:
                    continue
                events.append(await self._created(folder, item, status, mime, code, observed))
        return events

    async def _fetch_mime(self, items: Sequence[DeltaItem]) -> list[tuple[int, bytes | None, str]]:
        """(status, MIME, error code) of each item; one item alone is a plain GET."""
        if len(items) == 1:
            response = await self.client.request(
                "GET", f"{self.user_path}/messages/{items[0].id}/$value", kind="value"
            )
            ok = 200 <= response.status_code < 300
            code = "" if ok else error_code(response.content)
            if response.status_code in (401, 403):
                raise failure(response.status_code, code, "graph $value")
            return [(response.status_code, response.content if ok else None, code)]
        paths = [f"{self.user_path}/messages/{item.id}/$value" for item in items]
        answers = await self.client.batch(paths)
        out: list[tuple[int, bytes | None, str]] = []
        for index in range(len(items)):
            answer = answers[str(index)]
            if answer.status in (401, 403):
                raise failure(answer.status, "", "graph $value in a batch")
            if 200 <= answer.status < 300:
                out.append((answer.status, batch_body_bytes(answer.body), ""))
            else:
                body = answer.body if isinstance(answer.body, dict) else {}
                error = body.get("error") if isinstance(body, dict) else None
                code = str(error.get("code", "")) if isinstance(error, dict) else ""
                out.append((answer.status, None, code))
        return out

    async def _created(
        self,
        folder: GraphFolder,
        item: DeltaItem,
        status: int,
        mime: bytes | None,
        code: str,
        observed: datetime,
    ) -> MailItemChanged:
        """The created event of one item: its MIME inline or by claim-check, headers
        only when over max_message_bytes, or an unreadable event saying why."""
        if mime is None:
            reason = f"graph answered HTTP {status} {code} for the message's MIME".strip()
            return self._event(
                folder, item, ChangeKind.CREATED, observed, unreadable=(f"Graph{status}", reason)
            )
        if len(mime) > self.profile.max_message_bytes:
            reason = (
                f"the message is {len(mime)} bytes, over the profile's max_message_bytes "
                f"({self.profile.max_message_bytes}); only its headers were kept"
            )
            headers = header_block(mime)[: self.claim_check.header_limit]
            return self._event(
                folder,
                item,
                ChangeKind.CREATED,
                observed,
                MessagePayload(headers=headers),
                size=len(mime),
                unreadable=("TooLarge", reason),
            )
        payload = self.claim_check.inline(mime) or await self.claim_check.payload(mime, PROTOCOL)
        return self._event(folder, item, ChangeKind.CREATED, observed, payload, size=len(mime))

    def _event(
        self,
        folder: GraphFolder,
        item: DeltaItem,
        change: ChangeKind,
        observed: datetime,
        payload: MessagePayload | None = None,
        *,
        size: int = 0,
        unreadable: tuple[str, str] | None = None,
    ) -> MailItemChanged:
        return item_event(
            self.config.mailbox_id,
            folder.name,
            item.id,
            change,
            observed,
            version=item.change_key or "" if change == ChangeKind.UPDATED else "",
            payload=payload,
            server_time=item.received_date_time,
            size=size,
            flags=flags(item),
            folder_role=folder.role,
            unreadable=unreadable,
        )

    async def _save(
        self, folder: GraphFolder, known: Known, delta_link: str | None, next_link: str | None
    ) -> None:
        position = GraphFolderPosition(
            folder_id=folder.folder_id,
            delta_link=delta_link,
            next_link=next_link,
            known_z=pack_known(known),
            count=len(known),
        )
        await self.store.save(
            self.config.mailbox_id, folder.name, position, self.partition, utc_now()
        )
        self.positions[folder.name] = position

    # -- waiting, finding, listing ---------------------------------------------

    async def wait_for_change(self, timeout_s: float) -> bool:
        """Until a change notification (True) or `timeout_s` (False); a plain sleep
        when the process serves no webhook or no pass has listed the folders yet."""
        hub, folders = graph_push.current(), self.folders
        if hub is None or folders is None:
            await asyncio.sleep(timeout_s)
            return False
        if self.push is None or self.push.hub is not hub:
            self.push = graph_push.GraphPush(
                self.client, self.user_path, self.config.mailbox_id, hub
            )
        resources = [graph_push.message_resource(self.user_path, f.folder_id) for f in folders]
        resources += await self._act_resources()
        pushed = await self.push.wait(resources, timeout_s)
        if pushed:
            metrics.CONNECTOR_PUSH_WAKEUPS.labels(PROTOCOL).inc()
        return pushed

    async def _act_resources(self) -> list[graph_push.Resource]:
        """The ACT collections to subscribe (none when the mailbox does not sync them,
        or the To Do list cannot be resolved now: those items wait for the poll)."""
        act_sync = self.act_sync
        if act_sync is None:
            return []
        try:
            return await act_sync.push_resources()
        except ConnectorError as exc:
            log.info("mailbox %s: no push for ACT items now (%s)", self.config.mailbox_id, exc)
            return []

    async def find_message(self, message_id: str) -> list[MailItemChanged]:
        """The created event a sync emits for every message of the synced folders whose
        Message-ID is `message_id` ($filter on internetMessageId, then its MIME)."""
        found: list[MailItemChanged] = []
        literal = f"<{message_id}>".replace("'", "''")
        try:
            for folder in await self._folders():
                body = await self.client.get(
                    f"{self.user_path}/mailFolders/{folder.folder_id}/messages",
                    kind="find",
                    params={
                        "$filter": f"internetMessageId eq '{literal}'",
                        "$select": DELTA_SELECT,
                    },
                )
                items = msgspec.json.decode(body, type=dict[str, list[DeltaItem]]).get("value", [])
                events = await self._created_events(folder, latest(items))
                found.extend(
                    e for e in events if header_message_id(e.raw or e.headers or b"") == message_id
                )
        except (ConnectorError, asyncio.CancelledError):
            await self.client.close()
            raise
        return found

    async def list_server_items(self) -> ServerListing:
        """Item ids per folder (within "process email from"), for reconciliation."""
        items: dict[str, set[str]] = {}
        since = self.config.process_email_from
        try:
            for folder in await self._folders():
                params = {"$select": "id", "$top": "1000"}
                if since is not None:
                    params["$filter"] = (
                        f"receivedDateTime ge {since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
                    )
                ids: set[str] = set()
                url: str | None = f"{self.user_path}/mailFolders/{folder.folder_id}/messages"
                while url is not None:
                    body = await self.client.get(url, kind="list", params=params or None)
                    page = msgspec.json.decode(body, type=dict[str, object])
                    value = page.get("value")
                    ids.update(
                        str(m["id"])
                        for m in (value if isinstance(value, list) else [])
                        if "id" in m
                    )
                    link = page.get("@odata.nextLink")
                    url, params = (str(link), {}) if isinstance(link, str) else (None, {})
                items[folder.name] = ids
        finally:
            with contextlib.suppress(ConnectorError):
                await self.client.close()
        return ServerListing(items)


async def send_mime(client: GraphClient, mime: bytes) -> None:
    """Send `mime` (a complete RFC 5322 message, its Message-ID included) as the
    client's user: POST /users/{user}/sendMail with the MIME base64-encoded, which
    Exchange keeps in Sent Items. Raises ConnectorError: permanent for a refused
    message or missing permission (Mail.Send), transient for throttling and
    server trouble that outlasted the retries."""
    body = base64.b64encode(mime)
    response = await client.post(
        f"/users/{quote(client.user, safe='@')}/sendMail", body, "text/plain", kind="send"
    )
    if response.status_code == 202 or 200 <= response.status_code < 300:
        return
    code = error_code(response.content)
    if response.status_code == 400:
        raise errors.permanent("MessageRejected", f"graph sendMail refused the message: {code}")
    raise failure(response.status_code, code, "graph sendMail")
