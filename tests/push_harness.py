"""What the push tests share: the EWS and Graph simulators set up for push, the
connectors' Graph webhook on loopback, an EWS server profile, metric readers and a
bounded wait."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec

from connectors import graph_push
from connectors.graph_auth import forget_apps
from pipeline.embedded import free_port
from schemas import metrics
from schemas.config import GraphNotificationsConfig
from schemas.mailbox import PollingSettings, RetryPolicy, ServerProfile
from tests.act_harness import ews_profile as loopback_ews_profile
from tests.ews_sim import EwsSimulator
from tests.graph_sim import GraphSimulator

RETRY = RetryPolicy(max_retries=2, retry_interval_s=1.0, reconnect_base_s=0.2)


def polls(protocol: str, reason: str) -> float:
    """Polls counted so far for `protocol` and `reason` (tidings_connector_polls_total)."""
    return float(metrics.CONNECTOR_POLLS.labels(protocol, reason)._value.get())


async def until(check: Any, what: str, timeout_s: float = 30.0) -> None:
    """Wait until `check()` is true (a safety bound, not a timed assertion)."""
    for _ in range(int(timeout_s / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


@contextlib.contextmanager
def ews_push_simulator(password_env: str, password: str) -> Iterator[EwsSimulator]:
    """An EWS simulator with an impersonating service account `svc` (its password in
    `password_env` while it runs) and streaming keep-alives every second."""
    os.environ[password_env] = password
    try:
        with EwsSimulator() as server:
            server.add_user("svc", password, impersonator=True)
            server.streaming.keepalive_s = 1.0
            yield server
    finally:
        os.environ.pop(password_env, None)


@contextlib.asynccontextmanager
async def graph_push_simulator(
    root: Path, app: str, secret: str, secret_env: str
) -> AsyncIterator[GraphSimulator]:
    """A Graph simulator knowing the app `app` (its secret in `secret_env` while it
    runs), with msal's cached apps forgotten before and after."""
    forget_apps()
    os.environ[secret_env] = secret
    try:
        async with GraphSimulator.running(root) as server:
            server.add_app(app, secret)
            yield server
    finally:
        os.environ.pop(secret_env, None)
        forget_apps()


@contextlib.asynccontextmanager
async def notification_hub(**settings: Any) -> AsyncIterator[graph_push.NotificationHub]:
    """The connectors' Graph webhook on a free loopback port, installed for the
    connectors of this process (Graph itself needs https: the simulator does not)."""
    port = free_port()
    config = GraphNotificationsConfig(
        enabled=True,
        public_url=f"http://127.0.0.1:{port}/graph/notifications",
        port=port,
        **settings,
    )
    webhook = graph_push.NotificationHub(config)
    await webhook.start()
    graph_push.install(webhook)
    try:
        yield webhook
    finally:
        graph_push.install(None)
        await webhook.stop()


def ews_profile(sim: EwsSimulator, polling: PollingSettings) -> ServerProfile:
    """A plaintext loopback EWS profile for `sim` polling on `polling`."""
    return msgspec.structs.replace(loopback_ews_profile(sim, RETRY), polling=polling)
