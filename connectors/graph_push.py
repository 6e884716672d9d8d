"""Microsoft Graph change notifications: the push path of Graph mailboxes.

Graph posts notifications to a public HTTPS URL, so this is off unless
`connectors.graph_notifications` is enabled with a `public_url`. Then the
connectors process serves a small aiohttp webhook (`NotificationHub`, on the
bind address, behind a reverse proxy that terminates TLS), and each Graph
mailbox (`GraphPush`) subscribes its synced folders and, when it syncs
appointments, contacts and tasks (docs/act.md), those collections too:

    POST /subscriptions {changeType: "created,updated,deleted",
        resource: "users/{user}/mailFolders('{id}')/messages"
                | "users/{user}/events" | "users/{user}/contacts"
                | "users/{user}/todo/lists/{listId}/tasks",
        notificationUrl: public_url,
        lifecycleNotificationUrl: public_url + "/lifecycle",
        clientState: <random, per subscription>,
        expirationDateTime: now + lifetime_minutes}

- Validation handshake: Graph first POSTs `?validationToken=...` to each URL;
  the hub answers 200 text/plain with the token (within Graph's 10 s).
- Every notification is checked: its subscription must be one this process
  made and its `clientState` must match that subscription's secret (compared
  in constant time); anything else is ignored and counted. The hub answers
  202 at once whatever the verdict (Graph retries other answers).
- A change notification wakes its mailbox: one pass reads every folder's delta
  and the appointment / contact / task rounds (they are part of the same pass).
- Lifecycle notifications (on the lifecycle path, clientState checked the same
  way, counted by event in tidings_connector_push_notifications_total):
  `reauthorizationRequired` → POST /subscriptions/{id}/reauthorize (a PATCH
  renewal when Graph refuses that; a subscription Graph no longer knows is made
  again); `subscriptionRemoved` → the subscription is made again, then one
  delta pass; `missed` → one delta pass at once.
- A subscription is renewed (PATCH expirationDateTime) once `renew_fraction`
  of the lifetime Graph granted has passed; one Graph no longer knows (404) is
  made again. A new subscription wakes the mailbox once, so what arrived before
  it began is caught by one delta pass.
- When a mail folder's subscription cannot be made or renewed, the failure is
  counted (tidings_connector_push_failures_total), logged once per streak, and
  the mailbox polls its delta; subscribing is tried again after `retry_s`. An
  appointment / contact / task subscription Graph refuses (To Do tasks take no
  application-permission subscriptions in some tenants) is set aside alone for
  `retry_s`, counted and logged once: those items wait for the poll, mail keeps
  its push.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec
from aiohttp import web

from connectors import errors
from connectors.errors import ConnectorError
from connectors.graph_client import GraphClient, error_code, failure
from schemas import metrics
from schemas.base import utc_now
from schemas.config import GraphNotificationsConfig

log = logging.getLogger(__name__)
PROTOCOL = "graph"
CHANGE_TYPES = "created,updated,deleted"
MAX_NOTIFICATION_BYTES = 4 * 1024 * 1024
LIFECYCLE_SUFFIX = "/lifecycle"
"""The lifecycle notification path: the notification path plus this."""
MAX_MINUTES = 10080
"""Graph's longest subscription on Outlook messages, events and contacts (minutes)."""
TODO_MAX_MINUTES = 4230
"""Graph's longest subscription on To Do tasks (minutes)."""


# -- pure rules -------------------------------------------------------------------


class Verdict(StrEnum):
    """What the hub makes of one notification."""

    ACCEPTED = "accepted"
    BAD_CLIENT_STATE = "bad_client_state"
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"


class Lifecycle(StrEnum):
    """Graph's lifecycle events (docs: "Reduce missing subscriptions and change
    notifications")."""

    REAUTHORIZATION_REQUIRED = "reauthorizationRequired"
    SUBSCRIPTION_REMOVED = "subscriptionRemoved"
    MISSED = "missed"


UNKNOWN_LIFECYCLE = "lifecycle_unknown"
"""The metric label of an accepted lifecycle notification with an event we do not know."""


