"""The deployable processes: `tidings run connectors|processors|sinks`.

Each runs until SIGTERM/SIGINT — then drains, commits and exits 0 — or, with
`until_idle`, until every mailbox is synced and its inputs are drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from connectors import graph_push
from connectors.act_writer import ActWriter
from connectors.claimcheck import ClaimCheck
from connectors.outgoing_sender import OutgoingSender
from connectors.runtime import ConnectorRuntime
from pipeline.embedded import free_port
from pipeline.http import Endpoint, record_endpoint
from pipeline.idle import IdleProbe
from pipeline.lag import report_lag
from schemas.base import utc_now
from schemas.blobs import open_blob_store
from schemas.config import TidingsConfig
from schemas.errors import EXIT_NEEDS_ATTENTION, StopAndAlert
from sinks.store import ClickHouseStore
from sinks.writer import ClickHouseSink

log = logging.getLogger(__name__)
ROLES = ("connectors", "processors", "sinks")


def run_role(config: TidingsConfig, role: str, until_idle: bool) -> int:
    """Run one role in this process; returns the exit code."""
    logging.getLogger().setLevel(config.log_level.upper())
    if role == "processors":
        return run_processors(config, until_idle)
    runner = _connectors if role == "connectors" else _sinks
    return asyncio.run(_serve(config, role, runner, until_idle))


Runner = Callable[[TidingsConfig, asyncio.Event, Endpoint], Awaitable[None]]


async def _serve(config: TidingsConfig, role: str, runner: Runner, until_idle: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    endpoint = Endpoint(config.metrics, role, config.data_path / "run")
    watcher = None
    if until_idle:
        watcher = asyncio.create_task(_stop_when_idle(config, role, stop))
    try:
        await runner(config, stop, endpoint)
    except StopAndAlert as exc:
        log.critical("%s stopped: %s", role, exc)
        return EXIT_NEEDS_ATTENTION
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await endpoint.stop()
    return 0


async def _stop_when_idle(config: TidingsConfig, role: str, stop: asyncio.Event) -> None:
    roles = {"connectors": ["connectors"], "sinks": list(ROLES)}[role]
    if await IdleProbe(config, roles, utc_now()).wait(stop):
        log.info("%s idle: stopping", role)
        stop.set()


async def _connectors(config: TidingsConfig, stop: asyncio.Event, endpoint: Endpoint) -> None:
    claim_check = ClaimCheck(open_blob_store(config.blob_url(), config.blobs), config.connectors)
    settings = config.connectors
    if settings.processors_group_id is None:  # watch the lag of this deployment's processors
        settings = msgspec.structs.replace(settings, processors_group_id=config.processors.group_id)
    runtime = ConnectorRuntime(
        config.kafka,
        config.topic_prefix,
        settings,
        claim_check=claim_check,
        profiles=config.server_profiles,
    )
    endpoint.health = lambda: {"ok": True, "mailboxes": runtime.owned_mailboxes}
    await endpoint.start()
    async with _graph_webhook(config):
        await _connectors_and_sender(config, stop, runtime)


@contextlib.asynccontextmanager
async def _graph_webhook(config: TidingsConfig) -> AsyncIterator[None]:
    """Serve the Graph change-notification webhook while the block runs, when
    connectors.graph_notifications is enabled (Graph mailboxes then subscribe)."""
    settings = config.connectors.graph_notifications
    if not settings.enabled:
        yield
        return
    hub = graph_push.NotificationHub(settings)
    await hub.start()
    graph_push.install(hub)
    try:
        yield
    finally:
        graph_push.install(None)
        await hub.stop()


async def _connectors_and_sender(
    config: TidingsConfig, stop: asyncio.Event, runtime: ConnectorRuntime
) -> None:
    # CRM → Exchange appointments, contacts and tasks (docs/act.md): a group of its own.
    act_writer = ActWriter(
        config.kafka,
        config.topic_prefix,
        config.server_profiles,
        group_id=f"{config.connectors.group_id}-act-writer",
        ack_timeout_s=config.connectors.ack_timeout_s,
        worker=runtime.worker,
        gates=runtime.gates,
        settings=config.connectors.act_writer,
    )
    if not config.outgoing.enabled:
        await _together(runtime.run(stop), act_writer.run(stop), stop)
        return
    # The outgoing sender shares the process, and the server connection limits.
    sender = OutgoingSender(
        config.kafka,
        config.topic_prefix,
        config.outgoing,
        config.processors.correlation,
        config.server_profiles,
        ack_timeout_s=config.connectors.ack_timeout_s,
        worker=runtime.worker,
        gates=runtime.gates,
    )
    await _together(
        _together(runtime.run(stop), sender.run(stop), stop), act_writer.run(stop), stop
    )


async def _together(first: Awaitable[None], second: Awaitable[None], stop: asyncio.Event) -> None:
    """Run both until they return; when one fails, stop the other and raise."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _sinks(config: TidingsConfig, stop: asyncio.Event, endpoint: Endpoint) -> None:
    store = ClickHouseStore(config.clickhouse_dsn(), config.clickhouse)
    await store.open()
    endpoint.store = store
    sink = ClickHouseSink(config.kafka, config.topic_prefix, config.sinks, store)
    endpoint.health = lambda: {"ok": True, "rows_written": sink.rows_written}
    await endpoint.start()
    lag = asyncio.create_task(report_lag(config, stop))
    try:
        await sink.run(stop)
    finally:
        lag.cancel()
        await asyncio.gather(lag, return_exceptions=True)
        store.close()


def run_processors(config: TidingsConfig, until_idle: bool) -> int:
    """Run the faust worker (it handles SIGTERM itself); returns its exit code."""
    import faust

    from processors.app import ProcessorApp

    if config.processors.web_port == 0:
        port = free_port(config.metrics.host)
        settings = config.processors
        # The state directory keeps the name it had before the port was picked.
        settings = msgspec.structs.replace(
            settings, web_port=port, worker_name=settings.worker_id()
        )
        config = msgspec.structs.replace(config, processors=settings)
    record_endpoint(
        config.data_path / "run", "processors", config.metrics.host, config.processors.web_port
    )
    processor = ProcessorApp(config)
    if until_idle:
        started = utc_now()

        @processor.app.task
        async def stop_when_idle() -> None:
            if await IdleProbe(config, ["processors"], started).wait():
                log.info("processors idle: stopping")
                os.kill(os.getpid(), signal.SIGTERM)

    worker = faust.Worker(
        processor.app, loglevel=config.log_level, quiet=True, redirect_stdouts=False
    )
    # No terminal spinner: with one, faust lowers the root logger to DEBUG so every
    # debug call in faust and aiokafka builds a record (7% of processor time).
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if isinstance(processor.app.crash_reason, StopAndAlert):
            return EXIT_NEEDS_ATTENTION
        return int(exc.code or 0)
    return 0
