"""Adaptive polling through the connector runtime, on a real dovecot and the embedded
broker: an idle mailbox backs off, yet new mail is picked up at once by IMAP IDLE
(push) or by a manual sync; the processors' lag is read from the broker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.idle import topic_partitions
from schemas import metrics
from schemas.config import ConnectorConfig
from schemas.mail import ChangeKind, MailItemChanged
from schemas.mailbox import PollingSettings, ServerProfile
from schemas.topics import MAIL_CHANGES
from tests.connector_harness import PASSWORD_ENV, ConnectorHarness, mailbox, message
from tests.mailserver import Dovecot

pytestmark = pytest.mark.integration

# Seconds instead of minutes and hours; idle delays grow 4x per poll up to an hour.
POLLING = PollingSettings(
    min_interval_s=0.2,
    max_active_interval_s=0.4,
    active_window_s=1.0,
    backoff_factor=4.0,
    idle_max_s=3600.0,
    jitter=0.0,
)
ADAPTIVE = ConnectorConfig(max_batch_items=100, lag_interval_s=0.5)  # no fixed interval


@pytest.fixture
def password() -> Iterator[str]:
    os.environ[PASSWORD_ENV] = "s3cret-pw"
    yield "s3cret-pw"
    os.environ.pop(PASSWORD_ENV, None)


def profiles(dovecot: Dovecot) -> dict[str, ServerProfile]:
    return {
        "dovecot": dovecot.profile(polling=POLLING, timeout_s=10.0),
        "no-idle": dovecot.profile(polling=POLLING, timeout_s=10.0, use_idle=False),
    }


def created(events: list[MailItemChanged]) -> list[MailItemChanged]:
    return [e for e in events if e.change == ChangeKind.CREATED]


def idle_delays_over(seconds: float) -> float:
    """Idle-backoff decisions (this process) that chose a delay above `seconds`, a
    bucket bound of the next-poll histogram."""
    total = over = 0.0
    for family in metrics.CONNECTOR_NEXT_POLL_SECONDS.collect():
        for sample in family.samples:
            if sample.labels.get("reason") != "idle":
                continue
            if sample.name.endswith("_count"):
                total += sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == seconds:
                over -= sample.value
    return total + over


def polls(reason: str) -> float:
    return float(metrics.CONNECTOR_POLLS.labels("imap", reason)._value.get())


async def until(check: object, what: str, timeout_s: float = 60.0) -> None:
    """Wait until `check()` is true (a safety bound, not a timed assertion)."""
    for _ in range(int(timeout_s / 0.1)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def test_idle_mailboxes_back_off_and_push_or_sync_still_pick_mail_up_at_once(
    dovecot: Dovecot, password: str, tmp_path: Path
) -> None:
    dovecot.add_user("alice", password)
    dovecot.add_user("bob", password)
    dovecot.append("alice", "INBOX", message(1))
    dovecot.append("bob", "INBOX", message(2))
    async with ConnectorHarness.up(tmp_path / "data", profiles(dovecot), ADAPTIVE) as h:
        await h.add_mailbox(mailbox("mb-alice", "alice"))
        await h.add_mailbox(mailbox("mb-bob", "bob", server_profile="no-idle"))
        async with h.runtime() as runtime:
            await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 1)
            await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(created(e)) == 1)

            # Nothing new: both back off, 0.4 s → 1.2 s → 4.8 s → 19 s … (up to 1 h).
            before = idle_delays_over(15)
            await until(lambda: idle_delays_over(15) >= before + 2, "idle delays over 15 s")

            # IMAP IDLE: the server's push polls at once, long before the next poll.
            pushed = polls("push")
            dovecot.append("alice", "INBOX", message(3))
            events = await h.wait_for(MAIL_CHANGES, "mb-alice", lambda e: len(created(e)) == 2)
            await until(lambda: polls("push") > pushed, "a poll woken by IDLE")
            assert {e.item_id.split(":")[1] for e in created(events)} == {"1", "2"}

            # No IDLE: `tidings mailbox sync ID` polls at once.
            manual = polls("manual")
            dovecot.append("bob", "INBOX", message(4))
            assert runtime.sync_now("mb-bob")
            assert not runtime.sync_now("mb-nobody")
            await h.wait_for(MAIL_CHANGES, "mb-bob", lambda e: len(created(e)) == 2)
            assert polls("manual") > manual

            # The processors' lag on mail.changes, as the connectors read it from the
            # broker: unknown while the group has committed nothing (slows nothing) ...
            assert runtime.lag.current is None
            assert metrics.CONNECTOR_BACKPRESSURE._value.get() == 0
            # ... then end offsets minus what the group committed.
            ends = await commit_start(h, runtime.lag.group)
            await until(lambda: runtime.lag.current == ends, f"lag {ends}")
            assert ends == 4  # four change events, none processed
    assert metrics.CONNECTOR_PROCESSOR_LAG._value.get() == -1  # stopped: unknown again


async def commit_start(h: ConnectorHarness, group: str) -> int:
    """Commit offset 0 on every mail.changes partition for `group` (the processors
    seen before they processed anything); the sum of the end offsets."""
    topic = MAIL_CHANGES.name(h.config.topic_prefix)
    tps = await topic_partitions(h.config, topic)
    consumer = AIOKafkaConsumer(group_id=group, **h.config.kafka.consumer_options())
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return sum(ends.values())
