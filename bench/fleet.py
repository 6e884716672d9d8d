"""Fleet benchmark: adaptive polling (connectors/schedule.py) next to a fixed 5-minute
poller, over the same 10,000 dovecot mailboxes in the same run.

1% of the mailboxes receive mail (Poisson, one message every `--mail-gap` minutes
on average) over a few SIMULATED hours. Time is compressed: a simulated clock
jumps from event to event, deliveries are written into the mailboxes' Maildirs
at their simulated times, and every poll the adaptive policy schedules is a
real IMAP poll of the connector (ImapMailbox: connect, LOGIN, LIST, STATUS per
folder, FETCH when something is new, LOGOUT — a worker with more mailboxes than
connections closes them between polls). The fixed poller polls every mailbox
every 300 s (random phase): all its polls are counted, its polls of the active
mailboxes and of a sample of idle ones are issued for real, and its connector
CPU is the sample's CPU per poll times its poll count (stated in the output).

Reported per poller: polls, connector CPU (process time of scheduling + polls),
and the latency from delivery to the poll that found the message (p50, p99,
max) for the active mailboxes. Delivery-to-decision adds the processors' time,
which bench/e2e.py measures; it is not simulated here.

The fleet is a running one after a worker restart: each mailbox's cursors say
when it last changed (idle ones 1-30 days ago, active ones within the last
hour), which the runtime hands the policy too. A cold start (no history) is
simulated as well, policy only (no IMAP), to show what it costs.

No IMAP IDLE: 10,000 idle connections are not this benchmark, and push makes
latency moot; this is the poll-only worst case.

    python bench/fleet.py [--mailboxes 10000] [--hours 2] [--active 0.01] [--policy-only]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import CountingEmitter
from connectors.auth import secret_provider
from connectors.claimcheck import ClaimCheck
from connectors.gate import ServerGate
from connectors.imap import ImapMailbox
from connectors.schedule import PollHistory, PollOutcome, next_poll, record
from connectors.source import SourceWiring
from schemas.base import RecordRef, RecordType
from schemas.blobs import DirectoryBlobStore
from schemas.config import ConnectorConfig
from schemas.mailbox import Credentials, MailboxConfig, PollingSettings, Protocol, ServerProfile
from schemas.secret import SecretRef
from tests.mailserver import Dovecot

PASSWORD = "fleet-pw"
RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"
FIXED_INTERVAL_S = 300.0
DAY = 24 * 3600.0


def message(mailbox: int, n: int) -> bytes:
    return (
        f"From: dana@contoso.example\r\nTo: u{mailbox}@northwind.example\r\n"
        f"Subject: fleet {n}\r\nMessage-ID: <fleet-{mailbox}-{n}@contoso.example>\r\n\r\nhi\r\n"
    ).encode()


class NullStore:
    """Stands in for connector.cursors (positions stay in the source)."""

    async def save(self, *args: Any) -> None:
        pass


@dataclass
class Fleet:
    """Who receives mail when (simulated seconds), and what each mailbox's cursors say."""

    mailboxes: int
    active: list[int]
    deliveries: list[tuple[float, int]]  # (time, mailbox), sorted
    quiet_since: dict[int, float]  # mailbox -> last change before the run (seconds, < 0)


def make_fleet(mailboxes: int, share: float, hours: float, gap_min: float, seed: int) -> Fleet:
    rng = random.Random(seed)
    active = sorted(rng.sample(range(mailboxes), max(1, round(mailboxes * share))))
    horizon = hours * 3600
    deliveries: list[tuple[float, int]] = []
    for box in active:
        t = rng.expovariate(1 / (gap_min * 60))
        while t < horizon:
            deliveries.append((t, box))
            t += rng.expovariate(1 / (gap_min * 60))
    deliveries.sort()
    active_set = set(active)
    quiet = {
        box: -rng.uniform(0, 3600) if box in active_set else -rng.uniform(DAY, 30 * DAY)
        for box in range(mailboxes)
    }
    return Fleet(mailboxes, active, deliveries, quiet)


@dataclass
class Poller:
    """One poller's bookkeeping: polls, CPU, and when each delivered message was found."""

    name: str
    polls: int = 0
    issued: int = 0
    poll_cpu_s: float = 0.0
    schedule_cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    waiting: dict[int, list[float]] = field(default_factory=dict)  # mailbox -> delivered at
    reasons: dict[str, int] = field(default_factory=dict)

    def delivered(self, box: int, at: float) -> None:
        self.waiting.setdefault(box, []).append(at)

    def found_all(self, box: int, at: float) -> int:
        times = self.waiting.pop(box, [])
        self.latencies.extend(at - t for t in times)
        return len(times)

    def summary(self, horizon: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "polls": self.polls,
            "polls_issued_to_imap": self.issued,
            "polls_per_mailbox_hour": None,
            "schedule_cpu_s": round(self.schedule_cpu_s, 3),
            "poll_cpu_s_measured": round(self.poll_cpu_s, 3),
            "found_messages": len(lat),
            "latency_s": {
                "p50": round(_quantile(lat, 0.5), 1),
                "p99": round(_quantile(lat, 0.99), 1),
                "max": round(lat[-1], 1) if lat else None,
            },
            "by_reason": dict(sorted(self.reasons.items())),
        }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


