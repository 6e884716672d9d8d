"""A Microsoft 365 mailbox's calendar, contacts and To Do tasks into mail.changes
(Exchange → CRM, docs/act.md): the I/O shell around connectors/graph_act.py.

Per kind a delta round (default calendar: calendarView delta over a window;
default contact folder: contacts delta; default To Do list: tasks delta) is read
to its end, then applied: new and changed items become `created` / `updated`
events with the payload (a series folded with its instances), items gone become
`deleted` events, and only then is the cursor (a GraphFolderPosition under the
folder names "Calendar", "Contacts", "Tasks") saved with the new delta link. A
round is applied whole (no mid-round resume: these folders are small next to
mail); an interrupted one starts over and emits nothing twice (the known map).
An expired delta link (410) starts a full round: contacts and tasks it no longer
lists are deleted; calendar items are forgotten only (they may have left the
window). Ids are Graph's default (not immutable) ids, the ones the CRM → Exchange
writer links, so a written item is recognised by its id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import quote

import msgspec

from connectors import errors
from connectors.ews_act import act_event
from connectors.graph_act import (
    ACT_PAGE,
    OCCURRENCE_MARK,
    PREFER_UTC,
    UnsupportedItem,
    fold_series,
    forget_series,
    parse_window_id,
    payload_version,
    plan_calendar,
    to_appointment,
    to_contact,
    to_task,
    version_hash,
    window,
    window_due,
    window_id,
)
from connectors.graph_client import DeltaExpired, GraphClient, error_code, failure
from connectors.graph_items import Known, pack_known, unpack_known
from connectors.graph_push import Resource, act_resources
from connectors.source import PassResult
from schemas.act import ActPayload, ActType
from schemas.base import utc_now
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import ActSettings, GraphFolderPosition

log = logging.getLogger(__name__)
PROTOCOL = "graph"
CALENDAR, CONTACTS, TASKS = "Calendar", "Contacts", "Tasks"
Notice = Callable[[str, str, str, str], Awaitable[None]]
"""(folder, code, message, detail) → a notice on sync.errors (GraphMailbox._notice)."""


@dataclass(frozen=True)
class ActFolder:
    """One ACT collection a pass reads: its event folder name, kind and delta URL."""

    name: str
    kind: ActType
    delta_url: str
    folder_id: str


class GraphActSync:
    """The ACT part of a GraphMailbox's pass (docs/act.md, "Graph")."""

    def __init__(
        self,
        client: GraphClient,
        user_path: str,
        mailbox_id: str,
        settings: ActSettings,
        positions: dict[str, GraphFolderPosition],
        save: Callable[[str, GraphFolderPosition], Awaitable[None]],
        emit: Callable[[Sequence[MailItemChanged]], Awaitable[None]],
        notice: Notice,
        page_size: int,
    ) -> None:
        self.client = client
        self.user_path = user_path
        self.mailbox_id = mailbox_id
        self.settings = settings
        self.positions = positions
        self.save = save
        self.emit = emit
        self.notice = notice
        self.page_size = page_size
        self._task_list: str | None = None

    def check(self) -> None:
        """Refuse folder names: Graph ACT reads the default calendar, contact folder
        and To Do list only (a permanent configuration error saying what to change)."""
        named = [
            f"act.{key} = {value!r}"
            for key, value in (
                ("calendar_folder", self.settings.calendar_folder),
                ("contacts_folder", self.settings.contacts_folder),
                ("tasks_folder", self.settings.tasks_folder),
            )
            if value
        ]
        if named:
            raise errors.permanent(
                errors.CONFIGURATION,
                f"mailbox {self.mailbox_id}: Graph reads the default calendar, contacts and "
                f"To Do list only; remove {', '.join(named)}",
            )

    async def run(self, result: PassResult) -> None:
        """One round of every enabled kind."""
        self.check()
        if self.settings.appointments:
            await self._calendar(result)
        if self.settings.contacts:
            url = f"{self.user_path}/contacts/delta"
            await self._simple(ActFolder(CONTACTS, ActType.CONTACT, url, "contacts"), result)
        if self.settings.tasks:
            tasks = await self._tasks_path()
            url = f"{self.user_path}{tasks}/delta"
            await self._simple(ActFolder(TASKS, ActType.TASK, url, tasks), result)

    async def push_resources(self) -> list[Resource]:
        """The Graph subscription resources covering the enabled kinds: all events,
        the personal contacts, the default To Do list's tasks (connectors/graph_push.py)."""
        task_list = None
        if self.settings.tasks:
            await self._tasks_path()
            task_list = self._task_list
        return act_resources(
            self.user_path,
            events=self.settings.appointments,
            contacts=self.settings.contacts,
            task_list=task_list,
        )

    # -- reading ---------------------------------------------------------------

    async def _get_json(self, path: str, kind: str, params: dict[str, str] | None = None) -> Any:
        body = await self.client.get(path, kind=kind, headers={"Prefer": PREFER_UTC}, params=params)
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise errors.transient(
                errors.PROTOCOL_ERROR, f"graph {kind}: unreadable answer"
            ) from None

    async def _tasks_path(self) -> str:
        """The default To Do list's tasks path (GET /todo/lists, wellknownListName)."""
        if self._task_list is None:
            lists = await self._get_json(f"{self.user_path}/todo/lists", "act-lists")
            chosen = next(
                (
                    x
                    for x in (lists or {}).get("value", [])
                    if x.get("wellknownListName") == "defaultList"
                ),
                None,
            )
            if chosen is None:
                raise errors.permanent(
                    errors.CONFIGURATION, "the mailbox has no default Microsoft To Do list"
                )
            self._task_list = str(chosen["id"])
        return f"/todo/lists/{quote(self._task_list)}/tasks"

    async def _round(
        self, folder: ActFolder, start: str, params: dict[str, str] | None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every row of one delta round from `start`, and its delta link."""
        rows: list[dict[str, Any]] = []
        url, query = start, params
        prefer = f"{PREFER_UTC}, odata.maxpagesize={self.page_size}"
        while True:
            body = await self.client.get(
                url, kind="act-delta", headers={"Prefer": prefer}, params=query
            )
            try:
                page = ACT_PAGE.decode(body)
            except msgspec.DecodeError:
                raise errors.transient(
                    errors.PROTOCOL_ERROR, f"{folder.name}: graph answered an unreadable page"
                ) from None
            rows.extend(page.value)
            if page.delta_link is not None:
                return rows, page.delta_link
            if page.next_link is None:
                raise errors.transient(
                    errors.PROTOCOL_ERROR, f"{folder.name}: a delta page had no next or delta link"
                )
            url, query = page.next_link, None

    async def _rows(
        self, folder: ActFolder, params: dict[str, str] | None, known: Known, fresh: bool
    ) -> tuple[list[dict[str, Any]], str, bool]:
        """The round's rows, its delta link, and whether it was a full enumeration
        (first round, a fresh window, or the server forgot the delta link)."""
        position = self.positions.get(folder.name)
        link = None if fresh or position is None else position.delta_link
        if link is not None:
            try:
                rows, delta = await self._round(folder, link, None)
                return rows, delta, False
            except DeltaExpired as expired:
                await self.notice(
                    folder.name,
                    "DeltaLinkExpired",
                    f"{folder.name}: the delta link expired ({expired or 'HTTP 410'}); the "
                    f"folder is read again in full ({len(known)} known items are not emitted "
                    "again)",
                    link,
                )
        rows, delta = await self._round(folder, folder.delta_url, params)
        return rows, delta, True

    async def _store(self, folder: ActFolder, known: Known, delta: str) -> None:
        position = GraphFolderPosition(
            folder_id=folder.folder_id,
            delta_link=delta,
            known_z=pack_known(known),
            count=len(known),
        )
        await self.save(folder.name, position)

    def _known(self, folder: ActFolder) -> Known:
        position = self.positions.get(folder.name)
        if position is None:
            return {}
        return unpack_known(position.known_z, position.count)

    # -- contacts and tasks ----------------------------------------------------

    async def _simple(self, folder: ActFolder, result: PassResult) -> None:
        """A contacts or tasks round: rows carry whole resources."""
        known = self._known(folder)
        rows, delta, full = await self._rows(folder, None, known, fresh=False)
        observed = utc_now()
        events: list[MailItemChanged] = []
        seen: set[str] = set()
        latest: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row.get("id"):
                latest[str(row["id"])] = row
        for item_id, row in latest.items():
            if row.get("@removed") is not None:
                if known.pop(item_id, None) is not None:
                    events.append(self._deleted(folder, item_id, observed))
                continue
            seen.add(item_id)
            mapper: Callable[[dict[str, Any]], ActPayload] = (
                to_contact if folder.kind is ActType.CONTACT else to_task
            )
            event = self._mapped(folder, item_id, known, observed, partial(mapper, row))
            if event is not None:
                events.append(event)
        if full:
            for item_id in sorted(set(known) - seen):
                del known[item_id]
                events.append(self._deleted(folder, item_id, observed))
        result.listed += len(seen)
        await self._publish(events, result)
        await self._store(folder, known, delta)

    def _mapped(
        self,
        folder: ActFolder,
        item_id: str,
        known: Known,
        observed: datetime,
        build: Callable[[], ActPayload],
    ) -> MailItemChanged | None:
        """The created / updated event of an item (None: unchanged), or an unreadable
        one when it cannot be mapped; `known` updated."""
        before = known.get(item_id)
        how = ChangeKind.CREATED if before is None else ChangeKind.UPDATED
        try:
            payload = build()
        except (UnsupportedItem, KeyError, TypeError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            known[item_id] = version_hash(f"unreadable:{reason}")
            if before == known[item_id]:
                return None
            return act_event(
                self.mailbox_id, folder.name, item_id, folder.kind, how, observed,
                version=known[item_id], unreadable=("Unsupported", reason),
            )  # fmt: skip
        version = payload_version(payload)
        if before == version_hash(version):
            return None
        known[item_id] = version_hash(version)
        return act_event(
            self.mailbox_id, folder.name, item_id, folder.kind, how, observed, payload,
            version=version,
        )  # fmt: skip

    def _deleted(self, folder: ActFolder, item_id: str, observed: datetime) -> MailItemChanged:
        return act_event(
            self.mailbox_id, folder.name, item_id, folder.kind, ChangeKind.DELETED, observed
        )

    async def _publish(self, events: list[MailItemChanged], result: PassResult) -> None:
        if not events:
            return
        await self.emit(events)
        for event in events:
            if event.change == ChangeKind.CREATED:
                result.created += 1
                result.unreadable += int(event.unreadable_code is not None)
            elif event.change == ChangeKind.UPDATED:
                result.updated += 1
            else:
                result.deleted += 1

    # -- manual tracking (tidings track --item-id / --ical-uid) ------------------

    async def find(self, item_id: str, ical_uid: str) -> list[MailItemChanged]:
        """The created events a first round would emit for the item whose Graph id is
        `item_id` (tried as an event, a contact, then a To Do task, of the enabled kinds;
        a 404 or a malformed-id 400 means "not this kind"), or for every event whose
        iCalUId is `ical_uid` (GET /events?$filter=iCalUId eq '...'). A series is
        folded with its instances in the calendar window the sync reads. Nothing is
        stored and no cursor moves; one of `item_id` / `ical_uid` is ""."""
        self.check()
        observed = utc_now()
        found: list[MailItemChanged] = []
        if self.settings.appointments:
            ids = await self._events_with_uid(ical_uid) if ical_uid else [item_id]
            low, high = self._window()
            calendar = ActFolder(CALENDAR, ActType.APPOINTMENT, "", "")
            for event_id in ids:
                _, build = await self._event(event_id, low, high)
                if build is not None:
                    found.append(self._created(calendar, event_id, observed, build))
        if ical_uid or found:
            return found
        kinds: list[tuple[ActFolder, Callable[[dict[str, Any]], ActPayload]]] = []
        if self.settings.contacts:
            kinds.append((ActFolder(CONTACTS, ActType.CONTACT, "", "contacts"), to_contact))
        if self.settings.tasks:
            tasks = await self._tasks_path()
            kinds.append((ActFolder(TASKS, ActType.TASK, "", tasks), to_task))
        for folder, mapper in kinds:
            path = f"{self.user_path}/{folder.folder_id.lstrip('/')}/{quote(item_id)}"
            response = await self.client.request(
                "GET", path, kind="act-find", headers={"Prefer": PREFER_UTC}
            )
            if _not_this_kind(response.status_code, response.content):
                continue
            if not 200 <= response.status_code < 300:
                raise failure(response.status_code, error_code(response.content), "graph act-find")
            row = response.json()
            return [self._created(folder, item_id, observed, partial(mapper, row))]
        return found

    async def _events_with_uid(self, ical_uid: str) -> list[str]:
        """The ids of the events (single instances and series masters) with `ical_uid`."""
        literal = ical_uid.replace("'", "''")
        ids: list[str] = []
        url: str | None = f"{self.user_path}/events"
        params: dict[str, str] | None = {"$filter": f"iCalUId eq '{literal}'", "$select": "id"}
        while url is not None:
            page = await self._get_json(url, "act-find", params)
            ids.extend(str(row["id"]) for row in page.get("value") or [] if row.get("id"))
            link = page.get("@odata.nextLink")
            url, params = (str(link), None) if link else (None, None)
        return ids

    def _window(self) -> tuple[datetime, datetime]:
        """The calendar window the next round reads (the stored one unless it is due;
        its size from `ActSettings.calendar_past_days` / `calendar_future_days`)."""
        today = utc_now().date()
        position = self.positions.get(CALENDAR)
        current = parse_window_id(position.folder_id) if position is not None else None
        span = (self.settings.calendar_past_days, self.settings.calendar_future_days)
        if current is None or window_due(current, today, *span):
            return window(today, *span)
        return current

    def _created(
        self, folder: ActFolder, item_id: str, observed: datetime, build: Callable[[], ActPayload]
    ) -> MailItemChanged:
        """The created event of an item as a first round maps it (unreadable if it
        cannot be mapped), the known map untouched."""
        event = self._mapped(folder, item_id, {}, observed, build)
        assert event is not None  # nothing is known, so nothing is unchanged
        return event

    # -- the calendar ----------------------------------------------------------

    async def _calendar(self, result: PassResult) -> None:
        """A calendarView round over the window (module doc of graph_act)."""
        today = utc_now().date()
        position = self.positions.get(CALENDAR)
        current = parse_window_id(position.folder_id) if position is not None else None
        span = (self.settings.calendar_past_days, self.settings.calendar_future_days)
        fresh = window_due(current, today, *span)
        low, high = window(today, *span) if fresh or current is None else current
        url = f"{self.user_path}/calendarView/delta"
        folder = ActFolder(CALENDAR, ActType.APPOINTMENT, url, window_id(low, high))
        params = {
            "startDateTime": f"{low:%Y-%m-%dT%H:%M:%SZ}",
            "endDateTime": f"{high:%Y-%m-%dT%H:%M:%SZ}",
        }
        known = self._known(folder)
        rows, delta, full = await self._rows(folder, params, known, fresh)
        plan = plan_calendar(rows, known)
        for item_id in plan.removed_occurrences:
            known.pop(item_id, None)
        for occurrence, master in plan.occurrences.items():
            known[occurrence] = OCCURRENCE_MARK + master
        observed = utc_now()
        reads = await asyncio.gather(*(self._event(i, low, high) for i in plan.read))
        events: list[MailItemChanged] = []
        for item_id, (status, build) in zip(plan.read, reads, strict=True):
            if status == 404:
                if known.pop(item_id, None) is not None:
                    forget_series(known, item_id)
                    events.append(self._deleted(folder, item_id, observed))
                continue
            assert build is not None
            event = self._mapped(folder, item_id, known, observed, build)
            if event is not None:
                events.append(event)
        if full:
            seen = set(plan.read) | set(plan.occurrences)
            listed = {str(r.get("id")) for r in rows if r.get("@removed") is None}
            for item_id in [k for k in known if k not in seen and k not in listed]:
                del known[item_id]  # left the window (or gone while the link was lost)
        result.listed += len(plan.read)
        await self._publish(events, result)
        await self._store(folder, known, delta)

    async def _event(
        self, item_id: str, low: datetime, high: datetime
    ) -> tuple[int, Callable[[], ActPayload] | None]:
        """(status, payload builder) of one single instance or series master."""
        path = f"{self.user_path}/events/{quote(item_id)}"
        prefer = {"Prefer": PREFER_UTC}
        response = await self.client.request("GET", path, kind="act-event", headers=prefer)
        if _not_this_kind(response.status_code, response.content):
            return 404, None
        if not 200 <= response.status_code < 300:
            raise failure(response.status_code, error_code(response.content), "graph act-event")
        event = response.json()
        if event.get("type") != "seriesMaster" or not event.get("recurrence"):
            return 200, partial(to_appointment, event)
        instances = await self._instances(item_id, low, high)
        return 200, partial(fold_series, event, instances, low, high)

    async def _instances(self, item_id: str, low: datetime, high: datetime) -> list[dict[str, Any]]:
        """A series' instances in the window (GET /events/{id}/instances, all pages)."""
        rows: list[dict[str, Any]] = []
        url: str | None = f"{self.user_path}/events/{quote(item_id)}/instances"
        params: dict[str, str] | None = {
            "startDateTime": f"{low:%Y-%m-%dT%H:%M:%SZ}",
            "endDateTime": f"{high:%Y-%m-%dT%H:%M:%SZ}",
            "$top": "500",
        }
        while url is not None:
            page = await self._get_json(url, "act-instances", params)
            rows.extend(page.get("value") or [])
            link = page.get("@odata.nextLink")
            url, params = (str(link), None) if link else (None, None)
        return rows


def _not_this_kind(status: int, body: bytes) -> bool:
    """Whether a GET of an id under one kind's resource says "no such item here":
    404, or 400 ErrorInvalidIdMalformed (an id Exchange cannot parse)."""
    return status == 404 or (status == 400 and error_code(body) == "ErrorInvalidIdMalformed")
