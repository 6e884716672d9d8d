"""What the connector benchmarks share: initial syncs of one mailbox into the
embedded broker (tansu), each through a freshly built source, timed pass by pass.

    from bench.harness import SyncRun, timed_syncs

(the benches put the repository root on sys.path, as for `tests.mailserver`).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer

from connectors.claimcheck import ClaimCheck
from connectors.cursors import CursorStore
from connectors.emitter import Emitter
from connectors.gate import ServerGate
from connectors.source import MailboxSource, SourceWiring
from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from schemas.blobs import DirectoryBlobStore
from schemas.mailbox import MailboxConfig, ServerProfile

S = TypeVar("S", bound=MailboxSource)


@dataclass(frozen=True)
class SyncRun:
    """One timed initial sync: wall seconds, this process's CPU seconds, created
    events, and the protocol commands it sent (0 where the bench does not count them)."""

    seconds: float
    cpu_seconds: float
    events: int
    commands: int = 0


async def timed_syncs(
    mailbox: MailboxConfig,
    profile: ServerProfile,
    build: Callable[[SourceWiring], S],
    *,
    data_dir: Path,
    storage: str,
    repeat: int,
    connections: int,
    warm: Callable[[S], Awaitable[object]] | None = None,
    commands: Callable[[S], int] | None = None,
) -> list[SyncRun]:
    """`repeat` initial syncs of `mailbox` into the embedded broker (its storage
    `storage`, its data under `data_dir`), brought up for the call and closed after.

    Each run builds a fresh source with `build` — no cursors, a fresh cursor store,
    a gate of `connections`, a claim-check into `data_dir`/blobs — awaits `warm`
    (untimed), times one `sync_pass`, reads `commands` and closes the source.
    """
    config = load_config(
        env={"TIDINGS_DATA_DIR": str(data_dir), "TIDINGS_EMBEDDED__STORAGE": storage}
    )
    infra = await asyncio.to_thread(bring_up, config)
    runs = []
    try:
        config = infra.config
        producer = AIOKafkaProducer(**config.kafka.producer_options(linger_ms=0))
        await producer.start()
        try:
            emitter = Emitter(producer, config.topic_prefix, config.connectors.ack_timeout_s)
            for _ in range(repeat):
                source = build(
                    SourceWiring(
                        config=mailbox,
                        profile=profile,
                        partition=0,
                        cursors={},
                        emitter=emitter,
                        store=CursorStore(config.kafka, config.topic_prefix, producer),
                        gate=ServerGate("bench", connections),
                        claim_check=ClaimCheck(
                            DirectoryBlobStore(data_dir / "blobs"), config.connectors
                        ),
                        max_batch_items=config.connectors.max_batch_items,
                    )
                )
                if warm is not None:
                    await warm(source)
                started = time.perf_counter()
                cpu_started = time.process_time()
                result = await source.sync_pass()
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                sent = commands(source) if commands is not None else 0
                await source.close()
                runs.append(SyncRun(elapsed, cpu, result.created, sent))
        finally:
            await producer.stop()
    finally:
        await asyncio.to_thread(infra.close)
    return runs


class CountingEmitter:
    """Stands in for Kafka where a bench measures polling alone: counts the change
    events and the error events a source would publish."""

    def __init__(self) -> None:
        self.events = 0
        self.errors = 0

    async def emit_changes(self, events: Any, protocol: str) -> None:
        self.events += len(events)

    async def emit_error(self, error: Any, protocol: str) -> None:
        self.errors += 1


def connector_figures(runs: list[SyncRun], messages: int) -> dict[str, Any]:
    """The connector side's figures for `messages` synced per run: median wall
    seconds, rate, each run's seconds, median CPU microseconds per message."""
    seconds = statistics.median(run.seconds for run in runs)
    cpu_seconds = statistics.median(run.cpu_seconds for run in runs)
    return {
        "median_seconds": round(seconds, 3),
        "messages_per_s": round(messages / seconds),
        "runs_s": [round(run.seconds, 3) for run in runs],
        "cpu_us_per_message": round(cpu_seconds / messages * 1e6, 1),
    }


def comparison_figures(
    bare_runs: list[tuple[float, int]], runs: list[SyncRun], messages: int, bare_name: str
) -> dict[str, Any]:
    """The bare client's figures (`bare_name`: (seconds, messages synced) per run),
    the connector's (`connector_figures`) and the ratio of their median rates, after
    checking every run of both synced all `messages`."""
    assert all(count == messages for _, count in bare_runs), bare_runs
    assert all(run.events == messages for run in runs), runs
    bare_s = statistics.median(seconds for seconds, _ in bare_runs)
    ours_s = statistics.median(run.seconds for run in runs)
    return {
        bare_name: {
            "median_seconds": round(bare_s, 3),
            "messages_per_s": round(messages / bare_s),
            "runs_s": [round(seconds, 3) for seconds, _ in bare_runs],
        },
        "tidings_connector_into_kafka": connector_figures(runs, messages),
        "ratio": round(bare_s / ours_s, 3),
        "aim": ">= 0.5",
    }
