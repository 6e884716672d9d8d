"""`tidings dlq replay` and `tidings dlq list` on the real embedded broker (tansu on
localbucket), driven through the real CLI: each policy, the --topic filter and
--dry-run, resumption after a stop and after SIGTERM, no letter replayed twice;
a real consumer's dead letters name their origin; a steady share of undecodable
messages stops the sink (the ratio rule of the flood guard)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.bootstrap import bring_up
from pipeline.config import load_config
from pipeline.dlq import replay_positions
from pipeline.idle import drain, topic_partitions
from schemas import dlq
from schemas.config import TidingsConfig
from schemas.crm import CrmRecord
from schemas.errors import ErrorScope, Severity, SyncError
from schemas.topics import CRM_RECORDS, DLQ, MAIL_CHANGES, SYNC_ERRORS, TopicSpec, codec
from tests.workspace import Workspace

pytestmark = pytest.mark.integration

FAILED_AT = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
BAD = b"\x00 garbage, not JSON"


@dataclass(frozen=True)
class Raw:
    """One message as it sits on a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


@dataclass(frozen=True)
class Ws:
    """The workspace (embedded broker running) and its configuration with the broker in it."""

    space: Workspace
    config: TidingsConfig

    def topic(self, spec: TopicSpec[Any]) -> str:
        return spec.name(self.config.topic_prefix)


@pytest.fixture
def ws(workspace: Workspace) -> Iterator[Ws]:
    for name in ("COLUMNS", "LINES"):
        workspace.env.pop(name, None)
    workspace.cli("broker", "start")
    infra = bring_up(load_config(env={"TIDINGS_DATA_DIR": str(workspace.data_dir)}))
    try:
        yield Ws(workspace, infra.config)
    finally:
        infra.close()


# -- helpers ---------------------------------------------------------------------------


def record(n: int) -> tuple[bytes, bytes]:
    """Key and value of a crm.records message that decodes."""
    value = CrmRecord(
        record_id=f"c-{n}", record_type="contact", name=f"Contact {n}", email_addresses=[]
    )
    return f"c-{n}".encode(), codec(CRM_RECORDS).encode(value)


def sync_error(n: int) -> tuple[bytes, bytes]:
    """Key and value of a sync.errors message that decodes."""
    value = SyncError(
        error_id=f"e-{n}",
        mailbox_id="mb-1",
        scope=ErrorScope.ITEM,
        severity=Severity.PERMANENT,
        code="Test",
        message=f"error {n}",
        component="test",
        occurred_at=FAILED_AT,
    )
    return b"mb-1", codec(SYNC_ERRORS).encode(value)


@dataclass(frozen=True)
class Letter:
    """A dead letter to put on the DLQ: where it came from, its key and bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


async def _put(config: TidingsConfig, letters: Sequence[Letter]) -> None:
    producer = AIOKafkaProducer(**config.kafka.producer_options())
    await producer.start()
    try:
        sent = []
        for letter in letters:
            headers = dlq.dead_letter_headers(
                topic=letter.topic,
                partition=letter.partition,
                offset=letter.offset,
                error="failed when first read",
                consumer="tidings-processors/parse",
                failed_at=FAILED_AT,
            )
            sent.append(
                await producer.send(
                    DLQ.name(config.topic_prefix),
                    key=letter.key,
                    value=letter.value,
                    headers=headers,
                    partition=0,
                )
            )
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def put_letters(ws: Ws, letters: Sequence[Letter]) -> None:
    """Put dead letters on DLQ partition 0, in order (acknowledged)."""
    asyncio.run(_put(ws.config, letters))


async def _read(config: TidingsConfig, topic: str) -> list[Raw]:
    consumer = AIOKafkaConsumer(**config.kafka.consumer_options())
    await consumer.start()
    found = []
    try:
        tps = await topic_partitions(config, topic)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        async for tp, m in drain(consumer, tps):
            found.append(Raw(tp.partition, m.offset, m.key, m.value, dict(m.headers)))
    finally:
        await consumer.stop()
    return sorted(found, key=lambda raw: (raw.partition, raw.offset))


def read(ws: Ws, spec: TopicSpec[Any]) -> list[Raw]:
    """Every message on a topic, by partition and offset."""
    return asyncio.run(_read(ws.config, ws.topic(spec)))


def replay(ws: Ws, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """`tidings dlq replay ARGS`, which must exit `code`, without a traceback."""
    result = ws.space.cli("dlq", "replay", *args, check=False)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def counts(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The replay report's table: outcome -> letters."""
    rows = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in result.stdout.splitlines()
        if line.startswith("│")
    ]
    table = {row[0]: int(row[1]) for row in rows}
    assert "stopped at" in table, result.stdout
    return table


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line a failed replay prints."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def listed(ws: Ws, *args: str) -> tuple[dict[str, list[str]], str]:
    """`tidings dlq list`: rows by DLQ position, and the summary line."""
    out = ws.space.cli("dlq", "list", *args).stdout
    rows = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in out.splitlines()
        if line.startswith("│") and line[1:].strip()[:1].isdigit()
    ]
    summary = [line for line in out.splitlines() if "dead letters" in line]
    assert len(summary) == 1, out
    return {row[0]: row for row in rows}, summary[0]


