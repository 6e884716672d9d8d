"""The changes processors/recovery.py makes to faust, on fakes of what they call:
a fetch goes over a copy of the active partitions and never over an empty set,
recovery resumes a stream partition only after its seek and the queues' clearing,
and the app leaves faust's Monitor out of its sensors.
tests/faults/test_processor_recovery.py checks the whole on a real worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import SimpleNamespace
from typing import Any, cast

from processors.recovery import App, ConsumerThread, GaplessRecovery


class Fetcher:
    """aiokafka's fetcher: records of the partitions asked for (every partition's when
    the set is empty); the live set of active partitions empties while it waits."""

    _closed = False
    _subscriptions = SimpleNamespace(fetch_context=contextlib.nullcontext)

    def __init__(self, live: set[str]) -> None:
        self.live = live
        self.asked: list[set[str]] = []

    async def fetched_records(
        self,
        partitions: set[str],
        timeout: float = 0,  # noqa: ASYNC109 (aiokafka's signature)
        max_records: int | None = None,
    ) -> dict[str, list[str]]:
        self.asked.append(partitions)
        self.live.clear()  # recovery pauses the changelogs meanwhile
        await asyncio.sleep(0)
        return {tp: [f"{tp}@0"] for tp in (partitions or {"changelog-0", "stream-0"})}


def fetch(active: set[str]) -> tuple[dict[str, list[str]], Fetcher]:
    thread: Any = ConsumerThread.__new__(ConsumerThread)
    thread.consumer = SimpleNamespace(flow_active=True)
    fetcher = Fetcher(active)
    consumer = SimpleNamespace(_closed=False, _fetcher=fetcher)
    return asyncio.run(thread._fetch_records(consumer, active, timeout=1.0)), fetcher


def test_a_fetch_asks_for_the_partitions_active_when_it_started() -> None:
    active = {"changelog-0"}
    records, fetcher = fetch(active)
    assert records == {"changelog-0": ["changelog-0@0"]}
    assert fetcher.asked == [{"changelog-0"}]
    assert fetcher.asked[0] is not active  # a copy: emptying the live set changes nothing


def test_no_active_partition_fetches_nothing_rather_than_everything() -> None:
    records, fetcher = fetch(set())
    assert records == {}
    assert fetcher.asked == []


def recovery(calls: list[Any], generation: int = 1) -> GaplessRecovery:
    """A GaplessRecovery over a fake app that records what is done, in order."""

    class Consumer:
        def assignment(self) -> set[str]:
            return {"stream-0", "changelog-0"}

        async def perform_seek(self) -> None:
            calls.append("seek")

        def resume_partitions(self, tps: set[str]) -> None:
            calls.append(("resume_partitions", sorted(tps)))

        def resume_flow(self) -> None:
            calls.append("resume_flow")

    async def rebalance_complete() -> None:
        calls.append("rebalance_complete")

    async def wait(coro: Any, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await coro

    done: Any = GaplessRecovery.__new__(GaplessRecovery)
    done.app = SimpleNamespace(
        consumer=Consumer(),
        on_rebalance_complete=SimpleNamespace(send=rebalance_complete),
        consumer_generation_id=generation,
        conf=SimpleNamespace(broker_request_timeout=5.0),
        flow_control=SimpleNamespace(resume=lambda: calls.append("flow_control.resume")),
        _fetcher=SimpleNamespace(maybe_start=lambda: asyncio.sleep(0)),
        assignor=SimpleNamespace(assigned_standbys=set),
        on_rebalance_end=lambda: calls.append("rebalance_end"),
    )
    done.log = logging.getLogger("test-recovery")
    done.tables = SimpleNamespace(
        values=list, on_actives_ready=lambda: None, on_standbys_ready=lambda: None
    )
    done.completed = asyncio.Event()
    done._set_recovery_ended = lambda: None
    done._wait = wait
    done._is_changelog_tp = lambda tp: tp.startswith("changelog")
    return cast(GaplessRecovery, done)


def test_stream_partitions_resume_after_their_seek_and_the_cleared_queues() -> None:
    calls: list[Any] = []
    asyncio.run(recovery(calls).on_recovery_completed(1))
    assert calls == [
        "rebalance_complete",
        "seek",
        "flow_control.resume",  # clears the stream queues
        ("resume_partitions", ["stream-0"]),
        "resume_flow",
        "rebalance_end",
    ]


def test_a_rebalance_meanwhile_resumes_nothing() -> None:
    calls: list[Any] = []
    asyncio.run(recovery(calls, generation=2).on_recovery_completed(1))
    assert calls == ["rebalance_complete"]


def test_the_app_leaves_faust_s_monitor_out_of_its_sensors() -> None:
    app = App("monitor-test", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)
    app.on_init_dependencies()
    assert app.monitor not in set(app.sensors)
    assert app.monitor is not None  # faust still calls some of its methods directly
    assert not app.conf.web_stats_enabled  # the debug pages that would show it are off
    app.on_init_dependencies()  # again: harmless
    assert list(app.sensors) == []