def verdict(notification: Mapping[str, Any], client_states: Mapping[str, str]) -> Verdict:
    """Accept a notification only for a subscription we made whose clientState matches
    (constant-time comparison)."""
    subscription = notification.get("subscriptionId")
    expected = client_states.get(subscription) if isinstance(subscription, str) else None
    if expected is None:
        return Verdict.UNKNOWN_SUBSCRIPTION
    given = notification.get("clientState")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        return Verdict.BAD_CLIENT_STATE
    return Verdict.ACCEPTED


def lifecycle_event(notification: Mapping[str, Any]) -> Lifecycle | str | None:
    """The notification's lifecycle event: None for a change notification, a Lifecycle,
    or the raw text of an event this code does not know."""
    event = notification.get("lifecycleEvent")
    if event is None:
        return None
    try:
        return Lifecycle(str(event))
    except ValueError:
        return str(event)


def notification_label(found: Verdict, event: Lifecycle | str | None) -> str:
    """The verdict label a notification is counted under: the lifecycle event of an
    accepted lifecycle notification, else the verdict."""
    if found != Verdict.ACCEPTED or event is None:
        return str(found)
    return str(event) if isinstance(event, Lifecycle) else UNKNOWN_LIFECYCLE


def lifecycle_url(public_url: str) -> str:
    """The lifecycleNotificationUrl served next to `public_url` (its path + /lifecycle)."""
    parts = urlsplit(public_url)
    path = parts.path.rstrip("/") + LIFECYCLE_SUFFIX
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def expiration(now: datetime, lifetime_minutes: int) -> datetime:
    """The expirationDateTime to ask for."""
    return now + timedelta(minutes=lifetime_minutes)


def renew_at(since: datetime, expires: datetime, fraction: float) -> datetime:
    """When to renew a subscription granted at `since` until `expires`: after
    `fraction` of that lifetime (at once when Graph granted none)."""
    return since + max(timedelta(0), expires - since) * fraction


def retry_due(failed_at: float | None, now: float, retry_s: float) -> bool:
    """Whether subscribing may be tried again after a failure at `failed_at`."""
    return failed_at is None or now - failed_at >= retry_s


def url_problem(url: str | None) -> str | None:
    """Why `url` cannot be a notificationUrl (https, or http on loopback), or None."""
    if not url:
        return "graph_notifications.public_url is not set"
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return None
    return f"graph_notifications.public_url {url!r} must be https (Graph posts only to https)"


def graph_time(moment: datetime) -> str:
    """A datetime as Graph writes it (UTC, seconds, Z)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def parse_graph_time(text: str) -> datetime:
    """Graph's expirationDateTime (7 fractional digits allowed) as an aware datetime."""
    body = text.rstrip("Z")
    if "." in body:
        head, fraction = body.split(".", 1)
        body = f"{head}.{fraction[:6]}"
    return datetime.fromisoformat(body + "+00:00")


@dataclass(frozen=True)
class Resource:
    """What one subscription watches: Graph's resource path (no leading slash), whether
    a refusal sets only it aside (appointments, contacts, tasks) rather than the
    mailbox's push, and the longest lifetime Graph grants on it (minutes)."""

    path: str
    optional: bool = False
    max_minutes: int = MAX_MINUTES


def message_resource(user_path: str, folder_id: str) -> Resource:
    """A mail folder's messages."""
    return Resource(f"{user_path.strip('/')}/mailFolders('{folder_id}')/messages")


def act_resources(
    user_path: str, *, events: bool, contacts: bool, task_list: str | None
) -> list[Resource]:
    """The appointment / contact / To Do task collections the ACT sync reads: all
    events (the calendar view's source), the personal contacts, and the tasks of
    `task_list` (None: tasks are not synced)."""
    user = user_path.strip("/")
    found: list[Resource] = []
    if events:
        found.append(Resource(f"{user}/events", optional=True))
    if contacts:
        found.append(Resource(f"{user}/contacts", optional=True))
    if task_list is not None:
        path = f"{user}/todo/lists/{quote(task_list)}/tasks"
        found.append(Resource(path, optional=True, max_minutes=TODO_MAX_MINUTES))
    return found