def simulate(
    fleet: Fleet,
    hours: float,
    settings: PollingSettings,
    seed: int,
    *,
    warm: bool,
    poll: Any = None,
    fixed_sample: set[int] | None = None,
) -> tuple[Poller, Poller]:
    """Run both pollers over the fleet on one simulated clock. `poll(poller_name, box)`
    issues a real poll and returns (items found, latency s); None: policy only."""
    rng = random.Random(seed)
    horizon = hours * 3600
    adaptive, fixed = Poller("adaptive"), Poller("fixed 5 min")
    history = {
        box: PollHistory(quiet_since=fleet.quiet_since[box] if warm else None)
        for box in range(fleet.mailboxes)
    }
    events: list[tuple[float, int, str, int]] = []
    seq = 0
    for at, box in fleet.deliveries:
        events.append((at, seq, "deliver", box))
        seq += 1
    for box in range(fleet.mailboxes):
        events.append((0.0, seq, "adaptive", box))
        events.append((rng.uniform(0, FIXED_INTERVAL_S), seq + 1, "fixed", box))
        seq += 2
    heapq.heapify(events)
    reason = {box: "first" for box in range(fleet.mailboxes)}
    pending: dict[int, int] = {}  # adaptive: messages delivered and not yet found
    prefetched: dict[int, tuple[int, float]] = {}  # first polls run together
    while events:
        at, _, kind, box = heapq.heappop(events)
        if at >= horizon:
            break
        if kind == "deliver":
            adaptive.delivered(box, at)
            fixed.delivered(box, at)
            pending[box] = pending.get(box, 0) + 1
            if poll is not None:
                poll("deliver", box)
            continue
        poller = adaptive if kind == "adaptive" else fixed
        poller.polls += 1
        issue = poll is not None and (
            kind == "adaptive" or fixed_sample is None or box in fixed_sample
        )
        if issue:
            items, latency = _issue(poll, poller, kind, box, at, events, prefetched)
        else:
            items, latency = len(poller.waiting.get(box, [])), 0.0
        found = poller.found_all(box, at)
        if issue and items < found:
            raise AssertionError(f"{kind} poll of u{box} found {items} of {found} delivered")
        cpu = time.process_time()
        if kind == "adaptive":
            adaptive.reasons[reason[box]] = adaptive.reasons.get(reason[box], 0) + 1
            history[box] = record(history[box], PollOutcome(at=at, items=found, latency_s=latency))
            decision = next_poll(history[box], settings, at, rng.random)
            reason[box] = str(decision.reason)
            nxt = at + max(decision.delay_s, 1e-3)
        else:
            nxt = at + FIXED_INTERVAL_S
        poller.schedule_cpu_s += time.process_time() - cpu
        heapq.heappush(events, (nxt, seq, kind, box))
        seq += 1
    return adaptive, fixed


def _issue(
    poll: Any,
    poller: Poller,
    kind: str,
    box: int,
    at: float,
    events: list[tuple[float, int, str, int]],
    prefetched: dict[int, tuple[int, float]],
) -> tuple[int, float]:
    """One real poll (items found, latency); the adaptive poller's first polls, all at
    t=0 (the restart's catch-up), run together, 10 connections at a time."""
    if at == 0.0 and kind == "adaptive" and box not in prefetched:
        burst = [e[3] for e in events if e[0] == 0.0 and e[2] == "adaptive"]
        cpu = time.process_time()
        prefetched.update(poll.burst([box, *burst]))
        poller.poll_cpu_s += time.process_time() - cpu
    poller.issued += 1
    if box in prefetched:
        return prefetched.pop(box)
    cpu = time.process_time()
    found = poll(kind, box)
    poller.poll_cpu_s += time.process_time() - cpu
    return found  # type: ignore[no-any-return]


