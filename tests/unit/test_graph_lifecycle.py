"""Graph push beyond mail: subscription resources for appointments, contacts and To Do
tasks, lifecycle notifications (parsing, counting, routing through the webhook) and
what a mailbox's GraphPush does with each (reauthorize, make again, delta pass),
against a fake Graph client that records the calls."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors import graph_push
from connectors.graph_client import GraphClient
from connectors.graph_push import Lifecycle, Resource, Verdict
from schemas import metrics
from schemas.config import GraphNotificationsConfig

USER = "/users/alice@contoso.example"
SETTINGS = GraphNotificationsConfig(
    enabled=True, public_url="http://127.0.0.1:1/graph/hook", retry_s=600.0
)


# -- pure rules ---------------------------------------------------------------------


def test_act_resources_follow_the_enabled_kinds() -> None:
    every = graph_push.act_resources(USER, events=True, contacts=True, task_list="AAMk=list")
    assert [r.path for r in every] == [
        "users/alice@contoso.example/events",
        "users/alice@contoso.example/contacts",
        "users/alice@contoso.example/todo/lists/AAMk%3Dlist/tasks",
    ]
    assert all(r.optional for r in every)  # a refusal never costs mail its push
    assert graph_push.act_resources(USER, events=False, contacts=True, task_list=None) == [
        Resource("users/alice@contoso.example/contacts", optional=True)
    ]
    mail = graph_push.message_resource(USER, "AQMkInbox")
    assert mail == Resource("users/alice@contoso.example/mailFolders('AQMkInbox')/messages")
    assert not mail.optional


def test_lifetimes_are_capped_per_resource() -> None:
    tasks = graph_push.act_resources(USER, events=False, contacts=False, task_list="L")[0]
    assert graph_push.lifetime(tasks, 10080) == graph_push.TODO_MAX_MINUTES
    assert graph_push.lifetime(tasks, 60) == 60
    assert graph_push.lifetime(graph_push.message_resource(USER, "f"), 10080) == 10080


def test_the_lifecycle_url_sits_next_to_the_notification_url() -> None:
    assert (
        graph_push.lifecycle_url("https://hooks.example/graph/notifications")
        == "https://hooks.example/graph/notifications/lifecycle"
    )
    assert graph_push.lifecycle_url("https://hooks.example/") == "https://hooks.example/lifecycle"
    hub = graph_push.NotificationHub(SETTINGS)
    assert hub.lifecycle_path == "/graph/hook/lifecycle"
    off = GraphNotificationsConfig(enabled=True, public_url=SETTINGS.public_url, lifecycle=False)
    assert graph_push.NotificationHub(off).lifecycle_url is None


def test_lifecycle_events_and_their_labels() -> None:
    assert graph_push.lifecycle_event({"subscriptionId": "s"}) is None
    assert graph_push.lifecycle_event({"lifecycleEvent": "missed"}) == Lifecycle.MISSED
    assert graph_push.lifecycle_event({"lifecycleEvent": "somethingNew"}) == "somethingNew"
    accepted = Verdict.ACCEPTED
    assert graph_push.notification_label(accepted, None) == "accepted"
    assert graph_push.notification_label(accepted, Lifecycle.REAUTHORIZATION_REQUIRED) == (
        "reauthorizationRequired"
    )
    assert graph_push.notification_label(accepted, "somethingNew") == "lifecycle_unknown"
    # a forged lifecycle notification counts as forged, whatever it claims
    assert graph_push.notification_label(Verdict.BAD_CLIENT_STATE, Lifecycle.MISSED) == (
        "bad_client_state"
    )


# -- the webhook --------------------------------------------------------------------


@dataclass
class Recorder:
    changes: list[str] = field(default_factory=list)
    events: list[tuple[str, Lifecycle]] = field(default_factory=list)

    def changed(self, subscription_id: str) -> None:
        self.changes.append(subscription_id)

    def lifecycle(self, subscription_id: str, event: Lifecycle) -> None:
        self.events.append((subscription_id, event))


def label_count(label: str) -> float:
    return float(metrics.CONNECTOR_PUSH_NOTIFICATIONS.labels(label)._value.get())


async def test_the_lifecycle_path_validates_checks_state_and_routes() -> None:
    hub = graph_push.NotificationHub(SETTINGS)
    receiver = Recorder()
    hub.register("sub-1", "right", receiver)
    app = web.Application()
    app.router.add_post(hub.path, hub._post)
    assert hub.lifecycle_path is not None
    app.router.add_post(hub.lifecycle_path, hub._post)
    missed_before = label_count("missed")

    def note(event: str, state: str = "right", sub: str = "sub-1") -> dict[str, Any]:
        return {"value": [{"subscriptionId": sub, "clientState": state, "lifecycleEvent": event}]}

    async with TestClient(TestServer(app)) as client:
        path = hub.lifecycle_path
        answer = await client.post(f"{path}?validationToken=Validation%3A%20lc")
        assert answer.status == 200 and await answer.text() == "Validation: lc"
        assert (await client.post(path, json=note("missed", state="forged"))).status == 202
        assert (await client.post(path, json=note("missed", sub="sub-9"))).status == 202
        assert receiver.events == []
        for event in ("reauthorizationRequired", "subscriptionRemoved", "missed", "newThing"):
            assert (await client.post(path, json=note(event))).status == 202
        change = {"value": [{"subscriptionId": "sub-1", "clientState": "right"}]}
        assert (await client.post(hub.path, json=change)).status == 202
    assert receiver.events == [
        ("sub-1", Lifecycle.REAUTHORIZATION_REQUIRED),
        ("sub-1", Lifecycle.SUBSCRIPTION_REMOVED),
        ("sub-1", Lifecycle.MISSED),
    ]
    assert receiver.changes == ["sub-1"]
    assert hub.counts[Verdict.BAD_CLIENT_STATE] == 1
    assert hub.counts[Verdict.UNKNOWN_SUBSCRIPTION] == 1
    assert hub.lifecycle_counts == {
        "reauthorizationRequired": 1,
        "subscriptionRemoved": 1,
        "missed": 1,
        "newThing": 1,
    }
    assert label_count("missed") == missed_before + 1


# -- one mailbox's subscriptions against a fake Graph -------------------------------


class FakeGraph:
    """POST /subscriptions, PATCH, DELETE and /reauthorize with scripted answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.serial = 0
        self.refuse: set[str] = set()  # resource suffixes answered 403
        self.reauthorize_status = 204
        self.renew_status = 200

    async def request(
        self,
        method: str,
        path: str,
        *,
        kind: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        self.calls.append((method, path))
        expires = {"expirationDateTime": "2099-01-01T00:00:00.0000000Z"}
        if method == "POST" and path == "/subscriptions":
            spec = json.loads(content or b"{}")
            assert spec["lifecycleNotificationUrl"].endswith("/graph/hook/lifecycle")
            if any(spec["resource"].endswith(suffix) for suffix in self.refuse):
                return httpx.Response(403, json={"error": {"code": "ExtensionError"}})
            self.serial += 1
            return httpx.Response(201, json={"id": f"sub-{self.serial}", **expires})
        if path.endswith("/reauthorize"):
            return httpx.Response(self.reauthorize_status)
        if method == "PATCH":
            answer = {"id": path.rsplit("/", maxsplit=1)[-1], **expires}
            return httpx.Response(self.renew_status, json=answer)
        return httpx.Response(204)

    def count(self, method: str, suffix: str = "") -> int:
        return sum(1 for m, p in self.calls if m == method and p.endswith(suffix))


RESOURCES = [
    graph_push.message_resource(USER, "inbox-id"),
    *graph_push.act_resources(USER, events=True, contacts=True, task_list="list-1"),
]


async def subscribed(fake: FakeGraph) -> graph_push.GraphPush:
    push = graph_push.GraphPush(
        cast(GraphClient, fake), USER, "mb-1", graph_push.NotificationHub(SETTINGS)
    )
    assert await push.wait(RESOURCES, 5.0) is True  # new subscriptions: one pass
    return push


def subscription_on(push: graph_push.GraphPush, suffix: str) -> str:
    return next(s.subscription_id for p, s in push.subscriptions.items() if p.endswith(suffix))


async def test_a_refused_act_resource_is_set_aside_and_mail_keeps_its_push() -> None:
    fake = FakeGraph()
    fake.refuse = {"/tasks"}
    push = await subscribed(fake)
    assert sorted(p.rsplit("/", 1)[-1] for p in push.subscriptions) == [
        "contacts",
        "events",
        "messages",
    ]
    assert list(push.set_aside) == ["users/alice@contoso.example/todo/lists/list-1/tasks"]
    assert not push.failing
    # set aside: not asked again before retry_s
    asks = fake.count("POST", "/subscriptions")
    assert await push.wait(RESOURCES, 0.05) is False
    assert fake.count("POST", "/subscriptions") == asks


async def test_a_change_on_an_act_resource_wakes_the_mailbox() -> None:
    push = await subscribed(FakeGraph())
    events = subscription_on(push, "/events")
    asyncio.get_running_loop().call_later(0.05, push.hub.receivers[events].changed, events)
    assert await push.wait(RESOURCES, 5.0) is True


async def test_reauthorization_required_reauthorizes_without_a_pass() -> None:
    fake = FakeGraph()
    push = await subscribed(fake)
    contacts = subscription_on(push, "/contacts")
    push.lifecycle(contacts, Lifecycle.REAUTHORIZATION_REQUIRED)
    assert await push.wait(RESOURCES, 0.2) is False  # answered, but nothing to read
    assert fake.count("POST", f"/subscriptions/{contacts}/reauthorize") == 1
    assert subscription_on(push, "/contacts") == contacts

    # Graph refuses the action: a renewal reauthorizes as well
    fake.reauthorize_status = 400
    push.lifecycle(contacts, Lifecycle.REAUTHORIZATION_REQUIRED)
    assert await push.wait(RESOURCES, 0.2) is False
    assert fake.count("PATCH", f"/subscriptions/{contacts}") == 1

    # Graph no longer knows it: made again, and the pass catches up
    fake.reauthorize_status = 404
    push.lifecycle(contacts, Lifecycle.REAUTHORIZATION_REQUIRED)
    assert await push.wait(RESOURCES, 5.0) is True
    assert subscription_on(push, "/contacts") != contacts


async def test_subscription_removed_makes_it_again_then_one_pass() -> None:
    fake = FakeGraph()
    push = await subscribed(fake)
    events = subscription_on(push, "/events")
    created = fake.count("POST", "/subscriptions")
    push.lifecycle(events, Lifecycle.SUBSCRIPTION_REMOVED)
    assert await push.wait(RESOURCES, 5.0) is True
    assert fake.count("POST", "/subscriptions") == created + 1
    again = subscription_on(push, "/events")
    assert again != events
    assert events not in push.hub.client_states and again in push.hub.client_states
    assert fake.count("DELETE") == 0  # Graph removed it; nothing to delete


async def test_missed_asks_for_one_pass_at_once() -> None:
    push = await subscribed(FakeGraph())
    push.lifecycle(subscription_on(push, "/messages"), Lifecycle.MISSED)
    assert await push.wait(RESOURCES, 5.0) is True
    assert await push.wait(RESOURCES, 0.05) is False  # one pass, not a loop


async def test_lifecycle_for_a_replaced_subscription_is_ignored() -> None:
    fake = FakeGraph()
    push = await subscribed(fake)
    push.lifecycle("sub-gone", Lifecycle.MISSED)
    push.lifecycle("sub-gone", Lifecycle.REAUTHORIZATION_REQUIRED)
    assert await push.wait(RESOURCES, 0.1) is False
    assert fake.count("POST", "/reauthorize") == 0
