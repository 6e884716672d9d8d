"""Decisions per second of the processor pipeline on tansu, next to a bare faust agent
that only decodes the same events (the first part of bench/correlate.py).

One embedded broker (tansu on localbucket S3 storage, or memory) in a temporary
data directory holds the mailbox configs, CRM records, tracked CRM emails and N
`ParsedEmail` events on mail.parsed, keyed by thread key as processors/app.py
keys them. Two faust workers then read those N events from the beginning, one
after the other, each in a process of its own and its own consumer group:

* bare agent: `python bench/pipeline_rate.py bare-worker` — one agent on
  mail.parsed that decodes each event with the topic's codec and counts. Its
  faust app copies every broker, consumer, producer, stream and topic setting
  from a ProcessorApp built from the same configuration (store memory, no web
  server); it measures its own first and Nth event.
* processor: `tidings run processors`, the real ProcessorApp (the `decide`
  agent, its tables and global views), writing promotion.decisions and
  crm.activities. Its rate runs from its first decision to the decision of the
  Nth item, by the decisions' record timestamps (set when the worker produced
  them); progress comes from its /metrics counter, read once a second (each
  read renders every metric in the worker: 4 a second cost it about 1% of its CPU).

Start-up (worker start, group join, view and table recovery) is excluded from
both rates and reported apart. Over the same span each worker's CPU time per
event is measured, and the broker's (tansu + localbucket) while the processor
decides: wall-clock rates on a shared two-core machine are noisy, CPU per event
much less so. Optionally py-spy samples the processor over that span.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
from aiokafka import AIOKafkaConsumer

from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from pipeline.embedded import EmbeddedBroker, free_port
from pipeline.publish import publish
from schemas.codec import decode_key
from schemas.config import TidingsConfig
from schemas.crm import Activity, CrmRecord, PromotionDecision
from schemas.mail import ParsedEmail
from schemas.mailbox import MailboxConfig
from schemas.topics import (
    CRM_ACTIVITIES,
    CRM_RECORDS,
    MAIL_PARSED,
    MAILBOX_CONFIG,
    PROMOTION_DECISIONS,
    codec,
)

ROOT = Path(__file__).resolve().parents[1]
BARE_GROUP = "tidings-bench-bare"
# The processor worker, as `python ARGS` (e.g. prefixed with "-m cProfile -o FILE").
PROCESSOR_ARGS = ["-m", "pipeline.cli", "run", "processors"]
# faust settings the bare app copies from ProcessorApp's app (by name prefix).
MIRRORED_SECTIONS = ("broker", "consumer", "producer", "stream", "topic")
DECISIONS_METRIC = re.compile(r"^tidings_processor_decisions_total\{[^}]*\} ([0-9.e+]+)$", re.M)
WORKER_TIMEOUT_S = 900.0
METRICS_POLL_S = 1.0  # how often the processor's /metrics is read for progress
Progress = Callable[[int], None]


@dataclass(frozen=True)
class World:
    """What the broker holds before the workers start."""

    records: Sequence[CrmRecord]
    mailboxes: Sequence[MailboxConfig]
    tracked: Sequence[Activity]
    events: Sequence[ParsedEmail]


@dataclass(frozen=True)
class Rate:
    """Events handled by one worker between its first and its last output."""

    events: int
    first_s: float  # seconds from starting the worker to its first output
    span_s: float  # seconds from its first output to its last
    cpu_us: float  # the worker's CPU time per event over that span, in microseconds

    @property
    def per_s(self) -> float:
        """Events per second after the first one (start-up excluded)."""
        return (self.events - 1) / self.span_s if self.span_s > 0 else float("inf")

    def figures(self, unit: str) -> dict[str, float | int]:
        return {
            f"{unit}_per_s": round(self.per_s),
            "events": self.events,
            "first_to_last_s": round(self.span_s, 3),
            "startup_to_first_s": round(self.first_s, 2),
            "worker_cpu_us_per_event": round(self.cpu_us, 1),
        }


@dataclass(frozen=True)
class ProcessorRun:
    """The processor's rate and what it decided."""

    rate: Rate
    decision_records: int
    reasons: dict[str, int]
    methods: dict[str, int]
    # CPU per decision of the broker's processes (tansu, localbucket) over the same span
    broker_cpu_us: dict[str, float] = dataclasses.field(default_factory=dict)


# -- the bench side ------------------------------------------------------------


