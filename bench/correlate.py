"""Correlation benchmark: decisions per second through the faust pipeline on tansu next
to a bare decoding agent, what one decision costs as history grows, and what one
copy costs as a message reaches more mailboxes.

Both parts use one world: 50 users with a mailbox each (half with the
`responses` filter, half `all`), 2,000 contacts, and a stream of new emails
that mixes replies found by In-Reply-To, by tracking token and by Thread-Index
with new conversations, each a quarter.

Pipeline rate (bench/pipeline_rate.py): the embedded broker (tansu on its
localbucket S3 storage, or memory) holds the CRM records, the mailboxes, 1,000
tracked CRM emails on crm.activities and N `ParsedEmail` events on mail.parsed
(keyed by thread key, encoded by the topic's codec). In the same run, a bare
faust agent with the processors' broker settings decodes the N events and only
counts them, and `tidings run processors` (the real ProcessorApp and its
`decide` agent) decides them into promotion.decisions and crm.activities, each
worker from offset 0 in its own consumer group and its own process. Each rate
runs from the worker's first output to its Nth (start-up excluded); the bare
agent runs before and after the processor and its rate is the mean. Prints
decisions/s, events/s and their ratio (aim: the pipeline at least 0.5 of the
bare agent), each worker's CPU per event and the broker's CPU per decision.
All this runs `--rounds` times (3), each on a fresh broker, and the figure is
the median ratio: one run's ratio moves by a quarter with the machine's noise.
`--profile FILE` samples the processor with py-spy while it decides; `--set
TIDINGS_KAFKA__LINGER_MS=200` (any setting) tries a configuration.

History cost: the decision engine (processors/engine.py: resolve, filter,
correlate, dedupe, track) decides the same stream against a history of H
tracked emails, for H = 1,000 and H = 1,000,000 (defaults). History is what a
long-running deployment holds: tracked messages in the engine's state and
activities in the global activity index (by Message-ID, tracking token and
conversation index). Prints microseconds per decision for each history size
and their ratio (aim: the large history costs at most 1.5 times the small one),
plus the memory the history takes.

Fan-out (bench/fanout.py): one message in N mailboxes, N = 10, 100 and 1,000
(`--fanout`); prints CPU microseconds and state bytes written per copy. Neither
should grow with N: a copy's cost growing with N makes the fan-out N².

Figures go to bench/results/correlate.json (a part skipped with --only keeps
its previous figures there).

    python bench/correlate.py [--pipeline-emails N] [--storage s3|memory] [--rounds K]
                              [--bare-runs K] [--emails N] [--small H] [--large H]
                              [--fanout N,N,...] [--only pipeline|history|fanout]
                              [--profile FILE]
                              [--set TIDINGS_NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fanout import measure_fanout
from bench.pipeline_rate import (
    PipelineOptions,
    PipelineResult,
    World,
    measure_pipeline,
    pipeline_figures,
)
from processors.conversation_index import new_conversation_index, thread_index_header
from processors.correlate import make_token
from processors.directory import ActivityIndex, Directory, Mailboxes
from processors.disk_state import DiskState
from processors.engine import DecisionEngine
from processors.index_store import IndexStore
from schemas.base import RecordRef
from schemas.config import CorrelationConfig, ProcessingConfig
from schemas.crm import Activity, CrmRecord, Direction
from schemas.ids import email_activity_id
from schemas.mail import EmailAddress, ParsedEmail
from schemas.mailbox import FolderRole, IncomingFilter, MailboxConfig, Protocol
from schemas.state import TrackedMessage

RESULTS = Path(__file__).resolve().parent / "results" / "correlate.json"
console = Console()
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SETTINGS = ProcessingConfig(correlation=CorrelationConfig())
USERS = 50
CONTACTS = 2_000


def crm_records() -> list[CrmRecord]:
    """50 users and 2,000 contacts."""
    users = [
        CrmRecord(
            record_id=f"u{n}", record_type="user", name=f"User {n}",
            email_addresses=[f"user{n}@nw.example"],
        )
        for n in range(USERS)
    ]  # fmt: skip
    contacts = [
        CrmRecord(
            record_id=f"c{n}", record_type="contact", name=f"Contact {n}",
            email_addresses=[f"contact{n}@contoso.example"],
        )
        for n in range(CONTACTS)
    ]  # fmt: skip
    return users + contacts


def mailbox_configs() -> list[MailboxConfig]:
    """A mailbox per user: odd users filter `responses`, even ones take `all`."""
    return [
        MailboxConfig(
            mailbox_id=f"mb-{n}", owner=RecordRef("user", f"u{n}"),
            email_address=f"user{n}@nw.example", protocol=Protocol.MAILDIR,
            incoming_filter=IncomingFilter.RESPONSES if n % 2 else IncomingFilter.ALL,
        )
        for n in range(USERS)
    ]  # fmt: skip


def world() -> tuple[Directory, Mailboxes]:
    """The CRM records and mailboxes as the engine's directory and mailbox views."""
    directory = Directory()
    mailboxes = Mailboxes()
    for record in crm_records():
        directory.apply(record.record_id, record)
    for mailbox in mailbox_configs():
        mailboxes.apply(mailbox.mailbox_id, mailbox)
    return directory, mailboxes