def pairs(messages: Sequence[Raw]) -> list[tuple[bytes | None, bytes | None]]:
    return sorted((m.key, m.value) for m in messages)


# -- policies --------------------------------------------------------------------------


def test_stop_on_error_stops_at_the_bad_letter_and_drop_resumes_there(ws: Ws) -> None:
    records = ws.topic(CRM_RECORDS)
    good1, good2 = record(1), record(2)
    put_letters(
        ws,
        [
            Letter(records, 1, 10, *good1),
            Letter(records, 2, 11, b"c-bad", BAD),
            Letter(records, 3, 12, *good2),
        ],
    )

    dry = replay(ws, "--dry-run", code=1)
    assert counts(dry)["would replay"] == 1 and counts(dry)["stopped at"] == 1
    assert "dry run" in dry.stdout
    assert read(ws, CRM_RECORDS) == []
    assert listed(ws)[1].startswith("3 dead letters, 3 pending")

    first = replay(ws, code=1)
    assert counts(first) == {
        "replayed": 1,
        "reinserted": 0,
        "dropped": 0,
        "kept (other topics)": 0,
        "stopped at": 1,
    }
    line = error_line(first)
    assert f"stopped at dlq[0]@1 (from {records}[2]@11)" in line
    assert "does not decode" in line and "malformed" in line
    assert "--policy reinsert" in line and "--policy drop" in line
    replayed = read(ws, CRM_RECORDS)
    assert pairs(replayed) == [good1]  # same key, same bytes
    assert replayed[0].headers[dlq.HEADER_REPLAYED_FROM] == b"0@0"

    again = replay(ws, code=1)  # resumes at the bad letter: nothing replayed twice
    assert counts(again)["replayed"] == 0
    assert "stopped at dlq[0]@1" in error_line(again)
    assert pairs(read(ws, CRM_RECORDS)) == [good1]

    dropped = replay(ws, "--policy", "drop")
    assert counts(dropped)["dropped"] == 1 and counts(dropped)["replayed"] == 1
    assert "2 letters were pending, 0 still are" in dropped.stdout
    assert pairs(read(ws, CRM_RECORDS)) == sorted([good1, good2])

    done = replay(ws, "--policy", "drop")
    assert sum(counts(done).values()) == 0
    assert "0 letters were pending" in done.stdout
    assert pairs(read(ws, CRM_RECORDS)) == sorted([good1, good2])
    rows, summary = listed(ws)
    assert summary.startswith("3 dead letters, 0 pending")
    assert {row[2] for row in rows.values()} == {"done"}


