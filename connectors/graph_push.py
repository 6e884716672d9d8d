"""Microsoft Graph change notifications: the push path of Graph mailboxes.

Graph posts notifications to a public HTTPS URL, so this is off unless
`connectors.graph_notifications` is enabled with a `public_url`. Then the
connectors process serves a small aiohttp webhook (`NotificationHub`, on the
bind address, behind a reverse proxy that terminates TLS), and each Graph
mailbox (`GraphPush`) subscribes its synced folders:

    POST /subscriptions {changeType: "created,updated,deleted",
        resource: "users/{user}/mailFolders('{id}')/messages",
        notificationUrl: public_url, clientState: <random, per subscription>,
        expirationDateTime: now + lifetime_minutes}

- Validation handshake: Graph first POSTs `?validationToken=...` to the URL;
  the hub answers 200 text/plain with the token (within Graph's 10 s).
- Every notification is checked: its subscription must be one this process
  made and its `clientState` must match that subscription's secret (compared
  in constant time); anything else is ignored and counted. The hub answers
  202 at once whatever the verdict (Graph retries other answers).
- A subscription is renewed (PATCH expirationDateTime) once `renew_fraction`
  of the lifetime Graph granted has passed; one Graph no longer knows (404) is
  made again. A new subscription wakes the mailbox once, so what arrived before
  it began is caught by one delta pass.
- When a subscription cannot be made or renewed, the failure is counted
  (tidings_connector_push_failures_total), logged once per streak, and the
  mailbox polls its delta; subscribing is tried again after `retry_s`.
- Lifecycle notifications (reauthorizationRequired, missed) are not
  subscribed: the delta poll, which never stops, covers missed notifications.
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
from typing import Any
from urllib.parse import urlsplit

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


# -- pure rules -------------------------------------------------------------------


class Verdict(StrEnum):
    """What the hub makes of one notification."""

    ACCEPTED = "accepted"
    BAD_CLIENT_STATE = "bad_client_state"
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"


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


# -- the webhook --------------------------------------------------------------------


class NotificationHub:
    """The webhook Graph posts to: validation handshakes and notifications, routed to
    the mailbox that owns the subscription."""

    def __init__(self, settings: GraphNotificationsConfig) -> None:
        problem = url_problem(settings.public_url)
        if problem is not None:
            raise ValueError(problem)
        assert settings.public_url is not None
        self.settings = settings
        self.public_url = settings.public_url
        self.path = urlsplit(settings.public_url).path or "/"
        self.client_states: dict[str, str] = {}
        self.wakes: dict[str, asyncio.Event] = {}
        self.counts: dict[Verdict, int] = dict.fromkeys(Verdict, 0)
        self.port = settings.port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Serve on the bind address (port 0 picks a free one, see `port`)."""
        app = web.Application(client_max_size=MAX_NOTIFICATION_BYTES)
        app.router.add_post(self.path, self._post)
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

    def register(self, subscription_id: str, client_state: str, wake: asyncio.Event) -> None:
        """Route `subscription_id`'s notifications (with this clientState) to `wake`."""
        self.client_states[subscription_id] = client_state
        self.wakes[subscription_id] = wake

    def unregister(self, subscription_id: str) -> None:
        """Forget a subscription: its notifications are ignored from now on."""
        self.client_states.pop(subscription_id, None)
        self.wakes.pop(subscription_id, None)

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
            if not isinstance(note, dict):
                continue
            found = verdict(note, self.client_states)
            self.counts[found] += 1
            metrics.CONNECTOR_PUSH_NOTIFICATIONS.labels(str(found)).inc()
            if found == Verdict.ACCEPTED:
                self.wakes[str(note["subscriptionId"])].set()
            elif found == Verdict.BAD_CLIENT_STATE:
                log.warning(
                    "graph notifications: a notification for subscription %s had the wrong "
                    "clientState and was ignored",
                    note.get("subscriptionId"),
                )
        return web.Response(status=202)


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
    """One folder's subscription: Graph's id, our secret, and its lifetime."""

    subscription_id: str
    folder_id: str
    client_state: str
    since: datetime
    expires: datetime


