"""`tidings demo`: the whole pipeline on embedded defaults, on the demo data in examples/.

Starts the embedded broker, loads the demo CRM records, tracked emails and
mailboxes, runs connectors, processors and sinks as supervised processes with a
progress bar, waits until everything is synced and drained, and prints a summary
queried from ClickHouse. With --follow it keeps running and prints each new
activity as it lands.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from pipeline.bootstrap import Infrastructure, bring_up
from pipeline.crm_import import read_import_file
from pipeline.http import read_endpoint
from pipeline.idle import IdleProbe
from pipeline.mailboxes import load_mailbox_file
from pipeline.publish import publish
from pipeline.query import QueryError, run_query
from pipeline.reports import render_summary, summarize
from pipeline.roles import ROLES
from pipeline.supervisor import Supervisor, keep_alive
from schemas.base import utc_now
from schemas.config import TidingsConfig
from schemas.topics import CRM_ACTIVITIES, CRM_RECORDS, MAILBOX_CONFIG


class DemoError(RuntimeError):
    """The demo could not run; the message says why and what to do."""


def examples_dir() -> Path:
    """The examples/ directory (TIDINGS_EXAMPLES overrides; else next to the packages)."""
    override = os.environ.get("TIDINGS_EXAMPLES")
    path = Path(override) if override else Path(__file__).resolve().parents[1] / "examples"
    if not (path / "mailboxes.toml").exists():
        raise DemoError(f"demo data not found in {path}; set TIDINGS_EXAMPLES to examples/")
    return path


@dataclass(frozen=True)
class DemoData:
    """Counts of what the demo loaded."""

    records: int
    tracked_emails: int
    mailboxes: int
    messages: int
    mailbox_root: Path


def prepare_mailboxes(examples: Path, data_dir: Path) -> Path:
    """Copy the demo Maildirs into the data directory (the demo never touches examples/)."""
    target = data_dir / "demo" / "mailboxes"
    shutil.copytree(examples / "mailboxes", target, dirs_exist_ok=True)
    return target


def count_messages(root: Path) -> int:
    """Message files in every Maildir new/ and cur/ under `root`."""
    return sum(
        1
        for sub in ("new", "cur")
        for directory in root.rglob(sub)
        if directory.is_dir()
        for entry in directory.iterdir()
        if entry.is_file() and not entry.name.startswith(".")
    )


async def load_demo_data(config: TidingsConfig, examples: Path) -> DemoData:
    """Publish the demo's CRM records, tracked emails and mailboxes."""
    root = prepare_mailboxes(examples, config.data_path)
    batch = read_import_file(examples / "crm" / "records.jsonl")
    tracked = read_import_file(examples / "crm" / "tracked-emails.jsonl")
    mailboxes = load_mailbox_file(examples / "mailboxes.toml", root.parent)
    prefix = config.topic_prefix
    await publish(config.kafka, prefix, CRM_RECORDS, [(r.record_id, r) for r in batch.records])
    await publish(
        config.kafka, prefix, CRM_ACTIVITIES, [(a.activity_id, a) for a in tracked.activities]
    )
    await publish(config.kafka, prefix, MAILBOX_CONFIG, [(m.mailbox_id, m) for m in mailboxes])
    return DemoData(
        records=len(batch.records),
        tracked_emails=len(tracked.activities),
        mailboxes=len(mailboxes),
        messages=count_messages(root),
        mailbox_root=root,
    )


def run_demo(
    config: TidingsConfig, config_path: Path | None, follow: bool, console: Console
) -> int:
    """Run the demo; returns the exit code."""
    examples = examples_dir()
    started = time.monotonic()
    console.print("[bold]tidings demo[/] — starting the embedded broker and ClickHouse")
    infra = bring_up(config)
    supervisor: Supervisor | None = None
    try:
        data = asyncio.run(load_demo_data(infra.config, examples))
        console.print(
            f"loaded {data.records} CRM records, {data.tracked_emails} tracked emails and "
            f"{data.mailboxes} mailboxes holding {data.messages} messages"
        )
        supervisor = Supervisor(infra.config, list(ROLES), config_path, infra.broker)
        since = utc_now()
        supervisor.start()
        asyncio.run(_wait_with_progress(infra, supervisor, data, since, console))
        if follow:
            return _follow(infra, supervisor, data, console)
        supervisor.stop()
        supervisor = None
        summary = summarize(lambda sql: run_query(infra.config, sql), config.clickhouse.database)
        render_summary(summary, console)
        console.print(f"done in {time.monotonic() - started:.1f}s")
        _next_steps(console, data)
        return 0
    finally:
        if supervisor is not None:
            supervisor.stop()
        infra.close()