class RealPolls:
    """Real IMAP polls against dovecot: one ImapMailbox per (poller, mailbox), closed
    after each poll (cold: connect, log in, LIST, STATUS x2, FETCH if new, LOGOUT)."""

    def __init__(self, dovecot: Dovecot, profile: ServerProfile, blobs: Path) -> None:
        self.dovecot = dovecot
        self.profile = profile
        self.gate = ServerGate("fleet", 10)
        self.claim_check = ClaimCheck(DirectoryBlobStore(blobs), ConnectorConfig())
        self.loop = asyncio.new_event_loop()
        self.sources: dict[tuple[str, int], tuple[ImapMailbox, CountingEmitter]] = {}
        self.sent: dict[int, int] = {}

    def __call__(self, kind: str, box: int) -> tuple[int, float]:
        if kind == "deliver":
            n = self.sent.get(box, 0)
            self.sent[box] = n + 1
            self.dovecot.deliver_many(f"u{box}", "INBOX", [message(box, n)])
            return 0, 0.0
        source, emitter = self._source(kind, box)
        before = emitter.events
        started = time.perf_counter()
        self.loop.run_until_complete(self._poll(source))
        return emitter.events - before, time.perf_counter() - started

    def burst(self, boxes: list[int], concurrency: int = 10) -> dict[int, tuple[int, float]]:
        """Adaptive polls of many mailboxes at one simulated moment, `concurrency` at a
        time (as a profile's connection limit allows); (items, latency) per mailbox."""
        limit = asyncio.Semaphore(concurrency)

        async def one(box: int) -> tuple[int, tuple[int, float]]:
            source, emitter = self._source("adaptive", box)
            async with limit:
                before = emitter.events
                started = time.perf_counter()
                await self._poll(source)
                return box, (emitter.events - before, time.perf_counter() - started)

        async def everyone() -> list[tuple[int, tuple[int, float]]]:
            return await asyncio.gather(*(one(box) for box in boxes))

        return dict(self.loop.run_until_complete(everyone()))

    async def _poll(self, source: ImapMailbox) -> None:
        try:
            await source.sync_pass()
        finally:
            await source.close()

    def _source(self, kind: str, box: int) -> tuple[ImapMailbox, CountingEmitter]:
        key = (kind, box)
        if key not in self.sources:
            config = MailboxConfig(
                mailbox_id=f"mb-{box}",
                owner=RecordRef(type=RecordType.USER, id=f"u{box}"),
                email_address=f"u{box}@northwind.example",
                protocol=Protocol.IMAP,
                server_profile="fleet",
                credentials=Credentials(
                    username=f"u{box}", password=SecretRef(env="BENCH_FLEET_PASSWORD")
                ),
            )
            emitter = CountingEmitter()
            wiring = SourceWiring(
                config=config,
                profile=self.profile,
                partition=0,
                cursors={},
                emitter=emitter,  # type: ignore[arg-type]
                store=NullStore(),  # type: ignore[arg-type]
                gate=self.gate,
                claim_check=self.claim_check,
                max_batch_items=500,
            )
            source = ImapMailbox(wiring, secret=secret_provider(config, self.profile))
            self.sources[key] = (source, emitter)
        return self.sources[key]

    def prime(self, boxes: list[int]) -> None:
        """The fixed poller's first pass of its sampled mailboxes, before the clock
        starts, so its CPU per poll is that of routine polls. (The adaptive poller's
        first polls are in the run: the catch-up after a restart, FETCH included.)"""
        for box in boxes:
            self("fixed", box)

    def close(self) -> None:
        self.loop.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = PollingSettings()
    fleet = make_fleet(args.mailboxes, args.active, args.hours, args.mail_gap, args.seed)
    rng = random.Random(args.seed + 1)
    idle = [b for b in range(args.mailboxes) if b not in set(fleet.active)]
    sample = set(fleet.active) | set(rng.sample(idle, min(len(idle), args.fixed_sample)))
    cold_adaptive, cold_fixed = simulate(fleet, args.hours, settings, args.seed, warm=False)
    figures: dict[str, Any] = {
        "cold_start_policy_only": {
            "adaptive": cold_adaptive.summary(args.hours * 3600),
            "fixed": cold_fixed.summary(args.hours * 3600),
        }
    }
    wall = time.perf_counter()
    if args.policy_only:
        adaptive, fixed = simulate(fleet, args.hours, settings, args.seed, warm=True)
        setup_s = 0.0
    else:
        os.environ["BENCH_FLEET_PASSWORD"] = PASSWORD
        with tempfile.TemporaryDirectory(prefix="tidings-bench-fleet-") as tmp:
            root = Path(tmp)
            setup = time.perf_counter()
            with Dovecot(root / "dovecot") as dovecot:
                for box in range(args.mailboxes):
                    dovecot.add_user(f"u{box}", PASSWORD)
                    dovecot.deliver_many(f"u{box}", "INBOX", [message(box, -1)])
                    dovecot.deliver_many(f"u{box}", "Sent", [])
                profile = dovecot.profile(tls=False, use_idle=False)
                polls = RealPolls(dovecot, profile, root / "blobs")
                try:
                    polls.prime(sorted(sample))
                    setup_s = time.perf_counter() - setup
                    wall = time.perf_counter()
                    adaptive, fixed = simulate(
                        fleet,
                        args.hours,
                        settings,
                        args.seed,
                        warm=True,
                        poll=polls,
                        fixed_sample=sample,
                    )
                finally:
                    polls.close()
    wall_s = time.perf_counter() - wall
    horizon = args.hours * 3600
    result_a, result_f = adaptive.summary(horizon), fixed.summary(horizon)
    for result, poller in ((result_a, adaptive), (result_f, fixed)):
        result["polls_per_mailbox_hour"] = round(poller.polls / args.mailboxes / args.hours, 3)
        per_poll = poller.poll_cpu_s / poller.issued if poller.issued else 0.0
        result["cpu_ms_per_poll"] = round(per_poll * 1000, 3)
        result["connector_cpu_s"] = round(poller.schedule_cpu_s + per_poll * poller.polls, 2)
    figures.update(
        {
            "adaptive": result_a,
            "fixed": result_f,
            "poll_ratio": round(fixed.polls / max(1, adaptive.polls), 1),
            "wall_s": round(wall_s, 1),
            "setup_s": round(setup_s, 1),
            "time_compression": round(horizon / wall_s, 1) if wall_s else None,
        }
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=2.0, help="simulated hours")
    parser.add_argument("--active", type=float, default=0.01, help="share receiving mail")
    parser.add_argument("--mail-gap", type=float, default=20.0, help="mean minutes between mail")
    parser.add_argument(
        "--fixed-sample", type=int, default=50, help="idle mailboxes the fixed poller really polls"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--policy-only", action="store_true", help="simulate, issue no IMAP")
    args = parser.parse_args()
    figures = run(args)
    figures = {
        "benchmark": "fleet",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "fleet": {
            "mailboxes": args.mailboxes,
            "active_share": args.active,
            "mean_minutes_between_mail": args.mail_gap,
            "simulated_hours": args.hours,
            "fixed_poller_imap_sample": "active mailboxes + "
            f"{args.fixed_sample} idle ones; CPU extrapolated per poll",
            "imap": "none (policy only)" if args.policy_only else "dovecot, plaintext loopback",
            "history": "cursors: idle mailboxes changed 1-30 days ago, active ones < 1 h ago",
        },
        "polling_defaults": {
            k: getattr(PollingSettings(), k)
            for k in ("min_interval_s", "max_active_interval_s", "active_window_s", "idle_max_s")
        },
        **figures,
        "aim": {"poll_ratio": ">= 10", "p99_latency": "adaptive < fixed"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    _print(figures)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


def _print(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    fleet = figures["fleet"]
    table = Table(
        title=(
            f"{fleet['mailboxes']} mailboxes, {fleet['active_share']:.0%} receiving mail, "
            f"{fleet['simulated_hours']} simulated h in {figures['wall_s']} s wall "
            f"(x{figures['time_compression']}); IMAP: {fleet['imap']}"
        )
    )
    for column in ("poller", "polls", "polls/mbx/h", "CPU s", "ms/poll", "p50 s", "p99 s", "max s"):
        table.add_column(column, justify="right")
    for name, key in (("adaptive", "adaptive"), ("fixed 300 s", "fixed")):
        row = figures[key]
        lat = row["latency_s"]
        table.add_row(
            name,
            str(row["polls"]),
            str(row["polls_per_mailbox_hour"]),
            str(row["connector_cpu_s"]),
            str(row["cpu_ms_per_poll"]),
            str(lat["p50"]),
            str(lat["p99"]),
            str(lat["max"]),
        )
    console = Console()
    console.print(table)
    cold = figures["cold_start_policy_only"]
    console.print(
        f"fixed / adaptive polls: {figures['poll_ratio']}x (aim >= 10); found "
        f"{figures['adaptive']['found_messages']} messages each. Cold start (no history, "
        f"policy only): adaptive {cold['adaptive']['polls']} polls, p99 "
        f"{cold['adaptive']['latency_s']['p99']} s vs fixed {cold['fixed']['polls']}, "
        f"p99 {cold['fixed']['latency_s']['p99']} s. Fixed poller CPU: measured per poll on "
        f"{figures['fixed']['polls_issued_to_imap']} real polls, times its poll count."
    )
    console.print(f"adaptive polls by reason: {figures['adaptive']['by_reason']}")


if __name__ == "__main__":
    main()
