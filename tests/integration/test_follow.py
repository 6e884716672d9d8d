"""`tidings demo --follow`: a message dropped into a demo Maildir is printed as an
activity within seconds; SIGTERM stops everything it started."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from pipeline.embedded import pid_alive
from tests.workspace import Workspace

DROPPED = b"""From: Ines Duarte <ines.duarte@example.net>
To: Northwind Support <support@northwind.example>
Subject: Follow test: pallet count for order 4711
Message-ID: <follow-test-4711@example.net>
Date: Mon, 30 Mar 2026 10:15:00 +0000

Hello, how many pallets will order 4711 ship on?
"""


def wait_for_text(log: Path, text: str, timeout: float) -> float:
    """Seconds until `text` appears in `log`; raises TimeoutError with the log tail."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if text in log.read_text(errors="replace"):
            return time.monotonic() - started
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} not printed within {timeout}s:\n{log.read_text()[-3000:]}")


def test_follow_prints_a_dropped_message_within_seconds(
    workspace: Workspace, tmp_path: Path
) -> None:
    log = tmp_path / "follow.log"
    demo = workspace.start("demo", "--follow", log=log, env={"COLUMNS": "200"})
    try:
        wait_for_text(log, "following", timeout=300)
        inbox = workspace.data_dir / "demo" / "mailboxes" / "mb-support"
        (inbox / "tmp" / "1790000000.M1P1.follow").write_bytes(DROPPED)
        os.rename(
            inbox / "tmp" / "1790000000.M1P1.follow", inbox / "new" / "1790000000.M1P1.follow"
        )
        seconds = wait_for_text(log, "Follow test: pallet count for order 4711", timeout=30)
        assert seconds < 10
        record = (workspace.data_dir / "run" / "broker.json").read_text()
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=120) in (0, 128 + signal.SIGTERM)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    broker = json.loads(record)
    assert not pid_alive(int(broker["broker_pid"])), "the demo left its broker running"
    assert not (workspace.data_dir / "run" / "broker.json").exists()