def test_reinsert_puts_the_bad_letter_back_with_its_attempts_counted(ws: Ws) -> None:
    changes = ws.topic(MAIL_CHANGES)
    good = record(1)
    put_letters(
        ws, [Letter(changes, 0, 5, b"mb-1", BAD), Letter(ws.topic(CRM_RECORDS), 0, 6, *good)]
    )

    first = replay(ws, "--policy", "reinsert")
    assert counts(first)["reinserted"] == 1 and counts(first)["replayed"] == 1
    assert read(ws, MAIL_CHANGES) == []
    assert pairs(read(ws, CRM_RECORDS)) == [good]
    letters = read(ws, DLQ)
    assert [(m.partition, m.offset) for m in letters] == [(0, 0), (0, 1), (0, 2)]
    back = letters[2]
    assert (back.key, back.value) == (b"mb-1", BAD)
    assert back.headers[dlq.HEADER_TOPIC] == changes.encode()
    assert back.headers[dlq.HEADER_PARTITION] == b"0"
    assert back.headers[dlq.HEADER_OFFSET] == b"5"
    assert back.headers[dlq.HEADER_REPLAY_ATTEMPTS] == b"1"
    assert back.headers[dlq.HEADER_CONSUMER] == b"tidings-processors/parse"
    assert b"malformed" in back.headers[dlq.HEADER_ERROR]  # the error of the replay
    rows, summary = listed(ws)
    assert summary.startswith("3 dead letters, 1 pending")
    assert rows["0@2"][1] == f"{changes}[0]@5"
    assert rows["0@2"][2:4] == ["pending", "1"]
    assert rows["0@0"][2:4] == ["done", "0"]
    pending_rows, _ = listed(ws, "--pending")
    assert list(pending_rows) == ["0@2"]

    second = replay(ws, "--policy", "reinsert")
    assert counts(second)["reinserted"] == 1 and counts(second)["replayed"] == 0
    assert read(ws, DLQ)[-1].headers[dlq.HEADER_REPLAY_ATTEMPTS] == b"2"
    assert listed(ws)[0]["0@3"][3] == "2"
    assert pairs(read(ws, CRM_RECORDS)) == [good]  # the good letter was not replayed again

    replay(ws, "--policy", "drop")
    assert listed(ws)[1].startswith("4 dead letters, 0 pending")
    assert read(ws, MAIL_CHANGES) == []


def test_topic_filter_replays_one_topic_and_keeps_the_others_for_later(ws: Ws) -> None:
    errors_topic, records = ws.topic(SYNC_ERRORS), ws.topic(CRM_RECORDS)
    error, good = sync_error(1), record(1)
    put_letters(
        ws,
        [
            Letter(errors_topic, 0, 1, *error),
            Letter(records, 0, 2, *good),
            Letter(records, 0, 3, b"c-bad", BAD),
        ],
    )

    dry = replay(ws, "--topic", "crm.records", "--policy", "drop", "--dry-run")
    assert counts(dry)["would replay"] == 1 and counts(dry)["would drop"] == 1
    assert counts(dry)["kept (other topics)"] == 1
    assert read(ws, CRM_RECORDS) == [] and len(read(ws, DLQ)) == 3

    only = replay(ws, "--topic", "crm.records", "--policy", "drop")
    assert counts(only) == {
        "replayed": 1,
        "reinserted": 0,
        "dropped": 1,
        "kept (other topics)": 1,
        "stopped at": 0,
    }
    assert f"{records} 1" in only.stdout and f"{errors_topic} 1" in only.stdout
    assert pairs(read(ws, CRM_RECORDS)) == [good]
    assert read(ws, SYNC_ERRORS) == []
    letters = read(ws, DLQ)
    assert len(letters) == 4
    kept = letters[3]
    assert (kept.key, kept.value) == error
    assert kept.headers == letters[0].headers  # put back unchanged, no attempt counted

    rest = replay(ws)
    assert counts(rest)["replayed"] == 1
    assert pairs(read(ws, SYNC_ERRORS)) == [error]
    assert pairs(read(ws, CRM_RECORDS)) == [good]
    assert listed(ws)[1].startswith("4 dead letters, 0 pending")


def test_an_interrupted_replay_resumes_and_publishes_every_letter_once(
    ws: Ws, tmp_path: Path
) -> None:
    records = ws.topic(CRM_RECORDS)
    total = 600
    put_letters(ws, [Letter(records, 0, n, *record(n)) for n in range(total)])
    log = tmp_path / "replay.log"
    process = ws.space.start("dlq", "replay", log=log)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if asyncio.run(replay_positions(ws.config)).get(0, 0) >= 20:
                break
            time.sleep(0.1)
        assert process.poll() is None, "the replay ended before it could be interrupted"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 1, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = " ".join(log.read_text().split())
    assert "interrupted after" in output and "run `tidings dlq replay` again" in output
    resume_at = asyncio.run(replay_positions(ws.config))[0]
    assert 20 <= resume_at < total
    assert len(read(ws, CRM_RECORDS)) == resume_at  # the letter in hand was finished

    rest = replay(ws)
    assert counts(rest)["replayed"] == total - resume_at
    replayed = read(ws, CRM_RECORDS)
    assert len(replayed) == total
    assert pairs(replayed) == sorted(record(n) for n in range(total))
    assert sorted(m.headers[dlq.HEADER_REPLAYED_FROM] for m in replayed) == sorted(
        f"0@{n}".encode() for n in range(total)
    )


