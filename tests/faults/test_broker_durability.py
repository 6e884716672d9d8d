"""The broker is durable: killing it (or everything) mid-demo loses and duplicates nothing.

Both tests run the real demo (tansu on localbucket storage, chDB, Maildir) and
compare every message's final decision with examples/ground-truth.jsonl.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.integration.ground_truth import counts, load_ground_truth, mismatches
from tests.workspace import Workspace


def wait_for(path: Path, timeout: float = 120) -> dict[str, int | str]:
    """The JSON record at `path`, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            time.sleep(0.1)
    raise TimeoutError(f"{path} did not appear within {timeout:.0f}s")


def kill_recorded_broker(workspace: Workspace) -> dict[str, int | str]:
    """SIGKILL tansu (and return its record): acknowledged data must survive."""
    record = wait_for(workspace.data_dir / "run" / "broker.json")
    os.kill(int(record["broker_pid"]), signal.SIGKILL)
    return record


def test_broker_killed_mid_demo_is_restarted_and_nothing_is_lost(
    workspace: Workspace, tmp_path: Path
) -> None:
    log = tmp_path / "demo.log"
    demo = workspace.start("demo", log=log)
    try:
        wait_for(workspace.data_dir / "run" / "sinks.json")
        time.sleep(1.0)  # connectors are emitting, processors deciding
        killed = kill_recorded_broker(workspace)
        assert demo.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    output = log.read_text()
    assert "restarted it on the same port" in output
    restarted = json.loads((workspace.data_dir / "broker" / "ports.json").read_text())
    assert restarted["broker_port"] == killed["broker_port"]
    expected = load_ground_truth()
    assert mismatches(workspace.query, expected) == []
    assert counts(workspace.query)["decided"] == len(expected)


def test_everything_killed_mid_demo_then_demo_again_loses_nothing(
    workspace: Workspace, tmp_path: Path
) -> None:
    demo = workspace.start("demo", log=tmp_path / "first.log")
    try:
        wait_for(workspace.data_dir / "run" / "sinks.json")
        time.sleep(1.5)
    finally:
        record = wait_for(workspace.data_dir / "run" / "broker.json")
        os.killpg(demo.pid, signal.SIGKILL)  # the demo and its role processes
        for pid in (record["broker_pid"], record["bucket_pid"]):
            os.kill(int(pid), signal.SIGKILL)
        demo.wait(timeout=30)

    second = workspace.cli("demo", timeout=600)
    assert "Items" in second.stdout
    expected = load_ground_truth()
    assert mismatches(workspace.query, expected) == []
    totals = counts(workspace.query)
    assert totals["decided"] == len(expected)
    assert totals["activities"] == totals["distinct_activity_ids"]