async def _wait_with_progress(
    infra: Infrastructure,
    supervisor: Supervisor,
    data: DemoData,
    since: datetime,
    console: Console,
) -> None:
    config = infra.config
    probe = IdleProbe(config, list(ROLES), since)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("items decided", total=data.messages)
        watcher = asyncio.create_task(
            keep_alive(supervisor, lambda line: progress.console.print(f"[yellow]{line}[/]"))
        )
        try:
            await _until_idle(probe, progress, task, supervisor, data)
        finally:
            watcher.cancel()
        progress.update(task, description="items decided")


async def _until_idle(
    probe: IdleProbe,
    progress: Progress,
    task: TaskID,
    supervisor: Supervisor,
    data: DemoData,
) -> None:
    config = supervisor.config
    streak = 0
    while streak < 2:
        if supervisor.needing_attention:
            stopped = ", ".join(supervisor.needing_attention)
            raise DemoError(f"{stopped} stopped and needs attention; see {config.data_path}/logs")
        decided = await asyncio.to_thread(_decided_count, config)
        if decided is not None:
            progress.update(task, completed=min(decided, data.messages))
        report = await probe.check_safely()
        streak = streak + 1 if report.idle else 0
        progress.update(task, description=f"items decided ({report.describe()})")
        await asyncio.sleep(0.5)


def _decided_count(config: TidingsConfig) -> int | None:
    if read_endpoint(config.data_path / "run", "sinks") is None:
        return None
    try:
        rows = run_query(
            config,
            f"SELECT count() FROM {config.clickhouse.database}.promotion_decisions FINAL "
            "WHERE status != 'removed'",
        ).rows
    except QueryError:
        return None
    return int(rows[0][0])


def _follow(infra: Infrastructure, supervisor: Supervisor, data: DemoData, console: Console) -> int:
    config = infra.config
    db = config.clickhouse.database
    drop = data.mailbox_root / "mb-support" / "new"
    console.print(
        f"\n[bold]following[/] — drop a message file into {drop} and it appears here as an "
        "activity within seconds. Ctrl-C to stop."
    )
    seen_version: dict[str, int] = {}
    sql = (
        f"SELECT activity_id, version, subject, correlation_method, regarding, "
        f"arrayStringConcat(receiving_mailboxes, ',') FROM {db}.activities FINAL "
        f"ORDER BY updated_at"
    )
    first = True
    try:
        while True:
            for line in supervisor.watch():
                console.print(f"[yellow]{line}[/]")
            try:
                rows = run_query(config, sql).rows
            except QueryError:
                rows = []
            for activity_id, version, subject, method, regarding, mailboxes in rows:
                if seen_version.get(activity_id) == version:
                    continue
                seen_version[activity_id] = int(version)
                if not first:
                    console.print(
                        f"[green]activity[/] {activity_id[:8]} v{version} [bold]{subject}[/]"
                        f" · {method} · regarding {regarding or '—'} · {mailboxes}"
                    )
            first = False
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping")
    return 0


def _next_steps(console: Console, data: DemoData) -> None:
    console.print("\n[bold]Look further[/]")
    for command in (
        'tidings query "SELECT reason, count() FROM tidings.promotion_decisions FINAL '
        'GROUP BY reason"',
        'tidings query "SELECT subject, correlation_method, regarding FROM tidings.activities '
        'FINAL ORDER BY sent_at LIMIT 20"',
        'tidings query "SELECT mailbox_id, code, message FROM tidings.sync_errors FINAL"',
        "tidings mailbox list",
        f"tidings demo --follow   # then drop a file into {data.mailbox_root}/mb-support/new/",
    ):
        console.print(f"  {command}")