def lifetime(resource: Resource, lifetime_minutes: int) -> int:
    """The lifetime to ask for on `resource`: the configured one, capped at Graph's."""
    return min(lifetime_minutes, resource.max_minutes)


# -- the webhook --------------------------------------------------------------------


class Receiver(Protocol):
    """Who a subscription's accepted notifications go to (GraphPush)."""

    def changed(self, subscription_id: str) -> None:
        """A change notification arrived."""

    def lifecycle(self, subscription_id: str, event: Lifecycle) -> None:
        """A lifecycle notification arrived."""


@dataclass
class _EventReceiver:
    """A plain asyncio.Event as a receiver: any accepted notification sets it."""

    event: asyncio.Event

    def changed(self, subscription_id: str) -> None:
        self.event.set()

    def lifecycle(self, subscription_id: str, event: Lifecycle) -> None:
        self.event.set()


class NotificationHub:
    """The webhook Graph posts to: validation handshakes, change notifications and
    (on the lifecycle path) lifecycle notifications, routed to the mailbox that owns
    the subscription."""

    def __init__(self, settings: GraphNotificationsConfig) -> None:
        problem = url_problem(settings.public_url)
        if problem is not None:
            raise ValueError(problem)
        assert settings.public_url is not None
        self.settings = settings
        self.public_url = settings.public_url
        self.path = urlsplit(settings.public_url).path or "/"
        self.lifecycle_url: str | None = (
            lifecycle_url(settings.public_url) if settings.lifecycle else None
        )
        self.lifecycle_path = urlsplit(self.lifecycle_url).path if self.lifecycle_url else None
        self.client_states: dict[str, str] = {}
        self.receivers: dict[str, Receiver] = {}
        self.counts: dict[Verdict, int] = dict.fromkeys(Verdict, 0)
        self.lifecycle_counts: dict[str, int] = {}
        self.port = settings.port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Serve on the bind address (port 0 picks a free one, see `port`)."""
        app = web.Application(client_max_size=MAX_NOTIFICATION_BYTES)
        app.router.add_post(self.path, self._post)
        if self.lifecycle_path is not None and self.lifecycle_path != self.path:
            app.router.add_post(self.lifecycle_path, self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("graph notifications: webhook on %s:%s", self.settings.host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def register(
        self, subscription_id: str, client_state: str, receiver: Receiver | asyncio.Event
    ) -> None:
        """Route `subscription_id`'s notifications (with this clientState) to `receiver`
        (an asyncio.Event is set by any of them)."""
        self.client_states[subscription_id] = client_state
        self.receivers[subscription_id] = (
            _EventReceiver(receiver) if isinstance(receiver, asyncio.Event) else receiver
        )

    def unregister(self, subscription_id: str) -> None:
        """Forget a subscription: its notifications are ignored from now on."""
        self.client_states.pop(subscription_id, None)
        self.receivers.pop(subscription_id, None)

    async def _post(self, request: web.Request) -> web.Response:
        token = request.query.get("validationToken")
        if token is not None:
            metrics.CONNECTOR_PUSH_NOTIFICATIONS.labels("validation").inc()
            return web.Response(status=200, text=token, content_type="text/plain")
        try:
            body = msgspec.json.decode(await request.read(), type=dict[str, Any])
            notes = body.get("value")
        except msgspec.DecodeError:
            notes = None
        if not isinstance(notes, list):
            log.warning("graph notifications: an unreadable notification body was ignored")
            return web.Response(status=202)
        for note in notes:
            if isinstance(note, dict):
                self._route(note)
        return web.Response(status=202)

    def _route(self, note: dict[str, Any]) -> None:
        """Check one notification, count it, and hand an accepted one to its receiver
        (a notification carrying `lifecycleEvent` is a lifecycle one, whichever path
        it came to)."""
        found = verdict(note, self.client_states)
        event = lifecycle_event(note)
        self.counts[found] += 1
        label = notification_label(found, event)
        metrics.CONNECTOR_PUSH_NOTIFICATIONS.labels(label).inc()
        subscription = note.get("subscriptionId")
        if found == Verdict.BAD_CLIENT_STATE:
            log.warning(
                "graph notifications: a %s notification for subscription %s had the wrong "
                "clientState and was ignored",
                "lifecycle" if event is not None else "change",
                subscription,
            )
            return
        if found != Verdict.ACCEPTED:
            return
        receiver = self.receivers[str(subscription)]
        if event is None:
            receiver.changed(str(subscription))
            return
        self.lifecycle_counts[str(event)] = self.lifecycle_counts.get(str(event), 0) + 1
        if isinstance(event, Lifecycle):
            receiver.lifecycle(str(subscription), event)
        else:
            log.warning(
                "graph notifications: lifecycle event %r for subscription %s is not one "
                "tidings knows; ignored",
                event,
                subscription,
            )


_HUB: list[NotificationHub] = []
"""This process's webhook (at most one), set by the connectors role."""


