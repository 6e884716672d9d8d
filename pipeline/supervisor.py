"""Process supervision for `tidings run all` and the demo: one child process per role,
restarted when it dies, stopped gracefully (SIGTERM: drain, commit, exit) at the end.
The embedded broker, when this process owns it, is watched and restarted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.embedded import EmbeddedBroker
from schemas.config import TidingsConfig
from schemas.errors import EXIT_NEEDS_ATTENTION

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised role process."""

    role: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    needs_attention: bool = False


class Supervisor:
    """Starts the roles as child processes and keeps them (and the broker) running."""

    def __init__(
        self,
        config: TidingsConfig,
        roles: list[str],
        config_path: Path | None,
        broker: EmbeddedBroker | None,
    ) -> None:
        self.config = config
        self.children = [Child(role) for role in roles]
        self.config_path = config_path
        self.broker = broker
        self.log_dir = config.data_path / "logs"
        self.broker_restarts = 0

    def start(self) -> None:
        """Start every child."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._spawn(child)

    def watch(self) -> list[str]:
        """Restart what died (children with backoff, the owned broker at once).

        Returns one line per restart, for the caller to show.
        """
        events: list[str] = []
        if self.broker is not None and self.broker.owned and not self.broker.broker_alive():
            self.broker.restart_broker()
            self.broker_restarts += 1
            events.append("the embedded broker stopped; restarted it on the same port")
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is None or process.poll() is None:
                if process is None and now >= child.next_start and not child.needs_attention:
                    self._spawn(child)
                continue
            code = process.returncode
            child.process = None
            if code == EXIT_NEEDS_ATTENTION:
                child.needs_attention = True
                events.append(
                    f"{child.role} stopped and needs attention; not restarting it "
                    f"(see {self.log_dir / (child.role + '.log')})"
                )
                continue
            child.restarts += 1
            delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
            child.next_start = now + delay
            events.append(
                f"{child.role} exited with code {code}; restarting in {delay:.0f}s "
                f"(log: {self.log_dir / (child.role + '.log')})"
            )
        return events

    @property
    def needing_attention(self) -> list[str]:
        """Roles that stopped on purpose (exit code 3) and stay stopped."""
        return [child.role for child in self.children if child.needs_attention]

    def stop(self, grace_s: float = 60.0) -> dict[str, int | None]:
        """SIGTERM every child, wait up to `grace_s`, then SIGKILL; returns exit codes."""
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes: dict[str, int | None] = {}
        for child in self.children:
            if child.process is None:
                codes[child.role] = EXIT_NEEDS_ATTENTION if child.needs_attention else None
                continue
            try:
                codes[child.role] = child.process.wait(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", child.role, grace_s)
                child.process.kill()
                codes[child.role] = child.process.wait()
        return codes

    def kill(self, role: str) -> None:
        """SIGKILL one child (fault tests); `watch` restarts it."""
        for child in self.children:
            if child.role == role and child.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                child.process.wait()

    def _spawn(self, child: Child) -> None:
        argv = [sys.executable, "-m", "pipeline.cli"]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        argv += ["run", child.role]
        env = os.environ.copy()
        env["TIDINGS_DATA_DIR"] = str(self.config.data_path)
        env["TIDINGS_KAFKA__BOOTSTRAP_SERVERS"] = ",".join(self.config.kafka.bootstrap_servers)
        if self.config.kafka.broker:
            env["TIDINGS_KAFKA__BROKER"] = self.config.kafka.broker
        if self.config.kafka.idempotence is not None:
            env["TIDINGS_KAFKA__IDEMPOTENCE"] = str(self.config.kafka.idempotence).lower()
        env.setdefault("PYTHONUNBUFFERED", "1")
        with (self.log_dir / f"{child.role}.log").open("ab") as log_file:
            child.process = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )


async def keep_alive(
    supervisor: Supervisor, report: Callable[[str], None], interval_s: float = 0.5
) -> None:
    """Call `supervisor.watch()` every `interval_s` until cancelled; report each restart.

    Runs beside whatever the caller waits for, so a dead broker or role is
    restarted even while the caller is blocked on it.
    """
    while True:
        for line in await asyncio.to_thread(supervisor.watch):
            report(line)
        await asyncio.sleep(interval_s)
