"""Two processor workers at once: the same message in three mailboxes, read in parallel
and decided on whichever worker owns its conversation, is one activity listing every
receiving mailbox; each worker decides part of the stream.

The embedded broker runs on memory storage here: with several processes appending
to one partition at the same moment, tansu's S3 storage can misplace a batch
(see pipeline/tansu_compat.py), which is the broker's defect, not the one this
test is about. Several workers in production means Kafka."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.test_processes import endpoint, get
from tests.workspace import Workspace

MAILBOXES = ("mb-a", "mb-b", "mb-c")
SHARED = 12  # messages every mailbox receives
OWN = 4  # messages only one mailbox receives, per mailbox


def message(n: int, to: str) -> bytes:
    return (
        f"From: Dana <dana@contoso.example>\nTo: {to}\nSubject: Order {n}\n"
        f"Message-ID: <order-{n}@contoso.example>\nDate: Mon, 30 Mar 2026 10:15:00 +0000\n\n"
        f"Please ship order {n}.\n"
    ).encode()


def deliver(maildir: Path, name: str, raw: bytes) -> None:
    (maildir / "tmp" / name).write_bytes(raw)
    os.rename(maildir / "tmp" / name, maildir / "new" / name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def status(url: str) -> int | None:
    """The HTTP status of a GET, None while nothing listens."""
    try:
        return get(url)[0]
    except OSError:
        return None


def decisions_made(url: str) -> float:
    """tidings_processor_decisions_total summed over labels, from a worker's /metrics."""
    _, body = get(f"{url}/metrics")
    pattern = r"^tidings_processor_decisions_total\{[^}]*\} ([0-9.e+]+)$"
    return sum(float(value) for value in re.findall(pattern, body, re.M))


def add_mailboxes(workspace: Workspace, root: Path) -> dict[str, Path]:
    """Three Maildir mailboxes with the filter `all`; their directories by id."""
    dirs = {}
    for mailbox_id in MAILBOXES:
        maildir = root / mailbox_id
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        dirs[mailbox_id] = maildir
        workspace.cli(
            "mailbox", "add", "--id", mailbox_id, "--path", str(maildir), "--owner",
            f"user:{mailbox_id}", "--filter", "all", "--email", f"{mailbox_id}@nw.example",
        )  # fmt: skip
    return dirs


def deliver_all(dirs: dict[str, Path]) -> dict[str, set[str]]:
    """Deliver the shared and the own messages; the mailboxes each Message-ID reaches."""
    expected: dict[str, set[str]] = {}
    for n in range(SHARED):
        for mailbox_id in MAILBOXES:
            deliver(dirs[mailbox_id], f"{1_790_000_000 + n}.M{n}.s", message(n, "team"))
        expected[f"order-{n}@contoso.example"] = set(MAILBOXES)
    for index, mailbox_id in enumerate(MAILBOXES):
        for k in range(OWN):
            n = 1000 + index * OWN + k
            deliver(dirs[mailbox_id], f"{1_790_000_000 + n}.M{n}.o", message(n, mailbox_id))
            expected[f"order-{n}@contoso.example"] = {mailbox_id}
    return expected


def wait_until_healthy(url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while status(f"{url}/healthz") != 200:
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)


def wait_for_decisions(workspace: Workspace, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = workspace.query("SELECT count() FROM tidings.promotion_decisions FINAL")
        if rows and int(rows[0][0]) >= count:
            return
        if time.monotonic() > deadline:
            keys = workspace.query("SELECT item_key FROM tidings.promotion_decisions FINAL")
            raise AssertionError(f"{rows} decided: {sorted(keys)}\n{workspace.logs()}")
        time.sleep(1)


def stop(*processes: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL whatever does not exit within two minutes."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_two_workers_make_one_activity_per_message(workspace: Workspace, tmp_path: Path) -> None:
    workspace.env["TIDINGS_EMBEDDED__STORAGE"] = "memory"
    workspace.cli("broker", "start")
    dirs = add_mailboxes(workspace, tmp_path)
    first = workspace.start("run", "all", log=tmp_path / "run-all.log")
    second = None
    try:
        first_url = endpoint(workspace, "processors")
        port = free_port()
        log = tmp_path / "processors-2.log"
        env = {"TIDINGS_PROCESSORS__WEB_PORT": str(port)}
        second = workspace.start("run", "processors", log=log, env=env)
        second_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(second_url, log)
        time.sleep(5)  # let the group settle on two members before mail arrives
        expected = deliver_all(dirs)
        wait_for_decisions(workspace, (SHARED + OWN) * len(MAILBOXES))
        activities = workspace.query(
            "SELECT message_id, count(), groupUniqArrayArray(receiving_mailboxes) "
            "FROM tidings.activities FINAL GROUP BY message_id"
        )
        found = {str(mid): (int(count), set(boxes)) for mid, count, boxes in activities}
        assert found == {mid: (1, boxes) for mid, boxes in expected.items()}
        reasons = workspace.query(
            "SELECT reason, count() FROM tidings.promotion_decisions FINAL GROUP BY reason"
        )
        assert {str(r): int(c) for r, c in reasons} == {
            "AcceptAll": len(expected),
            "Duplicate": SHARED * (len(MAILBOXES) - 1),
        }
        assert decisions_made(first_url) > 0, "the first worker decided nothing"
        assert decisions_made(second_url) > 0, "the second worker decided nothing"
    finally:
        stop(second, first)