def install(hub: NotificationHub | None) -> None:
    """Make `hub` this process's webhook (None: Graph mailboxes poll)."""
    _HUB.clear()
    if hub is not None:
        _HUB.append(hub)


def current() -> NotificationHub | None:
    """This process's webhook, if notifications are on."""
    return _HUB[0] if _HUB else None


# -- one mailbox's subscriptions ----------------------------------------------------


@dataclass
class Subscription:
    """One resource's subscription: Graph's id, our secret, and its lifetime."""

    subscription_id: str
    resource: Resource
    client_state: str
    since: datetime
    expires: datetime


class GraphPush:
    """A mailbox's subscriptions, one per watched resource (see module doc)."""

    def __init__(
        self, client: GraphClient, user_path: str, mailbox_id: str, hub: NotificationHub
    ) -> None:
        self.client = client
        self.user_path = user_path
        self.mailbox_id = mailbox_id
        self.hub = hub
        self.settings = hub.settings
        self.subscriptions: dict[str, Subscription] = {}
        """By resource path."""
        self.wake = asyncio.Event()
        self.pushed = False
        """A change notification arrived since the last wake-up."""
        self.pending: list[tuple[str, Lifecycle]] = []
        """Lifecycle notifications not handled yet."""
        self.set_aside: dict[str, float] = {}
        """Optional resources Graph refused, by path: when (monotonic)."""
        self.failed_at: float | None = None
        self.failing = False

    # -- the hub's receiver ----------------------------------------------------

    def changed(self, subscription_id: str) -> None:
        self.pushed = True
        self.wake.set()

    def lifecycle(self, subscription_id: str, event: Lifecycle) -> None:
        self.pending.append((subscription_id, event))
        self.wake.set()

    # -- waiting ---------------------------------------------------------------

    async def wait(self, resources: Sequence[Resource | str], timeout_s: float) -> bool:
        """Until a change notification, a new subscription or a lifecycle notification
        asking for a delta pass (True), or `timeout_s` (False); renews subscriptions
        that come due and answers lifecycle notifications meanwhile; a plain sleep
        while subscribing fails. A plain string is a mail folder's id."""
        wanted = [
            r if isinstance(r, Resource) else message_resource(self.user_path, r) for r in resources
        ]
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not retry_due(self.failed_at, time.monotonic(), self.settings.retry_s):
                await asyncio.sleep(left)
                return False
            try:
                resync = await self._answer_lifecycle()
                created = await self._ensure(wanted)
            except ConnectorError as exc:
                await self._failed(exc)
                continue
            if self.failing:
                self.failing = False
                log.info("mailbox %s: Graph change notifications work again", self.mailbox_id)
            if created or resync or self.pushed:
                # a change, or what arrived before a subscription began / was missed
                self.pushed = False
                self.wake.clear()
                return True
            if self.pending:
                continue
            self.wake.clear()
            until = self._next_duty(left)
            try:
                async with asyncio.timeout(until):
                    await self.wake.wait()
            except TimeoutError:
                continue
        return False

    def _next_duty(self, left: float) -> float:
        """Seconds until the next renewal or set-aside retry, at most `left`."""
        waits = [left]
        fraction = self.settings.renew_fraction
        now = utc_now()
        waits += [
            (renew_at(s.since, s.expires, fraction) - now).total_seconds()
            for s in self.subscriptions.values()
        ]
        clock = time.monotonic()
        waits += [at + self.settings.retry_s - clock for at in self.set_aside.values()]
        return max(0.0, min(waits))

    # -- subscriptions ---------------------------------------------------------

    async def _ensure(self, resources: Sequence[Resource]) -> bool:
        """Subscribe resources without one, renew those due; True when any was created.
        An optional resource Graph refuses is set aside for `retry_s` (others go on)."""
        created = False
        wanted = {r.path for r in resources}
        for path in [p for p in self.subscriptions if p not in wanted]:
            await self._delete(self.subscriptions.pop(path))
        for path in [p for p in self.set_aside if p not in wanted]:
            del self.set_aside[path]
        now = utc_now()
        for resource in resources:
            refused = self.set_aside.get(resource.path)
            if not retry_due(refused, time.monotonic(), self.settings.retry_s):
                continue
            try:
                current = self.subscriptions.get(resource.path)
                if current is None:
                    self.subscriptions[resource.path] = await self._create(resource)
                    created = True
                elif (
                    now >= renew_at(current.since, current.expires, self.settings.renew_fraction)
                    and await self._renew(current) is None
                ):
                    self.hub.unregister(current.subscription_id)
                    del self.subscriptions[resource.path]
                    self.subscriptions[resource.path] = await self._create(resource)
                    created = True
            except ConnectorError as exc:
                if not resource.optional:
                    raise
                self._aside(resource, exc)
                continue
            if self.set_aside.pop(resource.path, None) is not None:
                log.info(
                    "mailbox %s: Graph change notifications on %s work again",
                    self.mailbox_id,
                    resource.path,
                )
        return created

    def _aside(self, resource: Resource, exc: ConnectorError) -> None:
        """Set an optional resource aside after Graph refused it (count, log once)."""
        metrics.CONNECTOR_PUSH_FAILURES.labels(PROTOCOL).inc()
        if resource.path not in self.set_aside:
            log.warning(
                "mailbox %s: Graph change notifications on %s unavailable (%s); those items "
                "wait for the poll, subscribing again in %.0fs",
                self.mailbox_id,
                resource.path,
                exc.message,
                self.settings.retry_s,
            )
        self.set_aside[resource.path] = time.monotonic()
        stale = self.subscriptions.pop(resource.path, None)
        if stale is not None:
            self.hub.unregister(stale.subscription_id)

    async def _answer_lifecycle(self) -> bool:
        """Handle the lifecycle notifications received (module doc); True when a delta
        pass is due (`missed`; a removed subscription is made again by `_ensure`, which
        then asks for the pass itself)."""
        pending, self.pending = self.pending, []
        resync = False
        for subscription_id, event in pending:
            found = next(
                (s for s in self.subscriptions.values() if s.subscription_id == subscription_id),
                None,
            )
            if found is None:
                continue  # replaced or deleted meanwhile
            if event == Lifecycle.MISSED:
                resync = True
            elif event == Lifecycle.SUBSCRIPTION_REMOVED:
                log.info(
                    "mailbox %s: Graph removed the subscription on %s; subscribing again",
                    self.mailbox_id,
                    found.resource.path,
                )
                self._forget(found)
            elif not await self._reauthorize(found):
                self._forget(found)  # Graph no longer knows it: made again by _ensure
        return resync

    def _forget(self, subscription: Subscription) -> None:
        self.hub.unregister(subscription.subscription_id)
        self.subscriptions.pop(subscription.resource.path, None)

    async def _reauthorize(self, current: Subscription) -> bool:
        """POST /subscriptions/{id}/reauthorize; when Graph refuses that action, a
        renewal (PATCH also reauthorizes). False when Graph no longer knows it."""
        response = await self.client.request(
            "POST", f"/subscriptions/{current.subscription_id}/reauthorize", kind="subscribe"
        )
        if 200 <= response.status_code < 300:
            metrics.CONNECTOR_PUSH_SUBSCRIPTIONS.labels(PROTOCOL, "reauthorized").inc()
            return True
        if response.status_code == 404:
            return False
        log.info(
            "mailbox %s: Graph refused to reauthorize the subscription on %s (HTTP %s); "
            "renewing it instead",
            self.mailbox_id,
            current.resource.path,
            response.status_code,
        )
        return await self._renew(current) is not None

    async def _create(self, resource: Resource) -> Subscription:
        state = secrets.token_urlsafe(32)
        now = utc_now()
        minutes = lifetime(resource, self.settings.lifetime_minutes)
        spec: dict[str, Any] = {
            "changeType": CHANGE_TYPES,
            "notificationUrl": self.hub.public_url,
            "resource": resource.path,
            "expirationDateTime": graph_time(expiration(now, minutes)),
            "clientState": state,
        }
        if self.hub.lifecycle_url is not None:
            spec["lifecycleNotificationUrl"] = self.hub.lifecycle_url
        response = await self.client.request(
            "POST",
            "/subscriptions",
            kind="subscribe",
            headers={"Content-Type": "application/json"},
            content=msgspec.json.encode(spec),
        )
        if response.status_code != 201:
            raise failure(response.status_code, error_code(response.content), "graph subscription")
        answer = _subscription(response.content)
        subscription = Subscription(answer["id"], resource, state, now, answer["expires"])
        self.hub.register(subscription.subscription_id, state, self)
        metrics.CONNECTOR_PUSH_SUBSCRIPTIONS.labels(PROTOCOL, "created").inc()
        return subscription

    async def _renew(self, current: Subscription) -> Subscription | None:
        """Extend a subscription; None when Graph no longer knows it."""
        now = utc_now()
        minutes = lifetime(current.resource, self.settings.lifetime_minutes)
        body = msgspec.json.encode({"expirationDateTime": graph_time(expiration(now, minutes))})
        response = await self.client.request(
            "PATCH",
            f"/subscriptions/{current.subscription_id}",
            kind="subscribe",
            headers={"Content-Type": "application/json"},
            content=body,
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise failure(response.status_code, error_code(response.content), "graph renewal")
        current.since, current.expires = now, _subscription(response.content)["expires"]
        metrics.CONNECTOR_PUSH_SUBSCRIPTIONS.labels(PROTOCOL, "renewed").inc()
        return current

    async def _delete(self, current: Subscription) -> None:
        self.hub.unregister(current.subscription_id)
        with contextlib.suppress(ConnectorError):
            await self.client.request(
                "DELETE", f"/subscriptions/{current.subscription_id}", kind="subscribe"
            )
            metrics.CONNECTOR_PUSH_SUBSCRIPTIONS.labels(PROTOCOL, "deleted").inc()

    async def _failed(self, exc: ConnectorError) -> None:
        self.failed_at = time.monotonic()
        metrics.CONNECTOR_PUSH_FAILURES.labels(PROTOCOL).inc()
        if not self.failing:
            self.failing = True
            log.warning(
                "mailbox %s: Graph change notifications unavailable (%s); polling the delta, "
                "subscribing again in %.0fs",
                self.mailbox_id,
                exc.message,
                self.settings.retry_s,
            )
        for subscription in list(self.subscriptions.values()):
            self.hub.unregister(subscription.subscription_id)
        self.subscriptions.clear()
        self.pending.clear()

    async def close(self) -> None:
        """Delete the subscriptions (bounded; Graph expires them anyway)."""
        subscriptions = list(self.subscriptions.values())
        self.subscriptions.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                for subscription in subscriptions:
                    await self._delete(subscription)
        for subscription in subscriptions:
            self.hub.unregister(subscription.subscription_id)


def _subscription(body: bytes) -> dict[str, Any]:
    """Graph's answer to a subscription request: its id and granted expiry."""
    try:
        answer = msgspec.json.decode(body, type=dict[str, Any])
        return {
            "id": str(answer["id"]),
            "expires": parse_graph_time(str(answer["expirationDateTime"])),
        }
    except (msgspec.DecodeError, KeyError, ValueError):
        raise errors.transient(
            errors.PROTOCOL_ERROR, "graph answered a subscription request unreadably"
        ) from None
