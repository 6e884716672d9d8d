"""Connector runtimes in the test's own event loop, on the real embedded broker
(tansu), and what they published: change events, errors, statuses.

    async with ConnectorHarness.up(tmp_path, profiles) as harness:
        await harness.add_mailbox(config)
        async with harness.runtime():
            events = await harness.wait_for_changes("mb", lambda e: len(e) >= 3)
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import sys
import time
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Self, TypeVar

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from connectors.claimcheck import ClaimCheck
from connectors.runtime import ConnectorRuntime
from pipeline.bootstrap import Infrastructure, bring_up
from pipeline.config import load_config
from pipeline.idle import drain, topic_partitions
from schemas.base import RecordRef, RecordType
from schemas.blobs import open_blob_store
from schemas.codec import decode_key, encode_key
from schemas.config import ConnectorConfig, TidingsConfig
from schemas.errors import SyncError
from schemas.mail import MailItemChanged
from schemas.mailbox import Credentials, MailboxConfig, MailboxStatus, Protocol, ServerProfile
from schemas.secret import SecretRef
from schemas.topics import (
    MAIL_CHANGES,
    MAILBOX_CONFIG,
    MAILBOX_STATUS,
    SYNC_ERRORS,
    TopicSpec,
    codec,
)

T = TypeVar("T", bound=msgspec.Struct)
PASSWORD_ENV = "TEST_IMAP_PASSWORD"
"""The variable test mailboxes' password references (like a real deployment's)."""


def dump_stuck(why: str) -> None:
    """Print `why`, then the stack of every unfinished task in this loop and of every
    thread, to stderr: where a shutdown that should have ended is waiting."""
    print(f"\n{why}; tasks still running:", file=sys.stderr)
    for task in asyncio.all_tasks():
        if not task.done():
            task.print_stack(limit=30, file=sys.stderr)
    print("threads:", file=sys.stderr)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


def message(n: int, subject: str = "Hello", body: str = "Body text.") -> bytes:
    """A small well-formed email with Message-ID <imap-n@example.com>."""
    mail = EmailMessage()
    mail["From"] = "Dana <dana@contoso.example>"
    mail["To"] = "alice@northwind.example"
    mail["Subject"] = f"{subject} {n}"
    mail["Message-ID"] = f"<imap-{n}@contoso.example>"
    mail["Date"] = "Mon, 30 Mar 2026 10:15:00 +0000"
    mail.set_content(f"{body} {n}\n")
    return mail.as_bytes()


def mailbox(mailbox_id: str, user: str, **changes: object) -> MailboxConfig:
    """An IMAP mailbox on profile "dovecot" logging in as `user`."""
    settings: dict[str, object] = {
        "mailbox_id": mailbox_id,
        "owner": RecordRef(type=RecordType.USER, id=user),
        "email_address": f"{user}@northwind.example",
        "protocol": Protocol.IMAP,
        "server_profile": "dovecot",
        "credentials": Credentials(username=user, password=SecretRef(env=PASSWORD_ENV)),
    }
    settings.update(changes)
    return MailboxConfig(**settings)  # type: ignore[arg-type]


class ConnectorHarness:
    """An embedded broker in `data_dir` and helpers to drive and observe connectors."""

    def __init__(self, infra: Infrastructure, profiles: dict[str, ServerProfile]) -> None:
        self.infra = infra
        self.config: TidingsConfig = msgspec.structs.replace(infra.config, server_profiles=profiles)

    @classmethod
    @contextlib.asynccontextmanager
    async def up(
        cls,
        data_dir: Path,
        profiles: dict[str, ServerProfile],
        connectors: ConnectorConfig | None = None,
        env: dict[str, str] | None = None,
    ) -> AsyncIterator[Self]:
        """Start the embedded broker (topics created) and stop it afterwards; `env` adds
        TIDINGS_* settings (e.g. the partition count)."""
        base = load_config(env={"TIDINGS_DATA_DIR": str(data_dir), **(env or {})})
        if connectors is not None:
            base = msgspec.structs.replace(base, connectors=connectors)
        infra = await asyncio.to_thread(bring_up, base)
        try:
            yield cls(infra, profiles)
        finally:
            await asyncio.to_thread(infra.close)

    @contextlib.asynccontextmanager
    async def runtime(self, worker: str = "test-worker") -> AsyncIterator[ConnectorRuntime]:
        """A connector runtime running in this loop until the block ends."""
        settings = msgspec.structs.replace(self.config.connectors, worker_name=worker)
        runtime = ConnectorRuntime(
            self.config.kafka,
            self.config.topic_prefix,
            settings,
            claim_check=ClaimCheck(
                open_blob_store(self.config.blob_url(), self.config.blobs), settings
            ),
            profiles=self.config.server_profiles,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(stop))
        try:
            yield runtime
        finally:
            stop.set()
            done, _ = await asyncio.wait({task}, timeout=60)
            if not done:
                stuck = "the connector runtime did not stop within 60 s"
                dump_stuck(stuck)
                task.cancel()
                raise AssertionError(stuck)
            task.result()

    async def add_mailbox(self, config: MailboxConfig) -> None:
        """Publish a mailbox configuration."""
        producer = AIOKafkaProducer(**self.config.kafka.producer_options())
        await producer.start()
        try:
            await producer.send_and_wait(
                MAILBOX_CONFIG.name(self.config.topic_prefix),
                key=encode_key(config.mailbox_id),
                value=codec(MAILBOX_CONFIG).encode(config),
            )
        finally:
            await producer.stop()

    async def read(self, spec: TopicSpec[T], mailbox_id: str) -> list[T]:
        """Every value on `spec`'s topic keyed by `mailbox_id`, in offset order."""
        topic = spec.name(self.config.topic_prefix)
        consumer = AIOKafkaConsumer(**self.config.kafka.consumer_options())
        await consumer.start()
        values: list[T] = []
        try:
            tps = await topic_partitions(self.config, topic)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            value_codec: Any = codec(spec)
            async for tp, message in drain(consumer, tps, 120):
                if decode_key(message.key) == mailbox_id and message.value is not None:
                    values.append(
                        value_codec.decode(message.value, topic, tp.partition, message.offset)
                    )
        finally:
            await consumer.stop()
        return values

    async def changes(self, mailbox_id: str) -> list[MailItemChanged]:
        """Every change event of a mailbox so far."""
        return await self.read(MAIL_CHANGES, mailbox_id)

    async def errors(self, mailbox_id: str) -> list[SyncError]:
        """Every sync error of a mailbox so far."""
        return await self.read(SYNC_ERRORS, mailbox_id)

    async def statuses(self, mailbox_id: str) -> list[MailboxStatus]:
        """Every status update of a mailbox so far."""
        return await self.read(MAILBOX_STATUS, mailbox_id)

    async def until_created(
        self, mailbox_id: str, count: int, timeout_s: float = 60.0
    ) -> list[MailboxStatus]:
        """The mailbox's status updates once the latest counts `count` created events."""
        return await self.wait_for(
            MAILBOX_STATUS,
            mailbox_id,
            lambda s: bool(s) and s[-1].counters.created_events == count,
            timeout_s,
        )

    async def wait_for(
        self,
        spec: TopicSpec[T],
        mailbox_id: str,
        done: Callable[[list[T]], bool],
        timeout_s: float = 60.0,
    ) -> list[T]:
        """Poll `spec`'s topic until `done(values)`; AssertionError with the last values."""
        deadline = time.monotonic() + timeout_s
        values: list[T] = []
        while time.monotonic() < deadline:
            values = await self.read(spec, mailbox_id)
            if done(values):
                return values
            await asyncio.sleep(0.3)
        raise AssertionError(f"timed out after {timeout_s}s; last {len(values)}: {values[-5:]}")
