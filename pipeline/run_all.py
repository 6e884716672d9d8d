"""`tidings run all`: every role as a supervised child process of this one."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import datetime
from pathlib import Path

from rich.console import Console

from pipeline.bootstrap import Infrastructure
from pipeline.idle import IdleProbe
from pipeline.roles import ROLES
from pipeline.supervisor import Supervisor, keep_alive
from schemas.base import utc_now
from schemas.errors import EXIT_NEEDS_ATTENTION


def run_all(
    infra: Infrastructure, config_path: Path | None, until_idle: bool, console: Console
) -> int:
    """Supervise connectors, processors and sinks until SIGTERM/SIGINT (or idle)."""
    supervisor = Supervisor(infra.config, list(ROLES), config_path, infra.broker)
    since = utc_now()
    supervisor.start()
    try:
        asyncio.run(_supervise(infra, supervisor, until_idle, since, console))
    finally:
        codes = supervisor.stop()
    failed = {role: code for role, code in codes.items() if code not in (0, None)}
    for role, code in failed.items():
        console.print(f"[red]{role} exited with code {code}[/]")
    if EXIT_NEEDS_ATTENTION in failed.values():
        return EXIT_NEEDS_ATTENTION
    return 1 if failed else 0


async def _supervise(
    infra: Infrastructure,
    supervisor: Supervisor,
    until_idle: bool,
    since: datetime,
    console: Console,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    probe = IdleProbe(infra.config, list(ROLES), since) if until_idle else None
    watcher = asyncio.create_task(
        keep_alive(supervisor, lambda line: console.print(f"[yellow]{line}[/]"))
    )
    try:
        await _until_stopped(stop, probe, supervisor, console)
    finally:
        watcher.cancel()


async def _until_stopped(
    stop: asyncio.Event, probe: IdleProbe | None, supervisor: Supervisor, console: Console
) -> None:
    streak = 0
    while not stop.is_set():
        if supervisor.needing_attention:
            console.print(f"[red]stopping: {', '.join(supervisor.needing_attention)} stopped[/]")
            return
        if probe is not None:
            report = await probe.check_safely()
            streak = streak + 1 if report.idle else 0
            if streak >= 2:
                console.print("idle: every mailbox synced and every topic drained")
                return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
