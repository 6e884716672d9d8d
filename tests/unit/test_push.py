"""The pure rules of push: EWS streaming (which events wake, which errors mean
"subscribe again", when to try again) and Graph change notifications (clientState
check, renewal timing, notification URLs, Graph's timestamps), plus the Graph
webhook's handshake and routing driven through aiohttp's test client."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors import ews_push, graph_push
from connectors.graph_push import Verdict
from schemas.config import GraphNotificationsConfig

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


# -- EWS streaming -----------------------------------------------------------------


def test_only_change_events_wake_a_mailbox() -> None:
    assert ews_push.wakes(["NewMailEvent"])
    assert ews_push.wakes(["StatusEvent", "ModifiedEvent"])
    assert not ews_push.wakes(["StatusEvent"])
    assert not ews_push.wakes(["FreeBusyChangedEvent"])
    assert not ews_push.wakes([])


@pytest.mark.parametrize(
    ("code", "again"),
    [
        ("ErrorSubscriptionNotFound", True),
        ("ErrorExpiredSubscription", True),
        ("ErrorInvalidSubscription", True),
        ("ErrorMissedNotificationEvents", True),
        ("ErrorSubscriptionUnsubsribed", True),
        ("ErrorExceededConnectionCount", False),
        ("ErrorServerBusy", False),
        ("UnauthorizedError", False),
    ],
)
def test_which_stream_errors_mean_subscribe_again(code: str, again: bool) -> None:
    assert ews_push.resubscribe(code) is again


def test_streaming_is_tried_again_after_the_retry_interval() -> None:
    assert ews_push.retry_due(None, 100.0, 600.0)
    assert not ews_push.retry_due(100.0, 699.0, 600.0)
    assert ews_push.retry_due(100.0, 700.0, 600.0)


async def test_a_failed_stream_leaves_the_mailbox_polling_until_the_retry() -> None:
    push = ews_push.EwsPush("mb-1", "EWS test", retry_s=600.0)
    push.failed_at = 1e18  # failed "now": not due again
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await push.wait(object(), [], 0.05) is False
    assert loop.time() - started >= 0.04  # it slept: a poll, not a busy loop
    assert push.listener is None


# -- Graph notifications -----------------------------------------------------------


def test_notifications_need_our_subscription_and_its_client_state() -> None:
    known = {"sub-1": "s3cret-state"}
    ok = {"subscriptionId": "sub-1", "clientState": "s3cret-state"}
    assert graph_push.verdict(ok, known) == Verdict.ACCEPTED
    assert (
        graph_push.verdict({"subscriptionId": "sub-1", "clientState": "guess"}, known)
        == Verdict.BAD_CLIENT_STATE
    )
    assert graph_push.verdict({"subscriptionId": "sub-1"}, known) == Verdict.BAD_CLIENT_STATE
    assert (
        graph_push.verdict({"subscriptionId": "sub-9", "clientState": "s3cret-state"}, known)
        == Verdict.UNKNOWN_SUBSCRIPTION
    )
    assert graph_push.verdict({"clientState": "s3cret-state"}, known) == (
        Verdict.UNKNOWN_SUBSCRIPTION
    )
    assert graph_push.verdict(ok, known) == graph_push.verdict(ok, known)  # no state


def test_renewal_comes_after_the_fraction_of_the_granted_lifetime() -> None:
    granted = NOW + timedelta(minutes=4230)
    assert graph_push.renew_at(NOW, granted, 0.75) == NOW + timedelta(minutes=3172.5)
    # Graph granted less than asked (or nothing): renewal follows what it granted.
    assert graph_push.renew_at(NOW, NOW + timedelta(seconds=4), 0.5) == NOW + timedelta(seconds=2)
    assert graph_push.renew_at(NOW, NOW - timedelta(seconds=1), 0.5) == NOW
    assert graph_push.expiration(NOW, 60) == NOW + timedelta(hours=1)


def test_graph_times_round_trip_with_seven_fraction_digits() -> None:
    text = graph_push.graph_time(NOW)
    assert text == "2026-03-02T10:00:00.0000000Z"
    assert graph_push.parse_graph_time(text) == NOW
    assert graph_push.parse_graph_time("2026-03-02T10:00:05.1234567Z") == NOW + timedelta(
        seconds=5, microseconds=123456
    )
    assert graph_push.parse_graph_time("2026-03-02T10:00:00Z") == NOW


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://tidings.example.com/graph/notifications", True),
        ("http://127.0.0.1:8443/graph", True),
        ("http://localhost:8443/graph", True),
        ("http://tidings.example.com/graph", False),
        ("ftp://tidings.example.com/graph", False),
        (None, False),
        ("", False),
    ],
)
def test_notification_urls_must_be_https_except_on_loopback(url: str | None, ok: bool) -> None:
    assert (graph_push.url_problem(url) is None) is ok


def test_notifications_config_needs_a_public_url_when_enabled() -> None:
    with pytest.raises(ValueError, match="public_url"):
        GraphNotificationsConfig(enabled=True)
    assert not GraphNotificationsConfig().enabled  # off by default
    with pytest.raises(ValueError, match="https"):
        graph_push.NotificationHub(
            GraphNotificationsConfig(enabled=True, public_url="http://example.com/hook")
        )


async def test_the_webhook_echoes_validation_and_wakes_only_for_matching_state() -> None:
    hub = graph_push.NotificationHub(
        GraphNotificationsConfig(enabled=True, public_url="http://127.0.0.1:1/graph/hook")
    )
    wake = asyncio.Event()
    hub.register("sub-1", "right-state", wake)
    from aiohttp import web

    app = web.Application()
    app.router.add_post(hub.path, hub._post)
    async with TestClient(TestServer(app)) as client:
        answer = await client.post("/graph/hook?validationToken=Validation%3A%20abc")
        assert answer.status == 200
        assert answer.content_type == "text/plain"
        assert await answer.text() == "Validation: abc"

        forged = {"value": [{"subscriptionId": "sub-1", "clientState": "wrong"}]}
        assert (await client.post("/graph/hook", json=forged)).status == 202
        unknown = {"value": [{"subscriptionId": "sub-2", "clientState": "right-state"}]}
        assert (await client.post("/graph/hook", json=unknown)).status == 202
        assert (await client.post("/graph/hook", data=b"not json")).status == 202
        assert not wake.is_set()

        good = {"value": [{"subscriptionId": "sub-1", "clientState": "right-state"}]}
        assert (await client.post("/graph/hook", json=good)).status == 202
        assert wake.is_set()

        hub.unregister("sub-1")
        wake.clear()
        assert (await client.post("/graph/hook", json=good)).status == 202
        assert not wake.is_set()
    assert hub.counts[Verdict.ACCEPTED] == 1
    assert hub.counts[Verdict.BAD_CLIENT_STATE] == 1
    assert hub.counts[Verdict.UNKNOWN_SUBSCRIPTION] == 2