def bench_env(data_dir: Path, storage: str) -> dict[str, str]:
    """This environment without TIDINGS_* settings, pointed at `data_dir` and `storage`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    env["TIDINGS_DATA_DIR"] = str(data_dir)
    env["TIDINGS_EMBEDDED__STORAGE"] = storage
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def preload(config: TidingsConfig, world: World) -> None:
    """Publish the world: CRM records, mailboxes, tracked emails, then the events."""
    prefix = config.topic_prefix
    await publish(config.kafka, prefix, CRM_RECORDS, [(r.record_id, r) for r in world.records])
    await publish(
        config.kafka, prefix, MAILBOX_CONFIG, [(m.mailbox_id, m) for m in world.mailboxes]
    )
    await publish(config.kafka, prefix, CRM_ACTIVITIES, [(a.activity_id, a) for a in world.tracked])
    # Keyed like processors/app.py's parse stage keys them: by thread key.
    events = [(event.thread_key, event) for event in world.events]
    await publish(config.kafka, prefix, MAIL_PARSED, events, timeout_s=600)


@contextlib.contextmanager
def worker(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session, output to `log`; SIGTERM (then SIGKILL) on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    """SIGTERM the process group; SIGKILL it if it has not exited within `grace_s`."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_s)


def check_alive(process: subprocess.Popen[bytes], log: Path, started: float) -> None:
    """Raise with the log's tail if the worker died or ran out of time."""
    if process.poll() is not None:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{log.stem} exited with {process.returncode}:\n{tail}")
    if time.monotonic() - started > WORKER_TIMEOUT_S:
        raise TimeoutError(f"{log.stem} did not finish within {WORKER_TIMEOUT_S:.0f} s; see {log}")


def run_bare(env: dict[str, str], events: int, group: str, logs: Path) -> Rate:
    """Run the bare decoding agent over the first `events` events of mail.parsed."""
    result = logs / f"{group}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "bare-worker"]
    argv += ["--events", str(events), "--group", group, "--out", str(result)]
    log = logs / f"{group}.log"
    started = time.monotonic()
    with worker(argv, env, log) as process:
        wall_started = time.time()
        while not result.exists():
            check_alive(process, log, started)
            time.sleep(0.05)
    figures = json.loads(result.read_text())
    return Rate(
        events=figures["events"],
        first_s=figures["first"] - wall_started,
        span_s=figures["last"] - figures["first"],
        cpu_us=(figures["last_cpu"] - figures["first_cpu"]) / (figures["events"] - 1) * 1e6,
    )


def decisions_made(url: str) -> int:
    """tidings_processor_decisions_total over all labels, from the worker's /metrics."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            body = response.read().decode()
    except OSError:
        return 0
    return int(sum(float(value) for value in DECISIONS_METRIC.findall(body)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_processor(
    env: dict[str, str],
    config: TidingsConfig,
    events: int,
    logs: Path,
    progress: Progress,
    broker_pids: Mapping[str, int],
    profile: Path | None = None,
) -> ProcessorRun:
    """Run `tidings run processors` until it decided every event; read its decisions.
    Between its first and last decision, count its CPU and the broker's (`broker_pids`,
    by process name).
    With `profile`, py-spy samples the worker over that span."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, *PROCESSOR_ARGS]
    log = logs / "processors.log"
    env = {**env, "TIDINGS_PROCESSORS__WEB_PORT": str(port)}
    started = time.monotonic()
    with worker(argv, env, log) as process, contextlib.ExitStack() as sampling:
        wall_started = time.time()
        made = first_made = 0
        first_cpu = 0.0
        first_broker_cpu: dict[str, float] = {}
        while made < events:
            check_alive(process, log, started)
            time.sleep(METRICS_POLL_S)
            before, made = made, decisions_made(url)
            progress(made)
            if before == 0 < made:
                first_made = made
                first_cpu = cpu_seconds(process.pid)
                first_broker_cpu = {name: cpu_seconds(pid) for name, pid in broker_pids.items()}
                if profile is not None:
                    sampling.enter_context(py_spy(process.pid, profile, logs))
        per_decision = 1e6 / max(1, made - first_made)
        cpu_us = (cpu_seconds(process.pid) - first_cpu) * per_decision
        broker_cpu_us = {
            name: (cpu_seconds(pid) - first_broker_cpu.get(name, 0.0)) * per_decision
            for name, pid in broker_pids.items()
        }
        run = asyncio.run(read_decisions(config, events, wall_started, cpu_us))
        return dataclasses.replace(run, broker_cpu_us=broker_cpu_us)


