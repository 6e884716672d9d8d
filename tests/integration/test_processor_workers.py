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


def test_two_workers_make_one_activity_per_message(workspace: Workspace, tmp_path: Path) -> None:
    workspace.env["TIDINGS_EMBEDDED__STORAGE"] = "memory"
    workspace.cli("broker", "start")
    dirs = {}
    for mailbox_id in MAILBOXES:
        maildir = tmp_path / mailbox_id
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        dirs[mailbox_id] = maildir
        workspace.cli(
            "mailbox", "add", "--id", mailbox_id, "--path", str(maildir), "--owner",
            f"user:{mailbox_id}", "--filter", "all", "--email", f"{mailbox_id}@nw.example",
        )  # fmt: skip
    first = workspace.start("run", "all", log=tmp_path / "run-all.log")
    second_port = free_port()
    second = None
    try:
        first_url = endpoint(workspace, "processors")
        second = workspace.start(
            "run",
            "processors",
            log=tmp_path / "processors-2.log",
            env={"TIDINGS_PROCESSORS__WEB_PORT": str(second_port)},
        )
        second_url = f"http://127.0.0.1:{second_port}"
        deadline = time.monotonic() + 120
        while status(f"{second_url}/healthz") != 200:
            assert time.monotonic() < deadline, (tmp_path / "processors-2.log").read_text()
            time.sleep(0.5)
        time.sleep(5)  # let the group settle on two members before mail arrives
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
        total_items = SHARED * len(MAILBOXES) + OWN * len(MAILBOXES)
        deadline = time.monotonic() + 180
        while True:
            rows = workspace.query("SELECT count() FROM tidings.promotion_decisions FINAL")
            if rows and int(rows[0][0]) >= total_items:
                break
            if time.monotonic() > deadline:
                keys = workspace.query("SELECT item_key, reason FROM tidings.promotion_decisions FINAL")
                logs = [(tmp_path / name).read_text()[-6000:] for name in ("run-all.log", "processors-2.log")]
                raise AssertionError(f"decided {rows}: {sorted(keys)}\n" + "\n".join(logs))
            time.sleep(1)
        activities = workspace.query(
            "SELECT message_id, count(), groupUniqArrayArray(receiving_mailboxes) "
            "FROM tidings.activities FINAL GROUP BY message_id"
        )
        found = {str(mid): (int(count), set(boxes)) for mid, count, boxes in activities}
        assert found == {mid: (1, boxes) for mid, boxes in expected.items()}
        reasons = workspace.query(
            "SELECT reason, count() FROM tidings.promotion_decisions FINAL GROUP BY reason"
        )
        assert dict((str(r), int(c)) for r, c in reasons) == {
            "AcceptAll": len(expected),
            "Duplicate": SHARED * (len(MAILBOXES) - 1),
        }
        assert decisions_made(first_url) > 0, "the first worker decided nothing"
        assert decisions_made(second_url) > 0, "the second worker decided nothing"
    finally:
        for process in (second, first):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (second, first):
            if process is not None:
                try:
                    process.wait(timeout=120)
                except Exception:
                    os.killpg(process.pid, signal.SIGKILL)