class GraphPush:
    """A mailbox's subscriptions, one per synced folder (see module doc)."""

    def __init__(
        self, client: GraphClient, user_path: str, mailbox_id: str, hub: NotificationHub
    ) -> None:
        self.client = client
        self.user_path = user_path
        self.mailbox_id = mailbox_id
        self.hub = hub
        self.settings = hub.settings
        self.subscriptions: dict[str, Subscription] = {}
        self.wake = asyncio.Event()
        self.failed_at: float | None = None
        self.failing = False

    async def wait(self, folder_ids: Sequence[str], timeout_s: float) -> bool:
        """Until a notification (True) or `timeout_s` (False), renewing subscriptions
        that come due meanwhile; a plain sleep while subscribing fails."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not retry_due(self.failed_at, time.monotonic(), self.settings.retry_s):
                await asyncio.sleep(left)
                return False
            try:
                created = await self._ensure(folder_ids)
            except ConnectorError as exc:
                await self._failed(exc)
                continue
            if self.failing:
                self.failing = False
                log.info("mailbox %s: Graph change notifications work again", self.mailbox_id)
            if created:
                self.wake.clear()
                return True  # catch what arrived before the subscriptions began
            if not self.subscriptions:  # no folder to watch
                await asyncio.sleep(left)
                return False
            due = min(
                renew_at(s.since, s.expires, self.settings.renew_fraction)
                for s in self.subscriptions.values()
            )
            until_renewal = (due - utc_now()).total_seconds()
            try:
                async with asyncio.timeout(max(0.0, min(left, until_renewal))):
                    await self.wake.wait()
            except TimeoutError:
                continue
            self.wake.clear()
            return True
        return False

    async def _ensure(self, folder_ids: Sequence[str]) -> bool:
        """Subscribe folders without one, renew those due; True when any was created."""
        created = False
        wanted = set(folder_ids)
        for folder_id in [f for f in self.subscriptions if f not in wanted]:
            await self._delete(self.subscriptions.pop(folder_id))
        now = utc_now()
        for folder_id in folder_ids:
            current = self.subscriptions.get(folder_id)
            if current is None:
                self.subscriptions[folder_id] = await self._create(folder_id)
                created = True
            elif now >= renew_at(current.since, current.expires, self.settings.renew_fraction):
                renewed = await self._renew(current)
                if renewed is None:
                    self.hub.unregister(current.subscription_id)
                    self.subscriptions[folder_id] = await self._create(folder_id)
                    created = True
        return created

    async def _create(self, folder_id: str) -> Subscription:
        state = secrets.token_urlsafe(32)
        now = utc_now()
        body = msgspec.json.encode(
            {
                "changeType": CHANGE_TYPES,
                "notificationUrl": self.hub.public_url,
                "resource": f"{self.user_path.lstrip('/')}/mailFolders('{folder_id}')/messages",
                "expirationDateTime": graph_time(expiration(now, self.settings.lifetime_minutes)),
                "clientState": state,
            }
        )
        response = await self.client.request(
            "POST",
            "/subscriptions",
            kind="subscribe",
            headers={"Content-Type": "application/json"},
            content=body,
        )
        if response.status_code != 201:
            raise failure(response.status_code, error_code(response.content), "graph subscription")
        answer = _subscription(response.content)
        subscription = Subscription(answer["id"], folder_id, state, now, answer["expires"])
        self.hub.register(subscription.subscription_id, state, self.wake)
        metrics.CONNECTOR_PUSH_SUBSCRIPTIONS.labels(PROTOCOL, "created").inc()
        return subscription

    async def _renew(self, current: Subscription) -> Subscription | None:
        """Extend a subscription; None when Graph no longer knows it."""
        now = utc_now()
        body = msgspec.json.encode(
            {"expirationDateTime": graph_time(expiration(now, self.settings.lifetime_minutes))}
        )
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
