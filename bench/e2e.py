"""End-to-end benchmark: Maildir files → decisions and activities in ClickHouse.

Generates N messages (default 20,000) into Maildirs, runs the pipeline on
embedded defaults (tansu, chDB, one process per role) and prints:

* emails/s end to end: N / time from starting the processes until the last
  item's decision is a row in ClickHouse (startup included), and the steady
  rate between the first and the last decided item;
* latency from dropping one file into a Maildir to its row in ClickHouse
  (p50, p99 over 100 sequential drops, with the pipeline idle).

Figures also go to bench/results/e2e.json.

    python bench/e2e.py [--messages N] [--drops K] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from pipeline.http import read_endpoint
from pipeline.mailboxes import maildir_mailbox
from pipeline.publish import publish
from pipeline.query import QueryError, run_query
from pipeline.roles import ROLES
from pipeline.supervisor import Supervisor
from schemas.config import TidingsConfig
from schemas.crm import CrmRecord
from schemas.topics import CRM_RECORDS, MAILBOX_CONFIG

RESULTS = Path(__file__).resolve().parent / "results" / "e2e.json"
MAILBOXES = (("bench-sales", "responses"), ("bench-ops", "crm-records"),
             ("bench-support", "all"), ("bench-exec", "email-enabled"))  # fmt: skip
WORDS = ("order", "quote", "invoice", "delivery", "schedule", "contract", "renewal", "pricing",
         "discount", "shipment", "warehouse", "pallet", "forecast", "meeting", "proposal",
         "update", "question", "support", "ticket", "review", "budget", "approval", "sample",
         "specification", "change", "request", "confirmation")  # fmt: skip

console = Console()


def build_message(rng: random.Random, index: int, contacts: list[str], mailbox: str) -> bytes:
    """A plausible business email of about 1-3 KB; every 4th one replies to an earlier one."""
    msg = EmailMessage()
    sender = rng.choice(contacts) if rng.random() < 0.7 else f"person{index}@unknown.example"
    msg["From"] = sender
    msg["To"] = f"{mailbox}@bench.example"
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))).capitalize()
    if index % 4 == 3:
        parent = f"<bench-{index - 3}@bench.example>"
        msg["In-Reply-To"] = parent
        msg["References"] = parent
        subject = f"RE: {subject}"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<bench-{index}@bench.example>"
    sent = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=index)
    msg["Date"] = format_datetime(sent)
    paragraphs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))).capitalize() + "."
        for _ in range(rng.randint(2, 6))
    ]
    msg.set_content("Hello,\n\n" + "\n\n".join(paragraphs) + "\n\nBest regards\n")
    return bytes(msg)


def write_maildirs(root: Path, count: int, contacts: list[str]) -> dict[str, Path]:
    """Write `count` messages spread over the bench mailboxes; returns mailbox → path."""
    rng = random.Random(42)
    paths: dict[str, Path] = {}
    for name, _ in MAILBOXES:
        path = root / name
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        paths[name] = path
    names = [name for name, _ in MAILBOXES]
    for index in range(count):
        mailbox = names[index % len(names)]
        data = build_message(rng, index, contacts, mailbox)
        (paths[mailbox] / "new" / f"{1_700_000_000 + index}.M{index}P1.bench").write_bytes(data)
    return paths


def contacts_for(count: int) -> list[CrmRecord]:
    """CRM contacts whose addresses the generated mail uses."""
    return [
        CrmRecord(
            record_id=f"bc-{i}",
            record_type="contact",
            name=f"Contact {i}",
            email_addresses=[f"contact{i}@customer{i % 50}.example"],
        )
        for i in range(count)
    ]


def sinks_up(config: TidingsConfig) -> bool:
    """True once the sinks process serves queries (before that, a query from here
    would open chDB itself and keep the sinks from opening it)."""
    return read_endpoint(config.data_path / "run", "sinks") is not None


def decided(config: TidingsConfig) -> int:
    """Rows in promotion_decisions (FINAL) — through the running sinks process."""
    if not sinks_up(config):
        return 0
    try:
        sql = "SELECT count() FROM tidings.promotion_decisions FINAL WHERE status != 'removed'"
        rows = run_query(config, sql).rows
    except QueryError:
        return 0
    return int(rows[0][0])


def item_decided(config: TidingsConfig, item_key: str) -> bool:
    """True once one item's decision is a row in ClickHouse."""
    if not sinks_up(config):
        return False
    try:
        rows = run_query(
            config,
            f"SELECT count() FROM tidings.promotion_decisions WHERE item_key = '{item_key}'",
        ).rows
    except QueryError:
        return False
    return int(rows[0][0]) > 0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def run(messages: int, drops: int, keep: bool) -> dict[str, object]:
    """Run the benchmark; returns the figures."""
    work = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    os.environ["TIDINGS_DATA_DIR"] = str(work / "data")
    config = load_config()
    records = contacts_for(500)
    contacts = [r.email_addresses[0] for r in records]
    console.print(f"writing {messages} messages into {len(MAILBOXES)} Maildirs under {work}")
    paths = write_maildirs(work / "mail", messages, contacts)
    infra = bring_up(config)
    supervisor = None
    try:
        config = infra.config
        mailboxes = [
            maildir_mailbox(name, f"user:{name}", paths[name], flt, email=f"{name}@bench.example")
            for name, flt in MAILBOXES
        ]
        crm = [(r.record_id, r) for r in records]
        asyncio.run(publish(config.kafka, config.topic_prefix, CRM_RECORDS, crm))
        boxes = [(m.mailbox_id, m) for m in mailboxes]
        asyncio.run(publish(config.kafka, config.topic_prefix, MAILBOX_CONFIG, boxes))
        supervisor = Supervisor(config, list(ROLES), None, infra.broker)
        started = time.monotonic()
        supervisor.start()
        first_at, done_at = wait_for_backlog(config, supervisor, messages, started)
        latencies = measure_drops(config, paths["bench-support"], drops)
    finally:
        if supervisor is not None:
            supervisor.stop()
        infra.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    total_s = done_at - started
    return {
        "benchmark": "e2e",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages": messages,
        "end_to_end_s": round(total_s, 2),
        "emails_per_s_end_to_end": round(messages / total_s, 1),
        "startup_to_first_decision_s": round(first_at - started, 2),
        "emails_per_s_steady": round(messages / max(done_at - first_at, 1e-9), 1),
        "drop_latency_ms": {
            "drops": len(latencies),
            "p50": round(percentile(latencies, 50) * 1000, 1),
            "p99": round(percentile(latencies, 99) * 1000, 1),
            "min": round(min(latencies) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1),
        },
        "settings": {
            "connector_poll_interval_s": config.connectors.poll_interval_s,
            "sink_batch_max_age_s": config.sinks.batch_max_age_s,
            "kafka_linger_ms": config.kafka.linger_ms,
            "partitions": config.kafka.partitions,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }


def wait_for_backlog(
    config: TidingsConfig, supervisor: Supervisor, messages: int, started: float
) -> tuple[float, float]:
    """Wait until every generated message is decided; returns (first, last) decision times."""
    first_at: float | None = None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("decided", total=messages)
        while True:
            for line in supervisor.watch():
                progress.console.print(f"[yellow]{line}[/]")
            count = decided(config)
            now = time.monotonic()
            if count and first_at is None:
                first_at = now
            progress.update(task, completed=count)
            if count >= messages:
                return first_at or now, now
            if now - started > 3600:
                raise TimeoutError(f"only {count} of {messages} decided after an hour")
            time.sleep(0.2)


def measure_drops(config: TidingsConfig, maildir: Path, drops: int) -> list[float]:
    """Drop files one at a time; each latency is file written → decision row visible."""
    rng = random.Random(7)
    latencies = []
    with Progress(TextColumn("drops"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
        task = bar.add_task("drops", total=drops)
        for n in range(drops):
            name = f"{1_800_000_000 + n}.M{n}P2.drop"
            data = build_message(rng, 10_000_000 + n, ["drop@unknown.example"], "bench-support")
            tmp = maildir / "tmp" / name
            tmp.write_bytes(data)
            began = time.monotonic()
            tmp.rename(maildir / "new" / name)
            item_key = f"bench-support|INBOX|{name}"
            while not item_decided(config, item_key):
                if time.monotonic() - began > 60:
                    raise TimeoutError(f"{name} not decided within 60 s")
                time.sleep(0.01)
            latencies.append(time.monotonic() - began)
            bar.update(task, advance=1)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--drops", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    figures = run(args.messages, args.drops, args.keep)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    console.print_json(msgspec.json.encode(figures).decode())
    console.print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
