"""A processor killed mid-stream and restarted loses nothing, even when it comes back
with both changelog to replay and a backlog to read.

faust-streaming 0.15 lost stream records in that restart two ways
(processors/recovery.py): a fetch that began while only the changelogs were
active handed over records of the paused stream partitions, which faust dropped
past their position; and it resumed the stream partitions before it sought them
to their committed offsets, then cleared its stream queues, so whatever was
fetched in between counted as read and was never processed
(faust-streaming/faust#596). The first needs a fetch waiting when recovery
pauses the changelogs and a partition with nothing committed yet; the second
lasts as long as that seek, milliseconds in a normal start. The kill -9 step of
test_sync_faults.py hit them about one full run in three. Here the first worker
is killed early (150 decisions in, in the runs looked at before its first commit)
and the restarted worker's seek takes 2 s longer
(tests/faults/slow_seek.py): with faust's own recovery, or with either half of
the fix alone, changes were never decided and their partitions' lag stayed where
it was."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from schemas.topics import MAIL_CHANGES, PROMOTION_DECISIONS
from tests.faults.test_connector_failover import kill9
from tests.faults.test_sync_faults import item_keys_now
from tests.integration.test_processes import endpoint
from tests.integration.test_processor_workers import (
    add_mailboxes,
    decisions_made,
    deliver,
    message,
)
from tests.workspace import Workspace

pytestmark = pytest.mark.faults

PER_MAILBOX = 300  # 900 changes (each message in all 3 mailboxes), most unread at the kill
KILL_AFTER = 150  # decisions the first worker makes before its kill -9
SETTLE_S = 180.0
REPO = Path(__file__).resolve().parents[2]  # where `tests.faults.slow_seek` imports from


def wait_for_decisions(url: str, count: int, timeout: float = 120.0) -> float:
    """The worker's decision count once it reached `count` (fails at the deadline)."""
    deadline = time.monotonic() + timeout
    while (made := decisions_made(url)) < count:
        assert time.monotonic() < deadline, f"only {made} decisions in {timeout} s"
        time.sleep(0.05)
    return made


def undecided(workspace: Workspace) -> tuple[set[str], dict[int, int]]:
    """Changes on mail.changes with no decision on promotion.decisions, and the
    processors' lag on mail.changes by partition."""
    config = load_config(env=workspace.env)
    stages = item_keys_now(config)
    changes, lag = stages[MAIL_CHANGES.name(config.topic_prefix)]
    decided, _ = stages[PROMOTION_DECISIONS.name(config.topic_prefix)]
    return changes - decided, lag


def test_restart_with_changelog_to_replay_and_a_backlog_loses_nothing(
    workspace: Workspace, tmp_path: Path
) -> None:
    workspace.env["TIDINGS_LOG_LEVEL"] = "info"  # faust's recovery steps, logged
    # Batches of at most 10 ms, as when the kill point was chosen: the kill has to
    # land where the first worker's changelog is ahead of what its tables stored
    # (a delivered changelog offset is stored with the next batch's writes).
    workspace.env["TIDINGS_PROCESSORS__BATCH_MAX_WAIT_MS"] = "10"
    workspace.cli("broker", "start")
    dirs = add_mailboxes(workspace, tmp_path / "mail")
    for mailbox_id, maildir in dirs.items():
        for n in range(PER_MAILBOX):
            deliver(maildir, f"{n}.eml", message(n, f"{mailbox_id}@nw.example"))
    connectors = workspace.start("run", "connectors", log=tmp_path / "connectors.log")
    first = workspace.start("run", "processors", log=tmp_path / "processors-1.log")
    restarted = None
    try:
        made = wait_for_decisions(endpoint(workspace, "processors"), KILL_AFTER)
        kill9(first)
        (workspace.data_dir / "run" / "processors.json").unlink()
        restarted = workspace.start(
            "run", "processors", log=tmp_path / "processors-2.log",
            module="tests.faults.slow_seek", env={"PYTHONPATH": str(REPO)},
        )  # fmt: skip
        endpoint(workspace, "processors")
        deadline = time.monotonic() + SETTLE_S
        missing, lag = undecided(workspace)
        while (missing or any(lag.values())) and time.monotonic() < deadline:
            assert restarted.poll() is None, workspace.logs(tmp_path)
            time.sleep(2.0)
            missing, lag = undecided(workspace)
        recovery = [
            line
            for line in (tmp_path / "processors-2.log").read_text().splitlines()
            if "Recovery]" in line
        ]
        assert any("Restoring state from changelog" in line for line in recovery), recovery
        assert (missing, lag) == (set(), dict.fromkeys(lag, 0)), (
            f"killed after {made:.0f} decisions; {len(missing)} changes undecided, "
            f"e.g. {sorted(missing)[:3]}; processors' lag on mail.changes {lag}\n"
            f"{workspace.logs(tmp_path)}"
        )
    finally:
        for process in (connectors, restarted or first):
            kill9(process)