def history_item(n: int) -> tuple[Activity, TrackedMessage]:
    """Tracked email n: an activity (global index) and its tracked-message state."""
    message_id = f"hist-{n}@nw.example"
    activity_id = email_activity_id(message_id)
    sent = T0 - timedelta(minutes=n % 100_000)
    token = make_token(SETTINGS.correlation, n % 1000, n % 1000)
    index = new_conversation_index(sent, uuid.UUID(int=n))
    activity = Activity(
        activity_id=activity_id, version=1, message_id=message_id, subject=f"Quote {n}",
        direction=Direction.OUTGOING, sent_at=sent,
        regarding=RecordRef("opportunity", f"o{n % 5000}"), conversation_id=activity_id,
        tracking_token=f"{token}{n}", conversation_index=index.key, source="crm",
        created_at=sent, updated_at=sent,
    )  # fmt: skip
    tracked = TrackedMessage(
        message_id=message_id, activity_id=activity_id, version=1, created_at=sent,
        direction=Direction.OUTGOING, regarding=activity.regarding,
        conversation_id=activity_id, mailboxes=[f"mb-{n % USERS}"],
    )  # fmt: skip
    return activity, tracked


def engine(history: int) -> DecisionEngine:
    """An engine over `history` tracked emails, kept as a worker keeps them: the
    tracked messages and the activity index in RocksDB (DiskState, ActivityIndex),
    compacted as a long-running worker's store would be."""
    directory, mailboxes = world()
    index = ActivityIndex()
    state = DiskState(IndexStore())
    for n in range(history):
        activity, tracked = history_item(n)
        index.apply(activity.activity_id, activity)
        state.put_tracked(tracked.message_id, tracked)
    index.store.compact()
    state.store.compact()
    return DecisionEngine(state, directory, mailboxes, index, SETTINGS)


def stream(count: int, targets: int) -> list[ParsedEmail]:
    """New emails: a quarter each answer one of the first `targets` history items by
    In-Reply-To, by token and by Thread-Index, and a quarter start new
    conversations. Both history sizes get the same stream, so only the weight
    of the history differs."""
    emails = []
    for n in range(count):
        target = (n * 7919) % targets
        mailbox = n % USERS
        kind = n % 4
        message_id = f"new-{n}@contoso.example"
        subject, in_reply_to, thread_index = f"Question {n}", None, None
        if kind == 0:
            in_reply_to = f"hist-{target}@nw.example"
        elif kind == 1:
            token = make_token(SETTINGS.correlation, target % 1000, target % 1000)
            subject = f"RE: Quote [{token}{target}]"
        elif kind == 2:
            root = new_conversation_index(T0 - timedelta(minutes=target % 100_000))
            root = type(root)(root.raw[:6] + uuid.UUID(int=target).bytes)
            thread_index = thread_index_header(root.child())
        emails.append(
            ParsedEmail(
                event_id=f"ev-{n}", mailbox_id=f"mb-{mailbox}", folder="INBOX",
                folder_role=FolderRole.INBOX, item_id=str(n), observed_at=T0,
                message_id=message_id, thread_key=in_reply_to or message_id,
                subject=subject, sender=EmailAddress(f"contact{n % CONTACTS}@contoso.example"),
                to=[EmailAddress(f"user{mailbox}@nw.example")], sent_at=T0,
                in_reply_to=in_reply_to, references=[in_reply_to] if in_reply_to else [],
                thread_index=thread_index, body_text="Hello",
            )
        )  # fmt: skip
    return emails


