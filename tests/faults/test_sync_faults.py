"""Nothing lost, nothing twice, while things break: one 5,000-message sync across four
IMAP mailboxes (real dovecot), with the connectors, processors and sinks as separate
real processes on the embedded broker (tansu on localbucket storage), storing into
ClickHouse over its HTTP interface (the production shape: `tests/clickhouse_http.py`,
chDB behind the documented protocol, in this process).

The mail arrives in waves; during each wave exactly one fault strikes at a random
point (seeded, printed): kill -9 of the connectors, the processors or the sinks
(restarted at once), a restart of the broker, ClickHouse refusing the next inserts,
a restart of dovecot mid-fetch. After
each wave settles, ClickHouse must hold exactly the ground truth so far: the set of
activity ids equals the expected one (no loss, no duplicate after FINAL), each
activity lists exactly the mailboxes that received it, and every item is accounted
for as promoted, skipped or errored with its expected reason (each errored one also
as one sync error).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from pipeline.idle import drain, topic_partitions
from schemas.config import TidingsConfig
from schemas.ids import email_activity_id
from schemas.mail import ChangeKind
from schemas.topics import MAIL_CHANGES, MAIL_PARSED, PROMOTION_DECISIONS, TopicSpec, codec
from tests.clickhouse_http import ClickHouseHTTP
from tests.faults.test_connector_failover import kill9, write_config
from tests.integration.test_processes import endpoint
from tests.mailserver import Dovecot
from tests.workspace import Workspace

pytestmark = pytest.mark.faults

PASSWORD_ENV = "FAULT_SUITE_IMAP_PASSWORD"
PASSWORD = "faults-pw"
CLICKHOUSE_PASSWORD_ENV = "FAULT_SUITE_CLICKHOUSE_PASSWORD"
CLICKHOUSE_PASSWORD = "faults-ch-pw"
INSERT_FAILURES = 6  # about 20 s of the sink's doubling retry delay (0.5 s, 1 s, ...)
USERS = ("ann", "bob", "cy", "dee")
ROLES = ("connectors", "processors", "sinks")
TOTAL_ITEMS = 5_000
SEED = int(os.environ.get("TIDINGS_FAULT_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)
SETTLE_S = 240.0


# -- ground truth -----------------------------------------------------------------


@dataclass
class Truth:
    """What ClickHouse must hold once everything delivered so far is decided."""

    items: int = 0
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    receivers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    errors: int = 0  # Malformed items: each is also one sync_errors row

    def deliver(self, message_id: str, mailboxes: list[str], kind: str) -> None:
        self.items += len(mailboxes)
        if kind == "malformed":
            self.decisions["errored", "Malformed"] += len(mailboxes)
            self.errors += len(mailboxes)
            return
        if kind == "auto-reply":
            self.decisions["skipped", "AutoReply"] += len(mailboxes)
            return
        self.decisions["promoted", "AcceptAll"] += 1  # the copy decided first
        self.decisions["promoted", "Duplicate"] += len(mailboxes) - 1  # joins its activity
        self.receivers[email_activity_id(message_id)].update(mailboxes)


def email(n: int, to: list[str], kind: str) -> tuple[str, bytes]:
    """Message n (its normalized Message-ID and bytes) from an outside sender to `to`:
    a plain order, an auto-reply, or a malformed one (its multipart boundary never
    appears)."""
    if kind == "malformed":
        return f"fault-{n}@contoso.example", (
            f"From: Sender <sender{n % 97}@contoso.example>\r\n"
            f"To: {', '.join(f'{user}@northwind.example' for user in to)}\r\n"
            f"Subject: Scan {n}\r\nMessage-ID: <fault-{n}@contoso.example>\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="declared-never-used"\r\n\r\n'
            "--other-boundary\r\nContent-Type: text/plain\r\n\r\nscan attached\r\n"
        ).encode()
    auto_reply = kind == "auto-reply"
    mail = EmailMessage()
    mail["From"] = f"Sender {n % 97} <sender{n % 97}@contoso.example>"
    mail["To"] = ", ".join(f"{user}@northwind.example" for user in to)
    mail["Subject"] = f"{'Out of office: ' if auto_reply else ''}Order {n}"
    mail["Message-ID"] = f"<fault-{n}@contoso.example>"
    mail["Date"] = "Mon, 30 Mar 2026 10:15:00 +0000"
    if auto_reply:
        mail["Auto-Submitted"] = "auto-replied"
    mail.set_content(f"Order {n}: please confirm.\n")
    return f"fault-{n}@contoso.example", mail.as_bytes()


def wave(first: int, items: int, truth: Truth) -> tuple[dict[str, list[bytes]], int]:
    """Messages from number `first` on making `items` mailbox items, by user, and the
    number of the next message; every tenth goes to two mailboxes (one activity, two
    receivers), every 25th is an auto-reply (skipped), every 40th (from the 7th) is
    malformed (errored)."""
    by_user: dict[str, list[bytes]] = defaultdict(list)
    n, made = first, 0
    while made < items:
        users = [USERS[n % len(USERS)]]
        if n % 10 == 0 and made + 2 <= items:
            users.append(USERS[(n + 1) % len(USERS)])
        kind = "auto-reply" if n % 25 == 0 else "malformed" if n % 40 == 7 else "order"
        message_id, raw = email(n, users, kind)
        truth.deliver(message_id, [f"mb-{user}" for user in users], kind)
        for user in users:
            by_user[user].append(raw)
        made += len(users)
        n += 1
    return by_user, n


# -- the running pipeline ------------------------------------------------------------


class Pipeline:
    """The three roles as processes of one workspace, killed and restarted at will."""

    def __init__(self, space: Workspace, clickhouse: ClickHouseHTTP, logs: Path) -> None:
        self.space = space
        self.clickhouse = clickhouse
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: Counter[str] = Counter()

    def start(self, role: str) -> None:
        self.starts[role] += 1
        log = self.logs / f"{role}-{self.starts[role]}.log"
        self.processes[role] = self.space.start("run", role, log=log)

    def kill9(self, role: str) -> None:
        kill9(self.processes[role])

    def check_alive(self) -> None:
        for role, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{role} exited {process.returncode}:\n{self.tails()}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def tails(self) -> str:
        return self.space.logs(self.logs)


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[ClickHouseHTTP]:
    """A ClickHouse HTTP interface on loopback for the sinks process to store into."""
    with ClickHouseHTTP(tmp_path / "clickhouse", CLICKHOUSE_PASSWORD) as server:
        yield server


@pytest.fixture
def pipeline(
    workspace: Workspace, dovecot: Dovecot, clickhouse: ClickHouseHTTP, tmp_path: Path
) -> Iterator[Pipeline]:
    """Broker, four approved IMAP mailboxes (filter: all) and the three roles running."""
    extra = (
        "[sinks]\nbatch_max_age_s = 0.5\n\n"
        f'[clickhouse]\ndsn = "{clickhouse.dsn()}"\n'
        f'password = {{ env = "{CLICKHOUSE_PASSWORD_ENV}" }}\n'
        "insert_timeout_s = 10.0\n"
    )
    config = write_config(tmp_path / "tidings.toml", dovecot, extra)
    workspace.env["TIDINGS_CONFIG"] = str(config)
    workspace.env[PASSWORD_ENV] = PASSWORD
    workspace.env["TIDINGS_LOG_LEVEL"] = "info"  # faust's rebalances and recovery, logged
    workspace.env[CLICKHOUSE_PASSWORD_ENV] = CLICKHOUSE_PASSWORD
    workspace.cli("broker", "start")
    for user in USERS:
        dovecot.add_user(user, PASSWORD)
        workspace.cli(
            "mailbox", "add", "--id", f"mb-{user}", "--protocol", "imap",
            "--server-profile", "dovecot", "--user", user, "--password-env", PASSWORD_ENV,
            "--owner", f"user:{user}", "--filter", "all",
            "--email", f"{user}@northwind.example",
        )  # fmt: skip
    running = Pipeline(workspace, clickhouse, tmp_path)
    for role in ROLES:
        running.start(role)
    try:
        for role in ROLES:
            endpoint(workspace, role)
        yield running
    finally:
        running.stop()


# -- checks ------------------------------------------------------------------------


def decided_count(clickhouse: ClickHouseHTTP) -> int:
    """Items decided so far, as ClickHouse holds them."""
    rows = clickhouse.query("SELECT count() FROM tidings.promotion_decisions FINAL")
    return int(rows[0][0])


def settle(running: Pipeline, truth: Truth) -> list[str]:
    """Wait until ClickHouse holds the ground truth so far; the differences left at the
    deadline (none: it does). Decisions can be complete while other tables still wait
    for a retried insert (an insert covers several tables, one after another), so the
    whole truth is awaited, not the decision count alone."""
    deadline = time.monotonic() + SETTLE_S
    count, found = 0, ["nothing checked yet"]
    while time.monotonic() < deadline:
        running.check_alive()
        count = decided_count(running.clickhouse)
        if count >= truth.items:
            found = problems(running.clickhouse, truth)
            if not found:
                return []
        time.sleep(1.0)
    if count >= truth.items:
        return found
    return [f"{count} of {truth.items} items decided", *trace_undecided(running, truth)]


def trace_undecided(running: Pipeline, truth: Truth) -> list[str]:
    """Where the items without a decision in ClickHouse stopped: the item keys on
    mail.changes (created), mail.parsed and promotion.decisions that ClickHouse has
    no decision for, and how far the processors committed on the topics they read."""
    rows = running.clickhouse.query("SELECT item_key FROM tidings.promotion_decisions FINAL")
    stored = {str(key) for (key,) in rows}
    stages = item_keys_now(load_config(env=running.space.env))
    found = []
    for topic, (keys, lag) in stages.items():
        undecided = sorted(keys - stored)
        found.append(
            f"{topic}: {len(keys)} item keys, {len(undecided)} undecided {undecided[:3]}"
            + (f"; processors' lag by partition {lag}" if lag else "")
        )
    return found


def item_keys_now(config: TidingsConfig) -> dict[str, tuple[set[str], dict[int, int]]]:
    """`item_keys_on_topics` on the running broker `config` points at."""
    infra = bring_up(config, create_topics=False)
    try:
        return asyncio.run(item_keys_on_topics(infra.config))
    finally:
        infra.close()


async def item_keys_on_topics(config: TidingsConfig) -> dict[str, tuple[set[str], dict[int, int]]]:
    """Per topic the processors read or write: the item keys of its email items
    (created ones on mail.changes) and the processors' lag by partition."""
    stages: dict[str, tuple[set[str], dict[int, int]]] = {}
    specs: list[tuple[TopicSpec[Any], bool]] = [
        (MAIL_CHANGES, True),
        (MAIL_PARSED, True),
        (PROMOTION_DECISIONS, False),
    ]
    for spec, read in specs:
        topic = spec.name(config.topic_prefix)
        tps = await topic_partitions(config, topic)
        consumer = AIOKafkaConsumer(
            **config.kafka.consumer_options(), group_id=config.processors.group_id
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            committed = {tp: await consumer.committed(tp) for tp in tps}
            await consumer.seek_to_beginning(*tps)
            keys: set[str] = set()
            with contextlib.suppress(TimeoutError):  # what was read in 60 s is enough
                async for _, record in drain(consumer, tps):
                    value = codec(spec).decode(record.value or b"", topic, 0, 0)
                    if getattr(value, "change", ChangeKind.CREATED) == ChangeKind.CREATED:
                        keys.add(value.item_key)
            ends = await consumer.end_offsets(tps)
            lag = {tp.partition: ends[tp] - (committed[tp] or 0) for tp in tps} if read else {}
            stages[topic] = (keys, lag)
        finally:
            await consumer.stop()
    return stages


def problems(clickhouse: ClickHouseHTTP, truth: Truth) -> list[str]:
    """Every difference between ClickHouse and the ground truth."""
    decisions, activities, raw = (
        clickhouse.query(sql)
        for sql in (
            "SELECT status, reason, count() FROM tidings.promotion_decisions FINAL "
            "GROUP BY status, reason",
            "SELECT activity_id, receiving_mailboxes FROM tidings.activities FINAL",
            "SELECT count(), uniqExact(item_key) FROM tidings.promotion_decisions FINAL",
        )
    )
    malformed = clickhouse.query(
        "SELECT count() FROM tidings.sync_errors FINAL WHERE code = 'Malformed'"
    )
    found: list[str] = []
    by_reason = Counter({(str(s), str(r)): int(n) for s, r, n in decisions})
    if by_reason != truth.decisions:
        found.append(f"decisions {dict(by_reason)}, want {dict(truth.decisions)}")
    if int(malformed[0][0]) != truth.errors:
        found.append(f"{malformed[0][0]} Malformed errors stored, want {truth.errors}")
    if int(raw[0][0]) != int(raw[0][1]):
        found.append(f"{raw[0][0]} decision rows for {raw[0][1]} items after FINAL")
    stored = {str(a): set(m) for a, m in activities}
    if len(stored) != len(activities):
        found.append(f"{len(activities)} activity rows for {len(stored)} ids after FINAL")
    missing = truth.receivers.keys() - stored.keys()
    extra = stored.keys() - truth.receivers.keys()
    if missing or extra:
        found.append(f"activities: {len(missing)} missing, {len(extra)} not expected")
    wrong = [a for a in stored.keys() & truth.receivers.keys() if stored[a] != truth.receivers[a]]
    if wrong:
        found.append(f"{len(wrong)} activities with wrong receiving mailboxes, e.g. {wrong[0]}")
    return found


# -- the faults --------------------------------------------------------------------


Fault = Callable[[Pipeline, Dovecot], None]


def restart_role(role: str) -> Fault:
    def fault(running: Pipeline, dovecot: Dovecot) -> None:
        running.kill9(role)
        running.start(role)

    fault.__name__ = f"kill -9 {role}"
    return fault


def restart_broker(running: Pipeline, dovecot: Dovecot) -> None:
    running.space.cli("broker", "stop")
    running.space.cli("broker", "start")


def restart_dovecot(running: Pipeline, dovecot: Dovecot) -> None:
    dovecot.restart()


def fail_inserts(running: Pipeline, dovecot: Dovecot) -> None:
    running.clickhouse.fail_inserts(INSERT_FAILURES)


FAULTS: list[tuple[str, Fault, int]] = [
    ("kill -9 connectors", restart_role("connectors"), 850),
    ("kill -9 processors", restart_role("processors"), 850),
    ("kill -9 sinks", restart_role("sinks"), 850),
    ("restart broker", restart_broker, 850),
    (f"ClickHouse refuses {INSERT_FAILURES} inserts", fail_inserts, 800),
    ("restart dovecot mid-fetch", restart_dovecot, 800),
]


def test_every_message_accounted_for_exactly_once_through_faults(
    pipeline: Pipeline, dovecot: Dovecot
) -> None:
    rng = random.Random(SEED)
    print(f"fault seed {SEED} (TIDINGS_FAULT_SEED={SEED} repeats it)")
    assert sum(items for _, _, items in FAULTS) == TOTAL_ITEMS
    truth = Truth()
    first = 0
    for name, fault, items in FAULTS:
        before = truth.items
        by_user, first = wave(first, items, truth)
        for user, raws in by_user.items():
            dovecot.deliver_many(user, "INBOX", raws)
        delay = rng.uniform(0.2, 1.2)  # a wave takes about 2 s to pass through
        time.sleep(delay)
        at_fault = decided_count(pipeline.clickhouse) - before
        fault(pipeline, dovecot)
        print(f"{name}: {delay:.2f} s into the wave, {at_fault} of {items} items decided")
        found = settle(pipeline, truth)
        assert found == [], f"after {name} (seed {SEED}): {found}\n{pipeline.tails()}"
    assert truth.items == TOTAL_ITEMS
    assert pipeline.clickhouse.inserts_failed == INSERT_FAILURES
