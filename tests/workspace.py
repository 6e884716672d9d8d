"""The test workspace for integration and fault tests: a private data directory per
test, the real CLI in subprocesses, and queries against the embedded ClickHouse of
that directory.

chDB holds a data directory for one process, so queries run in a subprocess of
their own (after the pipeline stopped, or through the running sinks process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.embedded import EmbeddedBroker

ROOT = Path(__file__).resolve().parents[2]


class Workspace:
    """A data directory and the environment that points tidings at it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = {  # no COLUMNS: tables get the CLI's width for pipes, whoever runs the tests
            key: value
            for key, value in os.environ.items()
            if not key.startswith("TIDINGS_") and key not in ("COLUMNS", "LINES")
        }
        self.env["TIDINGS_DATA_DIR"] = str(data_dir)
        self.env["PYTHONUNBUFFERED"] = "1"

    def cli(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `tidings ARGS` and return its completed process (raises on failure when check)."""
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"tidings {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}\n"
                f"logs:\n{self.logs()}"
            )
        return result

    def start(
        self,
        *args: str,
        log: Path,
        env: dict[str, str] | None = None,
        module: str = "pipeline.cli",
    ) -> subprocess.Popen[bytes]:
        """Start `tidings ARGS` (or `python -m MODULE ARGS`, a wrapper around it) in its
        own process group (kill it and its children with os.killpg), output to `log`."""
        with log.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def query_many(self, *sqls: str) -> list[list[tuple[Any, ...]]]:
        """Run several queries in one subprocess; rows come back as tuples."""
        script = (
            "import json, sys\n"
            "from pipeline.config import load_config\n"
            "from pipeline.query import run_query\n"
            "config = load_config()\n"
            "out = [run_query(config, sql).rows for sql in json.loads(sys.stdin.read())]\n"
            "print(json.dumps(out, default=str))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=self.env,
            input=json.dumps(list(sqls)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"query failed: {result.stderr[-3000:]}")
        return [[tuple(row) for row in rows] for rows in json.loads(result.stdout)]

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of one query."""
        return self.query_many(sql)[0]

    def logs(self, *more: Path) -> str:
        """The tail of every process log of this workspace (and of the folders `more`)."""
        parts = []
        folders = (self.data_dir / "logs", *more)
        for path in sorted(p for folder in folders for p in folder.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-40:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop_broker(self) -> None:
        """Stop an embedded broker left running in this data directory."""
        config = load_config(env={"TIDINGS_DATA_DIR": str(self.data_dir)})
        EmbeddedBroker(config.data_path, config.embedded).stop_recorded()


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    """A fresh data directory; any embedded broker left in it is stopped afterwards."""
    space = Workspace(tmp_path / "data")
    yield space
    space.stop_broker()