@contextlib.contextmanager
def py_spy(pid: int, out: Path, logs: Path) -> Iterator[None]:
    """py-spy records `pid` (collapsed stacks, idle frames left out) until the block ends."""
    argv = ["py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
    argv += ["--output", str(out), "--nonblocking"]
    binary = Path(sys.executable).with_name("py-spy")
    argv[0] = str(binary) if binary.exists() else "py-spy"
    with (logs / "py-spy.log").open("wb") as log:
        sampler = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            sampler.wait(timeout=60)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait()


async def read_decisions(
    config: TidingsConfig, items: int, started: float, cpu_us: float
) -> ProcessorRun:
    """Read promotion.decisions until `items` distinct items are decided; the rate runs
    from the first decision to the first decision of the last item decided, by the
    records' timestamps (taken when the worker produced them)."""
    decision_codec = codec(PROMOTION_DECISIONS)
    consumer = AIOKafkaConsumer(**config.kafka.consumer_options())
    await consumer.start()
    first_at: dict[str, int] = {}
    latest: dict[str, PromotionDecision] = {}
    records = 0
    try:
        consumer.subscribe([PROMOTION_DECISIONS.name(config.topic_prefix)])
        async with asyncio.timeout(120):
            while len(first_at) < items:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    for message in messages:
                        key = decode_key(message.key) or ""
                        records += 1
                        first_at.setdefault(key, message.timestamp)
                        first_at[key] = min(first_at[key], message.timestamp)
                        latest[key] = decision_codec.decode(message.value)
    finally:
        await consumer.stop()
    times = sorted(first_at.values())
    rate = Rate(
        events=len(times),
        first_s=times[0] / 1000 - started,
        span_s=(times[-1] - times[0]) / 1000,
        cpu_us=cpu_us,
    )
    reasons = Counter(decision.reason.value for decision in latest.values())
    methods = Counter(decision.correlation_method.value for decision in latest.values())
    return ProcessorRun(rate, records, dict(reasons.most_common()), dict(methods.most_common()))


@dataclass(frozen=True)
class PipelineResult:
    """Both workers' figures from one run."""

    storage: str
    preload_s: float
    bare: list[Rate]
    processor: ProcessorRun
    settings: dict[str, str]

    @property
    def bare_per_s(self) -> float:
        """The bare agent's rate: the mean of its runs."""
        return sum(rate.per_s for rate in self.bare) / len(self.bare)

    @property
    def ratio(self) -> float:
        """Processor decisions/s over bare agent events/s."""
        return self.processor.rate.per_s / self.bare_per_s

    @property
    def cpu_ratio(self) -> float:
        """The bare agent's worker CPU per event over the processor's (1 = as cheap)."""
        bare_cpu_us = sum(rate.cpu_us for rate in self.bare) / len(self.bare)
        return bare_cpu_us / self.processor.rate.cpu_us


@dataclass(frozen=True)
class PipelineOptions:
    """How to run the pipeline part."""

    storage: str = "s3"  # the embedded broker's storage: s3 (localbucket) or memory
    bare_runs: int = 2  # bare agent runs: one before the processor, the rest after it
    profile: Path | None = None  # py-spy the processor into this file (collapsed stacks)
    settings: dict[str, str] = dataclasses.field(default_factory=dict)  # TIDINGS_* overrides


def broker_processes(broker: EmbeddedBroker | None) -> dict[str, int]:
    """The embedded broker's processes by name (no localbucket on memory storage)."""
    record = broker.record if broker is not None else None
    if record is None:
        return {}
    pids = {"tansu": record.broker_pid}
    if record.bucket_pid != record.broker_pid:
        pids["localbucket"] = record.bucket_pid
    return pids


def measure_pipeline(
    world: World, options: PipelineOptions, progress: Progress, status: Callable[[str], None]
) -> PipelineResult:
    """Bring up a broker in a temporary directory, preload `world`, run the bare agent
    (before and after the processor when `bare_runs` > 1) and the processor."""
    with tempfile.TemporaryDirectory(prefix="tidings-bench-correlate-") as tmp:
        data_dir = Path(tmp) / "data"
        logs = Path(tmp) / "bench-logs"
        logs.mkdir()
        env = {**bench_env(data_dir, options.storage), **options.settings}
        infra = bring_up(load_config(env=env))
        try:
            config = infra.config
            status(f"tansu ({options.storage}) up; publishing {len(world.events):,} events")
            began = time.monotonic()
            asyncio.run(preload(config, world))
            preload_s = time.monotonic() - began
            events = len(world.events)
            bare: list[Rate] = []
            status("bare decoding agent")
            bare.append(run_bare(env, events, f"{BARE_GROUP}-1", logs))
            status("processor (tidings run processors)")
            pids = broker_processes(infra.broker)
            processor = run_processor(env, config, events, logs, progress, pids, options.profile)
            for n in range(2, options.bare_runs + 1):
                status(f"bare decoding agent, run {n}")
                bare.append(run_bare(env, events, f"{BARE_GROUP}-{n}", logs))
        finally:
            infra.close()
    return PipelineResult(options.storage, preload_s, bare, processor, options.settings)


def pipeline_figures(result: PipelineResult, history: int) -> dict[str, Any]:
    """The "pipeline" section of bench/results/correlate.json."""
    processor = result.processor
    return {
        "broker_storage": result.storage,
        "settings": result.settings,
        "events": processor.rate.events,
        "tracked_history": history,
        "preload_s": round(result.preload_s, 2),
        "processor": {
            **processor.rate.figures("decisions"),
            "decision_records": processor.decision_records,
            "broker_cpu_us_per_event": {
                name: round(cpu_us, 1) for name, cpu_us in processor.broker_cpu_us.items()
            },
            "reasons": processor.reasons,
            "correlation_methods": processor.methods,
        },
        "bare_agent": {
            "events_per_s": round(result.bare_per_s),
            "runs": [rate.figures("events") for rate in result.bare],
        },
        "ratio": round(result.ratio, 3),
        "aim": ">= 0.5",
        "cpu_ratio": round(result.cpu_ratio, 3),
    }


# -- the bare worker (a process of its own) ------------------------------------


def bare_app(config: TidingsConfig, group: str) -> Any:
    """A faust app with ProcessorApp's broker, consumer, producer, stream and topic
    settings (copied from one built from `config`), memory store, no web server."""
    import faust

    from processors.app import ProcessorApp

    # Built on a scratch data directory: whatever it opens there stays out of the way.
    scratch = msgspec.structs.replace(config, data_dir=str(config.data_path / f"{group}-ref"))
    reference = ProcessorApp(scratch).app.conf
    settings = {
        name: getattr(reference, name)
        for name, param in reference.SETTINGS.items()
        if name.split("_")[0] in MIRRORED_SECTIONS and not param.version_deprecated
    }
    settings["broker_client_id"] = group
    return faust.App(
        group,
        **settings,
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        datadir=str(config.data_path / group),
    )


def bare_worker(events: int, group: str, out: Path) -> int:
    """Decode the first `events` events of mail.parsed, write when the first and the
    last were decoded to `out`, and stop."""
    import faust

    infra = bring_up(load_config(), create_topics=False)  # attaches; tansu fixes as the CLI
    config = infra.config
    app = bare_app(config, group)
    topic = app.topic(
        MAIL_PARSED.name(config.topic_prefix),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        internal=False,
    )
    parsed_codec = codec(MAIL_PARSED)

    async def decode_only(stream: Any) -> AsyncIterator[None]:
        count, first, first_cpu = 0, 0.0, 0.0
        async for event in stream.events():
            message = event.message
            parsed_codec.decode(event.value, message.topic, message.partition, message.offset)
            count += 1
            if count == 1:
                first, first_cpu = time.time(), time.process_time()
            if count == events:
                times = {"first": first, "last": time.time()}
                cpu = {"first_cpu": first_cpu, "last_cpu": time.process_time()}
                partial = out.with_suffix(".partial")
                partial.write_text(json.dumps({"events": count, **times, **cpu}))
                partial.rename(out)  # the bench waits for `out` to exist
                os.kill(os.getpid(), signal.SIGTERM)
            yield None

    app.agent(topic, concurrency=1)(decode_only)  # as processors/app.py registers `decide`
    runner = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    runner.spinner = None  # as pipeline/roles.py: no spinner, no DEBUG root logger
    try:
        runner.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="the bare decoding agent (a worker process)")
    parser.add_argument("role", choices=["bare-worker"])
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--group", default=BARE_GROUP)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sys.exit(bare_worker(args.events, args.group, args.out))


if __name__ == "__main__":
    main()