def rss_mib() -> float:
    """Anonymous resident memory now (the heap; file pages the OS can drop are not
    counted), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(history: int, emails: int, targets: int) -> dict[str, float]:
    """Build the history, then decide the stream twice (warm-up, timed)."""
    before = rss_mib()
    started = time.perf_counter()
    eng = engine(history)
    built_s = time.perf_counter() - started
    items = stream(emails, targets)
    gc.collect()
    for item in items[: emails // 10]:
        eng.process(item, 0, T0)
    cpu = time.process_time()
    decided = 0
    for item in items:
        decided += len(eng.process(item, 0, T0).decisions)
    cpu_s = time.process_time() - cpu
    return {
        "history": history,
        "build_s": round(built_s, 1),
        "us_per_decision": round(cpu_s / emails * 1e6, 1),
        "decisions": decided,
        "rss_anon_growth_mib": round(rss_mib() - before, 1),
    }


def pipeline_world(events: int, history: int) -> World:
    """What the pipeline part preloads: records, mailboxes, `history` tracked CRM
    emails, and `events` new emails answering them (the history part's stream)."""
    return World(
        records=crm_records(),
        mailboxes=mailbox_configs(),
        tracked=[history_item(n)[0] for n in range(history)],
        events=stream(events, history),
    )


def measure_pipeline_rate(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline part: both rates on tansu, `--rounds` times (a fresh broker each),
    printed; returns its figures, the median ratio over the rounds first."""
    world = pipeline_world(args.pipeline_emails, args.small)
    options = PipelineOptions(args.storage, args.bare_runs, args.profile, dict(args.set))
    results = []
    for round_ in range(1, args.rounds + 1):
        if args.rounds > 1:
            console.print(f"[bold]round {round_} of {args.rounds}[/]")
        result = measure_round(world, options)
        print_pipeline(result, len(world.events))
        results.append(result)
        options = dataclasses.replace(options, profile=None)  # the first round's profile only
    ratios = [result.ratio for result in results]
    if len(results) > 1:
        print_rounds(results)
    return {
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "aim": ">= 0.5",
        "rounds": [pipeline_figures(result, args.small) for result in results],
    }


def measure_round(world: World, options: PipelineOptions) -> PipelineResult:
    """One round of the pipeline part, with a progress bar while the processor decides."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("decided", total=len(world.events), visible=False)

        def advance(decided: int) -> None:
            progress.update(task, completed=decided, visible=True)

        def status(text: str) -> None:
            progress.console.print(f"[dim]{text}[/]")

        return measure_pipeline(world, options, advance, status)


def print_rounds(results: list[PipelineResult]) -> None:
    """Each round's processor and bare agent rates and ratio, then the median ratio:
    rates on a shared two-core machine vary by a quarter from one run to the next."""
    table = Table(title="pipeline rounds")
    for name in ("round", "processor /s", "µs CPU", "bare agent /s", "µs CPU", "ratio"):
        table.add_column(name, justify="right")
    for n, result in enumerate(results, 1):
        bare_cpu_us = sum(rate.cpu_us for rate in result.bare) / len(result.bare)
        processor = result.processor.rate
        cells = (f"{processor.per_s:,.0f}", f"{processor.cpu_us:,.0f}")
        cells += (f"{result.bare_per_s:,.0f}", f"{bare_cpu_us:,.0f}", f"{result.ratio:.2f}")
        table.add_row(str(n), *cells)
    console.print(table)
    ratios = [result.ratio for result in results]
    console.print(
        f"median ratio over {len(results)} rounds: [bold]{statistics.median(ratios):.2f}[/] "
        f"(from {min(ratios):.2f} to {max(ratios):.2f}; aim >= 0.5)"
    )


def print_pipeline(result: PipelineResult, events: int) -> None:
    """Both workers' rates and CPU per event, the ratio, and what was decided."""
    table = Table(title=f"pipeline on tansu ({result.storage}), {events:,} events")
    for name in ("worker", "per s", "first → last", "start-up", "CPU µs/event"):
        table.add_column(name, justify="left" if name == "worker" else "right")
    rows = [("processor (decisions)", result.processor.rate)]
    rows += [(f"bare agent, run {n} (events)", rate) for n, rate in enumerate(result.bare, 1)]
    for name, rate in rows:
        cells = (f"{rate.per_s:,.0f}", f"{rate.span_s:.2f} s", f"{rate.first_s:.1f} s")
        table.add_row(name, *cells, f"{rate.cpu_us:,.0f}")
    console.print(table)
    console.print(
        f"ratio processor / bare agent (mean {result.bare_per_s:,.0f}/s): "
        f"[bold]{result.ratio:.2f}[/]  (aim >= 0.5); by worker CPU per event {result.cpu_ratio:.2f}"
    )
    broker = ", ".join(f"{name} {us:,.0f}" for name, us in result.processor.broker_cpu_us.items())
    console.print(f"[dim]broker CPU µs per decision while the processor decided: {broker}[/]")
    reasons = ", ".join(f"{name} {count:,}" for name, count in result.processor.reasons.items())
    console.print(f"[dim]decided: {reasons}[/]")


def measure_history(args: argparse.Namespace) -> dict[str, Any]:
    """The history part: µs per decision against a small and a large history."""
    small = measure(args.small, args.emails, args.small)
    console.print(f"history {args.small:>9,}: {small['us_per_decision']:8.1f} µs per decision")
    large = measure(args.large, args.emails, args.small)
    console.print(
        f"history {args.large:>9,}: {large['us_per_decision']:8.1f} µs per decision "
        f"(history built in {large['build_s']} s, +{large['rss_anon_growth_mib']:.0f} MiB)"
    )
    ratio = large["us_per_decision"] / small["us_per_decision"]
    console.print(f"ratio                     {ratio:8.2f}  (aim <= 1.5)")
    return {
        "emails": args.emails,
        "small": small,
        "large": large,
        "ratio": round(ratio, 2),
        "aim": "<= 1.5",
    }


def measure_fanouts(args: argparse.Namespace) -> dict[str, Any]:
    """The fan-out part: per-copy cost of one message in N mailboxes, for each N."""
    table = Table(title="one message in N mailboxes (engine on RocksDB)")
    for name in ("mailboxes (N)", "messages", "CPU µs/copy", "state bytes/copy"):
        table.add_column(name, justify="right")
    runs = []
    for copies in args.fanout:
        messages = max(2, 20_000 // copies)
        run = measure_fanout(copies, messages)
        runs.append(run)
        cells = (f"{copies:,}", f"{messages:,}", f"{run['us_per_copy']:,.1f}")
        table.add_row(*cells, f"{run['state_bytes_per_copy']:,}")
    console.print(table)
    return {"runs": runs}


def sizes(text: str) -> list[int]:
    """A comma-separated list of positive counts."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 10,100,1000: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be at least 1: {text!r}")
    return counts


def setting(text: str) -> tuple[str, str]:
    """A TIDINGS_NAME=VALUE command-line argument as (name, value)."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("TIDINGS_"):
        raise argparse.ArgumentTypeError(f"expected TIDINGS_NAME=VALUE, not {text!r}")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pipeline-emails",
        type=int,
        default=20_000,
        help="events on mail.parsed for the pipeline part",
    )
    parser.add_argument(
        "--storage",
        choices=["s3", "memory"],
        default="s3",
        help="embedded broker storage (s3 = localbucket, the default)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="pipeline runs, each on a fresh broker; the median ratio is the figure",
    )
    parser.add_argument(
        "--bare-runs",
        type=int,
        default=2,
        help="runs of the bare agent (before and after the processor)",
    )
    parser.add_argument(
        "--emails", type=int, default=20_000, help="emails decided per history size"
    )
    parser.add_argument(
        "--small",
        type=int,
        default=1_000,
        help="small history (also: the pipeline's tracked CRM emails)",
    )
    parser.add_argument("--large", type=int, default=1_000_000, help="large history")
    parser.add_argument(
        "--fanout",
        type=sizes,
        default=[10, 100, 1_000],
        metavar="N,N,...",
        help="mailboxes one message reaches, per fan-out run",
    )
    parser.add_argument(
        "--only", choices=["pipeline", "history", "fanout"], help="run one part only"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="py-spy the processor worker as it decides (collapsed stacks)",
    )
    parser.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="TIDINGS_NAME=VALUE",
        help="a configuration override for the broker and both workers (repeatable)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    figures: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        figures = json.loads(RESULTS.read_text())
    figures["benchmark"] = "correlate (pipeline rate; decision cost against history)"
    figures["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if args.only in (None, "pipeline"):
        figures["pipeline"] = measure_pipeline_rate(args)
    if args.only in (None, "history"):
        figures.update(measure_history(args))
    if args.only in (None, "fanout"):
        figures["fanout"] = measure_fanouts(args)
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    console.print(f"figures written to {RESULTS}")


if __name__ == "__main__":
    main()
