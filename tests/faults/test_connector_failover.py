"""Connector workers as real processes against a real dovecot and the embedded broker:
two workers split the mailboxes, a kill -9 moves the dead one's mailboxes to the
survivor, and a kill -9 mid-batch re-emits at most that batch, with the same ids."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

from schemas.codec import encode_key
from schemas.mail import ChangeKind
from schemas.topics import MAIL_CHANGES, MAILBOX_STATUS
from tests.connector_harness import PASSWORD_ENV, ConnectorHarness, mailbox, message
from tests.mailserver import Dovecot
from tests.workspace import Workspace

pytestmark = pytest.mark.faults

PASSWORD = "failover-pw"
PARTITIONS = 4


def write_config(path: Path, dovecot: Dovecot, extra: str = "") -> Path:
    """tidings.toml with the test server's profile and fast polling, plus `extra` TOML."""
    path.write_text(
        f"""
[connectors]
server_poll_interval_s = 0.5
max_batch_items = 100

[server_profiles.dovecot]
protocol = "imap"
host = "localhost"
port = {dovecot.imaps_port}
ca_file = "{dovecot.ca_file}"
fetch_batch = 50
timeout_s = 10.0

[server_profiles.dovecot.retry]
retry_interval_s = 1.0
reconnect_base_s = 0.2
reconnect_max_s = 2.0
{extra}""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def space(workspace: Workspace, dovecot: Dovecot, tmp_path: Path) -> Iterator[Workspace]:
    """A workspace whose processes read the test config and the password variable."""
    workspace.env["TIDINGS_CONFIG"] = str(write_config(tmp_path / "tidings.toml", dovecot))
    workspace.env[PASSWORD_ENV] = PASSWORD
    os.environ[PASSWORD_ENV] = PASSWORD
    workspace.cli("broker", "start")
    yield workspace
    os.environ.pop(PASSWORD_ENV, None)


def start_worker(space: Workspace, name: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """`tidings run connectors` as worker `name`, in its own process group."""
    return space.start(
        "run",
        "connectors",
        log=tmp_path / f"{name}.log",
        env={"TIDINGS_CONNECTORS__WORKER_NAME": name},
    )


def kill9(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group: no cleanup, no flush, no goodbye to the group."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def spread_ids(count: int) -> list[str]:
    """Mailbox ids that land on every partition of mailbox.config."""
    partitioner = DefaultPartitioner()
    ids: list[str] = []
    covered: set[int] = set()
    n = 0
    while len(ids) < count or len(covered) < PARTITIONS:
        candidate = f"mb-user{n}"
        partition = partitioner(encode_key(candidate), list(range(PARTITIONS)), [])
        if partition not in covered or len(ids) < count:
            ids.append(candidate)
            covered.add(partition)
        n += 1
    return ids


async def test_two_workers_split_the_fleet_and_survive_a_kill9(
    space: Workspace, dovecot: Dovecot, tmp_path: Path
) -> None:
    ids = spread_ids(6)
    for mailbox_id in ids:
        user = mailbox_id.removeprefix("mb-")
        dovecot.add_user(user, PASSWORD)
        for n in range(10):
            dovecot.append(user, "INBOX", message(n))
    async with ConnectorHarness.up(space.data_dir, {}) as harness:
        for mailbox_id in ids:
            await harness.add_mailbox(mailbox(mailbox_id, mailbox_id.removeprefix("mb-")))
        first = start_worker(space, "w1", tmp_path)
        second = start_worker(space, "w2", tmp_path)
        try:
            owners = await wait_for_owners(harness, ids, lambda w: w == {"w1", "w2"})
            assert set(owners.values()) == {"w1", "w2"}
            kill9(first)
            for mailbox_id in ids:
                dovecot.append(mailbox_id.removeprefix("mb-"), "INBOX", message(99))
            for mailbox_id in ids:
                events = await harness.wait_for(
                    MAIL_CHANGES,
                    mailbox_id,
                    lambda e: len({x.item_id for x in e if x.change == ChangeKind.CREATED}) == 11,
                    timeout_s=120,
                )
                assert len({e.event_id for e in events}) == 11
            owners = await wait_for_owners(harness, ids, lambda w: w == {"w2"})
            assert set(owners.values()) == {"w2"}
        finally:
            for process in (first, second):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=60)


async def wait_for_owners(
    harness: ConnectorHarness, ids: list[str], done: object, timeout_s: float = 120
) -> dict[str, str]:
    """The worker named by each mailbox's latest status, once `done(set of workers)`."""
    deadline = time.monotonic() + timeout_s
    owners: dict[str, str] = {}
    while time.monotonic() < deadline:
        owners = {}
        for mailbox_id in ids:
            statuses = await harness.statuses(mailbox_id)
            if statuses and statuses[-1].worker:
                owners[mailbox_id] = statuses[-1].worker
        if len(owners) == len(ids) and done(set(owners.values())):  # type: ignore[operator]
            return owners
        await asyncio.sleep(1)
    raise AssertionError(f"owners never settled: {owners}")


async def test_kill9_mid_batch_reemits_at_most_one_batch_with_same_ids(
    space: Workspace, dovecot: Dovecot, tmp_path: Path
) -> None:
    total = 10_000
    dovecot.add_user("ivy", PASSWORD)
    dovecot.deliver_many("ivy", "INBOX", (message(n) for n in range(total)))
    async with ConnectorHarness.up(space.data_dir, {}) as harness:
        await harness.add_mailbox(mailbox("mb-ivy", "ivy"))
        worker = start_worker(space, "w1", tmp_path)
        try:
            await harness.wait_for(MAIL_CHANGES, "mb-ivy", lambda e: len(e) >= 200, 180)
            kill9(worker)
            before = len(await harness.changes("mb-ivy"))
            assert before < total, "the kill came too late to interrupt the sync"
            worker = start_worker(space, "w1", tmp_path)
            events = await harness.wait_for(
                MAIL_CHANGES, "mb-ivy", lambda e: len({x.item_id for x in e}) == total, 300
            )
            await harness.wait_for(
                MAILBOX_STATUS, "mb-ivy", lambda s: bool(s) and s[-1].pending_items == 0
            )
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
    by_item = Counter(e.item_id for e in events)
    repeated = [item for item, count in by_item.items() if count > 1]
    assert len(by_item) == total
    assert len(repeated) <= 100, f"{len(repeated)} items re-emitted, more than one batch"
    assert len({e.event_id for e in events}) == total, "a re-emitted event got a new id"