# -- a real consumer -------------------------------------------------------------------


async def _produce(
    config: TidingsConfig, topic: str, messages: Sequence[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    producer = AIOKafkaProducer(**config.kafka.producer_options())
    await producer.start()
    try:
        where = []
        for key, value in messages:
            sent = await producer.send_and_wait(topic, key=key, value=value, partition=0)
            where.append((sent.partition, sent.offset))
        return where
    finally:
        await producer.stop()


def test_the_sink_dead_letters_with_its_origin_and_replay_handles_it(
    ws: Ws, tmp_path: Path
) -> None:
    errors_topic = ws.topic(SYNC_ERRORS)
    [(partition, offset)] = asyncio.run(_produce(ws.config, errors_topic, [(b"mb-1", BAD)]))
    process = ws.space.start("run", "sinks", "--until-idle", log=tmp_path / "sinks.log")
    try:
        assert process.wait(timeout=150) == 0, (tmp_path / "sinks.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    [letter] = read(ws, DLQ)
    assert (letter.key, letter.value) == (b"mb-1", BAD)
    assert letter.headers[dlq.HEADER_TOPIC] == errors_topic.encode()
    assert letter.headers[dlq.HEADER_PARTITION] == str(partition).encode()
    assert letter.headers[dlq.HEADER_OFFSET] == str(offset).encode()
    assert letter.headers[dlq.HEADER_CONSUMER] == b"tidings-sinks"
    assert b"malformed" in letter.headers[dlq.HEADER_ERROR]
    rows, summary = listed(ws)
    assert summary.startswith("1 dead letters, 1 pending")
    [row] = rows.values()
    assert row[1] == f"{errors_topic}[{partition}]@{offset}" and row[2:4] == ["pending", "0"]

    stopped = replay(ws, code=1)
    assert f"from {errors_topic}[{partition}]@{offset}" in error_line(stopped)
    dropped = replay(ws, "--policy", "drop")
    assert counts(dropped)["dropped"] == 1
    assert len(read(ws, SYNC_ERRORS)) == 1  # only the original garbage, nothing replayed


def test_a_steady_share_of_undecodable_messages_stops_the_sink(ws: Ws, tmp_path: Path) -> None:
    # Good, bad, bad, ...: never three in a row, but two thirds of the traffic is bad.
    messages = [sync_error(n) if n % 3 == 0 else (b"mb-1", BAD) for n in range(12)]
    asyncio.run(_produce(ws.config, ws.topic(SYNC_ERRORS), messages))
    log = tmp_path / "sinks.log"
    flood = {
        "TIDINGS_SINKS__DLQ_MAX_CONSECUTIVE": "3",
        "TIDINGS_SINKS__DLQ_MAX_RATIO": "0.5",
        "TIDINGS_SINKS__DLQ_RATIO_WINDOW": "9",
        "TIDINGS_SINKS__DLQ_RATIO_MIN_MESSAGES": "9",
    }
    process = ws.space.start("run", "sinks", log=log, env=flood)
    try:
        code = process.wait(timeout=150)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = " ".join(log.read_text().split())
    assert code == 3, output[-3000:]  # EXIT_NEEDS_ATTENTION: not restarted
    assert "6 of the last 9 messages were undecodable" in output
    assert "in a row" not in output
    assert "tidings dlq list" in output
    assert len(read(ws, DLQ)) == 6  # every bad one was dead-lettered before the stop


# -- help ----------------------------------------------------------------------------


def test_replay_help_teaches_with_examples(ws: Ws) -> None:
    text = " ".join(ws.space.cli("dlq", "replay", "--help").stdout.split())
    for phrase in (
        "stop-on-error",
        "reinsert",
        "drop",
        "--dry-run",
        "--topic",
        "Examples:",
        "tidings dlq replay --policy reinsert",
        "dedupe by stable ids",
        "tidings-dlq-replay",
    ):
        assert phrase in text, phrase
    group = " ".join(ws.space.cli("dlq", "--help").stdout.split())
    assert "list" in group and "replay" in group and "tidings dlq replay --dry-run" in group
