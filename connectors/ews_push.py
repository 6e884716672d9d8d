"""EWS streaming notifications: the push path of an Exchange mailbox.

A streaming subscription (Subscribe with StreamingSubscriptionRequest) covers the
synced mail folders, and the Calendar / Contacts / Tasks folders of a mailbox
that syncs appointments, contacts and tasks (docs/act.md; the caller passes
them), for NewMail, Created, Modified, Deleted, Moved and Copied events;
one worker thread holds GetStreamingEvents open (`connection_timeout_min`
minutes per connection, then the next one) and sets a flag whenever a
notification carries such an event. `EwsPush.wait` returns True as soon as the
flag is set, so a change arriving during a sync pass wakes the next wait at once;
the mailbox's pass reads the mail folders and the ACT folders alike, so a tracked
appointment reaches the CRM as soon as a new message would.

- A new subscription also sets the flag once: whatever arrived between the last
  pass and the subscription is caught by one more pass.
- A subscription the server no longer knows (ErrorSubscriptionNotFound,
  expired, unsubscribed, missed events) is made again, flag set.
- Any other failure (the server refuses streaming, a lost connection,
  throttling) ends the thread: the failure is counted
  (tidings_connector_push_failures_total), logged once per streak, and the
  mailbox polls; streaming is tried again after `retry_s`.

The asynchronous side never waits for the thread: cancelling `wait` is
immediate, and `close` unsubscribes and aborts the open stream without joining.
The streaming connection takes one HTTP session beyond the mailbox's request
concurrency (the shared exchangelib session pool grows by one while it runs),
so it never starves a sync pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from exchangelib.folders import FolderCollection
from exchangelib.services import GetStreamingEvents, Unsubscribe

from schemas import metrics

log = logging.getLogger(__name__)
PROTOCOL = "ews"
EVENT_TYPES = (
    "NewMailEvent",
    "CreatedEvent",
    "ModifiedEvent",
    "DeletedEvent",
    "MovedEvent",
    "CopiedEvent",
)
"""What the subscription asks for (FreeBusyChanged and status events are not changes)."""
RESUBSCRIBE_CODES = frozenset(
    {
        "ErrorSubscriptionNotFound",
        "ErrorInvalidSubscription",
        "ErrorExpiredSubscription",
        "ErrorSubscriptionUnsubsribed",  # exchangelib's (and the schema's) spelling
        "ErrorSubscriptionUnsubscribed",
        "ErrorMissedNotificationEvents",
    }
)
"""Answers meaning "subscribe again" rather than "streaming does not work here"."""
_POOL_LOCK = threading.Lock()


def wakes(event_types: Iterable[str]) -> bool:
    """Whether a notification with these event element names means the mailbox changed."""
    return any(name in EVENT_TYPES for name in event_types)


def resubscribe(code: str) -> bool:
    """Whether an EWS error code asks for a new subscription (not a fall-back)."""
    return code in RESUBSCRIBE_CODES


def retry_due(failed_at: float | None, now: float, retry_s: float) -> bool:
    """Whether streaming may be tried again: never failed, or `retry_s` have passed."""
    return failed_at is None or now - failed_at >= retry_s


class _Listener:
    """One streaming subscription and the thread that listens to it."""

    def __init__(
        self,
        account: Any,
        folders: Sequence[Any],
        wake: asyncio.Event,
        loop: asyncio.AbstractEventLoop,
        connection_timeout_min: int,
        name: str,
    ) -> None:
        self.account = account
        self.folders = list(folders)
        self.wake = wake
        self.loop = loop
        self.connection_timeout_min = connection_timeout_min
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.done = asyncio.Event()
        self.subscription: str | None = None
        self.subscriptions = 0
        self._service: GetStreamingEvents | None = None
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _signal(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.loop.call_soon_threadsafe(self.wake.set)

    def _finished(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.done.set)

    def _serve(self) -> None:
        protocol = self.account.protocol
        with _POOL_LOCK:  # the stream's own session, beyond the mailbox's concurrency
            protocol.max_connections = protocol.max_connections + 1
        try:
            while not self.stopping.is_set():
                if self.subscription is None:
                    self.subscription = FolderCollection(
                        account=self.account, folders=self.folders
                    ).subscribe_to_streaming(event_types=EVENT_TYPES)
                    self.subscriptions += 1
                    self._signal()  # catch what arrived before the subscription began
                self._listen(self.subscription)
        except Exception as exc:
            if not self.stopping.is_set():
                self.failure = exc
        finally:
            with _POOL_LOCK:
                protocol.max_connections = max(1, protocol.max_connections - 1)
            self._finished()

    def _listen(self, subscription: str) -> None:
        """One GetStreamingEvents connection, until the server closes it."""
        service = GetStreamingEvents(account=self.account)
        self._service = service
        try:
            for notification in service.call(
                subscription_ids=[subscription], connection_timeout=self.connection_timeout_min
            ):
                if self.stopping.is_set():
                    return
                if isinstance(notification, Exception):
                    raise notification
                if wakes(type(event).__name__ for event in notification.events or ()):
                    self._signal()
        except Exception as exc:
            if self.stopping.is_set():
                return
            if resubscribe(type(exc).__name__):
                log.info(
                    "EWS streaming subscription gone (%s); subscribing again", type(exc).__name__
                )
                self.subscription = None
                return
            raise
        finally:
            self._service = None
            with contextlib.suppress(Exception):
                service.stop_streaming()

    def stop(self) -> None:
        """Ask the thread to end and cut its open stream (no join: it is a daemon)."""
        self.stopping.set()
        service = self._service
        response = getattr(service, "_streaming_response", None) if service else None
        if response is not None:
            _abort(response)

    def unsubscribe(self) -> None:
        """Unsubscribe (blocking; failures ignored: the subscription expires anyway)."""
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                Unsubscribe(account=self.account).get(subscription_id=subscription)


def _abort(response: Any) -> None:
    """Shut the socket under a streaming `requests` response down, waking its reader."""
    with contextlib.suppress(Exception):
        connection = getattr(response.raw, "_connection", None) or getattr(
            response.raw, "connection", None
        )
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


class EwsPush:
    """A mailbox's streaming notifications, restarted as needed (see module doc)."""

    def __init__(
        self,
        mailbox_id: str,
        where: str,
        *,
        retry_s: float,
        connection_timeout_min: int = 30,
    ) -> None:
        self.mailbox_id = mailbox_id
        self.where = where
        self.retry_s = retry_s
        self.connection_timeout_min = connection_timeout_min
        self.listener: _Listener | None = None
        self.failed_at: float | None = None
        self.failing = False
        self.wake = asyncio.Event()

    @property
    def streaming(self) -> bool:
        """Whether a listener is running (not failed)."""
        return self.listener is not None and not self.listener.done.is_set()

    def _check(self) -> None:
        """Note a listener that ended on a failure: count it, log once per streak."""
        listener = self.listener
        if listener is None or not listener.done.is_set():
            return
        self.listener = None
        if listener.failure is None:
            return
        self.failed_at = time.monotonic()
        metrics.CONNECTOR_PUSH_FAILURES.labels(PROTOCOL).inc()
        if not self.failing:
            self.failing = True
            log.warning(
                "mailbox %s: EWS streaming notifications from %s failed (%s); polling, "
                "streaming again in %.0fs",
                self.mailbox_id,
                self.where,
                type(listener.failure).__name__,
                self.retry_s,
            )

    def _start(self, account: Any, folders: Sequence[Any]) -> None:
        listener = _Listener(
            account,
            folders,
            self.wake,
            asyncio.get_running_loop(),
            self.connection_timeout_min,
            f"ews-stream-{self.mailbox_id}",
        )
        self.listener = listener
        listener.start()

    async def wait(self, account: Any, folders: Sequence[Any], timeout_s: float) -> bool:
        """Until a notification (True) or `timeout_s` (False); polls (sleeps) while
        streaming is failing."""
        self._check()
        if self.listener is None and retry_due(self.failed_at, time.monotonic(), self.retry_s):
            self._start(account, folders)
        if self.listener is None:
            await asyncio.sleep(timeout_s)
            return False
        listener = self.listener
        woken = asyncio.ensure_future(self.wake.wait())
        ended = asyncio.ensure_future(listener.done.wait())
        try:
            await asyncio.wait(
                {woken, ended}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (woken, ended):
                task.cancel()
        if self.wake.is_set():
            self.wake.clear()
            if self.failing:
                self.failing = False
                log.info("mailbox %s: EWS streaming notifications work again", self.mailbox_id)
            return True
        if listener.done.is_set():
            self._check()  # failed: the caller waits the rest (a poll)
        return False

    async def close(self) -> None:
        """Stop listening and unsubscribe (bounded; the thread is not joined)."""
        listener, self.listener = self.listener, None
        if listener is None:
            return
        listener.stop()
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.to_thread(listener.unsubscribe)
