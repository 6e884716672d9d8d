"""The deployable processes under `tidings run all`: each serves /metrics and /healthz,
undecodable input goes to the DLQ (and processing goes on), SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from schemas.config import TidingsConfig
from schemas.dlq import DeadLetter
from schemas.topics import DLQ, MAIL_CHANGES, PROMOTION_DECISIONS
from tests.workspace import Workspace

MESSAGE = b"""From: Dana Whitfield <dana@contoso.example>
To: Support <support@northwind.example>
Subject: Metrics test {n}
Message-ID: <processes-test-{n}@contoso.example>
Date: Mon, 30 Mar 2026 10:15:00 +0000

Hello {n}
"""


def write_message(maildir: Path, n: int) -> str:
    """Deliver message n into the Maildir; returns its item key."""
    name = f"{1_790_000_000 + n}.M{n}P1.proc"
    (maildir / "tmp" / name).write_bytes(MESSAGE.replace(b"{n}", str(n).encode()))
    os.rename(maildir / "tmp" / name, maildir / "new" / name)
    return f"mb-proc|INBOX|{name}"


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def endpoint(workspace: Workspace, role: str, timeout: float = 120) -> str:
    """Base URL of a role's HTTP endpoint, once it is up."""
    path = workspace.data_dir / "run" / f"{role}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads(path.read_text())
            url = f"http://{record['host']}:{record['port']}"
            if get(f"{url}/healthz")[0] in (200, 503):
                return url
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{role} endpoint not up within {timeout}s:\n{workspace.logs()}")


def decided(workspace: Workspace, item_key: str, timeout: float = 60) -> tuple[str, str]:
    """(status, reason) of an item once its decision is in ClickHouse."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = workspace.query(
            "SELECT status, reason FROM tidings.promotion_decisions FINAL "
            f"WHERE item_key = '{item_key}'"
        )
        if rows:
            return str(rows[0][0]), str(rows[0][1])
        time.sleep(0.5)
    raise TimeoutError(f"{item_key} not decided within {timeout}s:\n{workspace.logs()}")


async def produce_raw(config: TidingsConfig, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(**config.kafka.producer_options())
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


async def dead_letters(config: TidingsConfig) -> list[DeadLetter]:
    topic = DLQ.name(config.topic_prefix)
    consumer = AIOKafkaConsumer(**config.kafka.consumer_options())
    await consumer.start()
    letters = []
    try:
        tps = [TopicPartition(topic, p) for p in range(config.kafka.partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        for _ in range(6):
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                for m in messages:
                    headers = [(k, v) for k, v in m.headers]
                    letters.append(
                        DeadLetter.from_headers(headers, m.key, m.value, tp.partition, m.offset)
                    )
    finally:
        await consumer.stop()
    return letters


@pytest.fixture
def running(workspace: Workspace, tmp_path: Path) -> Iterator[tuple[Workspace, Path]]:
    """`tidings run all` on one Maildir mailbox; stopped with SIGTERM by the test."""
    maildir = tmp_path / "mb-proc"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    workspace.cli("broker", "start")
    workspace.cli(
        "mailbox", "add", "--id", "mb-proc", "--path", str(maildir), "--owner",
        "queue:support", "--filter", "all", "--email", "support@northwind.example",
    )  # fmt: skip
    log = tmp_path / "run-all.log"
    process = workspace.start("run", "all", log=log)
    try:
        yield workspace, maildir
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_every_process_serves_metrics_and_health(running: tuple[Workspace, Path]) -> None:
    workspace, maildir = running
    urls = {role: endpoint(workspace, role) for role in ("connectors", "processors", "sinks")}
    assert decided(workspace, write_message(maildir, 1)) == ("promoted", "AcceptAll")
    expected = {
        "connectors": "tidings_connector_events_total",
        "processors": "tidings_processor_decisions_total",
        "sinks": "tidings_sink_rows_inserted_total",
    }
    for role, url in urls.items():
        status, body = get(f"{url}/metrics")
        assert status == 200
        assert expected[role] in body
        assert get(f"{url}/healthz")[0] == 200


def test_undecodable_input_goes_to_the_dlq_and_processing_goes_on(
    running: tuple[Workspace, Path],
) -> None:
    workspace, maildir = running
    endpoint(workspace, "sinks")
    endpoint(workspace, "processors")
    env = {"TIDINGS_DATA_DIR": str(workspace.data_dir)}
    infra = bring_up(load_config(env=env), create_topics=False)
    try:
        config = infra.config
        changes = MAIL_CHANGES.name(config.topic_prefix)
        decisions = PROMOTION_DECISIONS.name(config.topic_prefix)
        asyncio.run(produce_raw(config, changes, b"mb-proc", b"\x00 not json"))
        asyncio.run(produce_raw(config, decisions, b"x", b'{"schema_version": 1}'))
        assert decided(workspace, write_message(maildir, 2)) == ("promoted", "AcceptAll")
        deadline = time.monotonic() + 60
        letters: list[DeadLetter] = []
        while time.monotonic() < deadline and len(letters) < 2:
            letters = asyncio.run(dead_letters(config))
    finally:
        infra.close()
    by_topic = {letter.topic: letter for letter in letters}
    assert set(by_topic) == {changes, decisions}
    assert by_topic[changes].value == b"\x00 not json"
    assert by_topic[changes].consumer.startswith("tidings-processors")
    assert by_topic[decisions].consumer == "tidings-sinks"
    assert all(letter.offset >= 0 and letter.error for letter in letters)
    listed = workspace.cli("dlq", "list").stdout
    assert changes in listed and decisions in listed and "2 dead letters" in listed


def test_a_flood_of_undecodable_messages_stops_the_sink_for_good(
    workspace: Workspace, tmp_path: Path
) -> None:
    workspace.cli("broker", "start")
    log = tmp_path / "run-all.log"
    process = workspace.start(
        "run", "all", log=log, env={"TIDINGS_SINKS__DLQ_MAX_CONSECUTIVE": "3"}
    )
    try:
        endpoint(workspace, "sinks")
        infra = bring_up(load_config(env={"TIDINGS_DATA_DIR": str(workspace.data_dir)}))
        try:
            decisions = PROMOTION_DECISIONS.name(infra.config.topic_prefix)
            for n in range(3):
                asyncio.run(produce_raw(infra.config, decisions, b"k", f"garbage {n}".encode()))
        finally:
            infra.close()
        assert process.wait(timeout=120) == 3, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    assert "sinks stopped and needs attention" in output
    assert (
        "undecodable messages in a row" in (workspace.data_dir / "logs" / "sinks.log").read_text()
    )
